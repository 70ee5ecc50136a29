"""The Helm chart, offline: `helm lint --strict`, `helm template` over a table of values with assertions on
what renders, every built-in object validated against Kubernetes' own schemas (kubernetes-validate, strict,
1.30 and the newest it bundles), the Prometheus Operator objects against its CRD models (cloudcoil), the
values schema refusing bad values by their path. tests/test_chart_operator.py runs the rendered operator."""

from __future__ import annotations

import json
import re
import shutil
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from cloudcoil.models.prometheus_operator import v1 as monitoring
from kubernetes_validate.utils import latest_version

from disney_operator import api
from disney_operator.settings import GPU_TOLERATIONS, ON_DEMAND_AFFINITY, Settings, settings_from_env
from disney_train import __version__
from tests.support.chart import CHART, PROMETHEUS_OPERATOR, chart_copy, find, helm, offline_env, one, render

KUBE_VERSIONS = ["1.30.0", latest_version()]
MONITORING: dict[str, Any] = {
    "ServiceMonitor": monitoring.ServiceMonitor,
    "PodMonitor": monitoring.PodMonitor,
    "PrometheusRule": monitoring.PrometheusRule,
}
# Kinds whose schema is a CRD of ours or kopf's (the API server validates them in test_chart_operator.py)
# and Kueue's (the e2e's install renders kueue.example onto a cluster running Kueue: its API server validates)
KUEUE = {"ResourceFlavor", "ClusterQueue", "LocalQueue"}
CUSTOM = {"ClusterKopfPeering", "KopfPeering", *MONITORING, *KUEUE}

# The table: every value set renders, validates, and passes its own assertions below.
CASES: dict[str, dict[str, Any]] = {
    "defaults": {},
    "named-namespaces": {"watchNamespaces": ["team-a", "team-b"]},
    "no-peering": {"peering": {"enabled": False, "name": "x"}},
    "ha": {"replicaCount": 3},
    "monitoring-off": {
        "metrics": {
            "serviceMonitor": {"enabled": False},
            "podMonitor": {"enabled": False},
            "prometheusRule": {"enabled": False},
            "dashboards": {"enabled": False},
        }
    },
    "gpu-pool": {
        "jobDefaults": {
            "workers": {
                "nodeSelector": {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"},
                "tolerations": [
                    {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                    {"key": "dedicated", "operator": "Equal", "value": "training", "effect": "NoSchedule"},
                ],
            },
            "head": {"nodeSelector": {"pool": "system"}, "affinity": {}},
            "clusterTTLSeconds": 600,
        },
        "operator": {"progressEndpoints": ["aws", "https://minio.example:9000"], "verbose": True},
    },
    "existing-serviceaccount": {"serviceAccount": {"create": False, "name": "ops"}, "rbac": {"create": False}},
    "pinned-digest": {"image": {"repository": "registry.example/op", "digest": "sha256:" + "a" * 64}},
    "everything": {
        "imagePullSecrets": [{"name": "registry"}],
        "podLabels": {"team": "ml"},
        "podAnnotations": {"example.com/note": "x"},
        "nodeSelector": {"pool": "system"},
        "tolerations": [{"key": "system", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}},
        "priorityClassName": "system-cluster-critical",
        "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/op"}},
        "operator": {"extraEnv": [{"name": "AWS_REGION", "value": "eu-west-1"}], "progressSeconds": 1000000},
        "jobDefaults": {"clusterTTLSeconds": 2592000, "imagePullSecrets": ["registry"]},
        "metrics": {"port": 9100, "service": {"type": "NodePort"}, "dashboards": {"folder": ""}},
    },
    "queues": {
        "kueue": {"example": {"enabled": True, "gpus": 16, "localQueues": {"team-a": "gpus", "team-b": "gpus"}}},
        "jobDefaults": {"queues": {"team-a": "gpus", "*": "shared"}, "workers": {"device": "cpu"}},
    },
    "grafana-elsewhere": {
        "metrics": {
            "dashboards": {"namespace": "monitoring", "label": "grafana_dashboard", "labelValue": "disney"},
            "serviceMonitor": {"labels": {"release": "kube-prometheus-stack"}},
        }
    },
}


