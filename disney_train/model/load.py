"""Loading a CogVideoX model's components from a local folder in the diffusers layout."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the types only: diffusers, transformers and torch load when a component does
    import torch
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDPMScheduler, CogVideoXTransformer3DModel
    from transformers import PreTrainedTokenizerBase, T5EncoderModel


def component_config(path: Path, part: str) -> dict[str, Any]:
    """A component's config.json (transformer, vae, …) without loading its weights."""
    import json

    config: dict[str, Any] = json.loads((path / part / "config.json").read_text())
    return config


def max_text_length(path: Path) -> int:
    """The T5 sequence length the transformer was trained with (226 for CogVideoX)."""
    return int(component_config(path, "transformer")["max_text_seq_length"])


def load_transformer(
    path: Path, dtype: torch.dtype | None = None, device: torch.device | str = "cpu"
) -> CogVideoXTransformer3DModel:
    import torch
    from diffusers import CogVideoXTransformer3DModel

    return CogVideoXTransformer3DModel.from_pretrained(
        str(path), subfolder="transformer", torch_dtype=dtype or torch.float32
    ).to(device)


def load_scheduler(path: Path) -> CogVideoXDPMScheduler:
    from diffusers import CogVideoXDPMScheduler

    return CogVideoXDPMScheduler.from_pretrained(str(path), subfolder="scheduler")


def load_encoders(
    path: Path, dtype: torch.dtype | None = None, device: torch.device | str = "cpu"
) -> tuple[AutoencoderKLCogVideoX, T5EncoderModel, PreTrainedTokenizerBase]:
    """(vae, text_encoder, tokenizer): the frozen parts the cache stage and generation run."""
    import torch
    from diffusers import AutoencoderKLCogVideoX
    from transformers import AutoTokenizer, T5EncoderModel

    dtype = dtype or torch.float32
    s = str(path)
    vae = AutoencoderKLCogVideoX.from_pretrained(s, subfolder="vae", torch_dtype=dtype).to(device)
    text_encoder = T5EncoderModel.from_pretrained(s, subfolder="text_encoder", torch_dtype=dtype).to(device)
    tokenizer = AutoTokenizer.from_pretrained(s, subfolder="tokenizer")
    vae.requires_grad_(False)
    text_encoder.requires_grad_(False)
    return vae, text_encoder, tokenizer
