"""Writing videos: RGB frames to H.264 mp4 (a file, or bytes for a store). One place for the sample
dataset, the validation videos, `generate` and the evaluation's videos."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def encode_clip(frames: Sequence[np.ndarray], path: Path, fps: int) -> None:
    """Encode RGB frames as an H.264 mp4 with the index up front (faststart)."""
    import av

    with av.open(str(path), "w", options={"movflags": "+faststart"}) as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "23", "preset": "veryfast", "threads": "1"}
        for arr in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def mp4_bytes(frames: np.ndarray | Sequence[np.ndarray], fps: float) -> bytes:
    """uint8 frames [F, H, W, 3] -> the mp4's bytes, at the nearest whole fps (at least 1)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "video.mp4"
        encode_clip(list(frames), path, max(1, round(fps)))
        return path.read_bytes()
