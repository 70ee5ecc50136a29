"""Queues on a shared GPU cluster: VideoFineTunes admitted by Kueue (its controller built from its module,
installed by its own chart in `make cluster`), whole or not at all, and preempted for higher-priority runs.

The chart's example queues (conftest's install): a ClusterQueue of 2 GPUs (`nvidia.com/gpu`, the GPU node's
stand-in extended resource) and the LocalQueue QUEUE in the jobs' namespace. Each run here asks for 2 worker
pods of 1 GPU each: the kubelet and the scheduler count the GPUs, Kueue admits by them, and the workers train
on the CPU (the install's jobDefaults.workers.device=cpu: nothing here runs CUDA).

1. Two runs of 2 GPUs each: the second waits Queued (Kueue's reason in its status, not one pod of it
   anywhere) until the first ends, then runs to the end.
2. A high-priority run preempts a low one: the low one's Ray cluster stops, its status says Preempted and
   why; once the high one ends, Kueue admits the low one again and it trains on from its latest checkpoint,
   every step once.
A run without a queue name (every other module's) behaves as before, with Kueue in the cluster: Kueue leaves
RayJobs without its label alone (test_smoke checks that no Workload was made for its run).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from disney_operator.status import parse_time
from tests.e2e.jobs import (
    JOBS_NS,
    apply,
    checkpoints,
    clear,
    dump,
    phase_is,
    progress,
    ray_pods,
    smoke_job,
    vft,
)
from tests.support.cluster import Kube, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(2400)]

QUEUE = "gpus"  # the chart's example LocalQueue in JOBS_NS (tests/e2e/conftest.py)
LOW, HIGH = "disney-train-e2e-low", "disney-train-e2e-high"  # PriorityClasses the install allows
EVERY = 10  # steps between reports and between checkpoints
FIRST_STEPS, SECOND_STEPS = 600, 100
FIRST, SECOND, LOW_RUN, HIGH_RUN = "queued-first", "queued-second", "preempted-low", "preempting-high"


def queued_job(s3: dict[str, str], name: str, steps: int, priority: str | None = None) -> dict[str, Any]:
    """The smoke job in the queue: 2 worker pods of 1 GPU each, no validation or evaluation."""
    job = smoke_job(s3, name)
    spec = job["spec"]
    spec["queueName"] = QUEUE
    spec["workers"] = {
        "replicas": 2,
        "maxFailures": 5,
        "resources": {"gpus": 1, "cpu": "1", "memory": "5Gi", "sharedMemory": "1Gi"},
    }
    if priority:
        spec["placement"]["priorityClassName"] = priority
    spec["training"]["optim"]["max_steps"] = steps
    spec["training"]["train"] |= {"report_every": EVERY, "checkpoint_every": EVERY, "keep_checkpoints": 2}
    spec["training"]["validation"] = {"every": 0, "at_end": False}
    del spec["evaluation"]
    return job


def queue_of(kube: Kube, name: str) -> dict[str, Any]:
    return dict(vft(kube, name).get("status", {}).get("queue") or {})


def start(kube: Kube, s3: dict[str, str], job: dict[str, Any]) -> None:
    name = job["metadata"]["name"]
    kube.kubectl("-n", JOBS_NS, "delete", "vft", name, "--ignore-not-found", "--wait")
    clear(s3, f"smoke/{name}/")
    apply(kube, job)


def no_pods(kube: Kube, name: str) -> None:
    """The run's Ray pods gone, not only deleted: a deleted pod's workers train on through its grace period."""
    wait_until(f"{name}'s Ray pods gone", lambda: True if not ray_pods(kube, name, terminating=True) else None, 300)


def gone(kube: Kube, *names: str) -> None:
    for name in names:
        kube.kubectl("-n", JOBS_NS, "delete", "vft", name, "--ignore-not-found", "--wait")
    for name in names:
        no_pods(kube, name)


def past(kube: Kube, name: str, step: int) -> bool | None:
    """The run's status.progress is past `step` (None: not yet)."""
    return True if (progress(kube, name).get("step") or 0) > step else None


def admitted(kube: Kube, name: str) -> dict[str, Any] | None:
    q = queue_of(kube, name)
    return q if q.get("admitted") else None


def waited(kube: Kube, name: str, what: str, probe: Any, timeout: float) -> Any:
    try:
        return wait_until(what, probe, timeout)
    except AssertionError as err:
        raise AssertionError(f"{err}\n{dump(kube, name)}\nqueue: {json.dumps(queue_of(kube, name))}") from None


@pytest.fixture(scope="module")
def priorities(kube: Kube, installed: None) -> Iterator[None]:
    """Two PriorityClasses: Kueue orders and preempts by their values; preemptionPolicy Never, so that the
    scheduler preempts no pod of its own accord (the GPUs are Kueue's to share)."""
    classes = [
        {
            "apiVersion": "scheduling.k8s.io/v1",
            "kind": "PriorityClass",
            "metadata": {"name": name},
            "value": value,
            "preemptionPolicy": "Never",
            "description": "disney-train e2e",
        }
        for name, value in ((LOW, 100), (HIGH, 1000))
    ]
    kube.kubectl("apply", "-f", "-", stdin="\n---\n".join(json.dumps(c) for c in classes))
    yield
    gone(kube, FIRST, SECOND, LOW_RUN, HIGH_RUN)


