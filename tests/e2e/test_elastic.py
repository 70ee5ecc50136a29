"""What a user does to a running job, on one elastic run (workers 1..2), in order: `kubectl scale` up (the
real Ray autoscaler in the head pod adds the worker pod, Ray Train grows into it from its checkpoint),
a worker pod deleted, the head pod deleted, suspend and resume; then the run ends Succeeded and its last
checkpoint's history shows every step trained once, none lost or repeated, at the sizes it went through.

The tests share the run and depend on the one before. Each resize or restart goes back to the latest
checkpoint. The run is made longer (STEPS) than the tests can take at any pace, and its end is set by the
user's other lever: while it is suspended, `max_steps` is lowered to a little past its last checkpoint (a
changed spec: the resume is a new RayJob from that checkpoint). A run long enough by its step count alone
was not: once Ray Train's reports left the step's path, its 600 steps took 90 s and ended before the first
resize (CI of stop 26); if the run ends before a wait is met, the wait says so.
"""

from __future__ import annotations

import base64
import functools
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from disney_train.metrics.prometheus import LocalPrometheus
from tests.e2e.jobs import (
    BUCKET,
    JOBS_NS,
    RELEASE_NS,
    apply,
    bucket,
    checkpoints,
    clear,
    dump,
    keys,
    phase_is,
    progress,
    ray_pods,
    smoke_job,
    vft,
)
from tests.e2e.monitoring import PODMONITOR, cluster_prometheus
from tests.support.cluster import Kube, wait_until

# (the timeout counts the module's set-up too: helm install, data pack, the run's first steps)
pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1800)]

NAME = "disney-train-elastic"
STEPS = 1_000_000  # never reached: lowered while suspended (test_suspend_...)
EVERY = 10  # steps between reports and between checkpoints
AFTER_RESUME = 10 * EVERY  # the steps the run trains after its resume, to its end


def elastic_job(s3: dict[str, str]) -> dict[str, Any]:
    """The smoke job made elastic (1..2 worker pods), long, without validation or evaluation."""
    job = smoke_job(s3, NAME)
    spec = job["spec"]
    spec["workers"] |= {"replicas": 1, "minReplicas": 1, "maxReplicas": 2, "maxFailures": 5}
    spec["training"]["optim"]["max_steps"] = STEPS
    spec["training"]["train"] |= {"report_every": EVERY, "checkpoint_every": EVERY, "keep_checkpoints": 2}
    spec["training"]["validation"] = {"every": 0, "at_end": False}
    del spec["evaluation"]
    spec["backoffLimit"] = 2  # the lost head is a failed attempt: the next resumes
    return job


def max_steps(kube: Kube) -> int:
    return int(vft(kube, NAME)["spec"]["training"]["optim"]["max_steps"])


