"""Run configurations for training tests: the embedded default, pointed at test folders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from disney_train.config import RunConfig, embedded_default, load_config


def train_config(model: Path | str, data: Path | str, output: Path | str, **overrides: Any) -> RunConfig:
    base: dict[str, Any] = {
        "model.uri": str(model),
        "data.uri": str(data),
        "output.uri": str(output),
        "data.decode_workers": 0,
        "validation.prompts": [],
        "evaluation": None,  # the training tests train; the evaluation's are tests/test_eval*.py
    }
    base.update(overrides)
    return load_config(embedded_default(), base)


def build_cache(cfg: RunConfig, model: Path) -> int:
    """The latent cache's missing entries for `cfg`, encoded here on the CPU without Ray; how many were built."""
    import torch

    from disney_train.data.pack import load_manifest
    from disney_train.model.spec import frozen_encoders, run_spec
    from disney_train.storage import open_store
    from disney_train.train.cache import build_entries, cache_set, missing_entries

    manifest = load_manifest(cfg.data.uri, s3=cfg.s3)
    spec = run_spec(cfg, model)
    cs = cache_set(cfg, model, spec)  # as the workers key it
    missing = missing_entries(cs, manifest, cfg)
    store = open_store(cfg.data.uri, cfg.s3)
    return build_entries(cs, cfg, manifest, store, spec, frozen_encoders(model), missing, torch.device("cpu"))
