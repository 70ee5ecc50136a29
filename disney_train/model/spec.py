"""The model specifications by family and task, and which one a model folder is.

Each specification (`disney_train.model.base.ModelSpec`) holds everything that differs between the
models the platform trains; the engine asks it and never branches on the family or the task:

- CogVideoX (`disney_train.model.cogvideox`): 1.0 and 1.5, text- and image-to-video.
- Wan (`disney_train.model.wan`): 2.1 text- and image-to-video, and one expert of 2.2 A14B's two.

A model folder says which family it is by its pipeline's class (`model_index.json`'s `_class_name`,
as diffusers reads it) and which task by its transformer's input channels; a run names both
(`model.family`, `model.variant`) and a folder that is not what the run says is refused, naming both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from disney_train.config import RunConfig, TrainOptions
from disney_train.model import load
from disney_train.model.base import Encoders, Family, ImageRecipe, ModelSpec, Task
from disney_train.model.cogvideox import CogVideoXI2V, CogVideoXSpec
from disney_train.model.wan import EXPERT_PART, Expert, WanI2V, WanSpec

SPECS: dict[tuple[Family, Task], type[ModelSpec]] = {
    ("cogvideox", "t2v"): CogVideoXSpec,
    ("cogvideox", "i2v"): CogVideoXI2V,
    ("wan", "t2v"): WanSpec,
    ("wan", "i2v"): WanI2V,
}
# the pipeline classes of model_index.json, by family
PIPELINES: dict[str, Family] = {
    "CogVideoXPipeline": "cogvideox",
    "CogVideoXImageToVideoPipeline": "cogvideox",
    "WanPipeline": "wan",
    "WanImageToVideoPipeline": "wan",
}


def model_kind(path: Path) -> tuple[Family, Task]:
    """Which family and task the model in folder `path` is, from its configs (no weights read)."""
    from disney_train.model.source import ModelError, check_layout

    check_layout(path)
    pipeline = load.model_index(path).get("_class_name")
    family = PIPELINES.get(pipeline) if isinstance(pipeline, str) else None
    if family is None:
        raise ModelError(
            f"{path}/model_index.json: _class_name {pipeline!r} is no pipeline this platform trains "
            f"({', '.join(PIPELINES)})"
        )
    index = load.model_index(path)
    unsupported = unsupported_pipeline(index, family)
    if unsupported:
        raise ModelError(f"{path}/model_index.json: {unsupported}")
    vae = load.component_config(path, "vae")
    tasks = {
        _task(path, part, family, vae) for part in ("transformer", "transformer_2") if load.has_component(path, part)
    }
    if len(tasks) != 1:
        raise ModelError(f"{path}: transformer and transformer_2 are different variants ({', '.join(sorted(tasks))})")
    return family, tasks.pop()


def _task(path: Path, part: str, family: Family, vae: dict[str, Any]) -> Task:
    """The task of the transformer `part` of a `family` model (refusing what the family's specifications
    cannot train)."""
    from disney_train.model.source import ModelError

    transformer = load.component_config(path, part)
    for (fam, task), cls in SPECS.items():
        if fam == family and _fits(cls, transformer, vae):
            refusal = cls.refusal(transformer, load.scheduler_config(path))
            if refusal:
                raise ModelError(f"{path}: {refusal}")
            return task
    raise ModelError(
        f"{path}: {part} in_channels {transformer.get('in_channels')} fits no {family} variant "
        f"(vae {vae.get('latent_channels', vae.get('z_dim'))} latent channels)"
    )


def _fits(cls: type[ModelSpec], transformer: dict[str, Any], vae: dict[str, Any]) -> bool:
    """`cls.fits`, with a config that lacks what the family's configs have (a folder of mixed families) not fitting."""
    try:
        return cls.fits(transformer, vae)
    except (KeyError, TypeError, ValueError):
        return False


def unsupported_pipeline(index: dict[str, Any], family: Family) -> str | None:
    """Why a pipeline of a known class is still not one this platform trains (None: it is): TI2V-5B
    (`expand_timesteps`) would otherwise look like Wan 2.1 and train the wrong objective; two experts
    are Wan 2.2's, both halves of them (`transformer_2` and `boundary_ratio`) or neither."""
    if index.get("expand_timesteps"):
        return "a Wan 2.2 TI2V pipeline (expand_timesteps): not supported yet"
    second = index.get("transformer_2")
    has_second = isinstance(second, list) and len(second) == 2 and second[1] is not None
    ratio = index.get("boundary_ratio")
    if not has_second and ratio is None:
        return None
    if family != "wan":
        return "transformer_2 and boundary_ratio (two experts) are a Wan 2.2 layout, not a cogvideox one"
    if not has_second or not isinstance(ratio, int | float) or not 0 < ratio < 1:
        return (
            f"two experts need transformer_2 and a boundary_ratio in (0, 1); found transformer_2 {second!r}, "
            f"boundary_ratio {ratio!r}"
        )
    return None


