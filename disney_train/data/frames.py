"""Which frames a training clip takes, and how they are brought to the training size.

Frame sampling (CogVideoX wants 8N+1 frames, 49 by default, at a target fps, 8 by default):

1. step = source fps / target fps (at least 1): frame k is round(start + k * step). A 25 fps clip
   sampled at 8 fps takes every 3.125th frame, so the clip keeps its real speed.
2. Short clips: when `num_frames` frames at that step do not fit in the clip, the step shrinks
   to the largest that fits, (frames - 1) / (num_frames - 1), down to 1 (consecutive frames). The
   clip then covers less time than num_frames / fps and its motion plays slower; it is never
   padded or looped. A clip with fewer than `num_frames` frames cannot be used: `data pack
   --min-frames` rejects it, and the reader refuses a dataset packed with a lower minimum.
3. The start is drawn from the slack uniformly, by a generator seeded with (seed, epoch, clip
   line), so it changes per epoch and is the same on every resume.

Size: scale so the frame covers height x width keeping its aspect ratio, then crop the centre.
(The CogVideo loader resizes straight to 480x720 and distorts the picture; this does not.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


class ClipTooShortError(ValueError):
    pass


def frame_indices(
    n_src: int, src_fps: float, num_frames: int, target_fps: float, rng: np.random.Generator
) -> tuple[list[int], float]:
    """Return the source frame indices to take and the fps they represent."""
    if n_src < num_frames:
        raise ClipTooShortError(f"{n_src} frames, {num_frames} needed")
    step = max(1.0, src_fps / target_fps) if src_fps > 0 else 1.0
    if num_frames > 1 and (num_frames - 1) * step + 1 > n_src:
        step = max(1.0, (n_src - 1) / (num_frames - 1))
    span = (num_frames - 1) * step
    slack = n_src - 1 - span
    start = float(rng.uniform(0.0, slack)) if slack > 0 else 0.0
    idx = [min(n_src - 1, math.floor(start + k * step + 0.5)) for k in range(num_frames)]
    return idx, (src_fps / step if src_fps > 0 else target_fps)


@dataclass(frozen=True)
class Geometry:
    """Decode at resize_w x resize_h, then take the crop box (left, top, width, height)."""

    resize_w: int
    resize_h: int
    left: int
    top: int
    width: int
    height: int


def cover_and_crop(src_w: int, src_h: int, width: int, height: int) -> Geometry:
    scale = max(width / src_w, height / src_h)
    rw = max(width, round(src_w * scale))
    rh = max(height, round(src_h * scale))
    return Geometry(rw, rh, (rw - width) // 2, (rh - height) // 2, width, height)


def clip_rng(seed: int, epoch: int, line: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, line, 0x5EED])
