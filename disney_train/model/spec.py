"""The model specifications by family and task, and which one a model folder is.

Each specification (`disney_train.model.base.ModelSpec`) holds everything that differs between the
models the platform trains; the engine asks it and never branches on the family or the task:

- CogVideoX (`disney_train.model.cogvideox`): 1.0 and 1.5, text- and image-to-video.
- Wan (`disney_train.model.wan`): 2.1 text- and image-to-video, one expert of 2.2 A14B's two, and
  2.2 TI2V-5B (one model for both tasks: the run's `model.variant` picks).

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
from disney_train.model.wan import EXPERT_PART, Expert, WanI2V, WanSpec, WanTI2V, WanTI2VImage

SPECS: dict[tuple[Family, Task], type[ModelSpec]] = {
    ("cogvideox", "t2v"): CogVideoXSpec,
    ("cogvideox", "i2v"): CogVideoXI2V,
    ("wan", "t2v"): WanSpec,
    ("wan", "i2v"): WanI2V,
}
# Wan 2.2 TI2V-5B (model_index.json's `expand_timesteps`): one transformer for both tasks
TI2V_SPECS: dict[Task, type[ModelSpec]] = {"t2v": WanTI2V, "i2v": WanTI2VImage}
# the pipeline classes of model_index.json, by family
PIPELINES: dict[str, Family] = {
    "CogVideoXPipeline": "cogvideox",
    "CogVideoXImageToVideoPipeline": "cogvideox",
    "WanPipeline": "wan",
    "WanImageToVideoPipeline": "wan",
}


@dataclass(frozen=True)
class Layout:
    """What a model folder is, read once from its configs (no weights): the family, the tasks it does (one,
    or both for TI2V-5B), Wan 2.2 A14B's boundary_ratio (None: one transformer), TI2V-5B's per-token
    timesteps."""

    family: Family
    tasks: frozenset[Task]
    boundary_ratio: float | None = None
    ti2v: bool = False


def read_layout(path: Path) -> Layout:
    """The folder's layout, each of its configs checked (a folder of another kind is refused by name)."""
    from disney_train.model.source import ModelError, check_layout

    check_layout(path)
    index = load.model_index(path)
    pipeline = index.get("_class_name")
    family = PIPELINES.get(pipeline) if isinstance(pipeline, str) else None
    if family is None:
        raise ModelError(
            f"{path}/model_index.json: _class_name {pipeline!r} is no pipeline this platform trains "
            f"({', '.join(PIPELINES)})"
        )
    unsupported = unsupported_pipeline(index, family)
    if unsupported:
        raise ModelError(f"{path}/model_index.json: {unsupported}")
    parts = [part for part in ("transformer", "transformer_2") if load.has_component(path, part)]
    for part in parts:
        if not (path / part / "config.json").is_file():
            raise ModelError(f"{path}/model_index.json names {part}, but {path / part / 'config.json'} is missing")
    vae = load.component_config(path, "vae")
    if index.get("expand_timesteps"):
        _task(path, "transformer", {"t2v": WanTI2V}, vae)
        return Layout(family, frozenset(TI2V_SPECS), ti2v=True)
    specs = {task: cls for (fam, task), cls in SPECS.items() if fam == family}
    tasks = {_task(path, part, specs, vae) for part in parts}
    if len(tasks) != 1:
        raise ModelError(f"{path}: transformer and transformer_2 are different variants ({', '.join(sorted(tasks))})")
    ratio = index.get("boundary_ratio") if "transformer_2" in parts else None
    return Layout(family, frozenset(tasks), None if ratio is None else float(ratio))


def model_kind(path: Path) -> tuple[Family, Task]:
    """Which family and task the model in folder `path` is; of a model for both tasks (Wan 2.2 TI2V-5B),
    text-to-video (`read_layout` has both)."""
    layout = read_layout(path)
    return layout.family, min(layout.tasks, key=["t2v", "i2v"].index)


def _task(path: Path, part: str, specs: dict[Task, type[ModelSpec]], vae: dict[str, Any]) -> Task:
    """The task of the transformer `part` among `specs` (refusing what the specifications cannot train)."""
    from disney_train.model.source import ModelError

    transformer = load.component_config(path, part)
    for task, cls in specs.items():
        if _fits(cls, transformer, vae):
            refusal = cls.refusal(transformer, load.scheduler_config(path))
            if refusal:
                raise ModelError(f"{path}: {refusal}")
            missing = sorted(p for p in cls.needs_parts(transformer) if not load.has_component(path, p))
            if missing:
                raise ModelError(
                    f"{path}/model_index.json: a {cls.family} {cls.description} model whose {part} needs "
                    f"{' and '.join(missing)}, which the pipeline does not name"
                )
            return task
    family = next(iter(specs.values())).family
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
    """Why a pipeline of a known class is still not one this platform trains (None: it is): two experts
    are Wan 2.2 A14B's, both halves of them (`transformer_2` and `boundary_ratio`) or neither;
    `expand_timesteps` (per-token timesteps) is TI2V-5B's, with one transformer."""
    second = index.get("transformer_2")
    has_second = isinstance(second, list) and len(second) == 2 and second[1] is not None
    ratio = index.get("boundary_ratio")
    expand = index.get("expand_timesteps")
    if expand is not None and not isinstance(expand, bool):
        return f"expand_timesteps {expand!r}: true or false"
    if expand and family != "wan":
        return "expand_timesteps (per-token timesteps) is a Wan 2.2 TI2V layout, not a cogvideox one"
    if not has_second and ratio is None:
        return None
    if family != "wan" or expand:
        what = "a cogvideox one" if family != "wan" else "one with expand_timesteps (TI2V-5B has one transformer)"
        return f"transformer_2 and boundary_ratio (two experts) are a Wan 2.2 A14B layout, not {what}"
    if not has_second or isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 < ratio < 1:
        return (
            f"two experts need transformer_2 and a boundary_ratio in (0, 1); found transformer_2 {second!r}, "
            f"boundary_ratio {ratio!r}"
        )
    return None


