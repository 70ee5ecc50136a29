"""Elastic training on a real multi-node Ray cluster (`ray.cluster_utils.Cluster`, all on loopback):
the worker group follows the nodes' CPUs, 1 -> 2 -> 1 workers, and each new group resumes from the
latest checkpoint with its optimizer state, so every step is trained exactly once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from disney_train.runs import RunFiles
from disney_train.train.checkpoint import CheckpointStore
from disney_train.train.launch import LOCAL_ENV, launch
from tests.support.training import train_config

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]

# Paced at 0.2 s a step until the shrink (step ~50 here: each resize goes back to a checkpoint),
# then the rest at full speed; four times that, so that the run cannot end before the test has
# resized it (if it does, the wait says so at once).
STEPS = 200


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    import ray
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    for key, value in LOCAL_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
    # a group that cannot start (its node just left) gives up after 15 s instead of 60
    monkeypatch.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "15")
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    ray.init(address=c.address)
    yield c
    ray.shutdown()
    c.shutdown()  # type: ignore[no-untyped-call]


def _wait(what: str, check: Callable[[], bool], timeout: float, failed: Callable[[], BaseException | None]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if failed() is not None:
            raise AssertionError(f"training failed while waiting for {what}") from failed()
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_workers_follow_the_nodes_and_resume_from_checkpoints(
    cluster: Any, tiny_t2v: Path, packed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hold = tmp_path / "hold"
    hold.touch()
    monkeypatch.setenv("DISNEY_TRAIN_CHAOS", f"pace:0.2:{hold}")  # 0.2 s a step while the test resizes
    cfg = train_config(
        tiny_t2v,
        packed,
        tmp_path / "out",
        **{
            "name": "elastic",
            "optim.max_steps": STEPS,
            "train.workers.replicas": 1,
            "train.workers.min_replicas": 1,
            "train.workers.max_replicas": 2,
            "train.workers.resize_check_seconds": 2,
            "train.workers.max_failures": 3,
            "train.report_every": 5,
            "train.checkpoint_every": 5,
        },
    )
    files = RunFiles(cfg)
    error: list[BaseException] = []

    def run() -> None:
        try:
            launch(cfg, storage_path=tmp_path / "ray")
        except BaseException as err:
            error.append(err)

    def failed() -> BaseException | None:
        if error:
            return error[0]
        if progress().get("phase") == "finished":  # before the resizes: STEPS too few for this machine
            return AssertionError(f"the run reached its last step ({STEPS}) before the test resized it")
        return None

    def progress() -> dict[str, Any]:
        return files.read_progress() or {}

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    _wait("training on 1 worker", lambda: progress().get("step", 0) >= 10, 240, failed)  # Ray and torch start
    assert progress()["world_size"] == 1

    node = cluster.add_node(num_cpus=1)  # Cluster wants the main thread
    _wait("the group to grow to 2 workers", lambda: progress().get("world_size") == 2, 120, failed)
    grown_at = progress()["step"]
    _wait("steps on 2 workers", lambda: progress().get("step", 0) >= grown_at + 10, 60, failed)

    cluster.remove_node(node)
    _wait("the group to shrink to 1 worker", lambda: progress().get("world_size") == 1, 150, failed)
    hold.unlink()  # full speed to the end
    thread.join(timeout=300)
    assert not thread.is_alive(), "training did not finish"
    assert not error, error

    store = CheckpointStore(files.store, 10)
    latest = store.latest()
    assert latest == STEPS
    history = store.load(latest).state["metrics"]
    steps = [h["step"] for h in history]
    assert steps == list(range(5, STEPS + 1, 5)), steps  # every step trained once, none lost or repeated
    sizes = [h["world_size"] for h in history]
    changes = [s for i, s in enumerate(sizes) if i == 0 or s != sizes[i - 1]]
    assert changes == [1, 2, 1], sizes
    assert history[-1]["restarts"] >= 2
    final = files.read_progress()
    assert final is not None and final["phase"] == "finished"
