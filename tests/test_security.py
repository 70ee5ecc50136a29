"""Safe on a shared cluster: each finding of the hostile-tenant review (issue 16), a test named after it.

Finding 1: the run configuration (prompts and all, written by a tenant) went into the RayJob's runtime
environment, which KubeRay's submitter pastes, Go-quoted, into its own `bash -c` line: `$(...)`, backticks
and `$` stayed live there, and a long configuration overflowed the line. tests/e2e/test_smoke.py runs
hostile prompts through the real KubeRay and checks that they arrive byte for byte.
Finding 2 (in part): the operator read run records whole, at places tenants name.
Finding 3: the Ray head was open to any pod (no token), the pods held API tokens and ran unconfined;
tests/e2e/test_elastic.py asks a live head without the token.
Finding 4: VideoFineTunes of one name (in two namespaces, or one deleted and made again) shared a run.
Finding 5: a model URI with `..` segments led the model cache's sync outside the cache.
Finding 6: `data pack` followed a symlinked list file anywhere.
Finding 7: specs the operator could not run looped silently (no status, no event).
"""

from __future__ import annotations

import contextlib
import http.server
import json
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from kubernetes.client.rest import ApiException
from kubernetes_validate.utils import latest_version

from disney_operator import api
from disney_operator.controller import Controller
from disney_operator.kube import Kube
from disney_operator.progress import ProgressReader
from disney_operator.rayjob import (
    CONFIG_FILE,
    ENTRYPOINT,
    EVAL_ENTRYPOINT,
    desired_config_map,
    owner_of,
    run_config_of,
)
from disney_operator.reconcile import plan
from disney_operator.settings import Settings
from disney_train.config import EVALUATION_PROMPTS, PROMPT_CHARS, VALIDATION_PROMPTS, RunConfig, S3Options, dump_config
from disney_train.data.layout import LayoutError, read_source
from disney_train.model.source import ModelError, resolve_model
from disney_train.runs import OWNER, RunFiles, RunOwnedError
from disney_train.storage import IO, S3Keys, StorageError
from disney_train.train.launch import RunFinishedError, TrainingError, launch
from tests.support.apiserver import (
    VFT_CRD,
    ApiServer,
    api_client,
    eventually,
    kuberay_reference_crds,
    start_apiserver,
    stub_events,
)
from tests.support.faultproxy import FaultProxy
from tests.support.kuberay import Cluster, Secrets
from tests.support.seaweed import RW, free_ports
from tests.support.vfts import I2V, SETTINGS, render, vft

BASE = {
    "model": {"uri": "s3://models/CogVideoX-2b"},
    "dataset": {"uri": "s3://data/disney"},
    "output": {"uri": "s3://runs/x"},
}

# What a shell would act on, and what quoting gets wrong: command substitution, variables, quotes of
# both kinds, backslashes, line breaks and tabs, and characters beyond ASCII.
HOSTILE = [
    "price $5, $(touch /tmp/pwned) and `id` for ${HOME}",
    'it\'s "quoted" \\ back\\slashed\nand on two lines\ttabbed',
    "ünïcödé, 漢字 and a rabbit 🐰; exit 1 && rm -rf / || true",
]
# The most bytes one character of a valid configuration takes in the YAML file (control characters,
# which YAML would escape to six, are refused).
WIDEST = "🐰"
CONFIGMAP_BYTES = 1024 * 1024  # the API server's limit on a ConfigMap's data


def hostile_job(**more: Any) -> dict[str, Any]:
    return vft(
        training={
            "data": {"id_token": "$(id)`id`"},
            "validation": {"prompts": HOSTILE},
        },
        evaluation={"prompts": HOSTILE, "clip_uri": "s3://models/clip"},
        **more,
    )


def test_finding_1_no_tenant_text_reaches_the_submitters_shell_line() -> None:
    body = hostile_job()
    rj = render(body)
    spec = rj["spec"]
    # KubeRay builds its submitter's `bash -c` line from these: only the operator's constants are in them
    assert spec["entrypoint"] in (ENTRYPOINT, EVAL_ENTRYPOINT)
    assert "runtimeEnvYAML" not in spec and "metadata" not in spec
    text = json.dumps(rj, ensure_ascii=False)
    for hostile in [*HOSTILE, "$(id)"]:
        assert hostile not in text and json.dumps(hostile)[1:-1] not in text, hostile
    # the run configuration goes to the head as a file, byte for byte
    config_map = desired_config_map(body, api.VideoFineTuneSpec.model_validate(body["spec"]), 1)
    cfg = run_config_of(config_map)
    assert cfg.validation.prompts == HOSTILE
    assert cfg.evaluation is not None and cfg.evaluation.prompts == HOSTILE
    assert cfg.data.id_token == "$(id)`id`"


