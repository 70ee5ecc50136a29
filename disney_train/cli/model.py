"""`disney-train model`: tiny test models, S3 upload and sync."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from disney_train.cli.app import model_app
from disney_train.cli.common import (
    EndpointOpt,
    console,
    guard,
    s3_options,
)


@model_app.command("tiny")
def model_tiny(
    out: Annotated[Path, typer.Argument(help="Folder to write the model to (diffusers layout).")],
    i2v: Annotated[bool, typer.Option("--i2v", help="An image-to-video model.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the random weights.")] = 0,
    generation: Annotated[
        str,
        typer.Option(
            help="CogVideoX 1.0 (as the 2b; the default) or 1.5 (as CogVideoX1.5-5B); Wan 2.1 (the default), 2.2 "
            "(A14B: two experts) or 2.2-ti2v (TI2V-5B: both tasks; --i2v does not apply)."
        ),
    ] = "",
    family: Annotated[
        str, typer.Option(help="cogvideox, or wan (Wan 2.1: 1.3B-like T2V, 14B-like I2V; 2.2: A14B-like).")
    ] = "cogvideox",
) -> None:
    """Write a tiny CogVideoX or Wan with random weights, loadable like the real ones (tests, `make run`)."""
    from disney_train.model.tiny import write_tiny_model
    from disney_train.model.tiny_wan import write_tiny_wan

    task: Literal["t2v", "i2v"] = "i2v" if i2v else "t2v"
    kind = f"{'image' if i2v else 'text'}-to-video"
    if family == "wan":
        if generation not in ("", "2.1", "2.2", "2.2-ti2v"):
            raise typer.BadParameter(f"{generation!r}: a Wan model is 2.1, 2.2 or 2.2-ti2v", param_hint="--generation")
        if generation == "2.2-ti2v":
            kind = "text- and image-to-video"
        write_tiny_wan(out, task, seed, experts=2 if generation == "2.2" else 1, ti2v=generation == "2.2-ti2v")
        console.print(f"wrote a tiny Wan {generation or '2.1'} {kind} model to {out}")
        return
    if family != "cogvideox":
        raise typer.BadParameter(f"{family!r}: cogvideox or wan", param_hint="--family")
    generation = generation or "1.0"
    if generation not in ("1.0", "1.5"):
        raise typer.BadParameter(f"{generation!r}: 1.0 or 1.5", param_hint="--generation")
    write_tiny_model(out, task, seed, "1.5" if generation == "1.5" else "1.0")
    console.print(f"wrote a tiny CogVideoX {generation} {kind} model to {out}")


@model_app.command("tiny-clip")
def model_tiny_clip(
    out: Annotated[Path, typer.Argument(help="Folder to write the model to (transformers layout).")],
    seed: Annotated[int, typer.Option(help="Seed of the random weights.")] = 0,
) -> None:
    """Write a tiny CLIP with random weights, loadable like the real ones (evaluation of smoke runs, `make run`)."""
    from disney_train.model.tiny_clip import write_tiny_clip

    write_tiny_clip(out, seed)
    console.print(f"wrote a tiny CLIP to {out}")


@model_app.command("push")
def model_push(
    src: Annotated[Path, typer.Argument(help="Model folder: CogVideoX (diffusers layout) or CLIP (transformers).")],
    dest: Annotated[str, typer.Argument(help="s3://bucket/prefix (or a folder).")],
    endpoint_url: EndpointOpt = None,
) -> None:
    """Upload a model folder, each file with its sha256, skipping files already there."""
    from disney_train.eval.scores import check_clip_layout
    from disney_train.model.source import check_layout, push_model

    clip = (src / "config.json").is_file() and not (src / "model_index.json").is_file()
    written = guard(
        lambda: push_model(src, dest, s3_options(endpoint_url), check_clip_layout if clip else check_layout)
    )
    console.print(f"{dest}: {len(written)} file(s) uploaded")


@model_app.command("fetch")
def model_fetch(
    uri: Annotated[str, typer.Argument(help="s3://bucket/prefix of a model (or a local folder to check).")],
    cache_dir: Annotated[Path | None, typer.Option(help="Cache folder (default ~/.cache/disney-train/models).")] = None,
    endpoint_url: EndpointOpt = None,
) -> None:
    """Sync a model to the local cache with integrity checks and print its folder."""
    from disney_train.model.source import resolve_model

    print(guard(lambda: resolve_model(uri, s3_options(endpoint_url), cache_dir)))