def training(kube: Kube, what: str, check: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
    """Wait for status.progress to pass `check`; fail if the run ends first, saying where it was."""
    last = max_steps(kube)

    def probe() -> dict[str, Any] | None:
        p = progress(kube, NAME)
        if p and check(p):
            return p
        if p.get("step") == last:
            raise AssertionError(f"the run reached its last step ({last}) while waiting for {what}")
        return None

    try:
        return wait_until(what, probe, timeout)
    except AssertionError as err:
        raise AssertionError(f"{err}\n{dump(kube, NAME)}") from None


def running_workers(kube: Kube) -> list[str]:
    pods = ray_pods(kube, NAME, "worker")
    return sorted(p["metadata"]["name"] for p in pods if p["status"].get("phase") == "Running")


@pytest.fixture(scope="module")
def run(kube: Kube, s3: dict[str, str], installed: None) -> Iterator[dict[str, Any]]:
    """The run applied and training on one worker; deleted at the end, so that its Ray cluster (kept for
    the chart's clusterTTLSeconds after it ends) does not hold the node's CPUs from the next module's jobs."""
    kube.kubectl("-n", JOBS_NS, "delete", "vft", NAME, "--ignore-not-found", "--wait")
    clear(s3, f"smoke/{NAME}/")
    apply(kube, elastic_job(s3))
    yield training(kube, "training on 1 worker", lambda p: p.get("step", 0) >= 2 * EVERY, 600)
    kube.kubectl("-n", JOBS_NS, "delete", "vft", NAME, "--ignore-not-found", "--wait")
    wait_until("the run's Ray pods gone", lambda: True if not ray_pods(kube, NAME, terminating=True) else None, 300)


def test_scale_up_adds_a_worker_pod_that_training_grows_into(kube: Kube, run: dict[str, Any]) -> None:
    assert run["worldSize"] == 1, run
    assert len(running_workers(kube)) == 1, dump(kube, NAME)
    started = time.monotonic()
    kube.kubectl("-n", JOBS_NS, "scale", f"vft/{NAME}", "--replicas=2")
    wait_until("a second worker pod running", lambda: True if len(running_workers(kube)) == 2 else None, 300)
    pod_at = time.monotonic() - started
    grown = training(kube, "training on 2 workers", lambda p: p.get("worldSize") == 2, 300)
    took = time.monotonic() - started
    training(kube, "steps on 2 workers", lambda p: p["step"] >= grown["step"] + 2 * EVERY, 300)
    assert vft(kube, NAME)["status"]["workers"]["desired"] == 2
    print(f"kubectl scale -> worker pod running in {pod_at:.0f} s, training on 2 workers in {took:.0f} s")


@pytest.fixture(scope="module")
def prometheus(kube: Kube, installed: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPrometheus]:
    with cluster_prometheus(kube, tmp_path_factory.mktemp("prometheus"), port=19090) as prom:
        yield prom


def test_prometheus_scrapes_every_worker_pod_by_the_charts_podmonitor(
    kube: Kube, run: dict[str, Any], prometheus: LocalPrometheus
) -> None:
    workers = set(running_workers(kube))
    assert len(workers) == 2, dump(kube, NAME)

    def scraped() -> list[dict[str, Any]] | None:
        series = prometheus.query(f'disney_train_loss{{videofinetune="{NAME}"}}')
        return series if {s["metric"].get("pod") for s in series} >= workers else None

    series = wait_until(f"the loss of worker pods {sorted(workers)} in Prometheus", scraped, 120)
    for s in series:
        m = s["metric"]
        assert (m["namespace"], m["job"]) == (JOBS_NS, f"{RELEASE_NS}/{PODMONITOR}"), m
        assert "endpoint" not in m, m  # the chart's endpoint names no port: the operator sets no such label
    scraped_pods = {t["labels"].get("pod") for t in prometheus.targets()}
    heads = {p["metadata"]["name"] for p in ray_pods(kube, NAME, "head")}
    assert scraped_pods >= workers and not scraped_pods & heads, scraped_pods  # the workers, not the head


def test_the_ray_head_answers_only_with_the_runs_token(kube: Kube, run: dict[str, Any]) -> None:
    """Issue 16, finding 3: any pod could submit a job to the head (and read the tenant's S3 keys from its
    environment). Asked from outside the run (this host reaches the pod network), the job API refuses a
    request without the token KubeRay made for the run, and answers one with it."""
    (head,) = ray_pods(kube, NAME, "head")
    url = f"http://{head['status']['podIP']}:8265/api/jobs/"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=10)
    assert refused.value.code in (401, 403), refused.value
    cluster = head["metadata"]["labels"]["ray.io/cluster"]
    secret = json.loads(kube.kubectl("-n", JOBS_NS, "get", "secret", cluster, "-o", "json").stdout)
    token = base64.b64decode(secret["data"]["auth_token"]).decode()
    asked = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(asked, timeout=10) as answer:
        assert answer.status == 200 and isinstance(json.load(answer), list)
    # the run's NetworkPolicy, as the real API server stored it (this cluster's bridge plugin does not
    # enforce NetworkPolicies: what they admit is checked in tests/test_security.py, not here)
    rayjob = head["metadata"]["labels"]["ray.io/cluster"].rsplit("-", 1)[0]
    policy = json.loads(kube.kubectl("-n", JOBS_NS, "get", "networkpolicy", rayjob, "-o", "json").stdout)
    assert policy["spec"]["podSelector"] == {"matchLabels": {"disneytrain.dev/videofinetune": NAME}}, policy


def test_the_runs_configmap_and_network_policy_deleted_by_hand_come_back(kube: Kube, run: dict[str, Any]) -> None:
    """Issue 16: a run's ConfigMap (the head's configuration mount) and its NetworkPolicy were applied with the
    RayJob only; deleted by hand they stayed gone. The operator applies both at every reconcile of a running
    run: they are back within its resync (the chart's 30 s). The head pod deleted later in this module then
    starts from the ConfigMap made again."""
    (head,) = ray_pods(kube, NAME, "head")
    rayjob = head["metadata"]["labels"]["ray.io/cluster"].rsplit("-", 1)[0]

    def get(kind: str) -> dict[str, Any] | None:
        got = kube.kubectl("-n", JOBS_NS, "get", kind, rayjob, "-o", "json", check=False)
        return json.loads(got.stdout) if got.returncode == 0 else None

    uids = {}
    for kind in ("configmap", "networkpolicy"):
        uids[kind] = (get(kind) or {})["metadata"]["uid"]
        kube.kubectl("-n", JOBS_NS, "delete", kind, rayjob)
    started = time.monotonic()

    for kind in ("configmap", "networkpolicy"):
        again = wait_until(f"the run's {kind} made again", functools.partial(get, kind), 120)
        assert again["metadata"]["uid"] != uids[kind]
    print(f"ConfigMap and NetworkPolicy deleted -> both back in {time.monotonic() - started:.0f} s")


def starts(s3: dict[str, str]) -> int:
    """How often the run's worker group has started (its starts.json, written by rank 0 at each start)."""
    body = bucket(s3).get_object(Bucket=BUCKET, Key=f"smoke/{NAME}/starts.json")["Body"].read()
    return int(json.loads(body)["starts"])