def test_the_second_run_waits_queued_until_the_first_ends_then_runs(
    kube: Kube, s3: dict[str, str], priorities: None
) -> None:
    # the first long enough to be running while the second is seen waiting (the status of a waiting run is
    # refreshed at the operator's resync at the latest)
    start(kube, s3, queued_job(s3, FIRST, FIRST_STEPS))
    first_q = waited(kube, FIRST, "the first run admitted", lambda: admitted(kube, FIRST), 300)
    start(kube, s3, queued_job(s3, SECOND, SECOND_STEPS))

    def held() -> dict[str, Any] | None:
        q = queue_of(kube, SECOND)
        return q if phase_is(kube, SECOND, "Queued") and q.get("workload") and q.get("message") else None

    q = waited(kube, SECOND, "the second run Queued with Kueue's reason", held, 120)
    assert q["admitted"] is False and q["name"] == QUEUE, q
    assert "nvidia.com/gpu" in q["message"], q  # Kueue's words: the GPU quota is what it waits for
    # its place, through Kueue's visibility API (an aggregated API: the operator's RBAC, the API server's proxy)
    q = waited(
        kube,
        SECOND,
        "its place in the queue",
        lambda: q if "positionInLocalQueue" in (q := queue_of(kube, SECOND)) else None,
        120,
    )
    assert q["positionInLocalQueue"] == 0, q  # next
    assert not ray_pods(kube, SECOND, terminating=True)  # whole or nothing: none of its pods holds a GPU
    print(f"first admitted: {first_q}; second waits: {q['reason']}: {q['message']}")

    waited(kube, FIRST, "the first run Succeeded", lambda: phase_is(kube, FIRST, "Succeeded"), 900)
    freed = time.monotonic()
    # its Ray cluster goes with the quota Kueue frees (a cluster kept for its logs would hold the CPUs and
    # GPUs Kueue lends to the second run: its workers stayed Pending, seen here before queued runs' ttl 0)
    no_pods(kube, FIRST)
    waited(kube, SECOND, "the second run admitted", lambda: admitted(kube, SECOND), 300)
    admitted_in = time.monotonic() - freed
    waited(kube, SECOND, "the second run training", lambda: past(kube, SECOND, 0), 600)
    training_in = time.monotonic() - freed
    waited(kube, SECOND, "the second run Succeeded", lambda: phase_is(kube, SECOND, "Succeeded"), 900)
    first, second = vft(kube, FIRST)["status"], vft(kube, SECOND)["status"]
    assert second["progress"]["step"] == SECOND_STEPS and second["progress"]["worldSize"] == 2, second["progress"]
    ended, admitted_at = parse_time(first["completionTime"]), parse_time(second["queue"]["admittedTime"])
    assert ended is not None and admitted_at is not None
    by_kueue = (admitted_at - ended).total_seconds()
    assert by_kueue >= 0, (first, second)  # admitted once the first had ended, not before
    print(
        f"quota free (first Succeeded) -> second admitted in {by_kueue:.0f} s by Kueue's and KubeRay's times, "
        f"seen in its status in {admitted_in:.0f} s, training (status.progress) in {training_in:.0f} s"
    )


def test_a_high_priority_run_preempts_a_low_one_which_resumes_from_its_checkpoint(
    kube: Kube, s3: dict[str, str], priorities: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    start(kube, s3, queued_job(s3, LOW_RUN, 1_000_000, LOW))  # open-ended: deleted once it has resumed
    waited(
        kube,
        LOW_RUN,
        "the low run training",
        lambda: past(kube, LOW_RUN, 2 * EVERY - 1),
        600,
    )
    rayjob = vft(kube, LOW_RUN)["status"]["rayJob"]["name"]
    start(kube, s3, queued_job(s3, HIGH_RUN, 40, HIGH))
    started = time.monotonic()

    def preempted() -> dict[str, Any] | None:
        q = queue_of(kube, LOW_RUN)
        return q if phase_is(kube, LOW_RUN, "Queued") and q.get("preemptions", 0) >= 1 else None

    q = waited(kube, LOW_RUN, "the low run preempted", preempted, 300)
    assert q.get("lastPreemption"), q
    no_pods(kube, LOW_RUN)
    stopped_in = time.monotonic() - started
    at = checkpoints(kube, s3, LOW_RUN, monkeypatch)[1].latest()
    assert at is not None and at >= 2 * EVERY
    print(f"low run preempted: {q['lastPreemption']}; its pods gone in {stopped_in:.0f} s; checkpoint {at}")

    waited(kube, HIGH_RUN, "the high run Succeeded", lambda: phase_is(kube, HIGH_RUN, "Succeeded"), 900)
    waited(kube, LOW_RUN, "the low run admitted again", lambda: admitted(kube, LOW_RUN), 300)
    waited(
        kube,
        LOW_RUN,
        "the low run training past its checkpoint",
        lambda: past(kube, LOW_RUN, at + EVERY),
        600,
    )
    status = vft(kube, LOW_RUN)["status"]
    assert status["rayJob"]["name"] == rayjob and status.get("attempt", 1) == 1, status  # Kueue resumed the same RayJob
    store = checkpoints(kube, s3, LOW_RUN, monkeypatch)[1]
    latest = waited(
        kube, LOW_RUN, "a checkpoint past the preemption", lambda: n if (n := store.latest() or 0) > at else None, 300
    )
    history = store.load(latest).state["metrics"]
    steps = [h["step"] for h in history]
    assert steps == list(range(EVERY, latest + 1, EVERY)), steps  # every step trained once: none lost or repeated
    assert max(h["restarts"] for h in history) >= 1, history[-1]
    print(f"low run resumed from {at}, at {latest} now; preemptions {queue_of(kube, LOW_RUN)['preemptions']}")
