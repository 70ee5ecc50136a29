"""RayJob = f(VideoFineTune): the desired state, unit-tested on its own (no server)."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from disney_operator import api
from disney_operator.rayjob import (
    CONFIG_DIR,
    CONFIG_FILE,
    CONFIG_VOLUME,
    ENTRYPOINT,
    EVAL_ENTRYPOINT,
    LABEL_VFT,
    RESIZE_CHECK_SECONDS,
    SpecError,
    desired_config_map,
    rayjob_name,
    run_config,
    run_config_of,
)
from disney_operator.settings import GPU_TOLERATIONS, ON_DEMAND_AFFINITY, RAY_VERSION, Settings, settings_from_env
from disney_train.config import EvaluationConfig, RunConfig
from tests.support.vfts import I2V, evaluation, group, render, vft


def config_of(body: dict[str, Any], attempt: int = 1) -> RunConfig:
    """The run configuration in the ConfigMap the RayJob's head mounts."""
    spec = api.VideoFineTuneSpec.model_validate(body["spec"])
    return run_config_of(desired_config_map(body, spec, attempt))


def head(rj: dict[str, Any]) -> dict[str, Any]:
    h: dict[str, Any] = rj["spec"]["rayClusterSpec"]["headGroupSpec"]
    return h


def name_of(body: dict[str, Any], attempt: int = 1) -> str:
    return rayjob_name(body["metadata"]["name"], api.VideoFineTuneSpec.model_validate(body["spec"]), attempt)


def test_the_name_is_a_function_of_spec_and_attempt_and_fits_kuberay() -> None:
    body = vft()
    assert name_of(body) == name_of(copy.deepcopy(body)) == render(body)["metadata"]["name"]
    assert re.fullmatch(r"disney-2b-1-[0-9a-f]{5}", name_of(body))
    longest = vft("a" * api.MAX_NAME_LENGTH)
    assert len(name_of(longest, attempt=101)) <= 47  # KubeRay: RayJob names up to 47, DNS-1035
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name_of(longest, 101))

    # what needs a new Ray cluster changes the name; what does not, does not
    assert name_of(body, 2) != name_of(body)
    assert name_of(vft(training={"optim": {"learning_rate": 3e-4}})) != name_of(body)
    assert name_of(vft(image="registry/trainer:2")) != name_of(body)
    for same in ({"suspend": True}, {"backoffLimit": 9}, {"ttlSecondsAfterFinished": 60}):
        assert name_of(vft(**same)) == name_of(body), same
    # replicas: a fixed-size run restarts at the new size; an elastic one is scaled in place
    assert name_of(vft(workers={"replicas": 2})) != name_of(body)
    elastic = {"maxReplicas": 8}
    assert name_of(vft(workers={"replicas": 2, **elastic})) == name_of(vft(workers={"replicas": 6, **elastic}))


