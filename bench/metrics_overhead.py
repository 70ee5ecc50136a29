"""What the workers' Prometheus metrics cost a training step: the update made after every optimizer
step (`WorkerMetrics.optimizer_step`), and a scrape of one worker's endpoint (which runs on the
HTTP server's thread, beside training).

Set against the smallest step there is, the tiny model's 17x64x96 step on CPU
(bench/results/train_step.json, 2 workers: ~18 ms); a CogVideoX step on a GPU takes seconds.
Target: the update under 0.1% of that step. Figures go to bench/results/metrics_overhead.{json,md}.
Run with `make bench`.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from disney_train.metrics.exporter import WorkerMetrics  # noqa: E402
from tests.support.seaweed import free_ports  # noqa: E402

OUT = ROOT / "bench" / "results"
TARGET_SHARE = 0.001


def _tiny_step_seconds() -> float:
    """The 2-worker Ray + DeepSpeed step of bench/train_step.py (run first by `make bench`)."""
    data = json.loads((OUT / "train_step.json").read_text())
    return float(data["overhead"]["ray_deepspeed_2_workers"]["step_s"])


def update_seconds(m: WorkerMetrics, n: int = 20_000) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        m.optimizer_step(
            step=i,
            epoch=i // 100,
            loss=0.1,
            learning_rate=1e-4,
            grad_norm=0.5,
            compute_seconds=0.02,
            wait_seconds=0.001,
            samples=4,
            frames=196,
        )
    return (time.perf_counter() - t0) / n


def scrape(port: int, n: int = 300) -> tuple[list[float], int]:
    times, size = [], 0
    for _ in range(n):
        t0 = time.perf_counter()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            size = len(resp.read())
        times.append(time.perf_counter() - t0)
    return times, size


def main() -> None:
    m = WorkerMetrics("bench", 0)
    m.record_starts(0, 0)
    m.started(
        info={"model": "s3://m", "variant": "t2v", "device": "cpu", "precision": "fp32", "zero_stage": "2"},
        world_size=2,
        step=0,
    )
    port = free_ports(1)[0]
    assert m.serve("127.0.0.1", port)
    try:
        per_update = statistics.median(update_seconds(m) for _ in range(5))
        times, size = scrape(port)
    finally:
        m.close()
    step = _tiny_step_seconds()
    result: dict[str, Any] = {
        "update_microseconds": round(per_update * 1e6, 2),
        "tiny_step_seconds": step,
        "update_share_of_tiny_step": round(per_update / step, 6),
        "target_share": TARGET_SHARE,
        "scrape_ms_median": round(statistics.median(times) * 1e3, 3),
        "scrape_ms_p95": round(sorted(times)[int(len(times) * 0.95)] * 1e3, 3),
        "scrape_bytes": size,
        "machine": f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}",
    }
    (OUT / "metrics_overhead.json").write_text(json.dumps(result, indent=1) + "\n")
    verdict = "met" if result["update_share_of_tiny_step"] < TARGET_SHARE else "missed"
    text = f"""# Metrics overhead

The update after every optimizer step (`WorkerMetrics.optimizer_step`: 5 gauges, 2 histograms,
2 counters, a timestamp) and a scrape of one worker's `/metrics`. {result["machine"]}.

| | figure | target |
|---|---:|---:|
| update per optimizer step | {result["update_microseconds"]} µs | |
| share of the tiny CPU step ({step * 1e3:.1f} ms, the smallest there is) | {result["update_share_of_tiny_step"]:.4%} | < {TARGET_SHARE:.1%} ({verdict}) |
| scrape, median / p95 (on the server's thread, not the step's) | {result["scrape_ms_median"]} / {result["scrape_ms_p95"]} ms | |
| scrape size | {size} bytes | |
"""
    (OUT / "metrics_overhead.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