def largest_valid_job() -> dict[str, Any]:
    """Every bounded list full and every text at its longest, in the widest characters."""
    prompt = WIDEST * PROMPT_CHARS
    uri = "s3://bkt/" + WIDEST * (1024 - len("s3://bkt/"))
    return vft(
        model=I2V,
        training={
            "data": {"id_token": WIDEST * 64},
            "lora": {"target_modules": [WIDEST * 128] * 64},
            "validation": {"prompts": [prompt] * VALIDATION_PROMPTS, "images": [uri] * VALIDATION_PROMPTS},
        },
        evaluation={
            "prompts": [prompt] * EVALUATION_PROMPTS,
            "images": [uri] * EVALUATION_PROMPTS,
            "clip_uri": uri,
        },
    )


def test_finding_1_the_largest_valid_configuration_fits_its_configmap() -> None:
    """KubeRay's submitter line held at most 128 KiB (Linux's limit on one argument): 250 prompts of 600
    characters did not fit. The bounds now keep the largest valid configuration inside a ConfigMap."""
    body = largest_valid_job()
    config_map = desired_config_map(body, api.VideoFineTuneSpec.model_validate(body["spec"]), 1)
    size = len(config_map["data"][CONFIG_FILE].encode())
    assert 128 * 1024 < size < CONFIGMAP_BYTES * 0.9, size  # beyond the old limit, inside the new one
    assert run_config_of(config_map).evaluation.prompts[0] == WIDEST * PROMPT_CHARS  # type: ignore[union-attr]


def test_finding_1_control_characters_are_refused_by_field() -> None:
    """Terminal escapes and other control characters would reach logs, reports and YAML: the spec is
    refused (InvalidSpec), naming the field and the character."""
    for body, field, why in (
        (vft(training={"validation": {"prompts": ["red! \x1b[31m"]}}), "training.validation.prompts.0", "U+001B"),
        (vft(training={"data": {"id_token": "BW_\nSTYLE"}}), "training.data.id_token", "line break at position 3"),
        (
            vft(model=I2V, evaluation={"prompts": ["a"], "images": ["s3://bkt/a\x00.png"], "clip_uri": "s3://m/c"}),
            "evaluation.images.0",
            "U+0000",
        ),
    ):
        out = plan(body, [], None, datetime.now(UTC), SETTINGS)
        assert out.apply is None and out.config_map is None
        status = out.status or {}
        assert {c["reason"] for c in status["conditions"] if c["type"] == "Pending"} == {"InvalidSpec"}, status
        assert field in status["message"] and why in status["message"], status["message"]


def test_finding_5_a_model_uri_with_dot_segments_cannot_leave_the_model_cache(tmp_path: Path) -> None:
    """`s3://bucket/../../x` once mapped to a folder outside the cache, emptied of what the listing lacked and
    filled from S3. It is refused before anything is created, listed or deleted."""
    cache, outside = tmp_path / "cache" / "models", tmp_path / "precious"
    outside.mkdir()
    (outside / "keep.txt").write_text("not the model cache's")
    for uri in ("s3://bucket/../../precious", "s3://bucket/a/./b", "s3://bucket/a//b"):
        with pytest.raises(ModelError, match="segments in an S3 URI; refused"):
            resolve_model(uri, S3Options(endpoint_url="http://127.0.0.1:9"), cache_dir=cache)
    assert (outside / "keep.txt").read_text() == "not the model cache's" and not cache.exists()
    # and a run configuration or a VideoFineTune naming one is refused by field
    body = vft(model={"uri": "s3://models/../../precious"})
    out = plan(body, [], None, datetime.now(UTC), SETTINGS)
    assert out.apply is None and "model.uri" in (out.status or {})["message"], out.status


@pytest.mark.parametrize("name", ["prompt.txt", "videos.txt", "images.txt"])
def test_finding_6_a_list_file_symlinked_outside_the_dataset_is_refused(tmp_path: Path, name: str) -> None:
    """`data pack` read a symlinked prompt.txt wherever it led (a secret file became packed prompts)."""
    src = tmp_path / "dataset"
    (src / "videos").mkdir(parents=True)
    (src / "videos" / "a.mp4").write_bytes(b"")
    (src / "images").mkdir()
    (src / "images" / "a.png").write_bytes(b"")
    lists = {"prompt.txt": "a rabbit\n", "videos.txt": "videos/a.mp4\n", "images.txt": "images/a.png\n"}
    for file, text in lists.items():
        (src / file).write_text(text)
    secret = tmp_path / "secret.txt"
    secret.write_text("AWS_SECRET_ACCESS_KEY=hunter2\n")
    (src / name).unlink()
    (src / name).symlink_to(secret)
    with pytest.raises(
        LayoutError, match=f"{name}: path '{name}' escapes the dataset folder \\(a symlink to .*secret.txt\\)"
    ):
        read_source(src)
    # a symlink that stays inside the folder is the user's own business
    (src / name).unlink()
    (src / f"real-{name}").write_text(lists[name])
    (src / name).symlink_to(src / f"real-{name}")
    listing = read_source(src)
    assert [(e.prompt, e.video) for e in listing.entries] == [("a rabbit", "videos/a.mp4")], listing