def test_gpu_workers_head_and_the_run_configuration() -> None:
    body = vft(workers={"replicas": 3, "resources": {"gpus": 8, "cpu": "96", "memory": "900Gi"}})
    rj = render(body)
    g, h = group(rj), head(rj)
    worker = g["template"]["spec"]
    res = worker["containers"][0]["resources"]
    assert res["requests"] == res["limits"] == {"cpu": "96", "memory": "900Gi", "nvidia.com/gpu": "8"}
    assert worker["restartPolicy"] == "Never"  # the Ray autoscaler requires it
    assert worker["tolerations"] == GPU_TOLERATIONS  # the GPU node pool's taint
    assert {"name": "dshm", "mountPath": "/dev/shm"} in worker["containers"][0]["volumeMounts"]
    assert worker["volumes"][0]["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Gi"}
    assert (g["replicas"], g["minReplicas"], g["maxReplicas"]) == (3, 3, 3)
    assert g["rayStartParams"] == {"num-gpus": "8"}  # said outright: KubeRay counts only "*gpu" resources

    head_pod = h["template"]["spec"]
    assert "nvidia.com/gpu" not in str(head_pod["containers"][0]["resources"])
    # the head trains nothing (num-cpus 0), so a CPU limit would only throttle the GCS and the dashboard:
    # on a real cluster a head held to its request missed its own start-up timeouts and KubeRay replaced it
    # again and again. Its CPU is a request; its memory is capped as asked.
    head_res = head_pod["containers"][0]["resources"]
    assert head_res == {"requests": {"cpu": "4", "memory": "16Gi"}, "limits": {"memory": "16Gi"}}
    assert head_pod["affinity"] == ON_DEMAND_AFFINITY  # not on spot nodes: losing the head loses the job
    assert "tolerations" not in head_pod and "restartPolicy" not in head_pod
    assert h["rayStartParams"]["num-cpus"] == "0"  # nothing trains on the head

    spec = rj["spec"]
    assert spec["entrypoint"] == ENTRYPOINT
    assert spec["rayClusterSpec"]["enableInTreeAutoscaling"] is True
    assert spec["shutdownAfterJobFinishes"] is True and spec["backoffLimit"] == 0
    assert spec["rayClusterSpec"]["rayVersion"] == RAY_VERSION
    cfg = config_of(body)
    assert cfg.name == "disney-2b"
    assert (cfg.model.uri, cfg.data.uri, cfg.output.uri) == (
        "s3://models/CogVideoX-2b",
        "s3://data/disney",
        "s3://runs/disney",
    )
    w = cfg.train.workers
    assert (w.replicas, w.min_replicas, w.max_replicas, w.device, w.cpus_per_worker) == (24, None, None, "cuda", 12)
    assert cfg.lora.rank == 128 and cfg.optim.learning_rate == 1e-4  # the seed's recipe by default
    # 8 Ray Train workers per pod, each serving its metrics on metrics.port + local rank
    ports = worker["containers"][0]["ports"]
    assert [p["name"] for p in ports] == [f"metrics-{i}" for i in range(8)]
    assert [p["containerPort"] for p in ports] == [cfg.metrics.port + i for i in range(8)]


def test_cpu_workers() -> None:
    body = vft(workers={"replicas": 2, "resources": {"gpus": 0, "cpu": "7500m", "memory": "8Gi"}})
    rj = render(body)
    worker = group(rj)["template"]["spec"]
    assert worker["containers"][0]["resources"]["limits"] == {"cpu": "7500m", "memory": "8Gi"}
    assert "tolerations" not in worker  # no GPU taint to tolerate
    pooled = render(
        vft(workers={"resources": {"gpus": 0, "cpu": "4"}}), settings=Settings(worker_node_selector={"pool": "gpu"})
    )
    assert "nodeSelector" not in group(pooled)["template"]["spec"]  # the GPU pool's defaults are for GPU workers
    assert group(rj)["rayStartParams"] == {}
    w = config_of(body).train.workers
    assert (w.replicas, w.device, w.cpus_per_worker) == (2, "cpu", 7)
    assert worker["containers"][0]["ports"] == [{"name": "metrics-0", "containerPort": 9500}]


def test_elastic_range() -> None:
    body = vft(workers={"replicas": 4, "minReplicas": 2, "maxReplicas": 8, "resources": {"gpus": 2, "cpu": "16"}})
    g = group(render(body))
    # the group's cap is what `kubectl scale` asked for; Ray Train asks for the most and grows into it
    assert (g["replicas"], g["minReplicas"], g["maxReplicas"]) == (4, 2, 4)
    w = config_of(body).train.workers
    assert (w.min_replicas, w.max_replicas, w.replicas, w.cpus_per_worker) == (4, 16, 16, 8)
    assert w.resize_check_seconds == RESIZE_CHECK_SECONDS < 60  # a scale's new pod is used within seconds
    # scaling an elastic run changes the group, not the run configuration
    scaled_body = vft(
        workers={"replicas": 6, "minReplicas": 2, "maxReplicas": 8, "resources": {"gpus": 2, "cpu": "16"}}
    )
    scaled = render(scaled_body)
    assert config_of(scaled_body) == config_of(body)
    assert (group(scaled)["replicas"], group(scaled)["maxReplicas"]) == (6, 6)


