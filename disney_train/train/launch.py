"""Launching a run on Ray Train (V2): the worker group, its elastic range, failure handling.

`disney-train train --config run.yaml` calls `launch`: on a cluster (the operator's RayJob) it
joins the running Ray cluster; locally it starts Ray bound to 127.0.0.1 only.
Checkpoints are ours (the run's prefix on S3 or disk, see `checkpoint.py`); Ray's own storage
path only holds Ray's run bookkeeping.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from disney_train.config import RunConfig
from disney_train.errors import UserError
from disney_train.runs import RunFiles, RunOwnedError, checkpoint_identity_error, identity_mismatch

log = logging.getLogger(__name__)

LOCAL_HOST = "127.0.0.1"


class RunFinishedError(RuntimeError):
    """The run of this name already finished; a rerun would train nothing."""


class TrainingError(UserError, RuntimeError):
    """The worker group failed for good (after FailureConfig's restarts); the message says why."""


def _worker_errors(err: BaseException) -> str:
    """Ray wraps each worker's exception; keep the first distinct messages, not the tracebacks."""
    errors = getattr(err, "worker_failures", None) or getattr(err, "errors", None)
    found: list[str] = []
    if isinstance(errors, dict):
        for rank, e in sorted(errors.items()):
            cause = getattr(e, "cause", None) or e
            text = f"{type(cause).__name__}: {str(cause).strip().splitlines()[-1] if str(cause).strip() else ''}"
            if text not in found:
                found.append(f"rank {rank}: {text}")
    return "; ".join(found[:3]) or f"{type(err).__name__}: {str(err).strip()[:2000]}"


@dataclass(frozen=True)
class LaunchPlan:
    """What Ray is asked for: pure, from the configuration and the cluster's GPU count."""

    num_workers: int | tuple[int, int]
    use_gpu: bool
    resources_per_worker: dict[str, float]
    backend: str
    max_failures: int
    resize_check_seconds: float


def launch_plan(cfg: RunConfig, cluster_gpus: float) -> LaunchPlan:
    w = cfg.train.workers
    use_gpu = w.device == "cuda" or (w.device == "auto" and cluster_gpus > 0)
    elastic = w.min_replicas is not None or w.max_replicas is not None
    num: int | tuple[int, int] = w.bounds if elastic else w.replicas
    res: dict[str, float] = {"CPU": w.cpus_per_worker}
    if use_gpu:
        res["GPU"] = 1.0
    return LaunchPlan(num, use_gpu, res, "nccl" if use_gpu else "gloo", w.max_failures, w.resize_check_seconds)


LOCAL_ENV = {
    # Ray resolves its node IP to the machine's external address on Linux unless "clusters" are
    # off; off, every Ray server (GCS, raylet, workers, agents) listens on 127.0.0.1 only.
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "GLOO_SOCKET_IFNAME": "lo",  # gloo's data connections stay on loopback
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",  # a report() waits for the controller's poll
    "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
    # no idle Python workers started ahead (one per CPU): a local run starts the few it uses (the Train
    # controller and its workers); measured on make run: 8 worker processes instead of 10, ~1 s sooner
    "RAY_enable_worker_prestart": "0",
    "RAY_prestart_worker_first_driver": "0",
    # a local run has no node to be preempted: no PreemptionWatcher actor (a process, ~115 MiB PSS)
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
}


_last_local_logs: list[str] = []  # the logs folder of the local Ray this process started last


def local_logs() -> str | None:
    """Where the workers of the local Ray this process started last wrote their logs (None: none started)."""
    return _last_local_logs[-1] if _last_local_logs else None


def local_ray_init(num_cpus: int | None = None, log_to_driver: bool = True) -> None:
    """Start a local Ray on loopback only (no dashboard). Not for joining a cluster: the settings
    it makes are process-wide and would keep a multi-node cluster from forming.

    One listener remains on all interfaces during training: torch's TCPStore rendezvous of the
    process group (rank 0's MASTER_PORT), which torch binds to `::` whatever MASTER_ADDR says."""
    for key, value in LOCAL_ENV.items():
        os.environ.setdefault(key, value)
    import ray
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False  # read at import; the variable above covers children
    ray.init(
        address="local",  # a new cluster of our own, never one found in /tmp/ray
        num_cpus=num_cpus,
        _node_ip_address=LOCAL_HOST,
        include_dashboard=False,
        configure_logging=False,
        log_to_driver=log_to_driver,  # False: the workers' lines stay in their log files (local_logs())
    )
    node = ray._private.worker._global_node
    if node is not None:
        _last_local_logs.append(node.get_logs_dir_path())


def ensure_ray(address: str | None, num_cpus: int | None, log_to_driver: bool = True) -> bool:
    """Connect to `address` (or RAY_ADDRESS), else start a local Ray. True when we started it."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, configure_logging=False)
        return False
    local_ray_init(num_cpus, log_to_driver)
    return True


def launch(
    cfg: RunConfig,
    *,
    storage_path: Path,
    cache_only: bool = False,
    address: str | None = None,
    num_cpus: int | None = None,
    restart_finished: bool = False,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    files: RunFiles | None = None,
    worker_lines: bool = True,
) -> dict[str, Any]:
    """Run (or resume) `cfg` to the end on a Ray worker group; returns the last reported metrics. Without
    `worker_lines`, a local Ray keeps its workers' lines in their log files (`local_logs()`): an error still
    ends the run with the workers' own words."""
    import ray
    from ray.train import FailureConfig, ScalingConfig
    from ray.train import RunConfig as RayRunConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from disney_train.train import chaos
    from disney_train.train.worker import train_loop

    files = files or RunFiles(cfg)
    try:
        files.claim(cfg.output.owner)  # before anything of the run is read: it may be another's
    except RunOwnedError as err:
        raise TrainingError(f"run {cfg.name!r} refused: {err}") from None
    done = files.finished()
    if done is not None and not cache_only and not restart_finished:
        mismatch = identity_mismatch(files.final_config() or {}, cfg)
        if mismatch is not None:
            raise TrainingError(
                f"run {cfg.name!r} at {files.uri} finished as another run ({mismatch}): "
                "pick another run name (or output) to train this one"
            )
        asked = cfg.optim.max_steps
        if asked is not None and asked > int(done["step"]):
            raise TrainingError(
                f"run {cfg.name!r} finished at step {done['step']} ({files.uri}); optim.max_steps {asked} asks for "
                "more, but a finished run is not trained on (its LoRA is final): train a new run (another name), "
                "or delete the run's prefix to train this one again from the start"
            )
        raise RunFinishedError(
            f"run {cfg.name!r} already finished at step {done['step']} ({files.uri}; LoRA {done['lora']}). "
            "Nothing to do: pick another run name to train again."
        )
    if not cache_only:
        refusal = _resume_refusal(files, cfg)
        if refusal is not None:  # before any worker (or GPU) is started for it
            raise TrainingError(f"run {cfg.name!r} cannot resume: {refusal}")
    started = ensure_ray(address, num_cpus, log_to_driver=worker_lines)
    try:
        plan = launch_plan(cfg, float(ray.cluster_resources().get("GPU", 0)))  # type: ignore[no-untyped-call]
        trainer = TorchTrainer(
            train_loop,
            train_loop_config={
                "run": cfg.model_dump(mode="json"),
                "cache_only": cache_only,
                "chaos": os.environ.get(chaos.ENV),
            },
            # validation renders on rank 0 while the others wait in a barrier: allow it hours, not 30 min
            torch_config=TorchConfig(backend=plan.backend, timeout_s=4 * 3600),
            scaling_config=ScalingConfig(
                num_workers=plan.num_workers,  # type: ignore[arg-type]  # V2 takes (min, max)
                use_gpu=plan.use_gpu,
                resources_per_worker=plan.resources_per_worker,
                elastic_resize_monitor_interval_s=plan.resize_check_seconds,  # type: ignore[call-arg]  # V2
            ),
            run_config=RayRunConfig(
                name=f"{cfg.name}-cache" if cache_only else cfg.name,
                storage_path=str(storage_path.resolve()),
                failure_config=FailureConfig(max_failures=plan.max_failures),
            ),
        )
        with _ProgressWatcher(files, on_progress), _own_sigint():
            try:
                result = trainer.fit()
            except Exception as err:
                raise TrainingError(f"run {cfg.name!r} failed: {_worker_errors(err)}") from err
        if result.error is not None:
            raise TrainingError(f"run {cfg.name!r} failed: {_worker_errors(result.error)}") from result.error
        return files.read_progress() or {}
    finally:
        if started:
            ray.shutdown()


def _resume_refusal(files: RunFiles, cfg: RunConfig) -> str | None:
    """Why the run's newest checkpoint (whose configuration reads) cannot resume `cfg`, if it cannot.
    The workers check again when they load it."""
    from disney_train.train.checkpoint import CheckpointStore

    ckpts = CheckpointStore(files.store, cfg.train.keep_checkpoints)
    for step in reversed(ckpts.committed()):
        saved = ckpts.saved_config(step)
        if saved is not None:
            return checkpoint_identity_error(ckpts.url(step), saved, cfg)
    return None


@contextlib.contextmanager
def _own_sigint() -> Iterator[None]:
    """Ray Train's fit() installs a SIGINT handler (abort the run) and leaves it behind: after the
    run, Ctrl-C would call a controller that is gone. Put the caller's handler back."""
    main = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGINT) if main else None
    try:
        yield
    finally:
        if before is not None:  # None: not ours to restore (another thread, or a handler set outside Python)
            signal.signal(signal.SIGINT, before)


class _ProgressWatcher:
    """Polls the run's progress.json while the workers train, for a progress bar on the driver."""

    def __init__(self, files: RunFiles, callback: Callable[[dict[str, Any]], None] | None, every: float = 1.0) -> None:
        self.files, self.callback, self.every = files, callback, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="progress-watcher", daemon=True)

    def _poll(self) -> None:
        seen = None
        while not self._stop.wait(self.every):
            try:
                p = self.files.read_progress()
            except Exception:  # a progress bar never fails a run
                continue
            if p is not None and p != seen and self.callback is not None:
                seen = p
                self.callback(p)

    def __enter__(self) -> _ProgressWatcher:
        if self.callback is not None:
            self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        if self.callback is None:
            return
        try:
            p = self.files.read_progress()
        except Exception as err:
            if kind is None:
                raise
            # training failed: its error is the one to tell, not this side read's (S3 down takes both)
            log.debug("the last progress read failed too: %s", err)
            return
        if p is not None:
            self.callback(p)
