"""The example jobs users apply (`jobs/*.yaml`): each is a VideoFineTune the API server accepts, that the
operator turns into a GPU RayJob KubeRay accepts, and the t2v job carries the seed project's recipe.

Every `jobs/*.yaml` is covered; a new job needs no change here.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from disney_operator import api
from disney_operator.rayjob import ENTRYPOINT, EVAL_ENTRYPOINT, WORKER_GROUP, desired_config_map, run_config_of
from disney_train.config import ModelConfig as RunModel
from disney_train.config import RunConfig, TrainingSpec
from disney_train.train.engine import Placement, deepspeed_config, placement
from tests.support.apiserver import ApiServer
from tests.support.vfts import group
from tests.support.vfts import render as render_body

ROOT = Path(__file__).resolve().parents[1]
JOBS = sorted((ROOT / "jobs").glob("*.yaml"))
EXAMPLES = {
    "cogvideox-2b-disney-t2v.yaml",
    "cogvideox-5b-i2v-disney.yaml",
    "wan2.1-t2v-1.3b-disney.yaml",
    "wan2.2-i2v-a14b-disney.yaml",
    "wan2.2-i2v-a14b-disney-high.yaml",
    "smoke.yaml",
}
GPU_JOBS = EXAMPLES  # each example is meant for GPU nodes
EVALUATED = EXAMPLES  # baseline versus fine-tuned after training, the smoke job too
UID = "00000000-0000-0000-0000-000000000000"

each_job = pytest.mark.parametrize("path", JOBS, ids=[p.name for p in JOBS])


def load(path: Path) -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    assert len(docs) == 1, f"{path.name}: one VideoFineTune per file, found {len(docs)} documents"
    body: dict[str, Any] = docs[0]
    assert (body["apiVersion"], body["kind"]) == (api.API_VERSION, api.KIND)
    assert "namespace" not in body["metadata"], "the user picks the namespace (kubectl -n)"
    return body


def spec_of(path: Path) -> api.VideoFineTuneSpec:
    return api.VideoFineTuneSpec.model_validate(load(path)["spec"])


def render(path: Path, namespace: str = "team-a") -> dict[str, Any]:
    """What `disney-train-operator render` prints, with the operator's default settings."""
    body = load(path)
    body["metadata"] |= {"namespace": namespace, "uid": UID}
    return render_body(body)


def config_map(path: Path, namespace: str = "team-a") -> dict[str, Any]:
    """The ConfigMap the operator writes beside the RayJob: the run configuration its head mounts."""
    body = load(path)
    body["metadata"] |= {"namespace": namespace, "uid": UID}
    return desired_config_map(body, api.VideoFineTuneSpec.model_validate(body["spec"]), 1)


def worker_group(rj: dict[str, Any]) -> dict[str, Any]:
    assert [g["groupName"] for g in rj["spec"]["rayClusterSpec"]["workerGroupSpecs"]] == [WORKER_GROUP]
    return group(rj)