@pytest.fixture(scope="module")
def chart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return chart_copy(tmp_path_factory.mktemp("chart"))


@pytest.fixture(scope="module")
def rendered(chart: Path) -> dict[str, list[dict[str, Any]]]:
    """Every case as on a cluster with the Prometheus Operator (kube-prometheus-stack): the monitoring objects
    render where enabled. Without its CRDs they do not (test_monitoring_needs_the_prometheus_operators_crds)."""
    return {name: render(chart, values, api_versions=PROMETHEUS_OPERATOR) for name, values in CASES.items()}


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (c,) = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    out: dict[str, Any] = c
    return out


def env_of(objects: list[dict[str, Any]]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(objects)["env"] if "value" in e}


def operator_env(objects: list[dict[str, Any]]) -> dict[str, str]:
    return {k: v for k, v in env_of(objects).items() if k.startswith("DISNEY_OPERATOR_")}


# --------------------------------------------------------------------------- lint and validation
@pytest.mark.parametrize("case", sorted(CASES))
def test_helm_lint_strict(chart: Path, case: str) -> None:
    out = helm("lint", "--strict", str(chart), "-f", "-", check=False, values=CASES[case])
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_chart_as_committed_needs_no_charts_folder_and_no_network(tmp_path: Path) -> None:
    """KubeRay is installed on its own, not by this chart: lint and template work on the chart as committed
    with no `helm dependency build`, no charts/ folder and no chart repository in reach (an air-gapped
    cluster's case). A declared dependency, even one turned off, would fail both."""
    chart = tmp_path / "disney-train"
    shutil.copytree(CHART, chart, ignore=lambda d, names: [n for n in names if Path(d) == CHART and n == "charts"])
    offline = offline_env(tmp_path / "helm-home")
    # the environment does cut helm off: a chart repository is out of its reach
    pull = helm(
        "pull", "kuberay-operator", "--repo", "https://ray-project.github.io/kuberay-helm/", env=offline, check=False
    )
    assert pull.returncode != 0 and "proxyconnect" in pull.stderr, pull.stderr

    lint = helm("lint", "--strict", str(chart), env=offline, check=False)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    out = helm("template", "dt", str(chart), "--namespace", "disney-train", env=offline, check=False)
    assert out.returncode == 0, out.stderr
    assert one([d for d in yaml.safe_load_all(out.stdout) if d], "Deployment")
    assert not (chart / "charts").exists()


def test_the_chart_has_no_kuberay_values(chart: Path) -> None:
    """`kuberay-operator` is no key of this chart's values: the schema refuses it like a misspelt key,
    instead of taking it silently for an install of KubeRay that would not happen."""
    for command in (("template", "dt"), ("lint", "--strict")):
        out = helm(*command, str(chart), "--set", "kuberay-operator.enabled=true", check=False)
        assert out.returncode != 0, out.stdout
        assert "Additional property kuberay-operator is not allowed" in out.stdout + out.stderr


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_every_builtin_object_is_valid_kubernetes(rendered: dict[str, list[dict[str, Any]]], version: str) -> None:
    checked = 0
    for case, objects in rendered.items():
        for obj in objects:
            if obj["kind"] in CUSTOM:
                continue
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as err:
                raise AssertionError(f"{case}: {obj['kind']} {obj['metadata']['name']} (k8s {version}): {err}") from err
            checked += 1
    assert checked > 50


