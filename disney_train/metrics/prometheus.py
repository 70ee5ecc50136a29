"""A Prometheus of our own on loopback: what `make monitor` starts beside the embedded run, and
what the tests scrape real runs and the operator with.

It runs Debian's `prometheus` binary (installed by `make setup`) with a generated configuration:
static targets, a short scrape interval, and optionally the project's alert rules, so the rules
are evaluated by Prometheus itself against the live series.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from disney_train.errors import UserError

HOST = "127.0.0.1"


class PrometheusError(UserError, RuntimeError):
    """Prometheus is missing, did not start, or refused a query (the message says which and why)."""


def prometheus_binary(name: str = "prometheus") -> str:
    """`prometheus`, or `promtool`: both come with Debian's prometheus package."""
    found = shutil.which(name)
    if found is None:
        raise PrometheusError(
            f"{name} is not on PATH: `make setup` installs Debian's prometheus package "
            "(apt-get install --no-install-recommends prometheus)"
        )
    return found


def _check_free(port: int) -> None:
    """Refuse a port another server holds (Debian's prometheus package starts one on 9090 where
    systemd runs): its answers would pass for ours."""
    with socket.socket() as s:
        try:
            s.bind((HOST, port))
        except OSError as err:
            raise PrometheusError(
                f"{HOST}:{port} is in use ({err.strerror}); is a system Prometheus running there? "
                "Pick another port (disney-train monitor --port N)"
            ) from None


@dataclass
class ScrapeJob:
    name: str
    targets: list[str]
    labels: dict[str, str] = field(default_factory=dict)


def prometheus_config(
    jobs: list[ScrapeJob], interval: float, rule_files: list[Path], scrape_configs: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Static jobs, then any scrape configurations given whole (Kubernetes discovery, say)."""
    every = f"{max(1, round(interval * 1000))}ms"
    return {
        "global": {"scrape_interval": every, "scrape_timeout": every, "evaluation_interval": every},
        "rule_files": [str(p.resolve()) for p in rule_files],
        "scrape_configs": [
            {"job_name": j.name, "static_configs": [{"targets": j.targets, "labels": j.labels}]} for j in jobs
        ]
        + list(scrape_configs or []),
    }


class LocalPrometheus:
    def __init__(
        self,
        folder: Path,
        jobs: list[ScrapeJob],
        *,
        port: int,
        interval: float = 1.0,
        rule_files: list[Path] | None = None,
        scrape_configs: list[dict[str, Any]] | None = None,
        binary: str | None = None,
    ) -> None:
        self.folder, self.jobs, self.port, self.interval = folder, jobs, port, interval
        self.rule_files = list(rule_files or [])
        self.scrape_configs = list(scrape_configs or [])
        self.binary = binary  # default: Debian's, from PATH
        self.url = f"http://{HOST}:{port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = folder / "prometheus.log"

    def start(self, timeout: float = 30.0) -> LocalPrometheus:
        binary = self.binary or prometheus_binary()
        _check_free(self.port)
        for rules in self.rule_files:
            if not rules.is_file():
                raise PrometheusError(f"rule file {rules} does not exist")
        self.folder.mkdir(parents=True, exist_ok=True)
        config = self.folder / "prometheus.yml"
        config.write_text(
            yaml.safe_dump(
                prometheus_config(self.jobs, self.interval, self.rule_files, self.scrape_configs), sort_keys=False
            )
        )
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self.folder / 'data'}",
                    f"--web.listen-address={HOST}:{self.port}",
                    "--storage.tsdb.retention.time=7d",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise PrometheusError(f"prometheus exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                    if resp.status == 200 and self._is_ours(config):
                        return self
            except (urllib.error.URLError, ConnectionError, PrometheusError):
                pass
            time.sleep(0.1)
        self.stop()
        raise PrometheusError(f"prometheus not ready at {self.url} after {timeout:.0f} s: {self.log_tail()}")

    def _is_ours(self, config: Path) -> bool:
        """The server answering is the one we started (not one that took the port meanwhile)."""
        flags = self.api("status/flags")
        return self.proc is not None and self.proc.poll() is None and flags.get("config.file") == str(config)

    def log_tail(self, lines: int = 15) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> LocalPrometheus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ HTTP API

    def api(self, path: str, **params: str | float) -> Any:
        """GET /api/v1/<path>; returns `data`, or raises PrometheusError with Prometheus's error."""
        query = urllib.parse.urlencode({k: str(v) for k, v in params.items()})
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=30) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as err:
            try:
                body = json.loads(err.read() or b"{}")
            except ValueError:
                body = {"errorType": f"HTTP {err.code}", "error": err.reason}
        except (urllib.error.URLError, OSError, ValueError) as err:
            raise PrometheusError(f"{self.url}: {path}: {err}") from None
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query; the result as a list of {metric, value}."""
        params: dict[str, str | float] = {"query": expr}
        if at is not None:
            params["time"] = at
        data = self.api("query", **params)
        result: list[dict[str, Any]] = data["result"] if data["resultType"] in ("vector", "matrix") else []
        return result

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("query_range", query=expr, start=start, end=end, step=step)["result"]
        return result

    def targets(self) -> list[dict[str, Any]]:
        active: list[dict[str, Any]] = self.api("targets")["activeTargets"]
        return active

    def rules(self) -> list[dict[str, Any]]:
        return [r for g in self.api("rules")["groups"] for r in g["rules"]]

    def graph_url(self, expr: str, range_input: str = "15m") -> str:
        return f"{self.url}/graph?" + urllib.parse.urlencode(
            {"g0.expr": expr, "g0.tab": "0", "g0.range_input": range_input}
        )
