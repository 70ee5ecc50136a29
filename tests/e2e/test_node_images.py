"""The nodes' image stores keep one copy of the project's image, not one per checkout that ran make cluster.

Each checkout's .venv becomes a new 6.4 GB layer (its paths differ), imported under the same image names.
containerd's CRI names every image a second time by its ID and keeps that name when the image's own name
moves to the new import, so every earlier .venv layer stayed in both nodes' stores (26 GB after four
checkouts; CI ran out of disk). Here a containerd of the test's own (the Debian containerd the cluster's
nodes run, with its CRI plugin) imports an image, then the same names over a changed top layer, through
`tools/cluster/images.sh import` as `make cluster` does.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cluster import ROOT

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

IMAGES_SH = ROOT / "tools" / "cluster" / "images.sh"
REFS = ["ghcr.io/disney-train/trainer:test", "ghcr.io/disney-train/operator:test"]
# containerd collects garbage as often as it allows (a node's does so after some deletions and 100 changes):
# whatever an import leans on without holding a reference to it goes at once, not when timing says so
EAGER_GC = (
    '[plugins."io.containerd.gc.v1.scheduler"]\n  pause_threshold = 0.5\n  deletion_threshold = 1\n'
    '  mutation_threshold = 1\n  schedule_delay = "0s"\n  startup_delay = "0s"\n'
)


def chain_ids(diff_ids: list[str]) -> list[str]:
    """mkimage.py's (a script, not a module): what containerd names each committed snapshot by."""
    spec = importlib.util.spec_from_file_location("mkimage", ROOT / "tools" / "cluster" / "mkimage.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(module.chain_ids(diff_ids))


@pytest.fixture
def containerd(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A containerd with its CRI plugin on an empty store of its own; yields (socket, store)."""
    binary = shutil.which("containerd")
    assert binary, "containerd is missing: tools/cluster/system-deps.sh installs it (make cluster-build)"
    root, sock = tmp_path / "store", tmp_path / "containerd.sock"
    config = tmp_path / "containerd.toml"
    config.write_text(
        f'version = 2\nroot = "{root}"\nstate = "{tmp_path / "state"}"\n[grpc]\n  address = "{sock}"\n'
        '[plugins."io.containerd.grpc.v1.cri".containerd]\n  snapshotter = "overlayfs"\n' + EAGER_GC
    )
    log = (tmp_path / "containerd.log").open("w")
    proc = subprocess.Popen([binary, "--config", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while subprocess.run(["ctr", "--address", str(sock), "version"], capture_output=True).returncode:
            assert proc.poll() is None, (tmp_path / "containerd.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "containerd did not answer in 30 s"
            time.sleep(0.2)
        yield sock, root
    finally:
        proc.terminate()
        proc.wait(30)
        mounts = subprocess.run(["findmnt", "-rn", "-o", "TARGET"], capture_output=True, text=True).stdout
        for m in sorted((m for m in mounts.split() if m.startswith(f"{tmp_path}/")), reverse=True):
            subprocess.run(["umount", "-l", m], check=False)


def layer(path: Path, name: str) -> Path:
    """A layer tar with one file of random bytes (so two layers never share a digest)."""
    data = os.urandom(1 << 20)
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo(f"opt/{name}")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


def import_images(sock: Path, tmp: Path, layers: list[Path], name: str) -> None:
    spec = tmp / f"{name}.json"
    spec.write_text(json.dumps({"layers": [str(p) for p in layers], "images": [{"ref": r} for r in REFS]}))
    env = {**os.environ, "CONTAINERD_SOCK": str(sock), "CLUSTER_BIN": str(tmp), "CLUSTER_CACHE": str(tmp)}
    out = subprocess.run(["bash", str(IMAGES_SH), "import", str(spec)], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def committed(sock: Path) -> set[str]:
    out = subprocess.run(
        ["ctr", "--address", str(sock), "-n", "k8s.io", "snapshots", "ls"], capture_output=True, text=True, check=True
    ).stdout
    return {line.split()[0] for line in out.splitlines()[1:] if line.split()[-1] == "Committed"}


def diff_id(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def test_an_image_imported_again_over_a_changed_layer_leaves_one_copy_of_it(
    containerd: tuple[Path, Path], tmp_path: Path
) -> None:
    sock, _ = containerd
    base, venv_a, venv_b = (layer(tmp_path / f"{n}.tar", n) for n in ("base", "venv-a", "venv-b"))
    first = chain_ids([diff_id(base), diff_id(venv_a)])
    second = chain_ids([diff_id(base), diff_id(venv_b)])

    import_images(sock, tmp_path, [base, venv_a], "first")
    assert committed(sock) == set(first)
    import_images(sock, tmp_path, [base, venv_b], "second")  # a second checkout: its .venv layer differs
    assert committed(sock) == set(second), "the replaced image's layer is still in the store"
    import_images(sock, tmp_path, [base, venv_b], "again")  # the same checkout again: nothing dropped
    assert committed(sock) == set(second)
    names = subprocess.run(
        ["ctr", "--address", str(sock), "-n", "k8s.io", "images", "ls", "-q"], capture_output=True, text=True
    ).stdout.split()
    assert sorted(n for n in names if not n.startswith("sha256:")) == sorted(REFS)


def test_the_layers_left_out_of_an_import_stay_until_it_has_unpacked_over_them(
    containerd: tuple[Path, Path], tmp_path: Path
) -> None:
    """CI's failure (`parent snapshot ... does not exist`): the import left out the Python layer, whose
    snapshot the store held, then renamed the images, and the image that had held that snapshot had no
    other name (containerd's CRI names an image by its ID only the first time it sees its name): the
    garbage collector took the snapshot before the import unpacked the new .venv layer over it."""
    sock, _ = containerd
    base, python, *venvs = (layer(tmp_path / f"{n}.tar", n) for n in ("base", "python", "venv-a", "venv-b", "venv-c"))
    for i, venv in enumerate(venvs):  # three checkouts, one after the other
        import_images(sock, tmp_path, [base, python, venv], f"checkout-{i}")
        assert committed(sock) == set(chain_ids([diff_id(base), diff_id(python), diff_id(venv)]))
