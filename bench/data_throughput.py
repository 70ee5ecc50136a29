"""Benchmark: decoded, transformed training clips per second.

- ours: `TrainingClips` reading WebDataset shards from a real S3 server (SeaweedFS on loopback),
  one ranged GET per clip, decode + frame sampling + aspect-keeping crop in DataLoader workers;
- baseline: decord reading the same clips from local files one by one, as the CogVideo dataset class
  does (`VideoReader(path, width, height)`, then `get_batch`), in a DataLoader with the same workers.

Both give float tensors [49, 3, 480, 720] in [-1, 1], with 1 and 2 decode workers. The clips are the
whole Big Buck Bunny sample (132 frames at 1280x720, 25 fps), repeated. Figures go to
bench/results/data_throughput.{json,md}. Run with `make bench`.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from disney_train.config import DataConfig, S3Options  # noqa: E402
from disney_train.data.frames import clip_rng, frame_indices  # noqa: E402
from disney_train.data.pack import PackOptions, pack  # noqa: E402
from disney_train.data.reader import TrainingClips  # noqa: E402
from disney_train.data.sample import source_video  # noqa: E402
from disney_train.media import encode_clip  # noqa: E402
from tests.support.seaweed import BUCKET, RW, start_seaweed  # noqa: E402

CLIPS = int(os.environ.get("BENCH_CLIPS", "16"))
FRAMES, HEIGHT, WIDTH = 49, 480, 720
REPEATS = 2


class LocalOneByOne(Dataset[torch.Tensor]):
    """What the CogVideo dataset class does: open each local file with decord at the target size."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        import decord

        vr = decord.VideoReader(str(self.paths[i]), width=WIDTH, height=HEIGHT, num_threads=1)
        idx, _ = frame_indices(len(vr), float(vr.get_avg_fps()), FRAMES, 8.0, clip_rng(0, 0, i))
        arr = vr.get_batch(idx).asnumpy()
        return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def _time(fn: Any) -> float:
    best = float("inf")
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        n = fn()
        assert n == CLIPS, n
        best = min(best, time.perf_counter() - t0)
    return CLIPS / best


def bench_local(paths: list[Path], workers: int) -> float:
    def epoch() -> int:
        loader = DataLoader(LocalOneByOne(paths), batch_size=None, num_workers=workers, prefetch_factor=2)
        n = 0
        for video in loader:
            assert video.shape == (FRAMES, 3, HEIGHT, WIDTH)
            n += 1
        return n

    return _time(epoch)


def bench_s3(uri: str, s3: S3Options, workers: int) -> float:
    cfg = DataConfig(uri=uri, num_frames=FRAMES, height=HEIGHT, width=WIDTH, decode_workers=workers)

    def epoch() -> int:
        n = 0
        for sample in TrainingClips(cfg, seed=0, s3=s3):
            assert sample["video"].shape == (FRAMES, 3, HEIGHT, WIDTH)
            n += 1
        return n

    return _time(epoch)


def main() -> None:
    import av

    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        src = Path(tmp) / "src"
        (src / "videos").mkdir(parents=True)
        with av.open(str(source_video())) as c:
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        encode_clip(frames, src / "videos" / "clip-0.mp4", 25)
        data = (src / "videos" / "clip-0.mp4").read_bytes()
        paths = []
        for i in range(CLIPS):
            p = src / "videos" / f"clip-{i}.mp4"
            p.write_bytes(data)
            paths.append(p)
        (src / "videos.txt").write_text("".join(f"videos/{p.name}\n" for p in paths))
        (src / "prompt.txt").write_text("A chubby grey cartoon rabbit wakes up in front of its burrow.\n" * CLIPS)

        server = start_seaweed(Path(tmp) / "seaweed")
        try:
            os.environ.update(AWS_ACCESS_KEY_ID=RW[0], AWS_SECRET_ACCESS_KEY=RW[1], AWS_EC2_METADATA_DISABLED="true")
            s3 = S3Options(endpoint_url=server.endpoint)
            uri = f"s3://{BUCKET}/bench"
            pack(src, uri, PackOptions(min_frames=FRAMES, shard_bytes=8 * 1024 * 1024), s3)
            rows = []
            for workers in (1, 2):
                local = bench_local(paths, workers)
                ours = bench_s3(uri, s3, workers)
                rows.append({"workers": workers, "local_one_by_one": round(local, 2), "s3_shards": round(ours, 2)})
                print(f"workers={workers}: local one-by-one {local:.2f} clips/s, S3 shards {ours:.2f} clips/s")
        finally:
            server.stop()

    result = {
        "benchmark": "data_throughput",
        "unit": "clips/s (decoded, sampled, resized, normalised)",
        "shape": [FRAMES, 3, HEIGHT, WIDTH],
        "source_clip": "bigbuckbunny.mp4 re-encoded, 132 frames 1280x720 @ 25 fps (H.264)",
        "clips_per_epoch": CLIPS,
        "best_of": REPEATS,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
        "rows": rows,
        "scaling_1_to_2_workers": {
            "s3_shards": round(rows[1]["s3_shards"] / rows[0]["s3_shards"], 2),
            "local_one_by_one": round(rows[1]["local_one_by_one"] / rows[0]["local_one_by_one"], 2),
        },
        "s3_vs_local": [round(r["s3_shards"] / r["local_one_by_one"], 2) for r in rows],
        "date": time.strftime("%Y-%m-%d"),
    }
    (out_dir / "data_throughput.json").write_text(json.dumps(result, indent=1) + "\n")
    md = [
        f"Decoded clips/s, {FRAMES}x3x{HEIGHT}x{WIDTH}, {CLIPS} clips, best of {REPEATS}, {os.cpu_count()} CPUs",
        "",
        "| decode workers | local files one by one (CogVideo way) | S3 shards (disney-train) | S3 / local |",
        "|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = r["s3_shards"] / r["local_one_by_one"]
        md.append(f"| {r['workers']} | {r['local_one_by_one']:.2f} | {r['s3_shards']:.2f} | {ratio:.2f} |")
    (out_dir / "data_throughput.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    _ = np  # numpy is what decord hands back; imported here so a missing install fails early


if __name__ == "__main__":
    main()
