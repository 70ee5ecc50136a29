"""Writing videos and pictures of them: RGB frames to H.264 mp4 (a file, or bytes for a store), frame grids
(PNG) and side-by-side GIFs. One place for the sample dataset, the validation videos, `generate` and the
evaluation's videos and report pictures."""

from __future__ import annotations

import io
import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image as PILImage
    from PIL import ImageFont

GRID_FRAMES = 8  # columns of a frame grid
GIF_MAX_HEIGHT = 360  # px per video
GIF_MAX_FRAMES = 49
TILE_MIN_HEIGHT = 128  # frame grid tiles: small test videos are enlarged to this...
TILE_MAX_HEIGHT = 180  # ...and large ones shrunk to this


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


def evenly_spaced(n: int, k: int) -> list[int]:
    """k indices evenly spread over range(n), the first and the last included; all of them when k ≥ n."""
    if k >= n:
        return list(range(n))
    return sorted({int(i) for i in np.linspace(0, n - 1, k).round()})


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _resize(frame: np.ndarray, height: int) -> PILImage.Image:
    from PIL import Image

    img = Image.fromarray(frame)
    if img.height == height:
        return img
    width = max(1, round(img.width * height / img.height))
    resample = Image.Resampling.NEAREST if height > img.height else Image.Resampling.BILINEAR
    return img.resize((width, height), resample)


def frame_grid(rows: Sequence[tuple[str, np.ndarray]]) -> bytes:
    """A PNG with one row per (label, video): up to 8 evenly spaced frames, each captioned with its index.
    Small frames are enlarged (nearest neighbour) and large ones shrunk so a tile is 128-180 px high."""
    from PIL import Image, ImageDraw

    first = rows[0][1]
    tile_h = min(max(first.shape[1], TILE_MIN_HEIGHT), TILE_MAX_HEIGHT)
    tiles = [[(i, _resize(video[i], tile_h)) for i in evenly_spaced(len(video), GRID_FRAMES)] for _, video in rows]
    label_w, caption_h, gap = 110, 20, 4
    width = label_w + max(sum(t.width + gap for _, t in row) for row in tiles)
    height = len(rows) * (caption_h + tile_h + gap)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    font, small = _font(15), _font(12)
    for r, ((label, _), row) in enumerate(zip(rows, tiles, strict=True)):
        top = r * (caption_h + tile_h + gap)
        draw.text((6, top + caption_h + tile_h // 2), label, fill="black", font=font, anchor="lm")
        x = label_w
        for index, tile in row:
            draw.text((x + 2, top + caption_h - 3), f"frame {index}", fill="#444", font=small, anchor="ls")
            canvas.paste(tile, (x, top + caption_h))
            x += tile.width + gap
    buf = io.BytesIO()
    # zlib's default level: optimize=True searched the levels for 2.3 s on 6 rows of noisy frames, for 0.02% less
    canvas.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def side_by_side_gif(videos: Sequence[np.ndarray], fps: float) -> bytes:
    """An animated GIF (looping forever) of the videos side by side, left to right, each shrunk to at most
    360 px high and 49 frames; a shorter video holds its last frame. Each frame gets its own palette."""
    from PIL import Image

    longest = max(len(v) for v in videos)
    indices = evenly_spaced(longest, GIF_MAX_FRAMES)
    height = min(max(v.shape[1] for v in videos), GIF_MAX_HEIGHT)
    frames = []
    for i in indices:
        parts = [_resize(v[min(i, len(v) - 1)], height) for v in videos]
        canvas = Image.new("RGB", (sum(p.width for p in parts), height))
        x = 0
        for part in parts:
            canvas.paste(part, (x, 0))
            x += part.width
        frames.append(canvas.quantize(colors=256, method=Image.Quantize.FASTOCTREE))
    step = (longest - 1) / (len(indices) - 1) if len(indices) > 1 else 1.0  # source frames per GIF frame
    duration = max(20, round(1000 * step / fps)) if fps > 0 and math.isfinite(fps) else 100
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], loop=0, duration=duration)
    return buf.getvalue()
