"""The plain single-process loop the engine is measured against (`bench/engine_vs_loop.py`).

What the single-script trainers do (diffusers' `train_cogvideox_lora.py`): decode and VAE-encode every clip
once into memory, encode the prompts, then train the LoRA with torch's AdamW in one process: no Ray, no
DeepSpeed, no cache files, no checkpoints, no metrics. The step is the engine's own (`diffusion_loss` on
the same batch layout, the same per-step generator), so the two differ only in what surrounds it.

    python bench/plain_loop.py MODEL DATA FRAMES HEIGHT WIDTH STEPS THREADS OUT.json [WRAPPER]

WRAPPER (default `adamw`): `zero0` or `zero2` wrap the same step in the engine's DeepSpeed configuration
(`deepspeed_config`, ZeRO stage 0 or 2, world size 1 on gloo) in this one process: what the DeepSpeed
wrapper costs a step, without Ray.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from disney_train.config import RunConfig  # noqa: E402
from disney_train.model.lora import add_lora  # noqa: E402
from disney_train.model.spec import spec_for  # noqa: E402
from disney_train.train.objective import diffusion_loss, step_generator  # noqa: E402


class Step:
    """One optimizer step of the LoRA on a batch of cached-entry layout: torch's AdamW (and the gradient
    clipping the engine's config asks for), or the engine's DeepSpeed wrapper (`zero0`, `zero2`)."""

    def __init__(self, model: Path, cfg: RunConfig, wrapper: str = "adamw") -> None:
        from disney_train.model.load import load_transformer

        self.transformer = load_transformer(model)
        if cfg.train.gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()
        torch.manual_seed(cfg.seed)
        self.params = [p for _, p in add_lora(self.transformer, cfg.lora)]
        self.spec = spec_for(model, "t2v")
        self.clip = cfg.optim.max_grad_norm
        self.engine = None if wrapper == "adamw" else _deepspeed(self.transformer, self.params, cfg, wrapper)
        self.opt = torch.optim.AdamW(self.params, lr=cfg.optim.learning_rate)
        self.seed, self.n = cfg.seed, 0

    def __call__(self, batch: dict[str, Any]) -> float:
        gen = step_generator(self.seed, self.n, 0, 0)
        model = self.engine or self.transformer
        loss = diffusion_loss(model, self.spec, batch, gen, torch.device("cpu"), torch.float32)
        if self.engine is not None:
            self.engine.backward(loss)
            self.engine.step()
        else:
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(self.params, self.clip)
            self.opt.step()
            self.opt.zero_grad()
        self.n += 1
        return float(loss.detach())


def _deepspeed(model: torch.nn.Module, params: list[torch.nn.Parameter], cfg: RunConfig, wrapper: str) -> Any:
    """The engine's DeepSpeed setup (as `worker.train_loop` makes it) at world size 1, in this process."""
    from disney_train.train.engine import deepspeed_config
    from tests.support.single_process import CPU, engine, init_single_process

    init_single_process()
    conf = deepspeed_config(cfg, CPU)
    conf["zero_optimization"]["stage"] = int(wrapper.removeprefix("zero"))
    return engine(model, params, conf)


def real_shape_dataset(tmp: Path, prompts: list[str]) -> Path:
    """The whole sample source video (132 frames, 1280x720) as one clip per prompt, packed under `tmp` for
    the real training shape (49 frames)."""
    import av

    from disney_train.data.pack import PackOptions, pack
    from disney_train.data.sample import source_video
    from disney_train.media import encode_clip

    src = tmp / "src-real"
    (src / "videos").mkdir(parents=True)
    with av.open(str(source_video())) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    for i in range(len(prompts)):
        encode_clip(frames, src / "videos" / f"clip-{i}.mp4", 25)
    (src / "videos.txt").write_text("".join(f"videos/clip-{i}.mp4\n" for i in range(len(prompts))))
    (src / "prompt.txt").write_text("".join(p + "\n" for p in prompts))
    out = tmp / "packed-real"
    pack(src, str(out), PackOptions(min_frames=49, shard_bytes=64 * 1024 * 1024), None, None)
    return out


def encode_all(model: Path, cfg: RunConfig) -> list[dict[str, Any]]:
    """Every clip decoded and encoded once, kept in memory (the encoders are freed after)."""
    from disney_train.data.pack import load_manifest
    from disney_train.data.reader import ClipDataset
    from disney_train.model.encode import encode_prompts, encode_video_dist
    from disney_train.model.load import load_encoders
    from disney_train.storage import open_store

    vae, te, tok = (load_encoders(model)[k] for k in ("vae", "text_encoder", "tokenizer"))
    clips = ClipDataset(
        open_store(cfg.data.uri), load_manifest(cfg.data.uri), cfg.data, seed=cfg.seed, epoch=0, with_image=False
    )
    batches = []
    for i in range(len(clips)):
        clip = clips[i]
        batches.append(
            {
                "latent_dist": encode_video_dist(vae, clip["video"][None]),
                "prompt_embeds": encode_prompts(tok, te, [clip["prompt"]], 226, "cpu"),
                "key": [clip["key"]],
            }
        )
    return batches


def main(
    model: Path, data: str, frames: int, height: int, width: int, steps: int, threads: int, wrapper: str = "adamw"
) -> dict[str, Any]:
    from tests.support.training import train_config

    torch.set_num_threads(threads)
    cfg = train_config(model, data, "unused", **{"data.num_frames": frames, "data.height": height, "data.width": width})
    t0 = time.perf_counter()
    batches = encode_all(model, cfg)
    encode_s = time.perf_counter() - t0
    step = Step(model, cfg, wrapper)
    times = []
    for i in range(steps):
        t = time.perf_counter()
        step(batches[i % len(batches)])
        times.append(time.perf_counter() - t)
    warm = times[len(times) // 4 :] if len(times) > 3 else times[1:]
    return {"encode_s": encode_s, "step_s": times, "steady_step_s": statistics.median(warm), "clips": len(batches)}


if __name__ == "__main__":
    m, d, f, h, w, n, th, out, *wrap = sys.argv[1:]
    result = main(Path(m), d, int(f), int(h), int(w), int(n), int(th), *wrap)
    Path(out).write_text(json.dumps(result))