@pytest.mark.parametrize("cpu", ["1e400", "0", "-1", "1.5.5", "5000"])
def test_finding_7_a_cpu_quantity_no_node_has_is_an_invalid_spec(cpu: str) -> None:
    """`1e400` passed the CRD's pattern and then raised OverflowError in the operator on every reconcile,
    with no status and no event."""
    out = plan(vft(workers={"resources": {"gpus": 1, "cpu": cpu}}), [], None, datetime.now(UTC), SETTINGS)
    status = out.status or {}
    assert out.apply is None and status.get("phase") == "Pending", status
    assert f"workers.resources.cpu: {cpu!r} is not a CPU quantity" in status["message"]
    assert [e.reason for e in out.events] == ["InvalidSpec"]


@pytest.fixture(scope="module")
def kuberay_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """An API server with KubeRay v1.6.2's own CRDs (not the project's trimmed schemas), ours, and the
    core/v1 stub the operator writes ConfigMaps and events to."""
    server = start_apiserver(tmp_path_factory.mktemp("kuberay-api"))
    try:
        crds = kuberay_reference_crds()
        server.install(VFT_CRD, crds / "ray.io_rayjobs.yaml", crds / "ray.io_rayclusters.yaml")
        yield server
    finally:
        server.stop()


def test_finding_7_the_api_server_refusing_a_rayjob_is_an_invalid_spec(kuberay_api: ApiServer) -> None:
    """A RayJob the API server refuses (junk in the free-form affinity, checked by KubeRay's own CRD)
    once aborted the reconcile before its status write, again and again, silently. Now the status and an
    event say why, naming the field; a corrected spec goes on."""
    ns, cluster = f"solo-{uuid.uuid4().hex[:8]}", Cluster(kuberay_api)
    controller = Controller(Kube(api_client(kuberay_api.kubeconfig), "disney-train-operator"), Settings())
    junk = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": "any node"}}
    cluster.create(ns, "junk", {**BASE, "placement": {"affinity": junk}})
    controller.reconcile(cluster.get(ns, "junk"), [])
    status = cluster.status(ns, "junk")
    assert status["phase"] == "Pending", status
    assert {c["reason"] for c in status["conditions"] if c["type"] == "Pending"} == {"InvalidSpec"}
    assert "the API server refused RayJob junk-1-" in status["message"], status["message"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" in status["message"], status["message"]
    assert any("InvalidSpec" in line for line in stub_events(kuberay_api, ns)), stub_events(kuberay_api, ns)
    cluster.patch(ns, "junk", {"placement": {"affinity": None}})
    controller.reconcile(cluster.get(ns, "junk"), [])
    assert cluster.status(ns, "junk")["phase"] == "Pending" and "refused" not in cluster.status(ns, "junk")["message"]
    assert cluster.rayjobs(ns, "junk")  # the corrected one stored under KubeRay's own schema


def test_finding_7_priority_classes_only_from_the_platforms_allow_list() -> None:
    """A tenant naming any PriorityClass could preempt other teams' pods: only the chart's list is taken."""
    for placement in ({"placement": {"priorityClassName": "system-cluster-critical"}},
                      {"head": {"placement": {"priorityClassName": "system-cluster-critical"}}}):  # fmt: skip
        out = plan(vft(**placement), [], None, datetime.now(UTC), SETTINGS)
        message = (out.status or {})["message"]
        assert out.apply is None and "priorityClassName 'system-cluster-critical' is not allowed" in message
    allowed = Settings(allowed_priority_classes=["training-low"])
    out = plan(vft(placement={"priorityClassName": "training-low"}), [], None, datetime.now(UTC), allowed)
    assert out.apply is not None
    worker = out.apply["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]
    assert worker["priorityClassName"] == "training-low"


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (
            {"model": I2V, "training": {"validation": {"prompts": ["a"], "images": ["/home/me/a.png"]}}},
            "validation.images",
        ),
        ({"training": {"train": {"cache_uri": "/mnt/cache"}}}, "cache_uri"),
        ({"evaluation": {"prompts": ["a"], "clip_uri": "/models/clip"}}, "evaluation.clip_uri"),
    ],
)
def test_finding_7_cluster_only_fields_must_be_s3_at_admission(
    cluster: Cluster, spec: dict[str, Any], field: str
) -> None:
    """Local paths in what the Ray pods read failed only after training: now the API server refuses them."""
    with pytest.raises(ApiException) as refused:
        cluster.create(f"solo-{uuid.uuid4().hex[:8]}", "local", {**BASE, **spec})
    assert refused.value.status == 422 and field in refused.value.body and "s3://" in refused.value.body