def boundary_ratio(path: Path) -> float | None:
    """Wan 2.2 A14B's `boundary_ratio` (its two experts switch there), None for one transformer."""
    ratio = load.model_index(path).get("boundary_ratio") if load.has_component(path, "transformer_2") else None
    return float(ratio) if isinstance(ratio, int | float) else None


def model_task(path: Path) -> Task:
    return model_kind(path)[1]


def check_kind(path: Path, task: Task, family: Family = "cogvideox") -> None:
    """Refuse a model folder that is not a `family` `task` model, naming both."""
    from disney_train.model.source import ModelError

    found_family, found = model_kind(path)
    if found_family != family:
        raise ModelError(f"{path}: this is a {found_family} model (model_index.json), but model.family is {family!r}")
    if found != task:
        raise ModelError(
            f"{path}: this is a {SPECS[found_family, found].description} model "
            f"(transformer in_channels vs vae latent channels), but model.variant is {task!r}"
        )


def image_recipe(train: TrainOptions) -> ImageRecipe:
    return ImageRecipe(noise=train.image_noise, draws=train.image_noise_draws, dropout=train.image_dropout)


def run_spec(cfg: RunConfig, path: Path) -> ModelSpec:
    """The specification a run trains and renders with: its model folder's, with its image recipe, and
    for a model with two experts (Wan 2.2 A14B) the one `model.expert` names."""
    from disney_train.model.source import ModelError

    ratio, expert = boundary_ratio(path), cfg.model.expert
    if ratio is not None and expert is None:
        raise ModelError(
            f"{path}: a Wan 2.2 model with two experts (transformer, transformer_2; boundary_ratio {ratio:g}): "
            "set model.expert to 'high' (transformer, the noisier timesteps) or 'low' (transformer_2)"
        )
    if ratio is None and expert is not None:
        raise ModelError(
            f"{path}: model.expert is {expert!r}, but this model has one transformer "
            "(no transformer_2 and boundary_ratio in model_index.json)"
        )
    return spec_for(path, cfg.model.variant, image_recipe(cfg.train), cfg.model.family, expert)


def frozen_encoders(
    path: Path, dtype: torch.dtype | None = None, device: torch.device | str = "cpu", spec: ModelSpec | None = None
) -> Encoders:
    if spec is None:
        family, task = model_kind(path)
        spec = spec_for(path, task, family=family)
    parts = load.load_encoders(path, dtype, device, fp32=spec.fp32_parts)
    return Encoders(**parts, max_text_length=spec.max_text_length)


def spec_for(
    path: Path,
    task: Task,
    image: ImageRecipe | None = None,
    family: Family | None = None,
    expert: Expert | None = None,
) -> ModelSpec:
    """The specification of the model in folder `path`, checked to be a `family` (default: the
    folder's) `task` model (configs only, no weights); of a two-expert model, `expert`'s (training) or
    none (rendering: the pipeline switches them)."""
    from types import SimpleNamespace

    family = family or model_kind(path)[0]
    check_kind(path, task, family)
    ratio = boundary_ratio(path)
    experts: dict[str, Any] = {} if ratio is None else {"boundary_ratio": ratio, "expert": expert}
    part = EXPERT_PART[expert] if ratio is not None and expert is not None else "transformer"
    transformer = SimpleNamespace(**{"patch_size_t": None, "ofs_embed_dim": None, **load.component_config(path, part)})
    vae = SimpleNamespace(**load.component_config(path, "vae"))
    return SPECS[family, task](transformer, vae, load.load_scheduler(path), image or ImageRecipe(), **experts)


@dataclass
class Components:
    """A model's parts, loaded (tests and tools; training loads what it needs, when it needs it)."""

    transformer: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any
    variant: Task
    path: Path


def load_components(
    path: Path, variant: Task, dtype: torch.dtype | None = None, device: torch.device | str = "cpu"
) -> Components:
    family, _ = model_kind(path)
    check_kind(path, variant, family)
    enc = load.load_encoders(path, dtype, device)
    return Components(
        transformer=load.load_transformer(path, dtype, device),
        vae=enc["vae"],
        text_encoder=enc["text_encoder"],
        tokenizer=enc["tokenizer"],
        scheduler=load.load_scheduler(path),
        variant=variant,
        path=path,
    )
