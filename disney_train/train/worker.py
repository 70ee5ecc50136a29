"""The Ray Train entry point of one worker: the process group, the accelerator, the metrics endpoint, then
the training in named phases (`trainer.Trainer`).

Ray Train runs `train_loop` in every worker of the group with the process group already set up
(gloo on CPU, NCCL on GPU). On a restart (a failed worker, or the group resized by elastic
training) Ray calls it again in the new group and it resumes from the latest committed checkpoint
of the run, at whatever world size the new group has.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from disney_train.config import RunConfig
from disney_train.metrics.exporter import WorkerMetrics, cuda_reading
from disney_train.train.dist import Dist, ray_dist
from disney_train.train.engine import placement, set_accelerator_env
from disney_train.train.trainer import Trainer
from disney_train.train.zero_state import skip_muon, skip_shm_comm


def train_loop(config: dict[str, Any]) -> None:
    """The Ray Train loop (`disney-train train` and the operator's RayJob both end up here)."""
    cfg = RunConfig.model_validate(config["run"])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    dist = ray_dist()
    place = placement(cfg, torch.cuda.is_available())
    if place.device == "cuda":
        dist.device = torch.device(f"cuda:{dist.local_rank}")
    set_accelerator_env(place)
    import deepspeed

    if place.device == "cpu":
        skip_shm_comm()
    skip_muon()
    deepspeed.init_distributed(dist_backend=place.backend)  # Ray's process group is reused
    metrics = _serve_metrics(cfg, dist, place.device)
    try:
        # No clean-up on an error: the other ranks may be inside a collective that a barrier would
        # never match. The error ends this worker; Ray then tears the whole group down.
        Trainer(cfg, dist, place, metrics, config.get("chaos")).run(cache_only=bool(config.get("cache_only")))
        shutdown(dist)
    finally:
        metrics.close()  # frees the port for this rank's next process


def _serve_metrics(cfg: RunConfig, dist: Dist, device: str) -> WorkerMetrics:
    """This worker's metrics, served on its Ray node's IP (the pod IP; 127.0.0.1 locally)."""
    import ray.util

    index = dist.local_rank
    metrics = WorkerMetrics(cfg.name, dist.rank, (lambda: cuda_reading(index)) if device == "cuda" else None)
    if cfg.metrics.port:
        metrics.serve(ray.util.get_node_ip_address(), cfg.metrics.port + dist.local_rank)  # type: ignore[no-untyped-call]
    return metrics


def shutdown(dist: Dist) -> None:
    """Free the engine, line the ranks up, then tear the process group down (an abrupt exit
    aborted a gloo thread about one run in eight)."""
    import gc

    gc.collect()
    if torch.distributed.is_initialized():
        try:
            dist.barrier()
        finally:
            torch.distributed.destroy_process_group()
