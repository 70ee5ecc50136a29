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
