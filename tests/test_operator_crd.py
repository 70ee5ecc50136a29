"""The VideoFineTune CRD: generated from the pydantic models, and enforced by a real API server
(envtest-lite: the genuine apiextensions-apiserver) before any operator sees an object."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from disney_operator import api
from disney_operator.crd import CRD_PATH, crd_yaml
from disney_train.config import EvaluationConfig, TrainingSpec
from tests.support.apiserver import ApiServer
from tests.support.kuberay import Cluster

BASE: dict[str, Any] = {
    "model": {"uri": "s3://models/CogVideoX-2b"},
    "dataset": {"uri": "s3://data/disney"},
    "output": {"uri": "s3://runs/disney"},
}


@pytest.fixture
def crd_ns() -> str:
    return f"crd-{uuid.uuid4().hex[:8]}"  # outside the session operator's namespaces


def test_the_checked_in_crd_is_the_generated_one() -> None:
    assert CRD_PATH.read_text() == crd_yaml(), "regenerate it: disney-train-operator crd > " + str(CRD_PATH)


def test_the_server_fills_in_the_same_defaults_as_the_run_configuration(cluster: Cluster, crd_ns: str) -> None:
    obj = cluster.create(crd_ns, "defaults", BASE)
    spec = obj["spec"]
    expected = TrainingSpec().model_dump(mode="json", exclude_none=True)
    assert spec["training"] == expected
    assert spec["workers"] == {
        "replicas": 1,
        "maxFailures": 3,
        "resources": {"gpus": 1, "cpu": "8", "memory": "64Gi", "sharedMemory": "16Gi", "gpuResource": "nvidia.com/gpu"},
    }
    assert (spec["backoffLimit"], spec["suspend"], spec["model"]["variant"]) == (3, False, "t2v")
    # and what the server stored is a valid spec to the operator's own model
    assert api.VideoFineTuneSpec.model_validate(spec).training == TrainingSpec()


EVALUATION: dict[str, Any] = {"prompts": ["a mouse rows a boat"], "clip_uri": "s3://models/clip-vit-base-patch32"}
I2V = {"uri": "s3://models/CogVideoX-5b-I2V", "variant": "i2v"}
IMAGES = ["s3://images/wheel.png", "s3://images/deck.png"]


def test_the_server_fills_in_the_evaluation_defaults_of_the_run_configuration(cluster: Cluster, crd_ns: str) -> None:
    spec = cluster.create(crd_ns, "evaluated", {**BASE, "evaluation": EVALUATION})["spec"]
    assert spec["evaluation"] == EvaluationConfig.model_validate(EVALUATION).model_dump(mode="json", exclude_none=True)
    assert api.VideoFineTuneSpec.model_validate(spec).evaluation == EvaluationConfig.model_validate(EVALUATION)
    # the rules about images hold with and without an evaluation block
    i2v = {**BASE, "model": I2V, "training": {"validation": {"prompts": ["a", "b"], "images": IMAGES}}}
    assert "evaluation" not in cluster.create(crd_ns, "i2v-unevaluated", i2v)["spec"]
    pair = {**EVALUATION, "prompts": ["a", "b"], "images": IMAGES}
    assert (
        cluster.create(crd_ns, "i2v-evaluated", {**i2v, "evaluation": pair})["spec"]["evaluation"]["images"] == IMAGES
    )


def refusal(err: Any) -> str:
    """The API server's message, as kubectl prints it."""
    return str(json.loads(err.body)["message"])


def _with(path: str, value: Any) -> dict[str, Any]:
    import copy

    spec = copy.deepcopy(BASE)
    node = spec
    *parents, last = path.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return spec


