"""The fine-tuning engine end to end on Ray Train (local, loopback only) with the tiny model.

The CLI run trains with the data and the outputs on S3 (SeaweedFS); the resume tests compare the
loss of every step of an interrupted run with an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import pytest
import torch

from disney_train.config import RunConfig, S3Options, dump_config
from disney_train.data.pack import PackOptions, pack
from disney_train.model.lora import read_lora_file
from disney_train.runs import FINAL_LORA, RunFiles
from disney_train.storage import open_store
from disney_train.train.checkpoint import CheckpointStore
from disney_train.train.launch import RunFinishedError, TrainingError, launch, local_ray_init
from disney_train.train.schedule import lr_factor
from tests.support.raywatch import ListenWatch
from tests.support.training import build_cache, train_config

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    import ray

    local_ray_init(num_cpus=2)
    yield
    ray.shutdown()


def _history(cfg: RunConfig) -> list[dict[str, Any]]:
    files = RunFiles(cfg)
    ckpts = CheckpointStore(files.store, 10)
    latest = ckpts.latest()
    assert latest is not None
    history: list[dict[str, Any]] = ckpts.load(latest).state["metrics"]
    return history


def test_cli_trains_from_s3_to_s3_and_refuses_to_rerun_a_finished_run(
    tiny_t2v: Path, sample_src: Path, s3: S3Options, s3_uri: str, tmp_path: Path
) -> None:
    data = f"{s3_uri}/data"
    pack(sample_src, data, PackOptions(min_frames=17, shard_bytes=512 * 1024), s3, None)
    cfg = train_config(
        tiny_t2v,
        data,
        f"{s3_uri}/runs",
        **{
            "s3.endpoint_url": s3.endpoint_url,
            "optim.max_steps": 8,
            "train.checkpoint_every": 3,
            "train.keep_checkpoints": 2,
            "train.report_every": 2,
            "validation.prompts": ["A chubby grey cartoon rabbit.", "A purple butterfly."],
            "validation.every": 4,
            "validation.steps": 2,
            "validation.at_end": True,
        },
    )
    path = tmp_path / "run.yaml"
    path.write_text(dump_config(cfg))
    cmd = [sys.executable, "-m", "disney_train.cli", "train", "--config", str(path)]
    # Ray Train's controller polls the workers every 8 s here (2 s is a cluster's default): a report that
    # waited for its poll on the training thread held the steps up that long
    poll = 8.0
    env = {**os.environ, "DISNEY_TRAIN_CACHE": str(tmp_path / "cache"), "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": str(poll)}
    with ListenWatch(os.getpid()) as watch:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "LoRA" in proc.stdout and "final/pytorch_lora_weights.safetensors" in proc.stdout
    train_phase = [float(s) for s in re.findall(r"phase train: ([0-9.]+) s", proc.stderr)]
    assert len(train_phase) == 1 and train_phase[0] < poll, train_phase  # 8 steps, 1 validation, 2 checkpoints
    assert "DeepSpeed ZeRO stage 2 at world size 2: cpu, fp32, torch AdamW" in proc.stderr  # the wrapper chosen

    # Ray bound to loopback; beyond it only torch's TCPStore (rank 0's rendezvous port) listens
    assert len(watch.seen) >= 5, watch.seen
    outside = watch.beyond_loopback()
    assert len(outside) <= 1 and all("RayTrainWorker" in o.name or "ray::" in o.name for o in outside), outside

    run = open_store(f"{s3_uri}/runs/{cfg.name}", s3)
    assert CheckpointStore(run, 2).committed() == [6, 8]  # 3, 6, then the final 8; the last two kept
    progress = json.loads(run.read_bytes("progress.json"))
    assert progress["phase"] == "finished" and progress["step"] == 8 and progress["world_size"] == 2
    videos = sorted(k for k in run.list_keys("validation/") if k.endswith(".mp4"))
    assert videos == [
        "validation/step-000000004/video-00.mp4",
        "validation/step-000000004/video-01.mp4",
        "validation/step-000000008/video-00.mp4",
        "validation/step-000000008/video-01.mp4",
    ]
    assert json.loads(run.read_bytes("validation/step-000000008/prompts.json")) == {
        "video-00.mp4": "A chubby grey cartoon rabbit.",
        "video-01.mp4": "A purple butterfly.",
    }
    mp4 = tmp_path / "v.mp4"
    mp4.write_bytes(run.read_bytes(videos[-1]))
    with av.open(str(mp4)) as c:
        frames = list(c.decode(video=0))
    assert len(frames) == 17 and (frames[0].height, frames[0].width) == (64, 96)

    # the final LoRA is trained (B is no longer zero) and loads into the diffusers pipeline
    from diffusers import CogVideoXPipeline

    from disney_train.generate import apply_lora

    lora = run.read_bytes(FINAL_LORA)
    state = read_lora_file(lora)
    assert any("lora_B" in k and torch.count_nonzero(v) > 0 for k, v in state.items())
    pipe = CogVideoXPipeline.from_pretrained(str(tiny_t2v))
    apply_lora(pipe, lora)
    assert any("lora_B" in n for n, _ in pipe.transformer.named_parameters())

    # the latent cache was built beside the dataset, by both workers
    assert sum(k.endswith(".safetensors") for k in open_store(data, s3).list_keys("cache/")) == 4

    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "already finished at step 8" in " ".join(again.stdout.split())
    assert CheckpointStore(run, 2).committed() == [6, 8]


def _resume_config(model: Path, data: Path, out: Path, name: str, **extra: Any) -> RunConfig:
    return train_config(
        model,
        data,
        out,
        **{
            "name": name,
            "optim.max_steps": 8,
            "optim.warmup_steps": 3,
            "optim.lr_schedule": "cosine",
            "train.checkpoint_every": 4,
            "train.report_every": 1,
            **extra,
        },
    )


def _killed_after_step_3_resumes_exactly(
    model: Path, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, common: dict[str, Any]
) -> RunConfig:
    """A run of `common` settings (4 steps, a checkpoint every 2) whose worker is killed after step 3 is
    restarted by Ray from the checkpoint at 2 and ends with the uninterrupted run's losses, step for step;
    returns the killed run's configuration."""
    straight = train_config(model, data, tmp_path / "out", name="straight", **common)
    launch(straight, storage_path=tmp_path / "ray")
    killed = train_config(model, data, tmp_path / "out", name="killed", **{**common, "train.workers.max_failures": 1})
    monkeypatch.setenv("DISNEY_TRAIN_CHAOS", f"kill:3:1:{tmp_path / 'killed-once'}")
    launch(killed, storage_path=tmp_path / "ray")
    monkeypatch.delenv("DISNEY_TRAIN_CHAOS")
    assert (tmp_path / "killed-once").exists()
    expected, got = _history(straight), _history(killed)
    assert got[-1]["restarts"] == 1 and [h["step"] for h in got] == [1, 2, 3, 4]
    assert [h["loss"] for h in got] == pytest.approx([h["loss"] for h in expected], rel=1e-5, abs=1e-7)
    return killed