def test_placement_from_the_spec_else_the_operator_defaults() -> None:
    placement = {
        "nodeSelector": {"pool": "h100"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "training", "effect": "NoSchedule"}],
        "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}},
        "priorityClassName": "training-high",
    }
    allowed = Settings(allowed_priority_classes=["training-high"])
    worker = group(render(vft(placement=placement), settings=allowed))["template"]["spec"]
    for k, v in placement.items():
        assert worker[k] == v, k
    # an explicit empty list is the user's choice, not a default to fill in
    assert "tolerations" not in group(render(vft(placement={"tolerations": []})))["template"]["spec"]
    settings = Settings(worker_node_selector={"pool": "gpu"}, head_node_selector={"pool": "system"})
    rj = render(vft(head={"placement": {"affinity": {"nodeAffinity": {}}}}), settings=settings)
    assert group(rj)["template"]["spec"]["nodeSelector"] == {"pool": "gpu"}
    assert head(rj)["template"]["spec"]["nodeSelector"] == {"pool": "system"}
    assert head(rj)["template"]["spec"]["affinity"] == {"nodeAffinity": {}}


def test_image_pull_secrets_for_every_ray_pod() -> None:
    rj = render(vft(), settings=Settings(image_pull_secrets=["registry", "mirror"]))
    for pod in (group(rj)["template"]["spec"], head(rj)["template"]["spec"]):
        assert pod["imagePullSecrets"] == [{"name": "registry"}, {"name": "mirror"}]
    assert "imagePullSecrets" not in group(render(vft()))["template"]["spec"]


