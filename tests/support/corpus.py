"""Datasets with every kind of bad input, built from the real sample clips."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from disney_train.data.sample import SEGMENTS
from disney_train.media import encode_clip


@dataclass
class Corpus:
    root: Path
    good: list[str]  # video paths (as in videos.txt) that must be packed
    expected: dict[str, str] = field(default_factory=dict)  # where -> reason fragment


def _frames(src: Path, n: int) -> list[np.ndarray]:
    import decord

    vr = decord.VideoReader(str(src))
    return list(vr.get_batch(list(range(n))).asnumpy())


def _copy_sample_clips(sample: Path, root: Path) -> list[str]:
    (root / "videos").mkdir(parents=True)
    names = [f"{s.name}.mp4" for s in SEGMENTS]
    for name in names:
        shutil.copy(sample / "videos" / name, root / "videos" / name)
    return names


def write_bad_corpus(sample: Path, root: Path) -> Corpus:
    """4 good clips and, one per line, every bad input the pack must refuse by name."""
    good_names = _copy_sample_clips(sample, root)
    vids = root / "videos"
    first = sample / "videos" / good_names[0]
    data = first.read_bytes()
    (vids / "truncated.mp4").write_bytes(data[: int(len(data) * 0.4)])
    (vids / "zero.mp4").write_bytes(b"")
    (vids / "text.mp4").write_text("this is not a video, just text named .mp4\n")
    frames = _frames(first, 9)
    encode_clip(frames, vids / "short.mp4", 25)
    encode_clip(frames[:1], vids / "oneframe.mp4", 25)
    (root.parent / "outside.mp4").write_bytes(data)  # a real clip, but outside SRC

    rows: list[tuple[str, bytes]] = [
        ("videos/burrow-peek.mp4", b"A rabbit peeks out of its burrow."),
        ("videos/truncated.mp4", b"truncated"),
        ("videos/climb-out.mp4", b"A rabbit climbs out."),
        ("videos/zero.mp4", b"zero bytes"),
        ("videos/text.mp4", b"text"),
        ("videos/short.mp4", b"too short"),
        ("videos/oneframe.mp4", b"one frame"),
        ("videos/missing.mp4", b"missing file"),
        ("videos/stretch-yawn.mp4", b""),  # empty prompt line
        ("videos/yawn-end.mp4", b"caf\xe9 in latin-1"),  # not UTF-8
        ("videos/burrow-peek.mp4", b"listed twice"),
        ("../outside.mp4", b"escapes SRC"),
        ("videos/stretch-yawn.mp4", b"A rabbit stretches and yawns."),  # first use of this file that is valid
        ("videos/yawn-end.mp4", b"A rabbit finishes its yawn."),
    ]
    (root / "videos.txt").write_bytes(b"\n".join(v.encode() for v, _ in rows) + b"\n")
    # one more prompt than videos: the last prompt has no video
    (root / "prompt.txt").write_bytes(b"\n".join(p for _, p in rows) + b"\nAn orphan prompt.\n")
    n = len(rows)
    expected = {
        "videos/truncated.mp4": "does not decode",
        "videos/zero.mp4": "empty file (0 bytes)",
        "videos/text.mp4": "does not decode",
        "videos/short.mp4": "9 frames, fewer than the 17 required",
        "videos/oneframe.mp4": "a single frame",
        "videos.txt:8": "videos/missing.mp4 not found",
        "prompt.txt:9": "prompt for videos/stretch-yawn.mp4 is empty",
        "prompt.txt:10": "not valid UTF-8 (byte 0xe9",
        "videos.txt:11": "listed again (first on line 1)",
        "videos.txt:12": "escapes the dataset folder",
        f"prompt.txt:{n + 1}": "prompt has no video",
    }
    good = [
        "videos/burrow-peek.mp4",
        "videos/climb-out.mp4",
        "videos/stretch-yawn.mp4",
        "videos/yawn-end.mp4",
    ]
    return Corpus(root, good, expected)


def write_more_videos_than_prompts(sample: Path, root: Path) -> Corpus:
    names = _copy_sample_clips(sample, root)
    (root / "videos.txt").write_text("\n".join(f"videos/{n}" for n in names) + "\n")
    (root / "prompts.txt").write_text("\n".join(s.prompt for s in SEGMENTS[:3]) + "\n")  # plural name accepted
    return Corpus(root, [f"videos/{n}" for n in names[:3]], {"videos.txt:4": "has no prompt (prompts.txt has 3 lines)"})
