"""After test_uninstall (by name): a cluster whose processes were all killed comes up again with `make cluster`.

A session's processes end when it stops, before CI runs; the cluster's pid files, mounts and network
namespace stay. `make cluster` then died at once ("containerd-0 exited while waiting for etcd": a stale
pid file taken for a daemon of this start). Here every process of the cluster is killed as that stop
kills them, and `make cluster` must bring up a working cluster from what remains.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.support.cluster import ROOT, Kube, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]

RUN = Path("/run/disney-train")  # tools/cluster/common.sh's RUN


def cluster_pids() -> set[int]:
    """Every process the cluster started: its daemons (their pid files), the containers' shims (they name
    a socket under RUN) and the pods' processes (in the kubelets' cgroup roots)."""
    pids = {int(f.read_text()) for f in RUN.glob("*.pid")}
    shims = subprocess.run(["pgrep", "-f", f"containerd-shim.*{RUN}/"], capture_output=True, text=True).stdout
    pids |= {int(p) for p in shims.split()}
    for procs in Path("/sys/fs/cgroup").glob("*/disney-train-*/**/cgroup.procs"):
        pids |= {int(p) for p in procs.read_text().split()}
    return pids


def killed(pids: set[int]) -> bool | None:
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        return None
    return True


def test_a_cluster_whose_processes_were_killed_comes_up_again(kube: Kube) -> None:
    pids = cluster_pids()
    assert len(pids) > 10, pids  # daemons, shims and pods: the cluster the other modules used
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_until("every process of the cluster gone", lambda: killed(pids), timeout=60)
    assert list(RUN.glob("*.pid"))  # what a killed cluster leaves

    up = subprocess.run(["make", "--no-print-directory", "cluster"], cwd=ROOT, capture_output=True, text=True)
    assert up.returncode == 0, up.stderr[-3000:]

    def ready() -> bool | None:
        nodes = kube.get("nodes")["items"]
        conditions = [{c["type"]: c["status"] for c in n["status"].get("conditions", [])} for n in nodes]
        return True if len(nodes) == 2 and all(c.get("Ready") == "True" for c in conditions) else None

    wait_until("both nodes Ready", ready, timeout=120)
    # pods run again: the cluster's DNS and KubeRay's operator
    kube.kubectl("-n", "kube-system", "rollout", "status", "deploy/coredns", "--timeout=180s")
    kube.kubectl("-n", "default", "rollout", "status", "deploy/kuberay-operator", "--timeout=180s")