def test_s3_keys_only_by_reference_to_the_secret() -> None:
    rj = render(vft(s3Credentials={"secretName": "s3-keys", "secretAccessKeyKey": "secret"}))
    for pod in (group(rj)["template"]["spec"], head(rj)["template"]["spec"]):
        env = pod["containers"][0]["env"]
        assert env == [
            {
                "name": "AWS_ACCESS_KEY_ID",
                "valueFrom": {"secretKeyRef": {"name": "s3-keys", "key": "AWS_ACCESS_KEY_ID"}},
            },
            {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef": {"name": "s3-keys", "key": "secret"}}},
        ]
    assert all("value" not in e for e in env)  # never a literal value
    # and a spec cannot carry keys at all
    with pytest.raises(ValueError, match="aws_secret_access_key"):
        render(vft(training={"s3": {"aws_secret_access_key": "x"}}))


def test_ownership_and_labels() -> None:
    rj = render(vft(), attempt=2)
    meta = rj["metadata"]
    assert meta["namespace"] == "team-a"
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "disneytrain.dev/v1alpha1",
            "kind": "VideoFineTune",
            "name": "disney-2b",
            "uid": "1234-uid",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert meta["labels"][LABEL_VFT] == "disney-2b" and meta["labels"]["disneytrain.dev/attempt"] == "2"
    assert group(rj)["template"]["metadata"]["labels"]["disneytrain.dev/role"] == "worker"


def mounted(body: dict[str, Any], tmp_path: Path, attempt: int = 1) -> Path:
    """The run configuration file as the head sees it: the RayJob's head mounts the ConfigMap of the
    RayJob's name at CONFIG_DIR (checked here), whose file the entrypoint names."""
    spec = api.VideoFineTuneSpec.model_validate(body["spec"])
    rj, config_map = render(body, attempt), desired_config_map(body, spec, attempt)
    assert config_map["metadata"]["name"] == rj["metadata"]["name"]
    assert config_map["metadata"]["ownerReferences"] == rj["metadata"]["ownerReferences"]
    pod = head(rj)["template"]["spec"]
    assert {"name": CONFIG_VOLUME, "configMap": {"name": rj["metadata"]["name"]}} in pod["volumes"]
    mount = {"name": CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": True}
    assert mount in pod["containers"][0]["volumeMounts"]
    assert f"--config {CONFIG_DIR}/{CONFIG_FILE}" in rj["spec"]["entrypoint"]
    path = tmp_path / CONFIG_FILE
    path.write_text(config_map["data"][CONFIG_FILE])
    return path


def test_the_entrypoint_reads_the_configuration_the_operator_rendered(tmp_path: Path) -> None:
    """`disney-train train --config` on the head gets exactly run_config(): through the real CLI code."""
    from disney_train.cli.common import run_config as _run_config

    body = vft(training={"data": {"num_frames": 17, "id_token": "DISNEY"}, "optim": {"max_steps": 500}})
    read = _run_config(mounted(body, tmp_path), None, None)
    spec = api.VideoFineTuneSpec.model_validate(body["spec"])
    assert read == run_config("disney-2b", spec, owner="team-a/disney-2b/1234-uid")
    assert read.data.id_token == "DISNEY"


def test_kuberays_own_checks_pass() -> None:
    """What KubeRay's controller refuses (ray-operator/controllers/ray/utils/validation.go), checked here."""
    for body in (vft(), vft(suspend=True), vft(workers={"replicas": 2, "maxReplicas": 4})):
        rj = render(body)
        spec = rj["spec"]
        assert len(rj["metadata"]["name"]) <= 47
        assert not spec["suspend"] or spec["shutdownAfterJobFinishes"]  # suspend needs shutdownAfterJobFinishes
        assert spec["ttlSecondsAfterFinished"] >= 0
        assert spec["rayClusterSpec"]["autoscalerOptions"]["version"] == "v2"
        assert head(rj)["template"]["spec"].get("restartPolicy", "Never") == "Never"  # autoscaler v2
        assert group(rj)["template"]["spec"]["restartPolicy"] == "Never"
        assert head(rj)["template"]["spec"]["containers"] and group(rj)["template"]["spec"]["containers"]


def test_specs_no_rayjob_can_be_built_from_are_named() -> None:
    with pytest.raises(SpecError, match=r"workers.resources.cpu 500m .* less than one CPU"):
        render(vft(workers={"resources": {"gpus": 1, "cpu": "500m"}}))
    with pytest.raises(SpecError, match="one image per prompt"):
        render(
            vft(
                model={"uri": "s3://models/CogVideoX-5b-I2V", "variant": "i2v"},
                training={"validation": {"prompts": ["a mouse whistles"]}},
            )
        )


def test_the_evaluation_runs_after_training_with_the_specs_settings(tmp_path: Path) -> None:
    from disney_train.cli.common import run_config as _run_config

    plain = render(vft())
    assert plain["spec"]["entrypoint"] == ENTRYPOINT and config_of(vft()).evaluation is None

    block = evaluation(seeds=1, num_frames=17, lora_scale=0.8)
    rj = render(vft(evaluation=block))
    # one command (KubeRay's submitter pastes it into its own shell line: an `&&` would split it there)
    assert (
        rj["spec"]["entrypoint"] == EVAL_ENTRYPOINT == f"disney-train train --config {CONFIG_DIR}/run.yaml --evaluate"
    )
    expected = EvaluationConfig.model_validate(block)
    assert config_of(vft(evaluation=block)).evaluation == expected
    # what `disney-train train --config ... --evaluate` on the head reads back, through the real CLI code
    assert _run_config(mounted(vft(evaluation=block), tmp_path), None, None).evaluation == expected
    # another entrypoint needs another RayJob: adding (or changing) the block while training restarts it
    assert rj["metadata"]["name"] != plain["metadata"]["name"]
    assert name_of(vft(evaluation=evaluation(seeds=3))) != name_of(vft(evaluation=block))

    images = ["s3://disney-train/eval/i2v/lighthouse.png", "s3://disney-train/eval/i2v/mast.png"]
    i2v = config_of(vft(model=I2V, evaluation=evaluation(images=images)))
    assert i2v.evaluation is not None and i2v.evaluation.images == images


def test_an_evaluation_the_pods_cannot_run_is_refused_naming_the_field() -> None:
    with pytest.raises(SpecError, match=r"^evaluation\.clip_uri '/models/clip' is not an s3:// URI"):
        render(vft(evaluation=evaluation(clip_uri="/models/clip")))
    with pytest.raises(SpecError, match=r"^evaluation\.images\[1\] 'mast\.png' is not an s3:// URI"):
        render(vft(model=I2V, evaluation=evaluation(images=["s3://disney-train/eval/a.png", "mast.png"])))
    with pytest.raises(SpecError, match=r"evaluation: an image-to-video run needs one image per prompt"):
        render(vft(model=I2V, evaluation=evaluation(images=["s3://disney-train/eval/a.png"])))
    with pytest.raises(SpecError, match=r"evaluation\.images: a text-to-video run takes no images"):
        render(vft(evaluation=evaluation(images=["s3://disney-train/eval/a.png"] * 2)))


def test_operator_settings_from_the_environment() -> None:
    s = settings_from_env(
        {
            "DISNEY_OPERATOR_IMAGE": "reg/t:1",
            "DISNEY_OPERATOR_RESYNC_SECONDS": "5",
            "DISNEY_OPERATOR_WORKER_NODE_SELECTOR": '{"pool": "a100"}',
        }
    )
    assert (s.image, s.resync_seconds, s.worker_node_selector) == ("reg/t:1", 5.0, {"pool": "a100"})
    with pytest.raises(ValueError, match="DISNEY_OPERATOR_WORKER_TOLERATIONS: not JSON"):
        settings_from_env({"DISNEY_OPERATOR_WORKER_TOLERATIONS": "[oops"})
    with pytest.raises(ValueError, match="DISNEY_OPERATOR_RESYNC_SECONDS"):
        settings_from_env({"DISNEY_OPERATOR_RESYNC_SECONDS": "-1"})


def test_the_operator_cli_renders_a_rayjob_and_checks_the_crd(tmp_path: Path) -> None:
    import subprocess
    import sys

    from disney_operator.crd import CRD_PATH

    cli = str(Path(sys.executable).parent / "disney-train-operator")
    manifest = tmp_path / "vft.yaml"
    body = vft(workers={"replicas": 2, "maxReplicas": 4})
    manifest.write_text(
        yaml.safe_dump({k: v for k, v in body.items() if k != "metadata"} | {"metadata": {"name": "demo"}})
    )
    out = subprocess.run([cli, "render", str(manifest), "--attempt", "3"], capture_output=True, text=True, check=True)
    config_map, rj = yaml.safe_load_all(out.stdout)
    assert rj["kind"] == "RayJob" and re.fullmatch(r"demo-3-[0-9a-f]{5}", rj["metadata"]["name"])
    assert config_map["kind"] == "ConfigMap" and config_map["metadata"]["name"] == rj["metadata"]["name"]
    assert run_config_of(config_map).train.workers.max_replicas == 4

    manifest.write_text(yaml.safe_dump({"metadata": {"name": "demo"}, "spec": {"model": {"uri": "/local"}}}))
    bad = subprocess.run([cli, "render", str(manifest)], capture_output=True, text=True)
    assert bad.returncode == 2 and f"error: {manifest}:" in bad.stderr and "model.uri" in bad.stderr

    assert subprocess.run([cli, "crd", "--check", str(CRD_PATH)], capture_output=True).returncode == 0
    stale = tmp_path / "crd.yaml"
    stale.write_text(CRD_PATH.read_text().replace("default: 42", "default: 43"))
    drift = subprocess.run([cli, "crd", "--check", str(stale)], capture_output=True, text=True)
    assert drift.returncode == 1 and "differs from the generated CRD" in drift.stderr


def test_the_operator_cli_refuses_a_bad_peering_priority() -> None:
    import subprocess
    import sys

    from disney_operator.cli import _priority

    cli = str(Path(sys.executable).parent / "disney-train-operator")
    for args, message in (
        (["--peering", "p", "--priority", "high"], "--priority: 'high' is neither an integer nor 'oldest'"),
        (["--peering", "p", "-n", "a,b"], "--peering takes named namespaces or --all-namespaces, not patterns"),
        (["--priority", "5", "-A"], "--priority needs --peering"),
    ):
        out = subprocess.run([cli, "run", *args], capture_output=True, text=True, timeout=60)
        assert out.returncode == 2 and message in out.stderr, out.stderr
    assert _priority("7") == 7 and _priority(None) is None
    older, newer = _priority("oldest", started=1000.0), _priority("oldest", started=1000.5)
    assert older is not None and newer is not None and older > newer  # the first started ranks highest
    ties = {_priority("oldest", started=1000.0) for _ in range(20)}
    assert len(ties) > 1 and all(t is not None and -(2**63) < t < 0 for t in ties)  # same start: still apart
