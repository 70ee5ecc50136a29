"""The real test cluster (`make cluster`, tools/cluster) as the e2e tests use it: kubectl and helm with its
kubeconfig, its S3 from `.cluster/s3.env`, and waiting on what they show."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from tests.support.chart import helm_path

ROOT = Path(__file__).resolve().parents[2]
STATE = ROOT / ".cluster"
T = TypeVar("T")


class ClusterMissing(RuntimeError):
    """No test cluster answers: the e2e tests fail with this, never skip."""


@dataclass(frozen=True)
class Kube:
    kubeconfig: Path

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def run(
        self, tool: str, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        exe = helm_path() if tool == "helm" else str(ROOT / ".venv" / "bin" / "kubectl")
        proc = subprocess.run([exe, *args], input=stdin, capture_output=True, text=True, env=self.env, timeout=300)
        if check and proc.returncode != 0:
            raise AssertionError(f"{tool} {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("kubectl", *args, stdin=stdin, check=check)

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("helm", *args, check=check)

    def get(self, kind: str, name: str | None = None, namespace: str | None = None) -> Any:
        args = ["get", kind, *([name] if name else []), "-o", "json"]
        if namespace:
            args += ["-n", namespace]
        return json.loads(self.kubectl(*args).stdout)

    def items(self, kind: str, namespace: str, selector: str = "") -> list[dict[str, Any]]:
        args = ["get", kind, "-n", namespace, "-o", "json", *(["-l", selector] if selector else [])]
        return list(json.loads(self.kubectl(*args).stdout)["items"])


def connect() -> Kube:
    """The cluster in $KUBECONFIG (make e2e sets it), else `.cluster/kubeconfig`; it must answer."""
    path = Path(os.environ.get("KUBECONFIG") or STATE / "kubeconfig")
    if not path.is_file():
        raise ClusterMissing(
            f"no kubeconfig at {path}: bring the test cluster up with `make cluster` (or run `make e2e`)"
        )
    kube = Kube(path)
    ready = kube.kubectl("get", "--raw", "/readyz", check=False)
    if ready.returncode != 0:
        raise ClusterMissing(f"the cluster of {path} does not answer ({ready.stderr.strip()}): `make cluster`")
    return kube


def s3_env() -> dict[str, str]:
    """AWS_ENDPOINT_URL and the keys of the cluster's S3, as `make cluster` wrote them."""
    path = STATE / "s3.env"
    if not path.is_file():
        raise ClusterMissing(f"no {path}: `make cluster` writes it")
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs}


def wait_until(what: str, probe: Callable[[], T | None], timeout: float, every: float = 2.0) -> T:
    """probe() until it returns something (not None); fail naming `what` and the last value seen."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(every)