def test_finding_3_ray_pods_need_the_runs_token_and_are_locked_down() -> None:
    """The head served its GCS, dashboard and job API to any pod, with the tenant's S3 keys in its
    environment; the pods mounted the namespace's service-account token and ran as they liked."""
    rj = render(vft())
    cluster = rj["spec"]["rayClusterSpec"]
    assert cluster["authOptions"] == {"mode": "token"}  # KubeRay makes the token and hands it round
    head = cluster["headGroupSpec"]["template"]["spec"]
    worker = cluster["workerGroupSpecs"][0]["template"]["spec"]
    assert worker["automountServiceAccountToken"] is False
    assert "automountServiceAccountToken" not in head  # the autoscaler beside the head scales the group
    for pod in (head, worker):
        ctx = pod["securityContext"]
        assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] == ctx["runAsGroup"] == 1000
        assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
        for c in pod["containers"]:
            assert c["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def test_finding_4_a_run_owned_by_another_videofinetune_is_refused_never_resumed_or_finished(tmp_path: Path) -> None:
    """Two tenants' VideoFineTunes of one name on a shared bucket had one run prefix: the second resumed the
    first one's checkpoints, or was told "finished" and showed the other's LoRA as its own."""
    theirs = vft()
    ours = vft()
    ours["metadata"] |= {"namespace": "team-b", "uid": "5678-uid"}
    spec = api.VideoFineTuneSpec.model_validate(theirs["spec"])

    def local(body: dict[str, Any]) -> RunConfig:  # the operator's run configuration, its run on this disk
        cfg = run_config_of(desired_config_map(body, spec, 1))
        return cfg.model_copy(update={"output": cfg.output.model_copy(update={"uri": str(tmp_path / "runs")})})

    cfg_theirs, cfg_ours = local(theirs), local(ours)
    assert cfg_theirs.output.owner == "team-a/disney-2b/1234-uid" != cfg_ours.output.owner
    files = RunFiles(cfg_theirs)
    files.claim(cfg_theirs.output.owner)  # their first start
    files.write_final(b"their LoRA", dump_config(cfg_theirs))
    files.finish(30, {"phase": "finished", "step": 30})
    with pytest.raises(TrainingError, match=r"belongs to team-a/disney-2b/1234-uid, not team-b/disney-2b/5678-uid"):
        launch(cfg_ours, storage_path=tmp_path / "ray")  # refused before Ray starts or anything is read
    with pytest.raises(RunFinishedError):  # the owner's own restart is told the truth
        launch(cfg_theirs, storage_path=tmp_path / "ray")
    # their VideoFineTune deleted and made again (same namespace and name: their own, by RBAC) adopts the run
    again = vft()
    again["metadata"]["uid"] = "9999-uid"
    with pytest.raises(RunFinishedError):
        launch(local(again), storage_path=tmp_path / "ray")
    assert files.owner() == "team-a/disney-2b/9999-uid"


class Interleaved:
    """A real store whose first request about owner.json is followed at once by `then()`: another
    VideoFineTune's whole claim, in the middle of this one's (the worst moment of a race)."""

    def __init__(self, store: Any, then: Any) -> None:
        self.store, self.then, self.done = store, then, False

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.store, name)

        def call(key: str, *args: Any) -> Any:
            result = method(key, *args)
            if key == OWNER and not self.done:
                self.done = True
                self.then()
            return result

        return call


@pytest.mark.parametrize("where", ["s3", "local"])
def test_finding_4_two_videofinetunes_claiming_one_prefix_at_once_exactly_one_owns_it(
    where: str, s3: S3Options, s3_uri: str, tmp_path: Path
) -> None:
    """The claim read owner.json, then wrote it: two tenants' VideoFineTunes of one name starting on one shared
    prefix at the same moment both read "no owner" and both went on, each to resume the other's checkpoints."""
    uri = f"{s3_uri}/disney-2b" if where == "s3" else str(tmp_path / "runs" / "disney-2b")
    theirs, ours = RunFiles.at(uri, s3), RunFiles.at(uri, s3)
    outcome: dict[str, str] = {}

    def claim(files: RunFiles, owner: str) -> None:
        try:
            files.claim(owner)
            outcome[owner] = "owns"
        except RunOwnedError as err:
            outcome[owner] = str(err)

    ours.store = Interleaved(ours.store, lambda: claim(theirs, "team-a/disney-2b/1234-uid"))
    claim(ours, "team-b/disney-2b/5678-uid")
    assert sorted(outcome) == ["team-a/disney-2b/1234-uid", "team-b/disney-2b/5678-uid"]
    owners = [who for who, said in outcome.items() if said == "owns"]
    assert len(owners) == 1, outcome
    loser = next(who for who in outcome if who not in owners)
    assert f"belongs to {owners[0]}, not {loser}" in outcome[loser]
    assert RunFiles.at(uri, s3).owner() == owners[0]


