"""`disney-train config show`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from disney_train.cli.app import config_app
from disney_train.cli.common import (
    guard,
)
from disney_train.config import (
    dump_config,
    embedded_default,
    load_config,
)


@config_app.command("show")
def config_show(
    config: Annotated[Path | None, typer.Argument(help="Run configuration; default: the embedded one.")] = None,
) -> None:
    """Validate a run configuration and print it with every default filled in."""
    cfg = guard(lambda: load_config(config or embedded_default()))
    sys.stdout.write(dump_config(cfg))