def _dropped(given: Any, kept: Any, path: str = "") -> list[str]:
    """Keys in `given` that the model did not keep: fields it does not know (the models ignore extras)."""
    if isinstance(given, dict):
        return [
            p
            for k, v in given.items()
            for p in (
                [f"{path}.{k}"] if not isinstance(kept, dict) or k not in kept else _dropped(v, kept[k], f"{path}.{k}")
            )
        ]
    if isinstance(given, list) and isinstance(kept, list):
        return [p for i, (g, k) in enumerate(zip(given, kept, strict=False)) for p in _dropped(g, k, f"{path}[{i}]")]
    return []


def test_monitoring_objects_are_valid_prometheus_operator_objects(rendered: dict[str, list[dict[str, Any]]]) -> None:
    seen = set()
    for case, objects in rendered.items():
        for obj in objects:
            model = MONITORING.get(obj["kind"])
            if model is None:
                continue
            parsed = model.model_validate(obj)  # types, enums, patterns (durations) of Prometheus Operator 0.80
            dropped = _dropped(obj, parsed.model_dump(by_alias=True, exclude_none=True, mode="json"))
            assert not dropped, f"{case}: {obj['kind']}: fields Prometheus Operator does not know: {dropped}"
            seen.add(obj["kind"])
    assert seen == set(MONITORING)


def test_the_validators_can_fail(rendered: dict[str, list[dict[str, Any]]]) -> None:
    deployment = json.loads(json.dumps(one(rendered["defaults"], "Deployment")))
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesytem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSIONS[0], strict=True)
    pm = json.loads(json.dumps(one(rendered["defaults"], "PodMonitor")))
    pm["spec"]["podMetricsEndpoints"][0]["intervall"] = "15s"
    kept = monitoring.PodMonitor.model_validate(pm).model_dump(by_alias=True, exclude_none=True, mode="json")
    assert _dropped(pm, kept) == [".spec.podMetricsEndpoints[0].intervall"]