def _stopped_at_step_3_then_resumed_alone(cfg: RunConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RunConfig:
    """`cfg` (its workers allowed no failure) stopped by a worker killed after step 3, then resumed by 1 worker;
    returns the resumed run's configuration."""
    monkeypatch.setenv("DISNEY_TRAIN_CHAOS", f"kill:3:1:{tmp_path / 'once'}")
    with pytest.raises(TrainingError):
        launch(cfg, storage_path=tmp_path / "ray")
    monkeypatch.delenv("DISNEY_TRAIN_CHAOS")
    one = cfg.model_copy(deep=True)
    one.train.workers.replicas = 1
    launch(one, storage_path=tmp_path / "ray")
    return one


def test_killed_worker_is_replaced_and_training_resumes_exactly(
    ray_local: None, tiny_t2v: Path, packed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker SIGKILLed after step 6 (checkpoint at 4): Ray restarts the group, which resumes
    from step 4; every step's loss equals the uninterrupted run's. Then the same with no retries
    left: the run fails, and `launch` again, now with ZeRO-3 and the optimizer state offloaded to
    CPU memory, resumes the ZeRO-2 checkpoint (its state belongs to no stage or world size) to the
    same losses."""
    straight = _resume_config(tiny_t2v, packed, tmp_path / "out", "straight")
    launch(straight, storage_path=tmp_path / "ray")
    expected = [(h["step"], h["loss"]) for h in _history(straight)]
    assert [s for s, _ in expected] == list(range(1, 9))

    killed = _resume_config(tiny_t2v, packed, tmp_path / "out", "killed", **{"train.workers.max_failures": 1})
    monkeypatch.setenv("DISNEY_TRAIN_CHAOS", f"kill:6:1:{tmp_path / 'killed-once'}")
    launch(killed, storage_path=tmp_path / "ray")
    assert (tmp_path / "killed-once").exists()  # the kill happened
    history = _history(killed)
    assert history[-1]["restarts"] == 1
    got = [(h["step"], h["loss"]) for h in history]
    assert [s for s, _ in got] == list(range(1, 9))
    for (s, a), (_, b) in zip(got, expected, strict=True):
        assert a == pytest.approx(b, rel=1e-6, abs=1e-7), f"step {s}"

    failed = _resume_config(tiny_t2v, packed, tmp_path / "out", "failed", **{"train.workers.max_failures": 0})
    monkeypatch.setenv("DISNEY_TRAIN_CHAOS", f"kill:6:0:{tmp_path / 'failed-once'}")
    with pytest.raises(TrainingError, match="run 'failed' failed"):
        launch(failed, storage_path=tmp_path / "ray")
    assert CheckpointStore(RunFiles(failed).store, 3).committed() == [4]
    monkeypatch.delenv("DISNEY_TRAIN_CHAOS")
    other = failed.model_copy(deep=True)
    other.lora.rank = 8  # the same name with another LoRA shape is another run: not resumed from these
    with pytest.raises(TrainingError, match=r"cannot resume: checkpoint .* belongs to another run \(lora was"):
        launch(other, storage_path=tmp_path / "ray")
    zero3 = failed.model_copy(deep=True)
    zero3.train.zero_stage = 3
    zero3.train.offload_optimizer = True
    launch(zero3, storage_path=tmp_path / "ray")
    history = _history(zero3)
    assert history[-1]["restarts"] == 1 and all(math.isfinite(h["grad_norm"]) for h in history)
    got = [(h["step"], h["loss"]) for h in history]
    assert [s for s, _ in got] == list(range(1, 9))
    for (s, a), (_, b) in zip(got, expected, strict=True):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-7), f"step {s}"
    with pytest.raises(RunFinishedError, match="already finished at step 8"):
        launch(failed, storage_path=tmp_path / "ray")
    moved = failed.model_copy(deep=True)
    moved.data.uri = str(tmp_path / "another-dataset")  # nor is it "finished" for another dataset
    with pytest.raises(TrainingError, match=r"finished as another run \(data.uri was"):
        launch(moved, storage_path=tmp_path / "ray")


def test_resume_at_another_world_size_continues_the_data_and_schedule(
    ray_local: None, tiny_t2v: Path, packed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped at step 6 with 2 workers, resumed with 1: the optimizer state is loaded (no error,
    step counts go on), every clip of the epoch is still seen once, and the LR schedule continues."""
    cfg = _resume_config(
        tiny_t2v,
        packed,
        tmp_path / "out",
        "resize",
        **{"train.workers.max_failures": 0, "optim.epochs": 3, "optim.max_steps": None, "train.checkpoint_every": 2},
    )
    one = _stopped_at_step_3_then_resumed_alone(cfg, tmp_path, monkeypatch)
    history = _history(one)
    sizes = [(h["step"], h["world_size"]) for h in history]
    # 3 epochs of 4 clips: 2 steps an epoch at 2 workers (2 done before the kill at step 3, the
    # checkpoint at 2), then 4 steps an epoch at 1 worker: 2 + 4 + 4 = 10 steps
    assert sizes == [(1, 2), (2, 2)] + [(s, 1) for s in range(3, 11)]
    # the LR after step s follows warm-up, then the cosine over the data seen: 2 clips a step at 2
    # workers, then 1 a step at 1 worker; no jump at the resize, zero at the end of epoch 3
    progress = [0.5 / 3, 1 / 3] + [(1 + k / 4) / 3 for k in range(1, 5)] + [(2 + k / 4) / 3 for k in range(1, 5)]
    expected = [1e-3 * lr_factor(s, 3, p, "cosine") for s, p in zip(range(1, 11), progress, strict=True)]
    assert [h["learning_rate"] for h in history] == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert [h["epoch"] for h in history] == [0, 1, 1, 1, 1, 2, 2, 2, 2, 3]  # the reader moves on at the last batch
    progress_file = RunFiles(one).read_progress()
    assert progress_file is not None and progress_file["phase"] == "finished" and progress_file["epoch"] == 3


def test_bad_cache_entry_fails_the_run_with_its_name(
    ray_local: None, tiny_t2v: Path, packed: Path, tmp_path: Path
) -> None:
    cfg = train_config(tiny_t2v, packed, tmp_path / "out", **{"optim.max_steps": 2, "train.workers.max_failures": 0})
    assert build_cache(cfg, tiny_t2v) == 4
    entry = next((packed / "cache").rglob("*.safetensors"))
    entry.write_bytes(b"not a safetensors file")
    with pytest.raises(TrainingError, match=rf"{entry.name} of clip \d+ is corrupt"):
        launch(cfg, storage_path=tmp_path / "ray")


def test_image_to_video_trains_the_same_from_the_cache_as_encoding_every_step(
    ray_local: None, tiny_i2v: Path, packed: Path, tmp_path: Path
) -> None:
    """I2V LoRA on 2 workers, once encoding every clip at every step (the reference trainers' way)
    and once from the latent cache: the same losses, and a validation video from an image."""
    from PIL import Image

    image = tmp_path / "first-frame.png"
    Image.new("RGB", (96, 64), (200, 120, 40)).save(image)
    common = {
        "model.variant": "i2v",
        "train.image_noise": False,  # fresh noise every step vs. cached draws: not comparable step for step
        "optim.max_steps": 2,
        "train.report_every": 1,
        "validation.prompts": ["A chubby grey cartoon rabbit."],
        "validation.images": [str(image)],
        "validation.steps": 2,
    }
    direct = train_config(tiny_i2v, packed, tmp_path / "out", name="direct", **{**common, "train.use_cache": False})
    launch(direct, storage_path=tmp_path / "ray")
    assert not (packed / "cache").exists()
    cached = train_config(tiny_i2v, packed, tmp_path / "out", name="cached", **common)
    launch(cached, storage_path=tmp_path / "ray")
    assert len(list((packed / "cache").rglob("*.safetensors"))) == 4
    a = [h["loss"] for h in _history(direct)]
    b = [h["loss"] for h in _history(cached)]
    assert len(a) == 2 and a == pytest.approx(b, rel=1e-5)
    video = tmp_path / "out" / "cached" / "validation" / "step-000000002" / "video-00.mp4"
    with av.open(str(video)) as c:
        assert len(list(c.decode(video=0))) == 17


def test_cogvideox_1_5_image_to_video_trains_resumes_and_evaluates(
    ray_local: None, packed: Path, tmp_path: Path, tiny_clip_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tiny CogVideoX 1.5 I2V (time patched by 2, RoPE, `ofs`, inverted image scaling) with the
    references' image noise from the cache: a worker killed after step 3 (checkpoint at 2) resumes
    to the uninterrupted run's losses; the LoRA is then evaluated with an image per prompt."""
    from PIL import Image

    from disney_train.model.tiny import write_tiny_model

    model = write_tiny_model(tmp_path / "tiny-15-i2v", "i2v", generation="1.5")
    image = tmp_path / "first-frame.png"
    Image.new("RGB", (96, 64), (200, 120, 40)).save(image)
    common = {"model.variant": "i2v", "optim.max_steps": 4, "train.checkpoint_every": 2, "train.report_every": 1}
    killed = _killed_after_step_3_resumes_exactly(model, packed, tmp_path, monkeypatch, common)
    results = _evaluate(killed, tiny_clip_dir, image)
    assert results.variant == "i2v" and results.prompts[0].image == str(image) and results.all_finite()


def _final_lora_changes_the_wan_pipeline(cfg: RunConfig, model: Path, task: str, part: str = "transformer") -> None:
    """The run's final LoRA, as saved, loads with the diffusers Wan pipeline's `load_lora_weights` (Wan 2.2's
    low-noise expert: with `load_into_transformer_2`, as diffusers documents it) and changes what that
    transformer computes, and only that one."""
    from diffusers import WanImageToVideoPipeline, WanPipeline

    pipe = (WanImageToVideoPipeline if task == "i2v" else WanPipeline).from_pretrained(str(model))
    g = torch.Generator().manual_seed(0)
    cfg_t = pipe.transformer.config
    x = torch.randn((1, cfg_t.in_channels, 2, 4, 4), generator=g)
    kwargs: dict[str, Any] = {
        "hidden_states": x,
        "timestep": torch.tensor([500]),
        "encoder_hidden_states": torch.randn((1, 512, cfg_t.text_dim), generator=g),
    }
    if cfg_t.image_dim:
        kwargs["encoder_hidden_states_image"] = torch.randn((1, 5, cfg_t.image_dim), generator=g)
    parts = [p for p in ("transformer", "transformer_2") if getattr(pipe, p, None) is not None]
    before = {p: getattr(pipe, p)(**kwargs, return_dict=False)[0] for p in parts}
    into = {"load_into_transformer_2": True} if part == "transformer_2" else {}
    pipe.load_lora_weights(str(Path(cfg.output.uri) / cfg.name / "final"), **into)
    assert pipe.get_list_adapters() == {part: ["default_0"]}
    after = {p: getattr(pipe, p)(**kwargs, return_dict=False)[0] for p in parts}
    for p in parts:
        assert torch.allclose(before[p], after[p]) == (p != part), p


def _evaluate(cfg: RunConfig, clip: Path, image: Path | None) -> Any:
    from typer.testing import CliRunner

    from disney_train.cli import app
    from disney_train.eval.results import EvalResults

    run = json.loads(json.dumps(cfg.model_dump(mode="json", exclude_none=True)))
    run["evaluation"] = {
        "prompts": ["A grey rabbit hops across a meadow."],
        "images": [str(image)] if image else [],
        "clip_uri": str(clip),
        "seeds": 1,
        "steps": 2,
        "num_frames": 9,
        "reference_clips": 2,
        "reference_frames": 4,
    }
    config = Path(cfg.output.uri) / f"{cfg.name}-eval.yaml"
    config.write_text(json.dumps(run))
    result = CliRunner().invoke(app, ["eval", "--device", "cpu", "--config", str(config)])
    assert result.exit_code == 0, result.output
    return EvalResults.model_validate_json((Path(cfg.output.uri) / cfg.name / "eval" / "eval.json").read_text())


def test_wan_text_to_video_trains_resumes_exactly_and_evaluates(
    ray_local: None,
    packed: Path,
    tmp_path: Path,
    tiny_wan_t2v: Path,
    tiny_clip_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A tiny Wan 2.1 T2V (flow matching, UMT5 at 512 tokens, normalised latents) on 2 workers: a worker
    killed after step 3 (checkpoint at 2) resumes to the uninterrupted run's losses, step for step; the
    final LoRA loads into diffusers' WanPipeline; the evaluation renders with it."""
    common = {"model.family": "wan", "optim.max_steps": 4, "train.checkpoint_every": 2, "train.report_every": 1}
    killed = _killed_after_step_3_resumes_exactly(tiny_wan_t2v, packed, tmp_path, monkeypatch, common)
    assert all(0.1 < h["loss"] < 10 for h in _history(killed))  # flow matching on unit-variance latents: ~2
    _final_lora_changes_the_wan_pipeline(killed, tiny_wan_t2v, "t2v")
    results = _evaluate(killed, tiny_clip_dir, None)
    assert results.variant == "t2v" and results.all_finite()


def _wan_i2v_stopped_then_resumed_alone(
    model: Path, packed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, **settings: Any
) -> tuple[RunConfig, Path]:
    """A Wan image-to-video run of 5 steps (checkpoint every 2) stopped at step 3 with 2 workers and resumed
    with 1: the steps and the data go on at the new size, every loss finite. Returns the resumed run's
    configuration and a conditioning image for its evaluation."""
    from PIL import Image

    image = tmp_path / "first-frame.png"
    Image.new("RGB", (96, 64), (200, 120, 40)).save(image)
    common = {"optim.max_steps": 5, "train.checkpoint_every": 2, "train.report_every": 1}
    cfg = train_config(
        model,
        packed,
        tmp_path / "out",
        name=name,
        **{"model.family": "wan", "model.variant": "i2v", "train.workers.max_failures": 0, **common, **settings},
    )
    one = _stopped_at_step_3_then_resumed_alone(cfg, tmp_path, monkeypatch)
    history = _history(one)
    assert [(h["step"], h["world_size"]) for h in history] == [(1, 2), (2, 2), (3, 1), (4, 1), (5, 1)]
    assert all(math.isfinite(h["loss"]) for h in history)
    return one, image


def test_wan_image_to_video_resumes_at_another_world_size_and_evaluates(
    ray_local: None,
    packed: Path,
    tmp_path: Path,
    tiny_wan_i2v: Path,
    tiny_clip_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A tiny Wan 2.1 I2V (mask and first-frame latents on channels, CLIP image embedding) stopped at step
    3 with 2 workers (checkpoint at 2) and resumed with 1: the steps and the data go on at the new size;
    the LoRA loads into diffusers' WanImageToVideoPipeline; the evaluation renders from an image."""
    one, image = _wan_i2v_stopped_then_resumed_alone(tiny_wan_i2v, packed, tmp_path, monkeypatch, "resized")
    entries = list((packed / "cache").rglob("*.safetensors"))
    assert entries  # trained from the cache: each entry holds the condition and the CLIP embedding
    from safetensors.torch import load_file

    keys = {k for e in entries for k in load_file(str(e))}
    assert {"latent_dist", "prompt_embeds", "condition_dist", "image_embeds"} <= keys
    _final_lora_changes_the_wan_pipeline(one, tiny_wan_i2v, "i2v")
    results = _evaluate(one, tiny_clip_dir, image)
    assert results.variant == "i2v" and results.prompts[0].image == str(image) and results.all_finite()


def test_wan_2_2_low_noise_expert_resumes_at_another_world_size_and_evaluates(
    ray_local: None,
    packed: Path,
    tmp_path: Path,
    tiny_clip_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A tiny Wan 2.2 I2V-A14B (two experts, no CLIP) training its low-noise expert (`transformer_2`, the
    timesteps below boundary_ratio x 1000) stopped at step 3 with 2 workers and resumed with 1; its LoRA
    loads into the pipeline's transformer_2 (`load_into_transformer_2`) and the evaluation renders with
    both experts, the LoRA on the low-noise one."""
    from safetensors.torch import load_file

    from disney_train.model.tiny_wan import write_tiny_wan

    model = write_tiny_wan(tmp_path / "tiny-wan22-i2v", "i2v", experts=2)
    settings = {"model.expert": "low"}
    one, image = _wan_i2v_stopped_then_resumed_alone(model, packed, tmp_path, monkeypatch, "low-noise", **settings)
    keys = {k for e in (packed / "cache").rglob("*.safetensors") for k in load_file(str(e))}
    assert keys == {"latent_dist", "prompt_embeds", "condition_dist"}  # Wan 2.2 I2V: no CLIP embedding
    _final_lora_changes_the_wan_pipeline(one, model, "i2v", part="transformer_2")
    results = _evaluate(one, tiny_clip_dir, image)
    assert results.variant == "i2v" and results.all_finite()


def test_wan_2_2_ti2v_image_to_video_resumes_at_another_world_size_and_evaluates(
    ray_local: None,
    packed: Path,
    tmp_path: Path,
    tiny_clip_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A tiny Wan 2.2 TI2V-5B (48-channel VAE, per-token timesteps, the image's latents as the first
    frame) trained as image-to-video, stopped at step 3 with 2 workers and resumed with 1; its LoRA loads
    into the pipeline's transformer and the evaluation renders from an image with WanImageToVideoPipeline."""
    from safetensors.torch import load_file

    from disney_train.model.tiny_wan import write_tiny_wan

    model = write_tiny_wan(tmp_path / "tiny-ti2v", ti2v=True)
    one, image = _wan_i2v_stopped_then_resumed_alone(model, packed, tmp_path, monkeypatch, "ti2v")
    entry = load_file(str(next((packed / "cache").rglob("*.safetensors"))))
    assert entry["condition_dist"].shape[:2] == (1, 96)  # the image alone: one latent frame, 2 x 48 channels
    _final_lora_changes_the_wan_pipeline(one, model, "i2v")
    results = _evaluate(one, tiny_clip_dir, image)
    assert results.variant == "i2v" and results.prompts[0].image == str(image) and results.all_finite()