def dry_run(server: ApiServer, ns: str, manifest: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return server.kubectl("apply", "--dry-run=server", "-n", ns, "-f", "-", input=manifest, check=check)


def test_the_examples_are_there() -> None:
    assert {p.name for p in JOBS} >= EXAMPLES, f"jobs/ holds {[p.name for p in JOBS]}"
    for name in EVALUATED:
        assert spec_of(ROOT / "jobs" / name).evaluation is not None, f"{name}: no evaluation after training"


# --------------------------------------------------------------------------- the VideoFineTunes


@each_job
def test_the_api_server_accepts_the_job(apiserver: ApiServer, ns: str, path: Path) -> None:
    """The CRD's schema, defaults and CEL rules, and strict field validation (unknown fields refused)."""
    out = apiserver.kubectl("apply", "--dry-run=server", "-n", ns, "-f", str(path))
    name = load(path)["metadata"]["name"]
    assert f"{api.SINGULAR}.{api.GROUP}/{name} created (server dry run)" in out.stdout
    assert "Warning" not in out.stderr, out.stderr


@each_job
def test_the_job_is_a_valid_spec(path: Path) -> None:
    spec = spec_of(path)
    v = spec.training.validation
    assert v.prompts, "a job renders validation videos"
    if spec.model.variant == "i2v":
        assert len(v.images) == len(v.prompts)
        assert all(i.startswith("s3://") for i in v.images), "pods only see S3, not the user's files"
    else:
        assert not v.images
    # the id token is put before the training prompts only; validation prompts are used as written
    token = spec.training.data.id_token
    if token:
        assert all(p.startswith(f"{token} ") for p in v.prompts), v.prompts
    e = spec.evaluation
    if e is not None:
        assert not set(e.prompts) & set(v.prompts), "evaluation prompts are held out, not the validation ones"
        if spec.model.variant == "i2v":
            assert len(e.images) == len(e.prompts) and not set(e.images) & set(v.images)
        assert all(u.startswith("s3://") for u in (e.clip_uri, *e.images)), "pods only see S3"
        if token:
            assert all(p.startswith(f"{token} ") for p in e.prompts), e.prompts
    if path.name in EXAMPLES:  # one placeholder bucket and one Secret: one setup serves every example
        uris = [spec.model.uri, spec.dataset.uri, spec.output.uri, *v.images]
        uris += [e.clip_uri, *e.images] if e is not None else []
        assert {u.split("/")[2] for u in uris} == {"disney-train"}, uris
        assert spec.s3Credentials is not None and spec.s3Credentials.secretName == "disney-train-s3"


ELASTIC = [p for p in JOBS if spec_of(p).workers.maxReplicas is not None]


@pytest.mark.parametrize("path", ELASTIC, ids=[p.name for p in ELASTIC])
def test_kubectl_scale_works_up_to_max_replicas(apiserver: ApiServer, path: Path) -> None:
    """What the comments promise: `kubectl scale vft/NAME --replicas=N` within the elastic range.
    Created for real, in a namespace no operator of the suite watches (they watch vft-*)."""
    ns = f"jobs-{uuid.uuid4().hex[:8]}"
    workers = spec_of(path).workers
    assert workers.maxReplicas is not None
    name = load(path)["metadata"]["name"]
    apiserver.kubectl("create", "-n", ns, "-f", str(path))
    try:
        out = apiserver.kubectl("scale", "-n", ns, f"vft/{name}", f"--replicas={workers.maxReplicas}")
        assert f"{name} scaled" in out.stdout
        refused = apiserver.kubectl(
            "scale", "-n", ns, f"vft/{name}", f"--replicas={workers.maxReplicas + 1}", check=False
        )
        assert refused.returncode != 0 and "must not exceed workers.maxReplicas" in refused.stderr
        got = apiserver.kubectl("get", "-n", ns, f"vft/{name}", "-o", "jsonpath={.spec.workers.replicas}")
        assert got.stdout == str(workers.maxReplicas)
    finally:
        apiserver.kubectl("delete", "-n", ns, f"vft/{name}", "--wait=false", check=False)


def _bad_replicas(s: dict[str, Any]) -> None:
    s["workers"]["replicas"] = 0


def _unknown_field(s: dict[str, Any]) -> None:
    s["workers"]["replica"] = 2


def _bad_frames(s: dict[str, Any]) -> None:
    s["training"]["data"]["num_frames"] = 16


def _i2v_without_images(s: dict[str, Any]) -> None:
    s["model"]["variant"] = "i2v"


def _expert_of_cogvideox(s: dict[str, Any]) -> None:
    s["model"]["expert"] = "low"


BROKEN: dict[str, tuple[Callable[[dict[str, Any]], None], list[str]]] = {
    "replicas 0": (_bad_replicas, ["spec.workers.replicas", "greater than or equal to 1"]),
    "unknown field": (_unknown_field, ['unknown field "spec.workers.replica"']),
    "frames not 4N+1": (_bad_frames, ["spec.training.data.num_frames", "must be 4N+1"]),
    "i2v without images": (_i2v_without_images, ["an image-to-video run needs one image per prompt"]),
    "expert of a cogvideox": (_expert_of_cogvideox, ["model.expert: only a Wan 2.2 model (family wan) has experts"]),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_the_dry_run_refuses_a_broken_job(apiserver: ApiServer, ns: str, case: str) -> None:
    """The dry run is a real check: the smoke job broken one way is refused, naming the field."""
    edit, expected = BROKEN[case]
    body = load(ROOT / "jobs" / "smoke.yaml")
    edit(body["spec"])
    refused = dry_run(apiserver, ns, yaml.safe_dump(body), check=False)
    assert refused.returncode != 0, refused.stdout
    for text in expected:
        assert text in refused.stderr


# --------------------------------------------------------------------------- the RayJobs they become


@each_job
def test_the_operator_renders_a_gpu_rayjob(path: Path) -> None:
    spec = spec_of(path)
    res = spec.workers.resources
    if path.name in GPU_JOBS:
        assert res.gpus >= 1 and res.gpuResource == "nvidia.com/gpu"
    rj = render(path)
    group = worker_group(rj)
    assert group["replicas"] == spec.workers.replicas
    pod = group["template"]["spec"]
    (worker,) = pod["containers"]
    cfg = run_config_of(config_map(path))  # the run configuration the head reads (the run's ConfigMap)
    assert cfg.model == RunModel.model_validate(spec.model.model_dump())  # family, variant, Wan 2.2's expert
    lo, hi = cfg.train.workers.bounds
    per_pod = max(res.gpus, 1)
    assert lo <= spec.workers.replicas * per_pod <= hi == (spec.workers.maxReplicas or spec.workers.replicas) * per_pod
    chosen = placement(cfg, cuda_available=res.gpus > 0)  # what each worker's engine will pick
    ds = deepspeed_config(cfg, chosen)
    if res.gpus:
        for kind in ("requests", "limits"):
            assert worker["resources"][kind][res.gpuResource] == str(res.gpus)
        assert group["rayStartParams"]["num-gpus"] == str(res.gpus)
        assert any(t.get("key") == "nvidia.com/gpu" for t in pod["tolerations"]), pod.get("tolerations")
        assert cfg.train.workers.device == "cuda"
        assert chosen == Placement("cuda", "bf16", "nccl")
        assert ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
    else:
        assert not any("gpu" in r for r in worker["resources"]["requests"])
        assert cfg.train.workers.device == "cpu" and chosen.device == "cpu"
    assert ds["zero_optimization"]["stage"] == spec.training.train.zero_stage
    assert ds["train_micro_batch_size_per_gpu"] == spec.training.optim.batch_size
    # the recipe arrives whole, beside the places the spec names
    name = load(path)["metadata"]["name"]
    assert cfg.model.model_dump() == spec.model.model_dump() and cfg.name == name  # uri, family, variant
    assert (cfg.data.uri, cfg.output.uri) == (spec.dataset.uri, spec.output.uri)
    assert recipe_of(cfg) == spec.training
    assert cfg.evaluation == spec.evaluation
    assert rj["spec"]["entrypoint"] == (EVAL_ENTRYPOINT if spec.evaluation is not None else ENTRYPOINT)
    # S3 keys only as references to the Secret, never values
    env = {e["name"]: e for e in worker["env"]}
    creds = spec.s3Credentials
    assert set(env) == ({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} if creds else set())
    for e in env.values():
        assert creds is not None and e["valueFrom"]["secretKeyRef"]["name"] == creds.secretName
        assert "value" not in e


def recipe_of(cfg: RunConfig) -> TrainingSpec:
    """The `training` block back out of a run configuration."""
    data = cfg.model_dump(mode="json", include=set(TrainingSpec.model_fields))
    data["data"].pop("uri")
    data["train"].pop("workers")
    return TrainingSpec.model_validate(data)


@each_job
def test_the_rendered_rayjob_passes_our_kuberay_schemas(apiserver: ApiServer, ns: str, path: Path) -> None:
    rj = render(path, ns)
    out = dry_run(apiserver, ns, yaml.safe_dump(rj))
    assert f"rayjob.ray.io/{rj['metadata']['name']} created (server dry run)" in out.stdout


@each_job
def test_the_rendered_rayjob_passes_kuberays_own_crds(kuberay_server: ApiServer, path: Path) -> None:
    rj = render(path, "jobs")
    out = dry_run(kuberay_server, "jobs", yaml.safe_dump(rj))
    assert f"rayjob.ray.io/{rj['metadata']['name']} created (server dry run)" in out.stdout


# --------------------------------------------------------------------------- the recipes


def test_the_t2v_job_is_the_seed_recipe() -> None:
    """Read back from the parsed recipe; each value is written out in the file, not left to a default."""
    spec = spec_of(ROOT / "jobs" / "cogvideox-2b-disney-t2v.yaml")
    t = spec.training
    assert spec.model.variant == "t2v" and spec.model.uri.endswith("/CogVideoX-2b")
    assert (t.optim.learning_rate, t.optim.batch_size, t.optim.epochs) == (1e-4, 4, 30)
    assert (t.data.num_frames, t.data.height, t.data.width) == (49, 480, 720)
    assert (t.lora.rank, t.lora.alpha, t.lora.target_modules) == (128, 64, ["to_q", "to_k", "to_v", "to_out.0"])
    assert t.train.precision == "bf16" and t.train.zero_stage in (1, 2, 3)
    explicit = {
        "optim": (t.optim, {"learning_rate", "batch_size", "epochs"}),
        "data": (t.data, {"num_frames", "height", "width"}),
        "lora": (t.lora, {"rank", "alpha", "target_modules"}),
        "train": (t.train, {"precision", "zero_stage", "checkpoint_every"}),
    }
    for section, (model, fields) in explicit.items():
        assert fields <= model.model_fields_set, f"training.{section}: {fields - model.model_fields_set} not stated"
    assert t.optim.max_steps is None, "30 epochs, not a step count"
    assert t.validation.prompts and t.validation.every > 0
    w = spec.workers
    assert w.resources.gpus >= 1 and w.replicas == 2
    assert w.minReplicas is not None and w.maxReplicas is not None and w.minReplicas < w.replicas < w.maxReplicas


def test_the_5b_i2v_job_fits_a_5b_model() -> None:
    spec = spec_of(ROOT / "jobs" / "cogvideox-5b-i2v-disney.yaml")
    t = spec.training
    assert spec.model.variant == "i2v" and spec.model.uri.endswith("/CogVideoX-5b-I2V")
    assert t.train.zero_stage == 3 and t.train.gradient_checkpointing and t.train.use_cache
    assert t.optim.batch_size == 1
    assert spec.workers.replicas * spec.workers.resources.gpus >= 8


def test_the_smoke_job_is_small() -> None:
    spec = spec_of(ROOT / "jobs" / "smoke.yaml")
    t = spec.training
    assert spec.workers.replicas == 1 and spec.workers.maxReplicas is None
    assert spec.workers.resources.gpus == 1
    assert t.optim.max_steps is not None and t.optim.max_steps <= 20
    assert t.data.num_frames <= 17 and t.data.height * t.data.width <= 128 * 128
    assert t.train.checkpoint_every < t.optim.max_steps, "a checkpoint is written before the end"
    assert t.validation.steps <= 8 and t.validation.every == 0 and t.validation.at_end
    assert spec.evaluation is not None and spec.evaluation.seeds == 1 and spec.evaluation.steps <= 8
    assert len(spec.evaluation.prompts) == 1 and spec.evaluation.clip_uri.endswith("/tiny-clip")
    assert spec.backoffLimit == 0
