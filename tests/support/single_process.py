"""DeepSpeed at world size 1 in this process, on the CPU and gloo: the engine's own start (`worker.train_loop`:
the accelerator, the shared-memory ops and, with `muon=False`, DeepSpeed's Muon left out) without Ray.
Used by the test of `skip_muon` and by the benchmarks' plain loop in DeepSpeed."""

from __future__ import annotations

import os
import socket
from typing import Any

import torch

from disney_train.train.engine import Placement, set_accelerator_env
from disney_train.train.zero_state import skip_muon, skip_shm_comm

CPU = Placement("cpu", "fp32", "gloo")


def init_single_process(muon: bool = False) -> None:
    """The process group of one rank (a free loopback port) and DeepSpeed's CPU accelerator."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    set_accelerator_env(CPU)
    import deepspeed

    skip_shm_comm()
    if not muon:
        skip_muon()
    deepspeed.init_distributed(dist_backend="gloo")


def engine(model: torch.nn.Module, params: list[torch.nn.Parameter], conf: dict[str, Any]) -> Any:
    import deepspeed

    out, *_ = deepspeed.initialize(model=model, model_parameters=params, config=conf)
    return out
