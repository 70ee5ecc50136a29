"""Checking one clip by decoding it: every frame must decode, and the clip must be long enough.

Runs in worker processes during `data pack`. Returns measurements or a reason, never raises for a
bad clip, so one bad file is reported and kept out while the rest is packed.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from disney_train.data.manifest import ClipInfo

DECODE_CHUNK = 32  # frames decoded per call while checking (bounded memory at any resolution)


@dataclass(frozen=True)
class ProbeResult:
    sha256: str
    size: int
    clip: ClipInfo | None
    reason: str | None  # set when the clip is refused
    image_reason: str | None = None


def quiet_decord() -> None:
    import decord

    decord.logging.set_level(decord.logging.QUIET)


def _av_reason(data: bytes) -> str | None:
    """PyAV names what is wrong with a file far better than decord's 'Error reading'."""
    import av

    try:
        with av.open(io.BytesIO(data), "r") as c:
            if not c.streams.video:
                return "no video stream"
            for _ in c.decode(video=0):
                pass
    except Exception as err:
        return _clean_av_message(str(err)) or type(err).__name__
    return None


def _clean_av_message(text: str) -> str:
    """'[Errno 1094995529] Invalid data ...: 'x'; last error log: [mov,mp4] moov atom not found'
    -> 'Invalid data found when processing input (moov atom not found)'."""
    head, _, last = text.partition("; last error log:")
    head = re.sub(r"^\[Errno -?\d+\]\s*", "", head).split(": '")[0].strip()
    last = re.sub(r"^\s*\[[^\]]*\]\s*", "", last).strip()
    return f"{head} ({last})" if last else head


@contextmanager
def _stderr_silenced() -> Iterator[None]:
    """decord writes its own 'ERROR opening' lines to fd 2; the reason we return says it better."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def measure_video(data: bytes) -> ClipInfo:
    """Decode every frame with decord; raises with the decoder's message when that fails."""
    import decord

    vr = decord.VideoReader(io.BytesIO(data), ctx=decord.cpu(0), num_threads=1)
    n = len(vr)
    fps = float(vr.get_avg_fps())
    if n == 0:
        raise ValueError("no frames")
    h, w = vr[0].shape[:2]
    decoded = 0
    for start in range(0, n, DECODE_CHUNK):
        batch = vr.get_batch(list(range(start, min(n, start + DECODE_CHUNK))))
        decoded += int(batch.shape[0])
    if decoded != n:
        raise ValueError(f"container says {n} frames, {decoded} decoded")
    return ClipInfo(frames=n, fps=round(fps, 4), width=int(w), height=int(h), duration=round(n / fps, 4) if fps else 0)


def check_image(path: Path) -> str | None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if im.width < 2 or im.height < 2:
                return f"image {im.width}x{im.height} is too small"
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        return f"image cannot be decoded ({err})"
    return None


def probe_clip(path: Path, min_frames: int, image: Path | None = None) -> ProbeResult:
    quiet_decord()
    try:
        data = path.read_bytes()
    except OSError as err:
        return ProbeResult("", 0, None, f"cannot read ({err.strerror or err})")
    digest = hashlib.sha256(data).hexdigest()
    if not data:
        return ProbeResult(digest, 0, None, "empty file (0 bytes)")
    try:
        with _stderr_silenced():
            clip = measure_video(data)
    except Exception as err:
        detail = _av_reason(data) or str(err).splitlines()[0]
        return ProbeResult(digest, len(data), None, f"does not decode: {detail}")
    reason = None
    if clip.fps <= 0:
        reason = f"frame rate {clip.fps} is not usable"
    elif clip.frames == 1:
        reason = f"a single frame, not a video (at least {min_frames} frames are needed)"
    elif clip.frames < min_frames:
        reason = f"{clip.frames} frames, fewer than the {min_frames} required"
    elif clip.width < 16 or clip.height < 16:
        reason = f"resolution {clip.width}x{clip.height} is too small"
    image_reason = check_image(image) if image is not None else None
    return ProbeResult(digest, len(data), clip, reason, image_reason)
