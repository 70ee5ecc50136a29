"""Ray Train's reports, off the training step's path.

`ray.train.report` blocks its caller: Ray Train V2 holds one result per worker, which the controller takes at
its next poll of the workers (`RAY_TRAIN_HEALTH_CHECK_INTERVAL_S`: 2 s on a cluster, 0.5 s locally), and
every report is also a barrier of all ranks through Ray's synchronization actor. Called on the training
thread every `report_every` steps, it made the steps wait for Ray: py-spy on a 1-worker run (17x64x96,
a report every 5 steps) found the training thread inside it 79% of the time.

Nothing of the run's own goes through it (the figures are in the checkpoints' history, progress.json and
the Prometheus endpoint), so Ray is told at each checkpoint and at the end, by a thread of its own: the
same reports in the same order on every rank (the barrier needs that), none of them on a step's path.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

Report = Callable[[dict[str, Any]], None]


def ray_train_report(metrics: dict[str, Any]) -> None:
    import ray.train

    ray.train.report(metrics)


class RayReports:
    """Hands reports to `report` in order on a thread; `close` waits until the last one is taken."""

    def __init__(self, report: Report = ray_train_report) -> None:
        self._report = report
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._failed = False
        self._thread = threading.Thread(target=self._run, name="ray-train-reports", daemon=True)
        self._thread.start()

    def submit(self, metrics: dict[str, Any]) -> None:
        """Returns at once; the report is made after every report submitted before it."""
        self._queue.put(dict(metrics))

    def close(self, timeout: float = 600.0) -> None:
        """Every report submitted has been made (or the reporting had failed). A report still stuck after
        `timeout` (its barrier waiting for a rank that is gone) is left to the daemon thread, with a warning."""
        self._queue.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("a report to Ray Train was still waiting after %.0f s; left behind", timeout)

    def _run(self) -> None:
        while (metrics := self._queue.get()) is not None:
            if self._failed:
                continue
            try:
                self._report(metrics)
            except Exception as err:  # Ray's bookkeeping only: the run goes on, its own figures are intact
                self._failed = True
                log.warning("reports to Ray Train stopped at step %s: %s", metrics.get("step"), err)
