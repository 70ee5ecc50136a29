"""The `disney-train` application and its command groups; each command lives in the module of its group."""

from __future__ import annotations

import gc
import logging
from typing import Annotated

import typer
from rich.logging import RichHandler

from disney_train import __version__
from disney_train.cli.common import console, err_console

app = typer.Typer(help="Fine-tune CogVideoX with LoRA into a Disney-style animation model.", no_args_is_help=True)
data_app = typer.Typer(help="Sample, pack, inspect and read video datasets.", no_args_is_help=True)
config_app = typer.Typer(help="Run configurations.", no_args_is_help=True)
model_app = typer.Typer(help="CogVideoX models: tiny test models, S3 upload and sync.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(model_app, name="model")
app.add_typer(config_app, name="config")


def _print_version(value: bool) -> None:
    if value:
        console.print(__version__)
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit.", callback=_print_version, is_eager=True)
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log more (retries are logged anyway).")] = False,
) -> None:
    # Warnings (an S3 retry, say) go to stderr beside the progress bars; never keys or secrets.
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False)],
        force=True,
    )


def main() -> None:
    try:
        app()
    finally:
        # The objects left at exit are frozen out of the interpreter's last collection: with torch, Ray,
        # transformers and diffusers imported it took 1.0 s of every command's exit here. The atexit
        # hooks run as before; only the collection at the very end (which finalizes nothing of ours) is skipped.
        gc.freeze()