INVALID = [
    ("no model", {k: v for k, v in BASE.items() if k != "model"}, "spec.model: Required value"),
    ("local model path", _with("model.uri", "/models/cogvideox"), "spec.model.uri in body should match"),
    ("bucket too short", _with("dataset.uri", "s3://ab/disney"), "spec.dataset.uri in body should match"),
    ("unknown variant", _with("model.variant", "v2v"), 'spec.model.variant: Unsupported value: "v2v"'),
    ("frames not 4N+1", _with("training.data.num_frames", 48), "num_frames must be 4N+1"),
    (
        "cogvideox frames not 8N+1",
        _with("training.data.num_frames", 45),
        "training.data.num_frames: a cogvideox model takes 8N+1 frames",
    ),
    (
        "cogvideox validation frames not 8N+1",
        _with("training.validation.num_frames", 13),
        "training.validation.num_frames: a cogvideox model takes 8N+1 frames",
    ),
    ("unknown family", _with("model.family", "hunyuan"), 'spec.model.family: Unsupported value: "hunyuan"'),
    ("height not /16", _with("training.data.height", 500), "height must be a multiple of 16"),
    ("unknown schedule", _with("training.optim.lr_schedule", "exp"), 'lr_schedule: Unsupported value: "exp"'),
    ("zero learning rate", _with("training.optim.learning_rate", 0), "should be greater than 0"),
    (
        "min above replicas",
        _with("workers", {"replicas": 2, "minReplicas": 3}),
        "workers.minReplicas must not exceed workers.replicas",
    ),
    (
        "replicas above max",
        _with("workers", {"replicas": 5, "maxReplicas": 4}),
        "workers.replicas must not exceed workers.maxReplicas",
    ),
    ("17 GPUs", _with("workers.resources.gpus", 17), "spec.workers.resources.gpus: Invalid value: 17"),
    ("cpu not a quantity", _with("workers.resources.cpu", "eight"), "spec.workers.resources.cpu in body should match"),
    ("negative backoffLimit", _with("backoffLimit", -1), "spec.backoffLimit: Invalid value: -1"),
    ("bad toleration", _with("placement.tolerations", [{"operator": "Maybe"}]), 'Unsupported value: "Maybe"'),
    (
        "i2v without images",
        {
            **_with("training.validation.prompts", ["a mouse whistles"]),
            "model": {"uri": "s3://models/i2v", "variant": "i2v"},
        },
        "an image-to-video run needs one image per prompt",
    ),
    (
        "i2v evaluation with fewer images than prompts",
        {**BASE, "model": I2V, "evaluation": {**EVALUATION, "prompts": ["a", "b"], "images": IMAGES[:1]}},
        "evaluation: an image-to-video run needs one image per prompt",
    ),
    (
        "t2v evaluation with images",
        {**BASE, "evaluation": {**EVALUATION, "images": IMAGES[:1]}},
        "evaluation.images: a text-to-video run takes no images",
    ),
    (
        "evaluation frames not 4N+1",
        {**BASE, "evaluation": {**EVALUATION, "num_frames": 10}},
        "spec.evaluation.num_frames: Invalid value: 10: num_frames must be 4N+1",
    ),
    (
        "cogvideox evaluation frames not 8N+1",
        {**BASE, "evaluation": {**EVALUATION, "num_frames": 13}},
        "evaluation.num_frames: a cogvideox model takes 8N+1 frames",
    ),
    (
        "evaluation without prompts",
        {**BASE, "evaluation": {"clip_uri": EVALUATION["clip_uri"]}},
        "spec.evaluation.prompts: Required value",
    ),
    (
        "keys in the spec",
        _with("training.s3.aws_secret_access_key", "hunter2"),
        'unknown field "spec.training.s3.aws_secret_access_key"',
    ),
    ("misspelt field", _with("training.optim.lr", 1e-4), 'unknown field "spec.training.optim.lr"'),
]


