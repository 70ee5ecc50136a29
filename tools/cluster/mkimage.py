#!/usr/bin/env python3
"""mkimage.py SPEC.json: write an OCI image-layout archive to stdout, for `ctr -n k8s.io images import -`.

The test cluster has no registry, so its images are written here and imported into containerd. SPEC:

    {"layers": ["base.tar", "app.tar"],            # uncompressed layer tars, bottom first
     "snapshots": ["sha256:..."],                  # committed snapshots the containerd holds (`ctr snapshots ls`)
     "images": [{"ref": "ghcr.io/x/y:1", "user": "1000:1000", "env": ["K=V"], "entrypoint": [...],
                 "cmd": [...], "workdir": "/"}]}

Every image of a SPEC shares its layers (each blob is written once). A layer whose snapshot containerd
already holds (its chain ID among SPEC's `snapshots`) is left out of the archive: the import unpacks only
what it lacks, so re-importing an image whose source changed streams only the changed layer. Layers are
uncompressed, so a layer's diff ID is its digest. The layout follows the OCI image-layout spec with containerd's
`io.containerd.image.name` annotation, which `ctr images import` names the image by (checked with
Debian's containerd 1.6).
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path
from typing import Any

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def digest_file(path: Path) -> str:
    """A layer's sha256, kept beside it (`LAYER.sha256`) so a cached layer of gigabytes is read once."""
    memo = path.with_name(path.name + ".sha256")
    if memo.is_file() and memo.stat().st_mtime >= path.stat().st_mtime:
        return memo.read_text().strip()
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    memo.write_text(h.hexdigest())
    return h.hexdigest()


def chain_ids(diff_ids: list[str]) -> list[str]:
    """The OCI chain IDs of a layer stack: what containerd names each committed snapshot by."""
    out: list[str] = []
    for diff in diff_ids:
        out.append(diff if not out else "sha256:" + hashlib.sha256(f"{out[-1]} {diff}".encode()).hexdigest())
    return out


def normalized(ref: str) -> str:
    """The name the CRI looks images up by: docker.io/library/ for short names."""
    first, _, rest = ref.partition("/")
    if not rest:
        return "docker.io/library/" + ref
    if "." in first or ":" in first or first == "localhost":
        return ref
    return "docker.io/" + ref


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    layers = [Path(p) for p in spec["layers"]]
    blobs: dict[str, bytes | Path] = {}

    def blob(data: bytes | Path, media: str) -> dict[str, Any]:
        digest = digest_file(data) if isinstance(data, Path) else hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        size = data.stat().st_size if isinstance(data, Path) else len(data)
        return {"mediaType": media, "digest": "sha256:" + digest, "size": size}

    layer_descs = [blob(p, "application/vnd.oci.image.layer.v1.tar") for p in layers]
    manifests = []
    for image in spec["images"]:
        config = {
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Env": image.get("env") or [f"PATH={PATH}"],
                "Entrypoint": image.get("entrypoint"),
                "Cmd": image.get("cmd"),
                "User": image.get("user", ""),
                "WorkingDir": image.get("workdir", "/"),
            },
            "rootfs": {"type": "layers", "diff_ids": [d["digest"] for d in layer_descs]},
        }
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": blob(json.dumps(config).encode(), "application/vnd.oci.image.config.v1+json"),
            "layers": layer_descs,
        }
        desc = blob(json.dumps(manifest).encode(), "application/vnd.oci.image.manifest.v1+json")
        ref = normalized(image["ref"])
        desc["platform"] = {"architecture": "amd64", "os": "linux"}
        desc["annotations"] = {
            "io.containerd.image.name": ref,
            "org.opencontainers.image.ref.name": ref.rsplit(":")[-1],
        }
        manifests.append(desc)
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests}

    with tarfile.open(fileobj=sys.stdout.buffer, mode="w|") as out:

        def put(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            out.addfile(info, io.BytesIO(data))

        put("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        put("index.json", json.dumps(index).encode())
        held = set(spec.get("snapshots", []))
        diffs = [d["digest"] for d in layer_descs]
        skip = {diff for diff, chain in zip(diffs, chain_ids(diffs), strict=True) if chain in held}
        for digest, data in blobs.items():
            if "sha256:" + digest in skip:
                continue
            if isinstance(data, Path):
                out.add(data, arcname="blobs/sha256/" + digest)
            else:
                put("blobs/sha256/" + digest, data)


if __name__ == "__main__":
    main()
