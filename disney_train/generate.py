"""Rendering videos with the base model and LoRAs: `disney-train generate`, and the validation videos
of a training run (the same code).

A fresh pipeline is loaded from the model folder and each LoRA file is applied with diffusers' own
`load_lora_weights`, exactly as a user of the published LoRA would; so a validation video also proves
that the saved LoRA loads. It works at every ZeRO stage (the training copy of the transformer may be
partitioned across workers) and leaves the training state untouched.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from disney_train.errors import UserError

if TYPE_CHECKING:
    from disney_train.model.base import ModelSpec


@dataclass(frozen=True)
class RenderSpec:
    prompts: list[str]
    images: list[bytes]  # i2v: one encoded image per prompt
    num_frames: int
    height: int
    width: int
    fps: float
    steps: int
    guidance_scale: float
    seed: int


def pick_device(requested: str) -> tuple[str, Any]:
    """(device, dtype) for rendering: `auto` is CUDA when torch sees a GPU; CUDA renders in bf16, the CPU
    in fp32 (bf16 on CPU is slow)."""
    import torch

    device = ("cuda" if torch.cuda.is_available() else "cpu") if requested == "auto" else requested
    return device, torch.bfloat16 if device == "cuda" else torch.float32


def load_pipeline(model_path: Path, model: ModelSpec, device: str, dtype: Any) -> Any:
    """The model's diffusers pipeline, with the model folder's own scheduler: what a user of the
    published LoRA gets from `from_pretrained` (the reference scripts switch validation to
    CogVideoXDPMScheduler; the videos here show what the LoRA does with the model as shipped)."""
    import torch

    pipe = model.pipeline_class().from_pretrained(str(model_path), torch_dtype=dtype)
    for part in model.fp32_parts:  # as the family's references run them (Wan: the VAE and the CLIP encoder)
        if getattr(pipe, part, None) is not None:
            getattr(pipe, part).to(torch.float32)
    if device == "cuda":
        pipe.enable_model_cpu_offload()  # beside a training worker's memory
        pipe.vae.enable_tiling()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def apply_lora(pipe: Any, lora_file: bytes, scale: float = 1.0) -> None:
    apply_loras(pipe, [(lora_file, scale)])


def apply_loras(pipe: Any, loras: list[tuple[bytes, float]]) -> None:
    """Each LoRA file (its bytes) as its own adapter, all active with their scales; a LoRA of Wan 2.2's
    low-noise expert into `transformer_2` (`load_into_transformer_2`, as diffusers documents it)."""
    from disney_train.model.lora import LoraFileError, lora_part
    from disney_train.runs import LORA_FILE

    names = []
    for i, (data, _) in enumerate(loras):
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / LORA_FILE).write_bytes(data)
            try:
                part = lora_part(Path(tmp) / LORA_FILE)
            except LoraFileError as err:
                raise GenerateError(f"LoRA {i + 1}: {err}") from None
            if part != "transformer" and getattr(pipe, part, None) is None:
                raise GenerateError(f"LoRA {i + 1} is for the model's {part} (a Wan 2.2 expert); this model has none")
            into = {"load_into_transformer_2": True} if part == "transformer_2" else {}
            pipe.load_lora_weights(tmp, adapter_name=f"lora{i}", **into)
        names.append(f"lora{i}")
    if names:
        pipe.set_adapters(names, [scale for _, scale in loras])


def render(pipe: Any, spec: RenderSpec, model: ModelSpec) -> list[np.ndarray]:
    """One uint8 video [F, H, W, 3] per prompt, each from the generator seeded by (seed, index)."""
    import torch

    videos = []
    for i, prompt in enumerate(spec.prompts):
        kwargs: dict[str, Any] = {
            "prompt": prompt,
            "num_frames": spec.num_frames,
            "height": spec.height,
            "width": spec.width,
            "num_inference_steps": spec.steps,
            "guidance_scale": spec.guidance_scale,
            "generator": torch.Generator().manual_seed(spec.seed + i),
            "output_type": "np",
        }
        kwargs.update(model.render_inputs(spec.images[i] if spec.images else None))
        frames = pipe(**kwargs).frames[0]  # float [F, H, W, 3] in [0, 1]
        videos.append((np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))
    return videos


# --------------------------------------------------------------------------- disney-train generate
class GenerateError(UserError, ValueError):
    """Bad input to `generate`: the message names the option, file or value."""


@dataclass(frozen=True)
class LoraRef:
    uri: str  # a .safetensors file, or a folder/prefix holding one (a run's prefix: its final/ LoRA)
    scale: float = 1.0

    @staticmethod
    def parse(text: str) -> LoraRef:
        """`URI` or `URI@SCALE` (e.g. s3://runs/disney-2b@0.8)."""
        uri, sep, scale = text.rpartition("@")
        if not sep:
            return LoraRef(text)
        try:
            return LoraRef(uri, float(scale))
        except ValueError:
            raise GenerateError(f"--lora {text!r}: the scale after '@' is not a number") from None


def lora_file(ref: LoraRef, s3: Any = None) -> bytes:
    """The LoRA file's bytes: the URI itself when it names a .safetensors file, else the file in that
    folder or prefix, or in its final/ (a training run's output)."""
    from disney_train.runs import LORA_FILE
    from disney_train.storage import StorageError, read_uri

    base = ref.uri.rstrip("/")
    tried = [base] if base.endswith(".safetensors") else [f"{base}/{LORA_FILE}", f"{base}/final/{LORA_FILE}"]
    for uri in tried:
        try:
            return read_uri(uri, s3)
        except StorageError:  # local and S3 stores both say 'not there' this way
            continue
    raise GenerateError(f"--lora {ref.uri}: no LoRA file at {' or '.join(tried)}")


def read_prompts(path: Path) -> list[str]:
    """One prompt per line (blank lines skipped), UTF-8."""
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as err:
        raise GenerateError(f"--prompts {path}: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        raise GenerateError(f"--prompts {path}: not UTF-8 (byte {err.start})") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise GenerateError(f"--prompts {path}: no prompts in the file")
    return prompts


@dataclass(frozen=True)
class GenerateRequest:
    model: str
    out: str
    prompts: list[str]
    images: list[str]  # i2v: one per prompt, or one for all (local paths or s3:// URIs)
    loras: list[LoraRef]
    num_frames: int = 49
    height: int = 480
    width: int = 720
    fps: float = 8.0
    steps: int = 50
    guidance_scale: float = 6.0
    seed: int = 42
    device: str = "auto"

    def check(self) -> None:
        if not self.prompts:
            raise GenerateError("no prompt: give --prompt (repeatable) or --prompts FILE")
        if self.num_frames < 1 or (self.num_frames - 1) % 4:
            raise GenerateError(f"--frames {self.num_frames}: 4N+1 frames (Wan: 5, 9, ..., 81; CogVideoX: 8N+1)")
        for name, v in (("--height", self.height), ("--width", self.width)):
            if v < 16 or v % 16:
                raise GenerateError(f"{name} {v}: a positive multiple of 16")
        if self.steps < 1 or self.fps <= 0:
            raise GenerateError("--steps and --fps must be positive")
        if self.device not in ("auto", "cpu", "cuda"):
            raise GenerateError(f"--device {self.device!r}: auto, cpu or cuda")


def generate(req: GenerateRequest, s3: Any = None) -> list[str]:
    """Render every prompt with the base model and the LoRAs; write `video-NN.mp4` and `generate.json`
    (what was asked, for each video its prompt and seed) to `req.out` (a folder or an s3:// prefix).
    Returns the videos' URIs."""
    import json

    from disney_train.media import mp4_bytes
    from disney_train.model.source import resolve_model
    from disney_train.model.spec import model_task, spec_for
    from disney_train.storage import open_store, read_uri

    req.check()
    model_path = resolve_model(req.model, s3)
    model = spec_for(model_path, model_task(model_path, with_images=bool(req.images)))
    if (req.num_frames - 1) % model.frame_multiple:
        m = model.frame_multiple
        raise GenerateError(f"--frames {req.num_frames}: {req.model} is a {model.family} model: {m}N+1 frames")
    for name, size in (("--height", req.height), ("--width", req.width)):
        if size % model.size_multiple:
            raise GenerateError(
                f"{name} {size}: {req.model} is a {model.name} model: multiples of {model.size_multiple}"
            )
    refusal = model.check_render_images(len(req.images), len(req.prompts))
    if refusal is not None:
        raise GenerateError(f"--image: {req.model}: {refusal}")
    images = [read_uri(u, s3) for u in req.images]
    if len(images) == 1:
        images = images * len(req.prompts)
    loras = [(lora_file(ref, s3), ref.scale) for ref in req.loras]
    device, dtype = pick_device(req.device)
    pipe = load_pipeline(model_path, model, device, dtype)
    apply_loras(pipe, loras)
    spec = RenderSpec(
        prompts=req.prompts,
        images=images,
        num_frames=req.num_frames,
        height=req.height,
        width=req.width,
        fps=req.fps,
        steps=req.steps,
        guidance_scale=req.guidance_scale,
        seed=req.seed,
    )
    store = open_store(req.out, s3)
    names = []
    for i, frames in enumerate(render(pipe, spec, model)):
        names.append(f"video-{i:02d}.mp4")
        store.write_bytes(names[-1], mp4_bytes(frames, req.fps))
    record = {
        "model": req.model,
        "variant": model.task,
        "model_spec": model.name,
        "loras": [{"uri": r.uri, "scale": r.scale} for r in req.loras],
        "frames": req.num_frames,
        "height": req.height,
        "width": req.width,
        "fps": req.fps,
        "steps": req.steps,
        "guidance_scale": req.guidance_scale,
        "device": device,
        "videos": [
            {
                "file": n,
                "prompt": p,
                "seed": req.seed + i,
                **({"image": req.images[min(i, len(req.images) - 1)]} if req.images else {}),
            }
            for i, (n, p) in enumerate(zip(names, req.prompts, strict=True))
        ],
    }
    store.write_bytes("generate.json", (json.dumps(record, indent=2) + "\n").encode())
    return [f"{req.out.rstrip('/')}/{n}" for n in names]
