"""`disney-train data inspect`: what a packed dataset holds, from its manifest alone."""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Any

from rich.console import Console
from rich.table import Table

from disney_train.data.manifest import Manifest, Reject


def _spread(values: list[float]) -> dict[str, float]:
    if not values:
        return {"min": 0, "median": 0, "max": 0}
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def summarize(m: Manifest) -> dict[str, Any]:
    s = m.samples
    return {
        "clips": len(s),
        "shards": len(m.shards),
        "bytes": m.totals.bytes,
        "frames": {"total": m.totals.frames, **_spread([x.clip.frames for x in s])},
        "seconds": {"total": m.totals.seconds, **_spread([x.clip.duration for x in s])},
        "fps": dict(Counter(f"{x.clip.fps:g}" for x in s).most_common()),
        "resolutions": dict(Counter(f"{x.clip.width}x{x.clip.height}" for x in s).most_common()),
        "with_images": sum(1 for x in s if x.image is not None),
        "min_frames": m.min_frames,
        "rejects": [r.model_dump() for r in m.rejects],
        "tool_version": m.tool_version,
        "source": m.source,
    }


def rejects_table(rejects: list[Reject], title: str = "Rejected") -> Table:
    table = Table(title=f"{title} ({len(rejects)})", title_justify="left")
    table.add_column("where", style="bold red", no_wrap=True)
    table.add_column("reason")
    for r in rejects:
        table.add_row(r.where, r.reason)
    return table


def print_summary(m: Manifest, where: str, console: Console) -> None:
    info = summarize(m)
    t = Table(title=f"Dataset {where}", title_justify="left", show_header=False)
    t.add_column("", style="bold")
    t.add_column("")
    f, d = info["frames"], info["seconds"]
    t.add_row("clips", f"{info['clips']} in {info['shards']} shard(s), {info['bytes'] / 1e6:.1f} MB")
    t.add_row("frames", f"{f['total']} (per clip min {f['min']:g}, median {f['median']:g}, max {f['max']:g})")
    t.add_row(
        "duration",
        f"{d['total']:.1f} s (per clip min {d['min']:.2f}, median {d['median']:.2f}, max {d['max']:.2f})",
    )
    t.add_row("resolution", ", ".join(f"{k} ×{v}" for k, v in info["resolutions"].items()))
    t.add_row("fps", ", ".join(f"{k} ×{v}" for k, v in info["fps"].items()))
    t.add_row("first frames", f"{info['with_images']} clip(s) with a packed image")
    t.add_row(
        "packed with",
        f"disney-train {info['tool_version']}, --min-frames {info['min_frames']}, from {info['source']}",
    )
    console.print(t)
    if m.rejects:
        console.print(rejects_table(m.rejects, "Rejected at pack time"))
    else:
        console.print("No rejects.")