def test_finding_4_an_owner_record_that_names_nobody_is_not_taken(tmp_path: Path, s3: S3Options) -> None:
    files = RunFiles.at(str(tmp_path / "disney-2b"), s3)
    files.store.write_bytes(OWNER, b'{"owner": 7}')
    with pytest.raises(RunOwnedError, match=r"owner.json names no owner"):
        files.claim("team-a/disney-2b/1234-uid")
    files.store.write_bytes(OWNER, b'{"owner": "team-a/disney-2b/0000-uid"}')
    files.claim("team-a/disney-2b/1234-uid")  # the same namespace and name adopt it
    assert files.owner() == "team-a/disney-2b/1234-uid"


def test_finding_4_the_operator_reads_only_the_figures_of_the_run_its_videofinetune_owns(
    s3: S3Options, s3_uri: str
) -> None:
    """The operator copied `<output.uri>/<name>/progress.json` into the status of whichever VideoFineTune named
    that prefix: another tenant's progress and evaluation figures appeared as its own."""
    theirs, ours = vft(), vft()
    ours["metadata"] |= {"namespace": "team-b", "uid": "5678-uid"}
    spec = run_spec(theirs, s3, s3_uri)
    files = RunFiles.at(f"{s3_uri}/disney-2b", s3)
    files.claim(owner_of(theirs["metadata"]))
    files.write_progress({"step": 7, "loss": 0.5})
    running = [{"metadata": {"name": "rj"}, "status": {"jobDeploymentStatus": "Running"}}]
    reader = ProgressReader(every=0, endpoints=["*"], secrets=Secrets({"team-a": RW, "team-b": RW}))
    try:
        for body in (ours, theirs):
            key = (body["metadata"]["namespace"], body["metadata"]["name"])
            assert reader.refresh(key, {**body, "spec": spec}, running)
            eventually(lambda k=key: k not in reader._busy, what="the read")
        assert reader.latest(("team-b", "disney-2b")) is None  # never the other's figures
        assert reader.latest(("team-a", "disney-2b")) == {"step": 7, "loss": 0.5}
    finally:
        reader.close()


