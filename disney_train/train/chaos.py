"""Failure drills: make a training worker die or slow down at a chosen step.

Set `DISNEY_TRAIN_CHAOS` in the environment of `disney-train train` (a staging RayJob, or the
tests); the driver hands it to every worker. A list of `;`-separated actions:

    kill:STEP:RANK:ONCE_FILE    SIGKILL rank RANK's own process right after step STEP, if
                                ONCE_FILE does not exist yet (it is created first, so the
                                restarted group goes on)
    pace:SECONDS:HOLD_FILE      sleep SECONDS after every step while HOLD_FILE exists

Nothing happens when the variable is unset, which is always the case in production.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

ENV = "DISNEY_TRAIN_CHAOS"


def after_step(step: int, rank: int, spec: str | None) -> None:
    if not spec:
        return
    for action in filter(None, (a.strip() for a in spec.split(";"))):
        kind, *args = action.split(":")
        if kind == "kill" and int(args[0]) == step and int(args[1]) == rank:
            once = Path(args[2])
            try:
                fd = os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                continue
            os.write(fd, f"{os.getpid()}\n".encode())
            os.close(fd)
            os.kill(os.getpid(), signal.SIGKILL)
        elif kind == "pace" and Path(args[1]).exists():
            time.sleep(float(args[0]))
