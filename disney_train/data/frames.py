"""Which frames a training clip takes, and how they are brought to the training size.

Frame sampling (the model takes 4N+1 frames, CogVideoX 8N+1, 49 by default, at a target fps, 8 by default):

1. step = source fps / target fps (at least 1): frame k is round(start + k * step). A 25 fps clip
   sampled at 8 fps takes every 3.125th frame, so the clip keeps its real speed.
2. Short clips: when `num_frames` frames at that step do not fit in the clip, the step shrinks
   to the largest that fits, (frames - 1) / (num_frames - 1), down to 1 (consecutive frames). The
   clip then covers less time than num_frames / fps and its motion plays slower; it is never
   padded or looped. A clip with fewer than `num_frames` frames cannot be used: `data pack
   --min-frames` rejects it, and the reader refuses a dataset packed with a lower minimum.
3. The start is drawn from the slack uniformly, by a generator seeded with (seed, epoch, clip
   line), so it changes per epoch and is the same on every resume. Image-to-video clips packed
   with an image (`images.txt`: the video's first frame) start at frame 0, so that the frame the
   model is conditioned on is the first of the frames it learns to produce; without a packed
   image, the window's own first frame is the image, wherever the window starts.

Size: keep the aspect ratio: cut the largest centred box of the training aspect out of the frame,
then scale it to height x width (area filter) — the same picture as "scale to cover, crop the
centre", with fewer pixels scaled. (The CogVideo loader resizes straight to 480x720 and distorts
the picture; this does not.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


class ClipTooShortError(ValueError):
    pass


def frame_indices(
    n_src: int, src_fps: float, num_frames: int, target_fps: float, rng: np.random.Generator, from_start: bool = False
) -> tuple[list[int], float]:
    """Return the source frame indices to take and the fps they represent. `from_start`: the
    window starts at the clip's first frame (an image-to-video clip whose packed image is that frame)."""
    if n_src < num_frames:
        raise ClipTooShortError(f"{n_src} frames, {num_frames} needed")
    step = max(1.0, src_fps / target_fps) if src_fps > 0 else 1.0
    if num_frames > 1 and (num_frames - 1) * step + 1 > n_src:
        step = max(1.0, (n_src - 1) / (num_frames - 1))
    span = (num_frames - 1) * step
    slack = n_src - 1 - span
    start = float(rng.uniform(0.0, slack)) if slack > 0 and not from_start else 0.0
    idx = [min(n_src - 1, math.floor(start + k * step + 0.5)) for k in range(num_frames)]
    return idx, (src_fps / step if src_fps > 0 else target_fps)


@dataclass(frozen=True)
class CropBox:
    """The box (left, top, width, height) of the source frame that is scaled to the training size."""

    left: int
    top: int
    width: int
    height: int


def centre_crop_box(src_w: int, src_h: int, width: int, height: int) -> CropBox:
    if src_w * height > width * src_h:  # source wider than the target: cut the sides
        cw = min(src_w, max(1, round(src_h * width / height)))
        return CropBox((src_w - cw) // 2, 0, cw, src_h)
    ch = min(src_h, max(1, round(src_w * height / width)))  # taller: cut top and bottom
    return CropBox(0, (src_h - ch) // 2, src_w, ch)


def clip_rng(seed: int, epoch: int, line: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, line, 0x5EED])
