"""The GPU and CPU choices of the engine, checked without a GPU: placement, DeepSpeed config, Ray plan."""

from __future__ import annotations

import math
from typing import Any

import pytest

from disney_train.config import ConfigError, RunConfig
from disney_train.train.engine import Placement, deepspeed_config, placement
from disney_train.train.launch import launch_plan
from disney_train.train.schedule import lr_factor, run_progress, steps_per_epoch
from tests.support.training import train_config


def _cfg(**overrides: Any) -> RunConfig:
    return train_config("m", "d", "o", **overrides)


def _parsed(conf: dict[str, Any]) -> Any:
    """DeepSpeed's own parser accepts the config (and fills in what it derives)."""
    from deepspeed.runtime.config import DeepSpeedConfig

    return DeepSpeedConfig(conf)


def test_gpu_worker_gets_cuda_bf16_nccl_fused_adam() -> None:
    cfg = _cfg()
    p = placement(cfg, cuda_available=True)
    assert p == Placement("cuda", "bf16", "nccl")
    conf = deepspeed_config(cfg, p)
    assert conf["bf16"] == {"enabled": True} and conf["fp16"]["enabled"] is False
    assert conf["optimizer"]["params"]["torch_adam"] is False  # DeepSpeed's fused Adam
    assert conf["zero_optimization"]["stage"] == 2 and conf["zero_optimization"]["overlap_comm"] is True
    parsed = _parsed(conf)
    assert parsed.bfloat16_config.enabled and parsed.zero_optimization_stage == 2


def test_cpu_worker_gets_fp32_gloo_torch_adam() -> None:
    cfg = _cfg()
    p = placement(cfg, cuda_available=False)
    assert p == Placement("cpu", "fp32", "gloo")
    conf = deepspeed_config(cfg, p)
    assert conf["bf16"]["enabled"] is False and conf["fp16"]["enabled"] is False
    assert conf["optimizer"]["params"]["torch_adam"] is True
    assert conf["gradient_clipping"] == 1.0 and conf["train_micro_batch_size_per_gpu"] == 1
    _parsed(conf)


