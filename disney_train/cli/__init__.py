"""The `disney-train` command line: thin commands over the library, one module per command group
(`train`, `evaluate`, `monitor`, `data`, `model`, `config_show`); `common` holds what they share, among it
`guard`, the one place a `UserError` becomes one line."""

import importlib

from disney_train.cli.app import app, main

for _group in ("train", "evaluate", "monitor", "data", "model", "config_show"):  # the order of --help
    importlib.import_module(f"disney_train.cli.{_group}")

__all__ = ["app", "main"]