def model_task(path: Path, with_images: bool = False) -> Task:
    """The task to render the model in `path` with: its own, or for a model of both (TI2V-5B)
    image-to-video when images are given."""
    tasks = read_layout(path).tasks
    if len(tasks) > 1:
        return "i2v" if with_images else "t2v"
    return next(iter(tasks))


def check_kind(path: Path, task: Task, family: Family = "cogvideox", layout: Layout | None = None) -> None:
    """Refuse a model folder that is not a `family` `task` model, naming both."""
    from disney_train.model.source import ModelError

    layout = layout or read_layout(path)
    if layout.family != family:
        raise ModelError(f"{path}: this is a {layout.family} model (model_index.json), but model.family is {family!r}")
    if task not in layout.tasks:
        (only,) = layout.tasks
        raise ModelError(
            f"{path}: this is a {SPECS[layout.family, only].description} model "
            f"(transformer in_channels vs vae latent channels), but model.variant is {task!r}"
        )


def image_recipe(train: TrainOptions) -> ImageRecipe:
    return ImageRecipe(noise=train.image_noise, draws=train.image_noise_draws, dropout=train.image_dropout)


def run_spec(cfg: RunConfig, path: Path) -> ModelSpec:
    """The specification a run trains and renders with: its model folder's, with its image recipe, and
    for a model with two experts (Wan 2.2 A14B) the one `model.expert` names; the run's sizes checked."""
    layout = read_layout(path)
    _check_expert(path, layout.boundary_ratio, cfg.model.expert)
    spec = spec_for(path, cfg.model.variant, image_recipe(cfg.train), cfg.model.family, cfg.model.expert, layout)
    _check_shape(cfg, spec)
    return spec


def _check_expert(path: Path, ratio: float | None, expert: Expert | None) -> None:
    """A model of two experts (`ratio`: its boundary_ratio) needs the run to name one; a model of one
    refuses a name."""
    from disney_train.model.source import ModelError

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


def _check_shape(cfg: RunConfig, spec: ModelSpec) -> None:
    """The run's heights and widths are multiples of what the model's VAE and patches take (TI2V-5B: 32),
    its frame counts at least what the model trains on (TI2V-5B image-to-video: the image and a frame)."""
    from disney_train.model.source import ModelError

    e, v = cfg.evaluation, cfg.validation
    sizes: dict[str, int | None] = {"data.height": cfg.data.height, "data.width": cfg.data.width}
    frames: dict[str, int | None] = {"data.num_frames": cfg.data.num_frames, "validation.num_frames": v.num_frames}
    if e is not None:
        sizes |= {"evaluation.height": e.height, "evaluation.width": e.width}
        frames["evaluation.num_frames"] = e.num_frames
    for field, size in sizes.items():
        if size is not None and size % spec.size_multiple:
            raise ModelError(f"{field} {size}: a {spec.name} model takes multiples of {spec.size_multiple}")
    for field, count in frames.items():
        if count is not None and count < spec.min_frames:
            raise ModelError(f"{field} {count}: a {spec.name} model takes at least {spec.min_frames} frames")


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
    layout: Layout | None = None,
) -> ModelSpec:
    """The specification of the model in folder `path` (`layout`: as `read_layout` read it), checked to be
    a `family` (default: the folder's) `task` model (configs only, no weights); of a two-expert model,
    `expert`'s (training) or none (rendering: the pipeline switches them)."""
    from types import SimpleNamespace

    layout = layout or read_layout(path)
    family = family or layout.family
    check_kind(path, task, family, layout)
    ratio = layout.boundary_ratio
    experts: dict[str, Any] = {} if ratio is None else {"boundary_ratio": ratio, "expert": expert}
    part = EXPERT_PART[expert] if ratio is not None and expert is not None else "transformer"
    transformer = SimpleNamespace(**{"patch_size_t": None, "ofs_embed_dim": None, **load.component_config(path, part)})
    vae = SimpleNamespace(**load.component_config(path, "vae"))
    cls = TI2V_SPECS[task] if layout.ti2v else SPECS[family, task]
    return cls(transformer, vae, load.load_scheduler(path), image or ImageRecipe(), **experts)


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
    layout = read_layout(path)
    check_kind(path, variant, layout.family, layout)
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