def test_zero3_and_offload_are_rendered() -> None:
    cfg = _cfg(**{"train.zero_stage": 3, "train.offload_optimizer": True})
    gpu = deepspeed_config(cfg, placement(cfg, True))
    assert gpu["zero_optimization"]["stage"] == 3
    assert gpu["zero_optimization"]["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert gpu["optimizer"]["params"]["torch_adam"] is False  # DeepSpeed's CPU Adam for offload
    assert _parsed(gpu).zero_optimization_stage == 3
    cpu = deepspeed_config(cfg, placement(cfg, False))
    assert cpu["zero_optimization"]["offload_optimizer"]["pin_memory"] is False
    assert cpu["optimizer"]["params"]["torch_adam"] is True and cpu["zero_force_ds_cpu_optimizer"] is False


def test_forced_cuda_without_gpu_is_refused() -> None:
    with pytest.raises(RuntimeError, match="device is 'cuda' but this worker sees no GPU"):
        placement(_cfg(**{"train.workers.device": "cuda"}), cuda_available=False)
    assert placement(_cfg(**{"train.precision": "bf16"}), False).precision == "bf16"  # explicit wins


def test_ray_plan_requests_gpus_on_gpu_clusters_and_elastic_ranges() -> None:
    cfg = _cfg(**{"train.workers.replicas": 4, "train.workers.min_replicas": 2, "train.workers.max_replicas": 8})
    gpu = launch_plan(cfg, cluster_gpus=8)
    assert gpu.use_gpu and gpu.resources_per_worker == {"CPU": 1.0, "GPU": 1.0} and gpu.backend == "nccl"
    assert gpu.num_workers == (2, 8)
    cpu = launch_plan(_cfg(), cluster_gpus=0)
    assert not cpu.use_gpu and cpu.resources_per_worker == {"CPU": 1.0} and cpu.backend == "gloo"
    assert cpu.num_workers == 2  # fixed size: an int, not a range


def test_elastic_range_must_hold_replicas() -> None:
    with pytest.raises(ConfigError, match=r"min_replicas \(3\) <= replicas \(2\)"):
        _cfg(**{"train.workers.min_replicas": 3})


def test_lr_schedule_and_steps_per_epoch() -> None:
    assert [lr_factor(s, 4, 0.5, "constant") for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert lr_factor(4, 4, 0.0, "cosine") == 1.0 and math.isclose(lr_factor(54, 4, 0.5, "cosine"), 0.5)
    assert lr_factor(104, 4, 1.0, "linear") == 0.0 and lr_factor(9, 4, 1.7, "cosine") == 0.0
    # progress is data (epochs) or max_steps, whatever the world size
    assert run_progress(10, 40, 0, 0, 69, 30) == 0.25
    assert run_progress(3, None, 1, 23, 69, 2) == pytest.approx((1 + 23 / 69) / 2)
    assert steps_per_epoch(69, 4, 2, 1) == 9  # 68 clips on 4 ranks: 17 each, 9 micro-batches of <= 2
    assert steps_per_epoch(69, 4, 2, 3) == 3
    assert steps_per_epoch(1, 1, 4, 8) == 1


# --------------------------------------------------------------------------- Ray Train's reports


def test_reports_to_ray_never_hold_up_the_caller_and_keep_their_order() -> None:
    """`ray.train.report` waits for the controller's poll (2 s on a cluster): submitting does not."""
    import threading
    import time

    from disney_train.train.ray_reports import RayReports

    made: list[int] = []
    release = threading.Event()

    def slow_report(metrics: dict[str, Any]) -> None:
        release.wait(5)  # as Ray does until its controller polls
        made.append(metrics["step"])

    reports = RayReports(slow_report)
    t0 = time.perf_counter()
    for step in range(1, 6):
        reports.submit({"step": step})
    assert time.perf_counter() - t0 < 0.5 and made == []
    release.set()
    reports.close()
    assert made == [1, 2, 3, 4, 5]


def test_a_failed_report_to_ray_stops_the_reports_not_the_run(caplog: pytest.LogCaptureFixture) -> None:
    from disney_train.train.ray_reports import RayReports

    made: list[int] = []

    def report(metrics: dict[str, Any]) -> None:
        if metrics["step"] == 2:
            raise RuntimeError("controller gone")
        made.append(metrics["step"])

    reports = RayReports(report)
    for step in (1, 2, 3):
        reports.submit({"step": step})
    reports.close()
    assert made == [1]
    assert "reports to Ray Train stopped at step 2: controller gone" in caplog.text


# --------------------------------------------------------------------------- DeepSpeed's start-up

_ENGINE_SCRIPT = """
import json, sys
import torch
from disney_train.train.engine import deepspeed_config
from disney_train.train.zero_state import MUON_MODULES
from tests.support.single_process import CPU, engine, init_single_process
from tests.support.training import train_config
stage, skip = int(sys.argv[1]), sys.argv[2] == "skip"
init_single_process(muon=not skip)
cfg = train_config("m", "d", "o", **{"train.zero_stage": stage})
torch.manual_seed(0)
model = torch.nn.Linear(4, 4)
ds = engine(model, list(model.parameters()), deepspeed_config(cfg, CPU))
losses = []
for _ in range(3):
    loss = ds(torch.ones(2, 4)).pow(2).mean()
    ds.backward(loss)
    ds.step()
    losses.append(float(loss))
real = [m for m in MUON_MODULES if getattr(sys.modules.get(m), "__file__", None)]  # DeepSpeed's (a stand-in has none)
print(json.dumps({"muon": bool(real), "losses": losses}))
"""


@pytest.mark.parametrize("stage", [2, 3])
def test_the_engine_starts_without_compiling_deepspeeds_muon_and_trains_the_same(stage: int) -> None:
    """DeepSpeed imports its Muon optimizer (compiling its kernels, 1.3 s) in every ZeRO engine's start;
    `skip_muon` keeps it out, and the AdamW steps are the same."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]

    def run(skip: str) -> dict[str, Any]:
        proc = subprocess.run(
            [sys.executable, "-c", _ENGINE_SCRIPT, str(stage), skip],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
        return result

    plain, skipped = run("import"), run("skip")
    assert plain["muon"] is True  # what DeepSpeed does on its own (if this fails, the stand-in is not needed)
    assert skipped["muon"] is False
    assert skipped["losses"] == plain["losses"] and skipped["losses"][2] < skipped["losses"][0]