def test_finding_2_owner_json_is_read_once_per_owner_not_at_every_poll(
    s3: S3Options, s3_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each poll read owner.json before progress.json: two GETs at the tenant's endpoint where one does. A
    VideoFineTune deleted and made again (same name, a new uid) is asked again (and, of the same namespace
    and name, adopts the run)."""
    first = vft()
    spec = run_spec(first, s3, s3_uri)
    files = RunFiles.at(f"{s3_uri}/disney-2b", s3)
    files.claim(owner_of(first["metadata"]))
    files.write_progress({"step": 3})
    asked: list[str] = []
    real_owner = RunFiles.owner

    def owner(self: RunFiles) -> str | None:
        asked.append("owner")
        return real_owner(self)

    monkeypatch.setattr(RunFiles, "owner", owner)
    running = [{"metadata": {"name": "rj"}, "status": {"jobDeploymentStatus": "Running"}}]
    key = ("team-a", "disney-2b")
    reader = ProgressReader(every=0, endpoints=["*"], secrets=Secrets({"team-a": RW}))
    try:
        for step in (3, 4, 5):
            files.write_progress({"step": step})
            assert reader.refresh(key, {**first, "spec": spec}, running)
            eventually(lambda s=step: reader.latest(key) == {"step": s}, what=f"the read of step {step}")
        assert asked == ["owner"]
        again = {**first, "metadata": {**first["metadata"], "uid": "a-new-uid"}}
        files.write_progress({"step": 6})
        assert reader.refresh(key, {**again, "spec": spec}, running)
        eventually(lambda: reader.latest(key) == {"step": 6}, what="the read of step 6")
        assert asked == ["owner", "owner"]
    finally:
        reader.close()


def test_finding_3_each_run_gets_a_network_policy_admitting_only_its_own() -> None:
    """No NetworkPolicy: any pod of the cluster reached a run's GCS, raylets and job API. With the chart's
    default (networkPolicy.enabled), each RayJob comes with one, valid for the Kubernetes schema."""
    settings = Settings(network_policies=True, metrics_peers=[{"namespaceSelector": {"matchLabels": {"team": "obs"}}}])
    body = vft(workers={"replicas": 2, "resources": {"gpus": 2, "cpu": "16"}})
    out = plan(body, [], None, datetime.now(UTC), settings)
    assert out.apply is not None and out.network_policy is not None
    policy = out.network_policy
    kubernetes_validate.validate(policy, latest_version(), strict=True)
    name = out.apply["metadata"]["name"]
    run = {"matchLabels": {"disneytrain.dev/videofinetune": "disney-2b"}}
    assert policy["metadata"]["name"] == name and policy["spec"]["podSelector"] == run
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    own, job_api, metrics = policy["spec"]["ingress"]
    assert own == {"from": [{"podSelector": run}]}  # any port, only the run's own pods
    assert job_api["ports"] == [{"protocol": "TCP", "port": 8265}]
    assert {"podSelector": {"matchLabels": {"batch.kubernetes.io/job-name": name}}} in job_api["from"]
    assert settings.kuberay_peer in job_api["from"] and len(job_api["from"]) == 2
    assert metrics == {
        "from": settings.metrics_peers,
        "ports": [{"protocol": "TCP", "port": 9500}, {"protocol": "TCP", "port": 9501}],  # one per GPU
    }
    # every pod of the run carries the label the policy selects
    spec = out.apply["spec"]["rayClusterSpec"]
    for group in (spec["headGroupSpec"], *spec["workerGroupSpecs"]):
        assert group["template"]["metadata"]["labels"]["disneytrain.dev/videofinetune"] == "disney-2b"
    assert plan(body, [], None, datetime.now(UTC), SETTINGS).network_policy is None  # the operator's default: off


def test_finding_3_a_running_runs_configmap_and_network_policy_are_applied_at_every_reconcile() -> None:
    """A run's ConfigMap and NetworkPolicy were applied with its RayJob only: one deleted by hand (or by a
    careless clean-up) stayed gone, the run open to every pod and a restarted head without its configuration.
    While the RayJob runs, every reconcile now applies both (server-side apply: no change, no write)."""
    settings = Settings(network_policies=True)
    body = vft()
    first = plan(body, [], None, datetime.now(UTC), settings)
    assert first.apply is not None and first.config_map is not None and first.network_policy is not None
    rayjob = {**first.apply, "status": {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}}
    body["status"] = first.status
    again = plan(body, [rayjob], None, datetime.now(UTC), settings)
    assert again.apply is None  # the RayJob itself unchanged
    assert (again.config_map, again.network_policy) == (first.config_map, first.network_policy)
    ended = {**rayjob, "status": {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}}
    done = plan(body, [ended], None, datetime.now(UTC), settings)
    assert done.config_map is None and done.network_policy is None  # an ended run's objects are not made again


@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("evaluation.seeds=3", "evaluation.prompts: Field required"),  # a section the file has as null
        ("x=[", "--set 'x=[': the value is not YAML"),
        ("model.uri.x=1", "--set model.uri.x: model.uri is a value, not a section"),
    ],
)
def test_finding_7_cli_mistakes_are_one_line_never_a_traceback(tmp_path: Path, override: str, says: str) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("model: {uri: m}\ndata: {uri: d}\noutput: {uri: o}\nevaluation: null\n")
    cli = str(Path(sys.executable).parent / "disney-train")
    res = subprocess.run([cli, "cache", "--config", str(config), "--set", override], capture_output=True, text=True)
    assert res.returncode == 1 and says in res.stderr, res.stderr
    assert "Traceback" not in res.stderr + res.stdout


def test_finding_8_a_finished_run_asked_for_more_steps_refuses_and_says_how(tmp_path: Path) -> None:
    """`--set optim.max_steps=120` on a run finished at 100 did nothing and exited 0."""
    body = vft(training={"optim": {"max_steps": 100}})
    cfg = run_config_of(desired_config_map(body, api.VideoFineTuneSpec.model_validate(body["spec"]), 1))
    cfg = cfg.model_copy(update={"output": cfg.output.model_copy(update={"uri": str(tmp_path / "runs")})})
    files = RunFiles(cfg)
    files.claim(cfg.output.owner)
    files.write_final(b"LoRA", dump_config(cfg))
    files.finish(100, {"phase": "finished", "step": 100})
    more = cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"max_steps": 120})})
    with pytest.raises(TrainingError, match=r"finished at step 100 .*max_steps 120 asks for more.*train a new run"):
        launch(more, storage_path=tmp_path / "ray")
    with pytest.raises(RunFinishedError):  # the same steps: nothing to do, and that is no failure
        launch(cfg, storage_path=tmp_path / "ray")


def test_finding_7_pruning_never_deletes_the_checkpoint_just_saved(tmp_path: Path) -> None:
    """keep_checkpoints: 1 with a damaged latest checkpoint (skipped at resume, so training starts again
    before it) deleted each new checkpoint right after saving it, keeping the damaged one."""
    import torch

    from disney_train.storage import LocalStore
    from disney_train.train.checkpoint import Checkpoint, CheckpointStore

    store = CheckpointStore(LocalStore(tmp_path / "run"), keep=1)

    def ckpt(step: int) -> Checkpoint:
        return Checkpoint(step=step, lora_file=b"lora", optimizer={"p.exp_avg": torch.zeros(2)}, config_yaml="a: 1")

    store.save(ckpt(20))
    (tmp_path / "run" / "checkpoints" / "step-000000020" / "pytorch_lora_weights.safetensors").write_bytes(b"bad")
    store.save(ckpt(2))  # the run resumed from before 20 (it could not load it) and saved again
    assert store.committed() == [2]
    store.save(ckpt(4))
    assert store.committed() == [4]


def run_spec(body: dict[str, Any], s3: S3Options, s3_uri: str) -> dict[str, Any]:
    """The VideoFineTune's spec with its run on the test S3, its pods' keys in the Secret s3-keys."""
    return {
        **body["spec"],
        "output": {"uri": s3_uri},
        "training": {"s3": {"endpoint_url": s3.endpoint_url}},
        "s3Credentials": {"secretName": "s3-keys"},
    }


RUNNING = [{"metadata": {"name": "rj"}, "status": {"jobDeploymentStatus": "Running"}}]


def test_finding_2_the_operator_reads_a_run_with_its_tenants_secret_never_keys_of_its_own(
    s3: S3Options, s3_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The operator read `<output.uri>/<name>/progress.json` with its own keys (from its environment, as here:
    the `s3` fixture's read-write keys), at the place the tenant names. It reads with the keys of the Secret
    the VideoFineTune gives its pods, so a tenant sees nothing its own keys could not read; no Secret: no read."""
    body = vft()
    files = RunFiles.at(f"{s3_uri}/disney-2b", s3)
    files.claim(owner_of(body["metadata"]))
    files.write_progress({"step": 4})
    key = ("team-a", "disney-2b")
    secrets = Secrets({"team-a": ("not-a-key", "s3-refuses-these-0123456789")})
    reader = ProgressReader(every=0, endpoints=["*"], secrets=secrets)
    try:
        with caplog.at_level("WARNING", logger="disney_operator.progress"):
            assert reader.refresh(key, {**body, "spec": run_spec(body, s3, s3_uri)}, RUNNING)
            eventually(lambda: "S3 refused the request" in caplog.text, what="the refused read")
        assert reader.latest(key) is None and secrets.asked == [("team-a", "s3-keys")]
        assert "s3-refuses-these" not in caplog.text  # a key is never logged
        secrets.keys["team-a"] = RW  # the tenant puts its right keys in its Secret
        assert reader.refresh(key, {**body, "spec": run_spec(body, s3, s3_uri)}, RUNNING)
        eventually(lambda: reader.latest(key) == {"step": 4}, what="the read with the Secret's keys")

        unnamed = {k: v for k, v in run_spec(body, s3, s3_uri).items() if k != "s3Credentials"}
        other = ("team-a", "no-secret")
        with caplog.at_level("WARNING", logger="disney_operator.progress"):
            assert not reader.refresh(other, {**body, "spec": unnamed}, RUNNING)
        assert "spec.s3Credentials names no Secret" in caplog.text
        local = {**run_spec(body, s3, s3_uri), "output": {"uri": "/etc"}}  # past the CRD, say an old one
        assert not reader.refresh(("team-a", "local"), {**body, "spec": local}, RUNNING)
    finally:
        reader.close()


