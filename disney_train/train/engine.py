"""DeepSpeed for one worker: the device and precision choice, and the DeepSpeed config, as pure
functions of the run configuration, so tests check the GPU choices without a GPU.

GPU (production): CUDA device of the worker's local rank, NCCL, bf16 with fp32 master weights,
DeepSpeed's fused Adam (or its CPU Adam when the optimizer state is offloaded), overlapping
communication. CPU (tests, `make run`): `DS_ACCELERATOR=cpu`, gloo, fp32 (bf16 autocast on CPU
was ~20x slower here), torch's AdamW so that no DeepSpeed op has to be compiled for the optimizer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

from disney_train.config import RunConfig
from disney_train.storage import cache_root

Device = Literal["cuda", "cpu"]


@dataclass(frozen=True)
class Placement:
    device: Device
    precision: Literal["bf16", "fp16", "fp32"]
    backend: Literal["nccl", "gloo"]


def placement(cfg: RunConfig, cuda_available: bool) -> Placement:
    want = cfg.train.workers.device
    if want == "cuda" and not cuda_available:
        raise RuntimeError("train.workers.device is 'cuda' but this worker sees no GPU (check the GPU requests)")
    device: Device = "cuda" if want == "cuda" or (want == "auto" and cuda_available) else "cpu"
    prec = cfg.train.precision
    if prec == "auto":
        prec = "bf16" if device == "cuda" else "fp32"
    return Placement(device, prec, "nccl" if device == "cuda" else "gloo")


def set_accelerator_env(p: Placement) -> None:
    """Must run before `import deepspeed` picks its accelerator."""
    os.environ["DS_ACCELERATOR"] = p.device
    if p.device == "cpu":
        # compiled ops (shm_comm) land where the next run finds them
        os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(cache_root() / "torch_extensions"))


def deepspeed_config(cfg: RunConfig, p: Placement) -> dict[str, Any]:
    o, t = cfg.optim, cfg.train
    zero: dict[str, Any] = {"stage": t.zero_stage, "contiguous_gradients": True, "overlap_comm": p.device == "cuda"}
    if t.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": p.device == "cuda"}
    if t.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = False
    conf: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": o.batch_size,
        "gradient_accumulation_steps": o.gradient_accumulation_steps,
        "gradient_clipping": o.max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": p.precision == "bf16"},
        "fp16": {"enabled": p.precision == "fp16", "initial_scale_power": 16, "loss_scale_window": 1000},
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": o.learning_rate,
                "betas": [o.beta1, o.beta2],
                "eps": o.eps,
                "weight_decay": o.weight_decay,
                # GPU: DeepSpeed's fused Adam (or its CPU Adam when offloaded); CPU: torch's AdamW,
                # offloaded or not, so that no op is compiled (cpu_adam took ~82 s here)
                "torch_adam": p.device == "cpu",
            },
        },
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if p.device == "cpu" and t.offload_optimizer:
        conf["zero_force_ds_cpu_optimizer"] = False  # torch's AdamW on the offloaded state
    return conf
