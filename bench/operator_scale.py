"""Benchmark: the operator with 500 VideoFineTunes created at once, against a real API server.

envtest-lite (the genuine apiextensions-apiserver on etcd, loopback) with the VideoFineTune CRD and the
project's RayJob/RayCluster schemas; `disney-train-operator run` as a subprocess with its default
timing (resync 30 s). Measured:
- the time from the first create until every RayJob exists and every status has converged
  (observedGeneration = generation, phase Pending, the RayJob named);
- API writes per object, counted by the API server itself (apiserver_request_total);
- writes during the following quiet minute (two resyncs of every object): target none;
- then KubeRay "starts" every RayJob: time until every VideoFineTune is Running, and its writes.
Targets: converged in under 30 s; no writes at steady state. Figures go to
bench/results/operator_scale.{json,md}. Run with `make bench` (or directly with the venv's python).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "operator"))

from disney_operator import api  # noqa: E402
from disney_operator.rayjob import LABEL_VFT, RAY_GROUP, RAY_VERSION, RAYJOBS  # noqa: E402
from tests.support.apiserver import KUBERAY_SCHEMAS, VFT_CRD, start_apiserver  # noqa: E402
from tests.support.kuberay import Cluster, start_operator  # noqa: E402

COUNT = int(os.environ.get("BENCH_VFTS", "500"))
QUIET_SECONDS = float(os.environ.get("BENCH_QUIET_SECONDS", "60"))
NAMESPACES = [f"bench-{i}" for i in range(5)]
OUT = ROOT / "bench" / "results"
SPEC: dict[str, Any] = {
    "model": {"uri": "s3://models/CogVideoX-2b"},
    "dataset": {"uri": "s3://data/disney"},
    "output": {"uri": "s3://runs/disney"},
    "workers": {"replicas": 2, "resources": {"gpus": 8, "cpu": "96", "memory": "900Gi"}},
}


def names() -> list[tuple[str, str]]:
    return [(NAMESPACES[i % len(NAMESPACES)], f"run-{i:04d}") for i in range(COUNT)]


def listing(cluster: Cluster) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    vfts = cluster.custom.list_cluster_custom_object(api.GROUP, api.VERSION, api.PLURAL)["items"]
    rjs = cluster.custom.list_cluster_custom_object(RAY_GROUP, RAY_VERSION, RAYJOBS)["items"]
    return vfts, rjs


def converged(cluster: Cluster, phase: str) -> bool:
    vfts, rjs = listing(cluster)
    if len(vfts) < COUNT or len({r["metadata"]["labels"][LABEL_VFT] for r in rjs}) < COUNT or len(rjs) != COUNT:
        return False
    for v in vfts:
        st = v.get("status") or {}
        if st.get("observedGeneration") != v["metadata"]["generation"] or st.get("phase") != phase:
            return False
        if not (st.get("rayJob") or {}).get("name"):
            return False
    return True


def wait(cluster: Cluster, phase: str, timeout: float = 300) -> float:
    t0 = time.monotonic()
    while not converged(cluster, phase):
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"not converged to {phase} in {timeout} s")
        time.sleep(0.25)
    return time.monotonic()


def per_object(delta: Counter[str]) -> dict[str, float]:
    return {k: round(v / COUNT, 2) for k, v in sorted(delta.items())}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = start_apiserver(Path(tmp) / "apiserver")
        op = None
        try:
            server.install(
                VFT_CRD, KUBERAY_SCHEMAS / "rayjobs.ray.io.yaml", KUBERAY_SCHEMAS / "rayclusters.ray.io.yaml"
            )
            cluster = Cluster(server)
            op = start_operator(
                server,
                Path(tmp) / "operator.log",
                ["bench-*"],
                {"DISNEY_OPERATOR_RESYNC_SECONDS": "30", "DISNEY_OPERATOR_PROGRESS_SECONDS": "30"},
            )
            w0 = server.writes()
            t0 = time.monotonic()
            with ThreadPoolExecutor(16) as pool:
                list(pool.map(lambda nn: cluster.create(nn[0], nn[1], SPEC), names()))
            created = time.monotonic()
            t1 = wait(cluster, "Pending")
            w1 = server.writes()
            time.sleep(QUIET_SECONDS)
            w2 = server.writes()

            # KubeRay brings every cluster up: the statuses follow
            _, rjs = listing(cluster)
            t2 = time.monotonic()
            with ThreadPoolExecutor(16) as pool:
                list(
                    pool.map(
                        lambda r: cluster.set_rayjob_status(
                            r["metadata"]["namespace"],
                            r["metadata"]["name"],
                            jobDeploymentStatus="Running",
                            jobStatus="RUNNING",
                            rayClusterName=r["metadata"]["name"] + "-raycl",
                            rayClusterStatus={"readyWorkerReplicas": 2, "maxWorkerReplicas": 2},
                        ),
                        rjs,
                    )
                )
            t3 = wait(cluster, "Running")
            w3 = server.writes()
            log = op.text()
            if os.environ.get("BENCH_LOG"):
                Path(os.environ["BENCH_LOG"]).write_text(log)
        finally:
            if op is not None:
                op.stop()
            server.stop()

    ours = Counter({k: v for k, v in (w1 - w0).items() if not k.startswith("POST videofinetunes")})
    running = Counter({k: v for k, v in (w3 - w2).items() if not k.startswith("PATCH rayjobs/status")})
    results = {
        "objects": COUNT,
        "namespaces": len(NAMESPACES),
        "create_seconds": round(created - t0, 2),
        "converged_seconds": round(t1 - t0, 2),
        "operator_writes_per_object": per_object(ours),
        "operator_writes_total_per_object": round(sum(ours.values()) / COUNT, 2),
        "quiet_seconds": QUIET_SECONDS,
        "quiet_writes": sum((w2 - w1).values()),
        "quiet_writes_by_kind": dict(w2 - w1),
        "running_converged_seconds": round(t3 - t2, 2),
        "running_writes_per_object": per_object(running),
        # kopf retries a list that meets "429 storage is (re)initializing" on a just-created CRD: not counted
        "operator_errors_logged": sum(1 for line in log.splitlines() if "[ERROR" in line and "will retry" not in line),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "operator_scale.json").write_text(json.dumps(results, indent=1) + "\n")
    report(results)


def report(r: dict[str, Any]) -> None:
    writes = ", ".join(f"{k} {v}" for k, v in r["operator_writes_per_object"].items())
    running = ", ".join(f"{k} {v}" for k, v in r["running_writes_per_object"].items())
    text = f"""# Operator at scale

{r["objects"]} VideoFineTunes in {r["namespaces"]} namespaces created at once (16 client threads) against envtest-lite
(the real apiextensions-apiserver + etcd on loopback); `disney-train-operator run` with its default timing
(resync every 30 s). Writes are counted by the API server (`apiserver_request_total`). {r["machine"]}.

| | figure | target |
|---|---:|---:|
| creating the {r["objects"]} objects (client side) | {r["create_seconds"]} s | |
| until every RayJob exists and every status converged | {r["converged_seconds"]} s | < 30 s |
| operator writes per object to get there | {r["operator_writes_total_per_object"]} | |
| writes in the following quiet {r["quiet_seconds"]:.0f} s (two resyncs of every object) | {r["quiet_writes"]} | 0 |
| every RayJob Running -> every VideoFineTune Running | {r["running_converged_seconds"]} s | |
| errors in the operator's log | {r["operator_errors_logged"]} | 0 |

Writes per object, converging: {writes}.
Writes per object, RayJobs going Running: {running}.
"""
    (OUT / "operator_scale.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
