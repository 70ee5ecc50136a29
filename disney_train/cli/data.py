"""`disney-train data`: sample, pack, inspect and read datasets."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from disney_train.cli.app import data_app
from disney_train.cli.common import (
    EndpointOpt,
    console,
    guard,
    parse_size,
    progress_bar,
    s3_options,
)
from disney_train.config import (
    RunConfig,
    load_config,
)


@data_app.command("sample")
def data_sample(
    out: Annotated[Path, typer.Argument(help="Folder to write the dataset to.")],
    copies: Annotated[int, typer.Option(min=1, help="Repeat the clips under new names (benchmarks).")] = 1,
) -> None:
    """Write a small real dataset in the Disney layout, cut from Big Buck Bunny (CC-BY)."""
    from disney_train.data.sample import write_sample

    written = guard(lambda: write_sample(out, copies=copies))
    console.print(f"wrote {len(written)} clip(s), prompt.txt and videos.txt to {out}")


@data_app.command("pack")
def data_pack(
    src: Annotated[Path, typer.Argument(help="Dataset folder: prompt.txt (or prompts.txt), videos.txt, videos/.")],
    dest: Annotated[str, typer.Argument(help="s3://bucket/prefix or a local folder.")],
    shard_size: Annotated[str, typer.Option(help="Target shard size (e.g. 256MB, 64MiB).")] = "256MiB",
    min_frames: Annotated[int, typer.Option(min=1, help="Reject clips with fewer frames than this.")] = 49,
    workers: Annotated[int, typer.Option(min=1, help="Processes checking clips.")] = 2,
    strict: Annotated[bool, typer.Option(help="Any rejected input is an error; nothing is written.")] = False,
    endpoint_url: EndpointOpt = None,
) -> None:
    """Check every clip, then write WebDataset tar shards and a manifest (last) to DEST."""
    from disney_train.data.pack import PackOptions, pack
    from disney_train.data.summary import rejects_table

    options = PackOptions(shard_bytes=parse_size(shard_size), min_frames=min_frames, workers=workers, strict=strict)
    with progress_bar() as progress:
        report = guard(lambda: pack(src, dest, options, s3_options(endpoint_url), progress))
    m = report.manifest
    if m.rejects:
        console.print(rejects_table(m.rejects))
    console.print(
        f"packed {m.totals.clips} clip(s) ({m.totals.frames} frames, {m.totals.seconds:.1f} s) into "
        f"{m.totals.shards} shard(s) at {report.dest}: {len(report.uploaded)} written, "
        f"{len(report.skipped)} already there; {m.totals.rejects} rejected"
    )
    if report.stale:
        console.print(
            f"{len(report.stale)} shard(s) of earlier packs are no longer referenced by the manifest "
            f"(kept, in case a running job still reads them): {', '.join(report.stale[:5])}"
            f"{' …' if len(report.stale) > 5 else ''}"
        )


@data_app.command("inspect")
def data_inspect(
    dest: Annotated[str, typer.Argument(help="Packed dataset: s3://bucket/prefix or a local folder.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    endpoint_url: EndpointOpt = None,
) -> None:
    """Summarise a packed dataset: clips, frames, duration and resolution spread, rejects."""
    from disney_train.data.pack import load_manifest
    from disney_train.data.summary import print_summary, summarize

    m = guard(lambda: load_manifest(dest, s3_options(endpoint_url)))
    if as_json:
        print(json.dumps(summarize(m), indent=1))
    else:
        print_summary(m, dest, console)


@data_app.command("read")
def data_read(
    config: Annotated[Path, typer.Option("--config", "-c", help="Run configuration (YAML).")],
    epochs: Annotated[int, typer.Option(min=1, help="Epochs to read.")] = 1,
    rank: Annotated[int, typer.Option(min=0)] = 0,
    world_size: Annotated[int, typer.Option(min=1)] = 1,
) -> None:
    """Read the training input of a run configuration (decode, sample, crop) and report what came."""
    cfg = guard(lambda: load_config(config))
    guard(lambda: _read_epochs(cfg, epochs, rank, world_size))


def _read_epochs(cfg: RunConfig, epochs: int, rank: int, world_size: int) -> dict[str, Any]:
    from disney_train.data.reader import TrainingClips
    from disney_train.model.spec import SPECS

    with_image = SPECS[cfg.model.family, cfg.model.variant].wants_image
    clips = TrainingClips(cfg.data, seed=cfg.seed, rank=rank, world_size=world_size, with_image=with_image, s3=cfg.s3)
    seen = 0
    shape: tuple[int, ...] = ()
    lo, hi = 1.0, -1.0
    t0 = time.perf_counter()
    with progress_bar() as progress:
        for epoch in range(epochs):
            task = progress.add_task(f"epoch {epoch}: decoding clips", total=len(clips))
            for sample in clips:
                seen += 1
                shape = tuple(sample["video"].shape)
                lo, hi = min(lo, float(sample["video"].min())), max(hi, float(sample["video"].max()))
                progress.advance(task)
    dt = time.perf_counter() - t0
    console.print(
        f"read {seen} clip(s) over {epochs} epoch(s) on rank {rank}/{world_size}: each {list(shape)} "
        f"(frames, channels, height, width), values in [{lo:.2f}, {hi:.2f}], {seen / dt:.1f} clips/s"
    )
    return {"clips": seen, "shape": shape, "seconds": dt}
