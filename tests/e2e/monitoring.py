"""A Prometheus beside the test cluster, as a cluster's monitoring stack runs one: its own ServiceAccount,
allowed only to list and watch pods, discovering pods through the real API server by the scrape job the
Prometheus Operator would generate from the PodMonitor the chart installed (read back from the API
server, not from the chart's files). It scrapes the pods at their pod IPs (`make cluster` routes the pod
network to this host, as a node's Prometheus reaches it)."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from disney_train.metrics.prometheus import LocalPrometheus
from tests.e2e.jobs import RELEASE_NS
from tests.support.cluster import Kube
from tests.support.podmonitor import scrape_jobs

NAMESPACE = "monitoring"
PODMONITOR = "disney-train-workers"
RBAC = f"""
apiVersion: v1
kind: ServiceAccount
metadata: {{name: prometheus, namespace: {NAMESPACE}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: e2e-prometheus}}
rules:
  - {{apiGroups: [""], resources: [pods], verbs: [get, list, watch]}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: e2e-prometheus}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: e2e-prometheus}}
subjects: [{{kind: ServiceAccount, name: prometheus, namespace: {NAMESPACE}}}]
"""


def _kubeconfig_value(kube: Kube, path: str) -> str:
    """A value of the current context's cluster, files inlined (--flatten: the CA as data, as a file or not)."""
    args = ("config", "view", "--raw", "--minify", "--flatten", "-o", f"jsonpath={{{path}}}")
    return kube.kubectl(*args).stdout.strip()


def prometheus_binary() -> str:
    """The Prometheus `make e2e` builds (E2E_PROMETHEUS): Debian's has no Kubernetes discovery."""
    path = os.environ.get("E2E_PROMETHEUS", "")
    if not os.access(path, os.X_OK):
        raise AssertionError(
            f"E2E_PROMETHEUS={path!r} is not a program: run the e2e with `make e2e`, which builds Prometheus "
            "with Kubernetes service discovery (tools/cluster/prometheus.sh)"
        )
    return path


@contextmanager
def cluster_prometheus(kube: Kube, folder: Path, port: int) -> Iterator[LocalPrometheus]:
    binary = prometheus_binary()
    kube.kubectl("create", "namespace", NAMESPACE, check=False)
    kube.kubectl("apply", "-f", "-", stdin=RBAC)
    folder.mkdir(parents=True, exist_ok=True)
    token = folder / "token"
    token.touch(mode=0o600)
    token.write_text(kube.kubectl("-n", NAMESPACE, "create", "token", "prometheus", "--duration=2h").stdout.strip())
    ca = folder / "ca.crt"
    ca.write_bytes(base64.b64decode(_kubeconfig_value(kube, ".clusters[0].cluster.certificate-authority-data")))
    server = _kubeconfig_value(kube, ".clusters[0].cluster.server")
    monitor = kube.get("podmonitor", PODMONITOR, RELEASE_NS)
    jobs = scrape_jobs(monitor, server, ca, token)
    with LocalPrometheus(folder, [], port=port, interval=1.0, scrape_configs=jobs, binary=binary) as prom:
        yield prom
