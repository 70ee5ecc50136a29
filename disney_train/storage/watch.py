"""Watching S3 traffic: this process's byte and retry counters (for the workers' metrics), and the
watch that names calls getting no answer while they wait."""

from __future__ import annotations

import contextlib
import itertools
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Iterator

from tenacity import (
    RetryCallState,
)
from tenacity.stop import stop_base

log = logging.getLogger(__name__)


class IoCounters:
    """This process's S3 traffic, for the workers' metrics: bytes read and written, retries, and
    requests that failed for good. Kept in shared memory so that the decode workers a DataLoader
    forks add to the same figures (a process started with "spawn" or "forkserver" counts on its
    own, unseen). Made with the fork context explicitly: the default one would fix the process's
    start method at import."""

    FIELDS = ("read_bytes", "written_bytes", "retries", "failures")

    def __init__(self) -> None:
        self._values = multiprocessing.get_context("fork").Array("q", len(self.FIELDS))

    def add(self, field: str, n: int = 1) -> None:
        i = self.FIELDS.index(field)
        with self._values.get_lock():
            self._values[i] += n

    def snapshot(self) -> dict[str, int]:
        with self._values.get_lock():
            return dict(zip(self.FIELDS, self._values[:], strict=True))


IO = IoCounters()


class Waiting:
    """One S3 call being watched: since when it has had no answer (`moved()` when bytes come or go)."""

    def __init__(self, what: str, warn_after: float, give_up: float) -> None:
        self.what, self.warn_after, self.give_up = what, warn_after, give_up
        self.since = time.monotonic()
        self.next_warning = warn_after

    def moved(self, *_: object) -> None:  # also an s3transfer callback (bytes transferred)
        self.since = time.monotonic()
        self.next_warning = self.warn_after

    def idle(self) -> float:
        return time.monotonic() - self.since


class _NoAnswerFor(stop_base):
    """tenacity: stop once the call has had no answer for its `give_up` seconds."""

    def __init__(self, waiting: Waiting) -> None:
        self.waiting = waiting

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.waiting.idle() >= self.waiting.give_up


class StallWatch:
    """Names S3 calls that get no answer, while they wait: a frozen S3 otherwise says nothing until the last
    retry gives up (minutes). A call that moves bytes (a large download or upload) is not idle. One daemon
    thread per process, started at the first call (a forked decode worker starts its own), looks every
    `every` seconds."""

    def __init__(self, every: float = 1.0) -> None:
        self.every = every
        self._pid = -1
        self._tokens = itertools.count()

    def _start(self) -> None:
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()  # new state in a forked child: the parent's lock may have been held at the fork
        self._lock = threading.Lock()
        self._waiting: dict[int, Waiting] = {}
        threading.Thread(target=self._run, name="s3-stall-watch", daemon=True).start()

    @contextlib.contextmanager
    def watch(self, what: str, warn_after: float, give_up: float) -> Iterator[Waiting]:
        self._start()
        token, waiting = next(self._tokens), Waiting(what, warn_after, give_up)
        with self._lock:
            self._waiting[token] = waiting
        try:
            yield waiting
        finally:
            with self._lock:
                self._waiting.pop(token, None)

    def _run(self) -> None:
        while True:
            time.sleep(self.every)
            due = []
            with self._lock:
                for w in self._waiting.values():
                    idle = w.idle()
                    if idle >= w.next_warning:
                        w.next_warning += w.warn_after
                        due.append((w, idle))
            for w, idle in due:
                log.warning(
                    "S3 %s: no answer for %.0f s (slow or not answering; given up at %g s)", w.what, idle, w.give_up
                )


STALLS = StallWatch()
