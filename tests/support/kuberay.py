"""The test plays KubeRay (and the user): it reads what the operator wrote and moves RayJob states on,
through the same API server the operator uses.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from disney_operator import api
from disney_operator.rayjob import LABEL_VFT, RAY_GROUP, RAY_VERSION, RAYCLUSTERS, RAYJOBS
from tests.support.apiserver import ApiServer, api_client, eventually
from tests.support.seaweed import free_ports


class Secrets:
    """What `Kube.secret_data` answers: each namespace's s3-keys Secret (the one the tests' specs name in
    spec.s3Credentials), and who asked."""

    def __init__(self, keys: dict[str, tuple[str, str]]) -> None:
        self.keys = keys
        self.asked: list[tuple[str, str]] = []

    def __call__(self, namespace: str, name: str) -> dict[str, str]:
        self.asked.append((namespace, name))
        if name != "s3-keys" or namespace not in self.keys:
            raise LookupError(f"no Secret {namespace}/{name}")
        access, secret = self.keys[namespace]
        return {"AWS_ACCESS_KEY_ID": access, "AWS_SECRET_ACCESS_KEY": secret}


class Cluster:
    """VideoFineTunes, RayJobs and RayClusters on the test server, as a user and as KubeRay see them."""

    def __init__(self, server: ApiServer) -> None:
        from kubernetes import client

        self.server = server
        self.custom = client.CustomObjectsApi(api_client(server.kubeconfig))
        self.core = client.CoreV1Api(api_client(server.kubeconfig))

    def s3_secret(self, ns: str, keys: tuple[str, str], name: str = "s3-keys") -> None:
        """The tenant's S3 Secret (the one the specs name in spec.s3Credentials), as `kubectl create secret`."""
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name},
            "data": {
                "AWS_ACCESS_KEY_ID": base64.b64encode(keys[0].encode()).decode(),
                "AWS_SECRET_ACCESS_KEY": base64.b64encode(keys[1].encode()).decode(),
            },
        }
        self.core.create_namespaced_secret(ns, body)

    # ------------------------------------------------------------------ VideoFineTunes (the user)
    def create(self, ns: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        body = {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": name}, "spec": spec}
        out: dict[str, Any] = self.custom.create_namespaced_custom_object(api.GROUP, api.VERSION, ns, api.PLURAL, body)
        return out

    def get(self, ns: str, name: str) -> dict[str, Any]:
        out: dict[str, Any] = self.custom.get_namespaced_custom_object(api.GROUP, api.VERSION, ns, api.PLURAL, name)
        return out

    def exists(self, ns: str, name: str) -> bool:
        from kubernetes.client.rest import ApiException

        try:
            self.get(ns, name)
            return True
        except ApiException as err:
            if err.status == 404:
                return False
            raise

    def patch(self, ns: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = self.custom.patch_namespaced_custom_object(
            api.GROUP, api.VERSION, ns, api.PLURAL, name, {"spec": spec}, _content_type="application/merge-patch+json"
        )
        return out

    def delete(self, ns: str, name: str) -> None:
        self.custom.delete_namespaced_custom_object(api.GROUP, api.VERSION, ns, api.PLURAL, name)

    def status(self, ns: str, name: str) -> dict[str, Any]:
        status: dict[str, Any] = self.get(ns, name).get("status") or {}
        return status

    def wait_status(self, ns: str, name: str, timeout: float = 20.0, **want: Any) -> dict[str, Any]:
        """Until every `want` key of the status has that value (`phase="Running"`)."""

        def check() -> dict[str, Any] | None:
            st = self.status(ns, name)
            return st if all(st.get(k) == v for k, v in want.items()) else None

        out: dict[str, Any] = eventually(check, timeout, what=f"{ns}/{name} status {want}")
        return out

    # ------------------------------------------------------------------ RayJobs (KubeRay)
    def rayjobs(self, ns: str, vft: str | None = None) -> list[dict[str, Any]]:
        selector = f"{LABEL_VFT}={vft}" if vft else ""
        items: list[dict[str, Any]] = self.custom.list_namespaced_custom_object(
            RAY_GROUP, RAY_VERSION, ns, RAYJOBS, label_selector=selector
        )["items"]
        return items

    def wait_rayjobs(self, ns: str, vft: str, count: int = 1, timeout: float = 20.0) -> list[dict[str, Any]]:
        def check() -> list[dict[str, Any]] | None:
            items = self.rayjobs(ns, vft)
            return items if len(items) == count else None

        out: list[dict[str, Any]] = eventually(check, timeout, what=f"{count} RayJob(s) of {ns}/{vft}")
        return out

    def the_rayjob(self, ns: str, vft: str, timeout: float = 20.0) -> dict[str, Any]:
        return self.wait_rayjobs(ns, vft, 1, timeout)[0]

    def config_map(self, ns: str, rayjob: dict[str, Any]) -> dict[str, Any]:
        """The run configuration a RayJob's head mounts: the ConfigMap of its name."""
        out: dict[str, Any] = self.core.api_client.sanitize_for_serialization(
            self.core.read_namespaced_config_map(rayjob["metadata"]["name"], ns)
        )
        return out

    def set_rayjob_status(self, ns: str, name: str, **status: Any) -> None:
        self.custom.patch_namespaced_custom_object_status(RAY_GROUP, RAY_VERSION, ns, RAYJOBS, name, {"status": status})

    def run_cluster(self, ns: str, rayjob: dict[str, Any], ready: int | None = None) -> str:
        """What KubeRay does for a new RayJob: a RayCluster from its template, then the job running on it."""
        name = rayjob["metadata"]["name"]
        cluster = f"{name}-raycl"
        spec = rayjob["spec"]["rayClusterSpec"]
        self.custom.create_namespaced_custom_object(
            RAY_GROUP,
            RAY_VERSION,
            ns,
            RAYCLUSTERS,
            {
                "apiVersion": f"{RAY_GROUP}/{RAY_VERSION}",
                "kind": "RayCluster",
                "metadata": {"name": cluster},
                "spec": spec,
            },
        )
        group = spec["workerGroupSpecs"][0]
        self.set_rayjob_status(ns, name, jobDeploymentStatus="Initializing", rayClusterName=cluster)
        n = group["replicas"] if ready is None else ready
        self.set_rayjob_status(
            ns,
            name,
            jobDeploymentStatus="Running",
            jobStatus="RUNNING",
            rayClusterName=cluster,
            rayClusterStatus={"readyWorkerReplicas": n, "maxWorkerReplicas": group["maxReplicas"]},
        )
        return cluster

    def raycluster(self, ns: str, name: str) -> dict[str, Any]:
        out: dict[str, Any] = self.custom.get_namespaced_custom_object(RAY_GROUP, RAY_VERSION, ns, RAYCLUSTERS, name)
        return out

    def mirror_cluster(self, ns: str, rayjob: str, cluster: str) -> None:
        """KubeRay copies the RayCluster's worker counts into the RayJob's status."""
        group = self.raycluster(ns, cluster)["spec"]["workerGroupSpecs"][0]
        self.set_rayjob_status(
            ns,
            rayjob,
            rayClusterStatus={"readyWorkerReplicas": group["replicas"], "maxWorkerReplicas": group["maxReplicas"]},
        )


RESYNC_SECONDS = 1  # the tests' operator reconciles every VideoFineTune this often


@dataclass
class OperatorProcess:
    proc: subprocess.Popen[bytes]
    log: Path
    health: str
    metrics: str  # host:port of its Prometheus metrics

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        return self.proc.returncode

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def start_operator(
    server: ApiServer, log: Path, namespaces: list[str], env: dict[str, str] | None = None, timeout: float = 60.0
) -> OperatorProcess:
    """`disney-train-operator run` as a subprocess, ready once its liveness endpoint answers."""
    port, metrics_port = free_ports(2)
    health = f"http://127.0.0.1:{port}/healthz"
    args = ["run", "--liveness", health]
    for ns in namespaces:
        args += ["--namespace", ns]
    full_env = {
        "KUBECONFIG": str(server.kubeconfig),
        "DISNEY_OPERATOR_RESYNC_SECONDS": str(RESYNC_SECONDS),
        "DISNEY_OPERATOR_PROGRESS_SECONDS": "0.5",
        "DISNEY_OPERATOR_METRICS_ADDRESS": "127.0.0.1",
        "DISNEY_OPERATOR_METRICS_PORT": str(metrics_port),
        **(env or {}),
    }
    return launch_operator(args, full_env, log, health, f"127.0.0.1:{metrics_port}", timeout)


def launch_operator(
    args: list[str], env: dict[str, str], log: Path, health: str, metrics: str, timeout: float = 60.0
) -> OperatorProcess:
    """`disney-train-operator ARGS` with ENV over this process' environment; ready once `health` answers."""
    command = [str(Path(sys.executable).parent / "disney-train-operator"), *args]
    out = log.open("ab")
    proc = subprocess.Popen(
        command, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )
    op = OperatorProcess(proc, log, health, metrics)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the operator exited with {proc.returncode}: {op.text()[-3000:]}")
        try:
            with urllib.request.urlopen(health, timeout=1) as r:
                if r.status == 200:
                    return op
        except OSError:
            time.sleep(0.2)
    op.stop()
    raise RuntimeError(f"the operator was not live in {timeout} s: {op.text()[-3000:]}")
