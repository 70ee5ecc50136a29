"""What Ray processes listen on, sampled while a run goes on."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import psutil

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


@dataclass
class Listener:
    pid: int
    name: str
    address: str
    port: int


@dataclass
class ListenWatch:
    """Samples the listening TCP sockets of `root`'s descendants every `every` seconds."""

    root: int
    every: float = 0.3
    seen: dict[tuple[int, str, int], Listener] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._names: dict[int, str] = {}

    def _sample(self) -> None:
        try:
            procs = psutil.Process(self.root).children(recursive=True)
        except psutil.NoSuchProcess:
            return
        for proc in procs:
            try:
                # a worker that is retitling itself (setproctitle) can show an empty cmdline for a moment:
                # its short name stands in, and any sample's full cmdline of that pid replaces it (below)
                cmdline = " ".join(proc.cmdline())[:120]
                if cmdline:
                    self._names[proc.pid] = cmdline
                name = cmdline or proc.name()
                for c in proc.net_connections(kind="tcp"):
                    if c.status == psutil.CONN_LISTEN:
                        self.seen[(proc.pid, c.laddr.ip, c.laddr.port)] = Listener(
                            proc.pid, name, c.laddr.ip, c.laddr.port
                        )
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._sample()

    def __enter__(self) -> ListenWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def beyond_loopback(self) -> list[Listener]:
        return [
            Listener(v.pid, self._names.get(v.pid) or v.name, v.address, v.port)
            for v in self.seen.values()
            if v.address not in LOOPBACK
        ]
