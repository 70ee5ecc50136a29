"""Loading a CogVideoX model's components from a local folder in the diffusers layout."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from disney_train.model.source import check_layout


@dataclass
class CogVideoXComponents:
    transformer: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any
    variant: Literal["t2v", "i2v"]
    path: Path


def model_variant(path: Path) -> Literal["t2v", "i2v"]:
    """Image-to-video transformers take the image latents on extra channels."""
    import json

    t = json.loads((path / "transformer" / "config.json").read_text())
    v = json.loads((path / "vae" / "config.json").read_text())
    return "i2v" if int(t["in_channels"]) == 2 * int(v["latent_channels"]) else "t2v"


def load_components(
    path: Path, variant: Literal["t2v", "i2v"], dtype: Any = None, device: str = "cpu"
) -> CogVideoXComponents:
    import torch
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDPMScheduler, CogVideoXTransformer3DModel
    from transformers import AutoTokenizer, T5EncoderModel

    from disney_train.model.source import ModelError

    check_layout(path)
    found = model_variant(path)
    if found != variant:
        raise ModelError(
            f"{path}: this is a {'image' if found == 'i2v' else 'text'}-to-video model "
            f"(transformer in_channels vs vae latent_channels), but model.variant is {variant!r}"
        )
    dtype = dtype or torch.float32
    s = str(path)
    return CogVideoXComponents(
        transformer=CogVideoXTransformer3DModel.from_pretrained(s, subfolder="transformer", torch_dtype=dtype).to(
            device
        ),
        vae=AutoencoderKLCogVideoX.from_pretrained(s, subfolder="vae", torch_dtype=dtype).to(device),
        text_encoder=T5EncoderModel.from_pretrained(s, subfolder="text_encoder", torch_dtype=dtype).to(device),
        tokenizer=AutoTokenizer.from_pretrained(s, subfolder="tokenizer"),
        scheduler=CogVideoXDPMScheduler.from_pretrained(s, subfolder="scheduler"),
        variant=variant,
        path=path,
    )
