"""Loading a model's components from a local folder in the diffusers layout.

The folder's `model_index.json` names each component's library and class, as diffusers'
`DiffusionPipeline.from_pretrained` reads it; here only the classes of the families this platform
trains are accepted (a model folder is tenant input: it never picks an arbitrary class to import).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from disney_train.errors import UserError

if TYPE_CHECKING:  # the types only: diffusers, transformers and torch load when a component does
    import torch

# (library, class) of each component of the pipelines this platform trains and renders
KNOWN_CLASSES: dict[str, set[tuple[str, str]]] = {
    "transformer": {("diffusers", "CogVideoXTransformer3DModel"), ("diffusers", "WanTransformer3DModel")},
    "transformer_2": {("diffusers", "WanTransformer3DModel")},
    "vae": {("diffusers", "AutoencoderKLCogVideoX"), ("diffusers", "AutoencoderKLWan")},
    "text_encoder": {("transformers", "T5EncoderModel"), ("transformers", "UMT5EncoderModel")},
    "image_encoder": {("transformers", "CLIPVisionModel"), ("transformers", "CLIPVisionModelWithProjection")},
    "image_processor": {("transformers", "CLIPImageProcessor"), ("transformers", "CLIPImageProcessorPil")},
}


class ComponentError(UserError, ValueError):
    """A component's class in model_index.json is missing or not one this platform loads."""


def model_index(path: Path) -> dict[str, Any]:
    import json

    index: dict[str, Any] = json.loads((path / "model_index.json").read_text())
    return index


def component_config(path: Path, part: str) -> dict[str, Any]:
    """A component's config.json (transformer, vae, …) without loading its weights."""
    import json

    config: dict[str, Any] = json.loads((path / part / "config.json").read_text())
    return config


def has_component(path: Path, part: str) -> bool:
    """Does the pipeline in `path` have `part` (model_index.json names it with a class, not null)?"""
    entry = model_index(path).get(part)
    return isinstance(entry, list) and len(entry) == 2 and entry[1] is not None


def component_class(path: Path, part: str) -> Any:
    """The class model_index.json names for `part`, if it is one of KNOWN_CLASSES."""
    import importlib

    entry = model_index(path).get(part)
    if not (isinstance(entry, list) and len(entry) == 2 and tuple(entry) in KNOWN_CLASSES.get(part, set())):
        known = ", ".join(sorted(c for _, c in KNOWN_CLASSES.get(part, set())))
        raise ComponentError(f"{path / 'model_index.json'}: {part} is {entry!r}; expected one of: {known}")
    return getattr(importlib.import_module(entry[0]), entry[1])


def load_transformer(
    path: Path, dtype: torch.dtype | None = None, device: torch.device | str = "cpu", part: str = "transformer"
) -> Any:
    """The diffusion transformer (`part`: Wan 2.2's second expert is `transformer_2`)."""
    import torch

    cls = component_class(path, part)
    return cls.from_pretrained(str(path), subfolder=part, torch_dtype=dtype or torch.float32).to(device)


def scheduler_config(path: Path) -> dict[str, Any]:
    """The scheduler's config (its `_class_name` among it), without loading it; {} when there is none."""
    import json

    config = path / "scheduler" / "scheduler_config.json"
    loaded = json.loads(config.read_text()) if config.is_file() else {}
    return loaded if isinstance(loaded, dict) else {}


def load_scheduler(path: Path) -> Any:
    """The model folder's scheduler, by the class its config names (a diffusers scheduler; which ones a
    family accepts is its specification's `refusal`)."""
    import diffusers

    name = scheduler_config(path).get("_class_name")
    if not isinstance(name, str) or not name.endswith("Scheduler") or not hasattr(diffusers, name):
        raise ComponentError(f"{path / 'scheduler'}: _class_name {name!r} is not a diffusers scheduler")
    try:
        return getattr(diffusers, name).from_pretrained(str(path), subfolder="scheduler")
    except ImportError as err:  # a scheduler whose optional dependency is not installed
        raise ComponentError(f"{path / 'scheduler'}: {name} cannot be loaded here: {err}") from None


def load_encoders(
    path: Path, dtype: torch.dtype | None = None, device: torch.device | str = "cpu", fp32: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """The frozen parts the cache stage and generation run: vae, text_encoder, tokenizer, and where the
    pipeline has them (Wan 2.1 I2V) image_encoder and image_processor; those named in `fp32` in fp32."""
    import torch
    from transformers import AutoTokenizer

    s = str(path)

    def load(part: str) -> Any:
        kind = torch.float32 if part in fp32 else dtype or torch.float32
        return component_class(path, part).from_pretrained(s, subfolder=part, torch_dtype=kind).to(device)

    parts: dict[str, Any] = {
        "vae": load("vae"),
        "text_encoder": load("text_encoder"),
        "tokenizer": AutoTokenizer.from_pretrained(s, subfolder="tokenizer"),
    }
    if has_component(path, "image_encoder"):
        parts["image_encoder"] = load("image_encoder")
        parts["image_processor"] = component_class(path, "image_processor").from_pretrained(
            s, subfolder="image_processor"
        )
    for name in ("vae", "text_encoder", "image_encoder"):
        if name in parts:
            parts[name].requires_grad_(False)
    return parts