# --------------------------------------------------------------------------- what renders
def test_defaults(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["defaults"]
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == sorted(
        ["CustomResourceDefinition"] * 3
        + ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment", "Service", "ClusterKopfPeering"]
        + ["ClusterRole"] * 2  # aggregated into admin/edit and view, for users
        + ["ServiceMonitor", "PodMonitor", "PrometheusRule", "ConfigMap"]
    )
    crds = {o["metadata"]["name"] for o in find(objects, "CustomResourceDefinition")}
    assert crds == {f"{api.PLURAL}.{api.GROUP}", "clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}
    # the VideoFineTune CRD is the generated one, unchanged
    vft = next(o for o in objects if o["metadata"]["name"] == f"{api.PLURAL}.{api.GROUP}")
    assert vft == yaml.safe_load((CHART / "crds" / f"{api.PLURAL}.{api.GROUP}.yaml").read_text())

    dep = one(objects, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    c = container(objects)
    assert c["image"] == f"ghcr.io/disney-train/operator:{__version__}"
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"] and c["resources"]["limits"]
    assert {m["mountPath"] for m in c["volumeMounts"]} == {"/tmp"}  # the only writable place
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "liveness"}
    assert c["args"][:2] == ["run", "--all-namespaces"]
    assert "--peering=disney-train" in c["args"] and "--priority=oldest" in c["args"]
    assert "--liveness=http://0.0.0.0:8080/healthz" in c["args"]
    assert "strategy" not in dep["spec"] and dep["spec"]["replicas"] == 1
    assert pod["serviceAccountName"] == one(objects, "ServiceAccount")["metadata"]["name"]

    # the operator's settings, as it parses them, are the chart's defaults
    settings = settings_from_env(operator_env(objects))
    assert settings.image == f"ghcr.io/disney-train/trainer:{__version__}"
    assert settings.worker_tolerations == GPU_TOLERATIONS and settings.worker_node_selector == {}
    assert settings.head_affinity == ON_DEMAND_AFFINITY  # not set: the operator's default
    assert settings.metrics_port == 8000 and settings.metrics_address == "0.0.0.0"
    assert settings.image_pull_secrets == []
    assert {"name": "metrics", "containerPort": 8000, "protocol": "TCP"} in c["ports"]
    assert not any(e["name"].startswith("AWS_") for e in c["env"])

    svc = one(objects, "Service")
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"] == pod_labels(dep, svc)
    sm = one(objects, "ServiceMonitor")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] == svc["spec"]["ports"][0]["name"] == "metrics"


def pod_labels(dep: dict[str, Any], svc: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = dep["spec"]["template"]["metadata"]["labels"]
    return {k: v for k, v in labels.items() if k in svc["spec"]["selector"]}


def test_the_workers_podmonitor_selects_what_the_operator_puts_on_worker_pods(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    from disney_operator.rayjob import desired_rayjob
    from disney_operator.settings import Settings

    body = {"metadata": {"name": "r", "namespace": "team-a", "uid": "u"}}
    spec = api.VideoFineTuneSpec.model_validate(
        {
            "model": {"uri": "s3://models/cogvideox"},
            "dataset": {"uri": "s3://data/disney"},
            "output": {"uri": "s3://runs/out"},
            "workers": {"resources": {"gpus": 4}},
        }
    )
    rj = desired_rayjob(body, spec, 1, Settings())
    worker = rj["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]
    head = rj["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]
    pm = one(rendered["defaults"], "PodMonitor")
    selector = pm["spec"]["selector"]["matchLabels"]
    assert selector.items() <= worker["metadata"]["labels"].items()
    assert not selector.items() <= head["metadata"]["labels"].items()  # the head trains nothing
    keep = pm["spec"]["podMetricsEndpoints"][0]["relabelings"][0]
    assert keep["action"] == "keep" and keep["sourceLabels"] == ["__meta_kubernetes_pod_container_port_name"]
    ports = [p["name"] for p in worker["spec"]["containers"][0]["ports"]]
    assert ports == ["metrics-0", "metrics-1", "metrics-2", "metrics-3"]  # one per GPU
    assert all(re.fullmatch(keep["regex"], p) for p in ports) and not re.fullmatch(keep["regex"], "dashboard")
    assert pm["spec"]["namespaceSelector"] == {"any": True}
    assert one(rendered["named-namespaces"], "PodMonitor")["spec"]["namespaceSelector"] == {
        "matchNames": ["team-a", "team-b"]
    }


def test_the_prometheus_rule_is_the_rule_file_verbatim(rendered: dict[str, list[dict[str, Any]]]) -> None:
    rule = one(rendered["defaults"], "PrometheusRule")
    source = (CHART / "rules" / "disney-train.rules.yaml").read_text()
    assert rule["spec"] == yaml.safe_load(source)
    annotations = json.dumps(rule["spec"])
    assert "{{ $labels.run }}" in annotations or "{{$labels.run}}" in annotations  # Prometheus templates kept


def test_the_dashboards_configmap_carries_the_generated_dashboards(rendered: dict[str, list[dict[str, Any]]]) -> None:
    cm = one(rendered["defaults"], "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == "disney-train"
    files = sorted((CHART / "dashboards").glob("*.json"))
    assert sorted(cm["data"]) == [f"disney-train-{f.name}" for f in files]
    for f in files:
        assert json.loads(cm["data"][f"disney-train-{f.name}"]) == json.loads(f.read_text())
    elsewhere = one(rendered["grafana-elsewhere"], "ConfigMap")
    assert elsewhere["metadata"]["namespace"] == "monitoring"
    assert elsewhere["metadata"]["labels"]["grafana_dashboard"] == "disney"
    sm = one(rendered["grafana-elsewhere"], "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_named_namespaces_get_roles_and_nothing_cluster_wide(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["named-namespaces"]
    assert not find(objects, "ClusterRoleBinding")
    assert {r["metadata"]["name"] for r in find(objects, "ClusterRole")} == {
        "dt-disney-train-edit",
        "dt-disney-train-view",
    }
    assert {r["metadata"]["namespace"] for r in find(objects, "Role")} == {"team-a", "team-b"}
    assert {r["metadata"]["namespace"] for r in find(objects, "RoleBinding")} == {"team-a", "team-b"}
    assert {p["metadata"]["namespace"] for p in find(objects, "KopfPeering")} == {"team-a", "team-b"}
    assert not find(objects, "ClusterKopfPeering")
    args = container(objects)["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args and "--all-namespaces" not in args


def test_without_peering_one_replica_and_recreate(rendered: dict[str, list[dict[str, Any]]], chart: Path) -> None:
    objects = rendered["no-peering"]
    dep = one(objects, "Deployment")
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    assert not any(a.startswith(("--peering", "--priority")) for a in container(objects)["args"])
    assert not find(objects, "ClusterKopfPeering")
    rules = one(objects, "ClusterRole", "dt-disney-train")["rules"]
    assert not any("kopf.dev" in r["apiGroups"] for r in rules)
    with pytest.raises(AssertionError, match=r"replicaCount > 1 needs peering\.enabled"):
        render(chart, {"peering": {"enabled": False, "name": "x"}, "replicaCount": 2})


def test_ha_replicas_share_one_peering(rendered: dict[str, list[dict[str, Any]]]) -> None:
    dep = one(rendered["ha"], "Deployment")
    assert dep["spec"]["replicas"] == 3 and "strategy" not in dep["spec"]
    assert "--priority=oldest" in container(rendered["ha"])["args"]
    assert len(find(rendered["ha"], "ClusterKopfPeering")) == 1


def test_monitoring_toggles(rendered: dict[str, list[dict[str, Any]]]) -> None:
    kinds = {o["kind"] for o in rendered["monitoring-off"]}
    assert not kinds & {"ServiceMonitor", "PodMonitor", "PrometheusRule", "ConfigMap"}
    assert "Service" in kinds  # the operator still serves /metrics


def test_gpu_pool_and_operator_settings_reach_the_operator(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["gpu-pool"]
    values = CASES["gpu-pool"]
    settings = settings_from_env(operator_env(objects))
    assert settings.worker_node_selector == values["jobDefaults"]["workers"]["nodeSelector"]
    assert settings.worker_tolerations == values["jobDefaults"]["workers"]["tolerations"]
    assert settings.head_node_selector == {"pool": "system"}
    assert settings.head_affinity == {}  # {} given: no affinity, not the default
    assert settings.cluster_ttl_seconds == 600
    assert settings.progress_endpoints == ["aws", "https://minio.example:9000"]
    assert "--verbose" in container(objects)["args"]


def workload_rules(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rules = [r for role in find(objects, "ClusterRole") for r in role.get("rules") or []]
    return [r for r in rules if any(g.endswith("kueue.x-k8s.io") for g in r["apiGroups"])]


def test_kueue_queues_and_the_operators_queue_settings(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["queues"]
    settings = settings_from_env(operator_env(objects))
    assert settings.default_queues == {"team-a": "gpus", "*": "shared"} and settings.gpu_device == "cpu"
    cq = one(objects, "ClusterQueue")
    assert cq["spec"]["preemption"] == {"withinClusterQueue": "LowerPriority"}
    (group,) = cq["spec"]["resourceGroups"]
    assert group["coveredResources"] == ["cpu", "memory", "nvidia.com/gpu"]
    quotas = {r["name"]: r["nominalQuota"] for r in group["flavors"][0]["resources"]}
    assert quotas == {"cpu": "256", "memory": "2Ti", "nvidia.com/gpu": 16}
    assert group["flavors"][0]["name"] == one(objects, "ResourceFlavor")["metadata"]["name"]
    lqs = find(objects, "LocalQueue")
    assert {(q["metadata"]["namespace"], q["metadata"]["name"], q["spec"]["clusterQueue"]) for q in lqs} == {
        ("team-a", "gpus", "disney-train"),
        ("team-b", "gpus", "disney-train"),
    }
    assert workload_rules(objects) == [  # read only
        {"apiGroups": ["kueue.x-k8s.io"], "resources": ["workloads"], "verbs": ["list"]},
        {"apiGroups": ["visibility.kueue.x-k8s.io"], "resources": ["localqueues/pendingworkloads"], "verbs": ["get"]},
    ]
    # by default: no queues, the GPU path, and no permission on Kueue's objects
    defaults = settings_from_env(operator_env(rendered["defaults"]))
    assert defaults.default_queues == {} and defaults.gpu_device == "cuda"
    assert not find(rendered["defaults"], "ClusterQueue") and not workload_rules(rendered["defaults"])


def test_the_operator_holds_no_s3_keys_and_reads_only_listed_endpoints(
    rendered: dict[str, list[dict[str, Any]]], chart: Path
) -> None:
    """Issue 16, finding 2: the operator read the S3 places tenants name with keys of its own. It now has none
    (it reads a run with the Secret its VideoFineTune names: `get` on Secrets, never `list`), and reads from
    AWS only unless the chart lists more endpoints."""
    for case, objects in rendered.items():
        names = {e["name"] for e in container(objects)["env"]} if find(objects, "Deployment") else set()
        assert not names & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}, case
    objects = rendered["defaults"]
    assert settings_from_env(operator_env(objects)).progress_endpoints == ["aws"]
    secrets = [r for r in one(objects, "ClusterRole", "dt-disney-train")["rules"] if "secrets" in r["resources"]]
    assert secrets == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]
    with pytest.raises(AssertionError, match=r"s3Credentials"):  # the old value: refused, not ignored
        render(chart, {"s3Credentials": {"secretName": "operator-s3"}})


def test_existing_service_account_and_no_rbac(rendered: dict[str, list[dict[str, Any]]], chart: Path) -> None:
    objects = rendered["existing-serviceaccount"]
    assert not find(objects, "ServiceAccount") and not find(objects, "ClusterRole", "dt-disney-train")
    assert one(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "ops"
    with pytest.raises(AssertionError, match=r"serviceAccount\.name"):
        render(chart, {"serviceAccount": {"create": False}})


def test_everything_set(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["everything"]
    settings = settings_from_env(operator_env(objects))
    assert settings.cluster_ttl_seconds == 2592000 and settings.progress_seconds == 1000000  # not 2.592e+06
    assert settings.metrics_port == 9100 and settings.image_pull_secrets == ["registry"]
    pod = one(objects, "Deployment")["spec"]["template"]
    assert pod["metadata"]["labels"]["team"] == "ml" and pod["metadata"]["annotations"] == {"example.com/note": "x"}
    assert pod["spec"]["imagePullSecrets"] == [{"name": "registry"}]
    assert pod["spec"]["priorityClassName"] == "system-cluster-critical"
    assert pod["spec"]["nodeSelector"] == {"pool": "system"} and pod["spec"]["tolerations"][0]["key"] == "system"
    assert env_of(objects)["AWS_REGION"] == "eu-west-1"
    assert one(objects, "Service")["spec"]["type"] == "NodePort"
    assert "annotations" not in one(objects, "ConfigMap")["metadata"]  # no folder
    sa = one(objects, "ServiceAccount")
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == "arn:aws:iam::1:role/op"


def test_users_get_videofinetunes_through_the_default_roles(rendered: dict[str, list[dict[str, Any]]]) -> None:
    edit = one(rendered["defaults"], "ClusterRole", "dt-disney-train-edit")
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert any("videofinetunes/scale" in r["resources"] and "update" in r["verbs"] for r in edit["rules"])
    view = one(rendered["defaults"], "ClusterRole", "dt-disney-train-view")
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert all(set(r["verbs"]) <= {"get", "list", "watch"} for r in view["rules"])


def test_image_digest_wins(rendered: dict[str, list[dict[str, Any]]]) -> None:
    assert container(rendered["pinned-digest"])["image"] == "registry.example/op@sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicaCount": "two"}, "replicaCount: Invalid type"),
        ({"replicaCont": 2}, "Additional property replicaCont is not allowed"),
        ({"watchNamespaces": ["Team_A"]}, "watchNamespaces.0: Does not match pattern"),
        ({"image": {"pullPolicy": "Sometimes"}}, "image.pullPolicy"),
        ({"metrics": {"port": 70000}}, "metrics.port: Must be less than or equal to 65535"),
        ({"metrics": {"podMonitor": {"interval": "15 seconds"}}}, "metrics.podMonitor.interval"),
        ({"jobDefaults": {"workers": {"tolerations": [{"effect": "Sometimes"}]}}}, "tolerations.0.effect"),
        ({"jobDefaults": {"workers": {"nodeSelector": {"gpu": True}}}}, "nodeSelector.gpu: Invalid type"),
        ({"image": {"digest": "latest"}}, "image.digest: Does not match pattern"),
    ],
)
def test_bad_values_are_refused_by_path(chart: Path, values: dict[str, Any], message: str) -> None:
    with pytest.raises(AssertionError, match=message.replace(".", r"\.")):
        render(chart, values)


@pytest.fixture(scope="module")
def notes_chart(chart: Path) -> Path:
    """NOTES.txt rendered through helm's own template engine (helm template skips NOTES, and helm install
    --dry-run=client still wants a cluster): a copy of it is rendered with `tpl`, with the release's values
    and Capabilities, inside a ConfigMap of a chart copy."""
    copy = chart.parent / "notes" / chart.name
    shutil.copytree(chart, copy)
    (copy / "notes-under-test.txt").write_text((copy / "templates" / "NOTES.txt").read_text())
    (copy / "templates" / "notes-under-test.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes-under-test\n"
        'data:\n  notes: {{ tpl (.Files.Get "notes-under-test.txt") . | quote }}\n'
    )
    return copy


def notes(notes_chart: Path, values: dict[str, Any], api_versions: tuple[str, ...] = PROMETHEUS_OPERATOR) -> str:
    """The NOTES helm would print, on a cluster serving `api_versions` (default: with the Prometheus Operator)."""
    objects = render(notes_chart, values, api_versions=api_versions)
    out: str = one(objects, "ConfigMap", "notes-under-test")["data"]["notes"]
    return out


def test_notes_tell_what_to_do_next(notes_chart: Path) -> None:
    default = notes(notes_chart, {})
    for expected in (
        "all namespaces",
        "kubectl get clusterkopfpeering disney-train",
        "kubectl create secret generic disney-train-s3",
        "kubectl apply -n <ns> -f jobs/smoke.yaml",
        "kubectl get vft -n <ns> -w",
        "kubectl scale vft/<name> -n <ns> --replicas=4",
        "It needs KubeRay (>= 1.5.1: Ray token authentication), installed on its own",
        "disney-train / training",
        "tolerating nvidia.com/gpu",
    ):
        assert expected in default, f"{expected!r} not in NOTES:\n{default}"
    named = notes(notes_chart, {"watchNamespaces": ["team-a"], "metrics": {"dashboards": {"enabled": False}}})
    assert "team-a" in named and "kopfpeering -n team-a" in named
    assert "It needs KubeRay" in named and "disney-train / training" not in named


# --------------------------------------------------------------------------- monitoring needs the Prometheus Operator
# The three Prometheus Operator kinds, each with its values key; asked for explicitly (the defaults too).
MONITORS = {"ServiceMonitor": "serviceMonitor", "PodMonitor": "podMonitor", "PrometheusRule": "prometheusRule"}
ASKED: dict[str, Any] = {"metrics": {key: {"enabled": True} for key in MONITORS.values()}}
LEFT_OUT = "left out: this cluster lacks\nmonitoring.coreos.com/v1 (the Prometheus Operator's CRDs)"


def kinds(objects: list[dict[str, Any]]) -> set[str]:
    return {o["kind"] for o in objects}


@pytest.mark.parametrize("values", [{}, ASKED], ids=["defaults", "enabled"])
def test_monitoring_needs_the_prometheus_operators_crds(chart: Path, notes_chart: Path, values: dict[str, Any]) -> None:
    """A cluster without monitoring.coreos.com/v1 (what `helm install` found on a real one failed with "no
    matches for kind PodMonitor ... ensure CRDs are installed first"): the three are left out although
    enabled, the rest installs, and the NOTES say what was left out, why, and how to add it."""
    objects = render(chart, values)  # no --api-versions: Kubernetes' own kinds only
    assert not kinds(objects) & set(MONITORS), sorted(kinds(objects))
    assert {"Deployment", "Service", "ConfigMap"} <= kinds(objects)  # the operator, its /metrics, the dashboards
    said = notes(notes_chart, values, api_versions=())
    assert f"the ServiceMonitor, PodMonitor, PrometheusRule asked for (metrics.*.enabled) were {LEFT_OUT}" in said, said
    assert "install the Prometheus Operator" in said
    assert "helm upgrade dt charts/disney-train -n disney-train --reuse-values" in said
    assert "Prometheus scrapes" not in said and "Alerts:" not in said  # nothing claims what is not there


def test_monitoring_follows_each_kind_the_cluster_serves(chart: Path, notes_chart: Path) -> None:
    """Each kind is checked on its own: a cluster serving ServiceMonitor only gets the ServiceMonitor."""
    served = ("monitoring.coreos.com/v1/ServiceMonitor",)
    assert kinds(render(chart, ASKED, api_versions=served)) & set(MONITORS) == {"ServiceMonitor"}
    said = notes(notes_chart, ASKED, api_versions=served)
    assert "Prometheus scrapes the operator (ServiceMonitor); if your Prometheus" in said, said
    assert f"the PodMonitor, PrometheusRule asked for (metrics.*.enabled) were {LEFT_OUT}" in said, said


def test_with_the_prometheus_operator_all_three_render(chart: Path, notes_chart: Path) -> None:
    objects = render(chart, ASKED, api_versions=PROMETHEUS_OPERATOR)
    for kind in MONITORS:
        assert one(objects, kind)["apiVersion"] == "monitoring.coreos.com/v1"
    said = notes(notes_chart, ASKED)
    assert "Prometheus scrapes the operator (ServiceMonitor) and every training worker (PodMonitor)" in said
    assert "Alerts: PrometheusRule dt-disney-train" in said
    assert "left out" not in said, said


@pytest.mark.parametrize("off", sorted(MONITORS))
def test_with_the_prometheus_operator_a_disabled_one_stays_out(chart: Path, notes_chart: Path, off: str) -> None:
    values = {"metrics": {key: {"enabled": kind != off} for kind, key in MONITORS.items()}}
    objects = render(chart, values, api_versions=PROMETHEUS_OPERATOR)
    assert kinds(objects) & set(MONITORS) == set(MONITORS) - {off}
    said = notes(notes_chart, values)
    assert "left out" not in said, said  # turned off, not missing: nothing to tell
    assert ("Alerts:" in said) == (off != "PrometheusRule")
    scraped = {kind for kind in ("ServiceMonitor", "PodMonitor") if f"({kind})" in said}  # the Monitoring line
    assert scraped == {"ServiceMonitor", "PodMonitor"} - {off}, said


def test_the_chart_and_the_images_carry_the_packages_version() -> None:
    """One version: the Python package's (pyproject.toml). The chart's version and appVersion (the images'
    tag) must equal it; the operator's default trainer image is derived from it."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((CHART.parents[1] / "pyproject.toml").read_text())["project"]["version"]
    assert __version__ == project
    assert (chart["version"], chart["appVersion"]) == (project, project)
    assert Settings().image.endswith(f":{project}")