def test_finding_2_endpoints_are_denied_unless_the_chart_lists_them(
    s3: S3Options, s3_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The endpoint allow-list was off by default: the operator sent requests to any host a tenant named. Now
    only AWS itself unless the chart lists more; "*" must be said."""
    assert Settings().progress_endpoints == ["aws"]
    body = vft()
    spec = run_spec(body, s3, s3_uri)
    secrets = Secrets({"team-a": RW})
    assert s3.endpoint_url is not None
    for endpoints, allowed in ((None, False), ([], False), (["aws"], False), ([s3.endpoint_url], True), (["*"], True)):
        reader = ProgressReader(every=0, endpoints=endpoints, secrets=secrets)
        try:
            with caplog.at_level("WARNING", logger="disney_operator.progress"):
                assert reader.refresh(("team-a", "disney-2b"), {**body, "spec": spec}, RUNNING) is allowed
        finally:
            reader.close()
    assert f"S3 endpoint {s3.endpoint_url} is not one the operator may read" in caplog.text


class Trickle(http.server.BaseHTTPRequestHandler):
    """An "S3" that answers every GET with a 1000-byte body, one byte every 0.2 s."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        with contextlib.suppress(OSError):
            for _ in range(1000):
                self.wfile.write(b" ")
                self.wfile.flush()
                time.sleep(0.2)

    def log_message(self, *args: Any) -> None:
        pass


def test_finding_2_an_endpoint_that_trickles_is_given_up_at_the_deadline() -> None:
    """A slow endpoint held a reader thread for as long as it kept sending (each socket read had 60 s): four
    such VideoFineTunes held every thread. A read is now bounded in all, retries included."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        keys = S3Keys("tenant", "tenant-secret-0123456789")
        files = RunFiles.at("s3://runs/slow", S3Options(endpoint_url=endpoint, max_attempts=2), keys, deadline=1.5)
        start = time.monotonic()
        with pytest.raises(StorageError, match=r"progress.json: not read within 1.5 s"):
            files.read_progress()
        took = time.monotonic() - start
        assert took < 4, took  # the deadline, and at most one socket read (itself bounded by it) beyond
    finally:
        server.shutdown()


def test_finding_2_a_run_record_larger_than_any_run_writes_is_not_read(s3: S3Options, s3_uri: str) -> None:
    """The operator read `progress.json` whole, at a place the tenant names: a 1 GiB one would have OOM-killed
    it for every tenant. A record is read only up to what a run ever writes; a larger one is refused unread."""
    files = RunFiles.at(f"{s3_uri}/big", s3)
    files.store.write_bytes("progress.json", b'{"step": 1, "pad": "' + b"x" * (300 * 1024) + b'"}')
    before = IO.snapshot()["read_bytes"]
    with pytest.raises(ValueError, match=r"progress.json: \d+ bytes, more than 262144"):
        files.read_progress()
    assert IO.snapshot()["read_bytes"] == before  # not a byte of the body fetched
    files.store.write_bytes("progress.json", b'{"step": 2}')
    assert files.read_progress() == {"step": 2}


def test_finding_8_a_frozen_s3_is_named_while_it_lasts_and_given_up_within_the_bound(
    proxy: FaultProxy, s3: S3Options, s3_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A frozen S3 stalled training with no word for as long as it lasted (each attempt waited 60 s, eight
    of them). Now the request is named while it waits, and fails when the configured bound is reached."""
    from disney_train.storage import open_store

    frozen = s3.model_copy(
        update={"endpoint_url": proxy.endpoint, "max_attempts": 50, "stall_warn_seconds": 1, "give_up_seconds": 4}
    )
    store = open_store(f"{s3_uri}/frozen", frozen)
    store.write_bytes("shard.tar", b"x")
    proxy.frozen = True
    start = time.monotonic()
    try:
        with caplog.at_level("WARNING", logger="disney_train.storage"), pytest.raises(StorageError) as failed:
            store.read_bytes("shard.tar")
    finally:
        proxy.frozen = False
    took = time.monotonic() - start
    assert 4 <= took < 12, took  # the bound, and at most one attempt (itself bounded by it) beyond
    assert "shard.tar" in str(failed.value)
    said = [r.getMessage() for r in caplog.records if "no answer for" in r.getMessage()]
    assert said and all("read s3://" in m and "shard.tar" in m and "given up at 4 s" in m for m in said), said
    assert re.search(r"no answer for [12] s", said[0]) and len(said) >= 2, said  # at once, then again


class TheTrainingsOwnError(Exception):
    pass


def test_finding_8_the_last_error_is_the_one_that_stopped_training() -> None:
    """An outage that outlasted the retries ended in a last line blaming the progress bar's final read of
    progress.json (S3 down takes both), not the training failure."""
    from disney_train.train.launch import _ProgressWatcher

    (port,) = free_ports(1)  # nothing listens there: S3 is down
    files = RunFiles.at("s3://runs/down", S3Options(endpoint_url=f"http://127.0.0.1:{port}", max_attempts=1))
    with pytest.raises(TheTrainingsOwnError), _ProgressWatcher(files, lambda p: None, every=3600):
        raise TheTrainingsOwnError("the workers' S3 writes failed")
    with pytest.raises(StorageError), _ProgressWatcher(files, lambda p: None, every=3600):
        pass  # training went well: the last read's failure is then the one to tell


def test_finding_7_a_checkpoint_s3_cannot_serve_is_not_taken_for_damaged(
    proxy: FaultProxy, s3: S3Options, s3_uri: str
) -> None:
    """Pruning deletes checkpoints after the one just saved, trusting that the run skipped them as damaged:
    so an outage (S3 down, through the real SeaweedFS behind a fault proxy) must fail the load, never pass for
    damage; a committed checkpoint with a file missing is damaged."""
    import torch

    from disney_train.storage import open_store
    from disney_train.train.checkpoint import Checkpoint, CheckpointDamaged, CheckpointError, CheckpointStore

    via_proxy = s3.model_copy(update={"endpoint_url": proxy.endpoint, "max_attempts": 2})
    store = CheckpointStore(open_store(f"{s3_uri}/run", via_proxy), keep=2)
    store.save(Checkpoint(step=4, lora_file=b"lora", optimizer={"p.exp_avg": torch.zeros(2)}, config_yaml="a: 1"))
    proxy.down = True
    with pytest.raises(CheckpointError) as unreadable:
        store.load(4)
    assert not isinstance(unreadable.value, CheckpointDamaged), unreadable.value
    proxy.down = False
    store.store.delete(["checkpoints/step-000000004/optimizer.safetensors"])
    with pytest.raises(CheckpointDamaged, match="no such object"):
        store.load(4)
