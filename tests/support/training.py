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
    from types import SimpleNamespace

    import torch

    from disney_train.data.pack import load_manifest
    from disney_train.model.load import load_encoders, max_text_length
    from disney_train.storage import open_store
    from disney_train.train.cache import build_entries, cache_set, missing_entries

    manifest = load_manifest(cfg.data.uri, s3=cfg.s3)
    cs = cache_set(cfg, model, max_text_length(model))  # as the workers key it
    missing = missing_entries(cs, manifest, cfg)
    vae, te, tok = load_encoders(model)
    comps = SimpleNamespace(vae=vae, text_encoder=te, tokenizer=tok)
    return build_entries(cs, cfg, manifest, open_store(cfg.data.uri, cfg.s3), comps, missing, torch.device("cpu"))