def test_a_deleted_worker_pod_is_replaced_and_training_goes_on(
    kube: Kube, s3: dict[str, str], run: dict[str, Any]
) -> None:
    """The pod's Ray worker trains on through its 30 s of grace; once it is killed, Ray Train restarts the
    group from the latest checkpoint (seen on this cluster: after the replacement pod is up). The test waits
    for that restart, not only for the new pod: training at 2 workers before it proves nothing."""
    before = running_workers(kube)
    assert len(before) == 2, dump(kube, NAME)
    started_before = starts(s3)
    kube.kubectl("-n", JOBS_NS, "delete", "pod", before[-1], "--wait=false")
    started = time.monotonic()

    def replaced() -> list[str] | None:
        now = running_workers(kube)
        return now if len(now) == 2 and before[-1] not in now else None

    wait_until("the deleted worker pod replaced", replaced, 300)
    wait_until("the worker group restarted", lambda: True if starts(s3) > started_before else None, 300)
    at = progress(kube, NAME)["step"]
    training(kube, "training on 2 workers again", lambda p: p.get("worldSize") == 2 and p["step"] > at + EVERY, 300)
    print(f"worker pod deleted -> 2 workers training again after a restart in {time.monotonic() - started:.0f} s")


def test_a_deleted_head_pod_the_run_goes_on_from_its_checkpoint(
    kube: Kube, s3: dict[str, str], run: dict[str, Any]
) -> None:
    """The workers train on for a while without the head (their collectives and S3 writes need no GCS), so
    steps alone prove nothing (a fresh clone's run showed it): the test waits for the group to start again
    under the new head, then for steps after that."""
    (head,) = ray_pods(kube, NAME, "head")
    started_before = starts(s3)
    attempt = vft(kube, NAME)["status"].get("attempt", 1)
    kube.kubectl("-n", JOBS_NS, "delete", "pod", head["metadata"]["name"], "--wait=false")
    started = time.monotonic()
    wait_until("the worker group started again", lambda: True if starts(s3) > started_before else None, 600)
    at = progress(kube, NAME)["step"]
    training(kube, "training after the head's loss", lambda p: p["step"] > at + 2 * EVERY, 600)
    status = vft(kube, NAME)["status"]
    print(
        f"head pod deleted at step {at} -> training again in {time.monotonic() - started:.0f} s "
        f"(attempt {attempt} -> {status.get('attempt', 1)}, lastFailure: {status.get('lastFailure')})"
    )


def test_suspend_stops_the_ray_cluster_keeps_the_checkpoints_and_resume_goes_on(
    kube: Kube, s3: dict[str, str], run: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    started = time.monotonic()
    kube.kubectl("-n", JOBS_NS, "patch", "vft", NAME, "--type=merge", "-p", '{"spec":{"suspend":true}}')
    wait_until("Suspended", lambda: phase_is(kube, NAME, "Suspended"), 300)
    # gone, not only deleted: a deleted pod's workers train on through its termination grace period and
    # write checkpoints meanwhile (seen here: 630 steps after the last live pod was listed)
    wait_until("no Ray pods left", lambda: True if not ray_pods(kube, NAME, terminating=True) else None, 300)
    suspended = time.monotonic() - started
    # the checkpoints are still in S3 (read there, not from the status, which shows what was read before)
    # where the run stopped: its newest checkpoint in S3 (status.progress is read at the operator's resync;
    # a run's last minute of steps can be missing from it)
    at = checkpoints(kube, s3, NAME, monkeypatch)[1].latest()
    assert at is not None, keys(s3, f"smoke/{NAME}/")
    started_before = starts(s3)
    started = time.monotonic()
    resume = {"spec": {"suspend": False, "training": {"optim": {"max_steps": at + AFTER_RESUME}}}}
    kube.kubectl("-n", JOBS_NS, "patch", "vft", NAME, "--type=merge", "-p", json.dumps(resume))
    wait_until("the worker group started again", lambda: True if starts(s3) > started_before else None, 600)
    training(kube, "training after the resume", lambda p: p["step"] > at + EVERY, 600)
    print(
        f"suspend -> no Ray pods in {suspended:.0f} s; resume -> training again in {time.monotonic() - started:.0f} s"
    )


def test_the_run_succeeds_with_every_step_trained_once(
    kube: Kube, s3: dict[str, str], run: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    wait_until(f"{NAME} Succeeded", lambda: phase_is(kube, NAME, "Succeeded"), 900)
    cfg, store = checkpoints(kube, s3, NAME, monkeypatch)
    last = max_steps(kube)
    assert cfg.optim.max_steps == last < STEPS  # the RayJob that ended it ran the lowered max_steps
    assert store.latest() == last
    history = store.load(last).state["metrics"]
    steps = [h["step"] for h in history]
    assert steps == list(range(EVERY, last + 1, EVERY)), steps  # every step trained once: none lost or repeated
    sizes = [h["world_size"] for h in history]
    changes = [s for i, s in enumerate(sizes) if i == 0 or s != sizes[i - 1]]
    assert changes[:2] == [1, 2], sizes  # it grew when scaled
    assert max(h["restarts"] for h in history) >= 4, history[-1]  # scale, worker, head, resume
    attempt = vft(kube, NAME)["status"].get("attempt", 1)
    print(f"sizes along the run: {changes}; last record {json.dumps(history[-1])}; attempt {attempt}")