@pytest.mark.parametrize(("case", "spec", "message"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_videofinetunes_are_refused_with_the_reason(
    cluster: Cluster, crd_ns: str, case: str, spec: dict[str, Any], message: str
) -> None:
    from kubernetes.client.rest import ApiException

    body = {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": "bad"}, "spec": spec}
    with pytest.raises(ApiException) as err:
        # Strict, as kubectl asks by default: unknown fields are refused, not silently dropped
        cluster.custom.create_namespaced_custom_object(
            api.GROUP, api.VERSION, crd_ns, api.PLURAL, body, field_validation="Strict"
        )
    assert err.value.status in (400, 422), err.value.body  # 400: strict decoding (unknown fields)
    assert message in refusal(err.value), refusal(err.value)
    assert "hunter2" not in err.value.body  # a refused secret is not echoed back


@pytest.mark.parametrize("name", ["Disney", "1-disney", "a" * (api.MAX_NAME_LENGTH + 1)])
def test_names_that_cannot_name_a_rayjob_are_refused(cluster: Cluster, crd_ns: str, name: str) -> None:
    from kubernetes.client.rest import ApiException

    with pytest.raises(ApiException) as err:
        cluster.create(crd_ns, name, BASE)
    message = refusal(err.value)
    assert f"metadata.name must be at most {api.MAX_NAME_LENGTH} characters" in message or (
        "a lowercase RFC 1123 subdomain" in message  # uppercase never reaches the schema
    ), message


def test_what_a_started_run_is_made_of_cannot_change(cluster: Cluster, crd_ns: str) -> None:
    from kubernetes.client.rest import ApiException

    cluster.create(crd_ns, "immutable", BASE)
    # before the run starts, the dataset may still be corrected
    cluster.patch(crd_ns, "immutable", {"dataset": {"uri": "s3://data/disney-v2"}})
    cluster.custom.patch_namespaced_custom_object_status(
        api.GROUP,
        api.VERSION,
        crd_ns,
        api.PLURAL,
        "immutable",
        {"status": {"phase": "Running", "startTime": "2026-12-01T12:00:00Z"}},
    )
    changes: list[tuple[dict[str, Any], str]] = [
        ({"model": {"uri": "s3://models/CogVideoX-5b"}}, "spec.model"),
        ({"dataset": {"uri": "s3://data/other"}}, "spec.dataset"),
        ({"output": {"uri": "s3://runs/elsewhere"}}, "spec.output"),
        ({"training": {"lora": {"rank": 64}}}, "spec.training.lora"),
    ]
    for change, field in changes:
        with pytest.raises(ApiException) as err:
            cluster.patch(crd_ns, "immutable", change)
        assert f"{field}: Invalid value: {field} cannot change once the run has started" in refusal(err.value)
    # the rest of the recipe may change (the run restarts from its checkpoint with it)
    cluster.patch(crd_ns, "immutable", {"training": {"optim": {"learning_rate": 5e-5}}})


def test_kubectl_scale_and_the_columns(apiserver: ApiServer, cluster: Cluster, crd_ns: str) -> None:
    cluster.create(crd_ns, "scaled", {**BASE, "workers": {"replicas": 2, "maxReplicas": 4}})
    apiserver.kubectl("-n", crd_ns, "scale", "vft/scaled", "--replicas=4")
    assert cluster.get(crd_ns, "scaled")["spec"]["workers"]["replicas"] == 4
    refused = apiserver.kubectl("-n", crd_ns, "scale", "vft/scaled", "--replicas=5", check=False)
    assert refused.returncode != 0
    assert "workers.replicas must not exceed workers.maxReplicas" in refused.stderr
    header = apiserver.kubectl("-n", crd_ns, "get", "vft").stdout.splitlines()[0].split()
    assert header == ["NAME", "PHASE", "WORKERS", "QUEUE", "STEP", "LOSS", "CHECKPOINT", "AGE"]
    wide = apiserver.kubectl("-n", crd_ns, "get", "videofinetunes", "-o", "wide").stdout.splitlines()[0].split()
    assert wide[-4:] == ["ATTEMPT", "RAYJOB", "FIDELITY", "MODEL"]
    explained = apiserver.kubectl("explain", "vft.spec.workers.maxReplicas").stdout
    assert "the most pods the run may scale to without a restart" in explained
