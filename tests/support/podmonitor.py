"""A PodMonitor turned into a Prometheus scrape job as the Prometheus Operator generates it (job
`podMonitor/<ns>/<name>/<i>`, Kubernetes pod discovery, the pods' phase and the selector's labels kept
by relabelling, then namespace/container/pod/job/endpoint labels, then the PodMonitor's own
relabelings). So a Prometheus run beside the test cluster discovers and scrapes the pods the chart's
PodMonitor means, through the real API server, without the Prometheus Operator running.

Only what the chart's monitors use is translated (matchLabels, namespaceSelector any/matchNames,
path, interval, port, relabelings); anything else is refused rather than silently dropped."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

RELABEL_KEYS = {
    "sourceLabels": "source_labels",
    "targetLabel": "target_label",
    "regex": "regex",
    "replacement": "replacement",
    "separator": "separator",
    "modulus": "modulus",
    "action": "action",
}
ENDPOINT_KEYS = {"path", "interval", "port", "relabelings"}


def _label(name: str) -> str:
    """A Kubernetes label's name as Prometheus's discovery meta label names it."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def _relabel(rule: dict[str, Any]) -> dict[str, Any]:
    unknown = set(rule) - set(RELABEL_KEYS)
    if unknown:
        raise ValueError(f"relabeling fields not translated: {sorted(unknown)}")
    out = {RELABEL_KEYS[k]: v for k, v in rule.items()}
    if "action" in out:
        out["action"] = str(out["action"]).lower()
    return out


def _selector_keeps(selector: dict[str, Any]) -> list[dict[str, Any]]:
    if set(selector) - {"matchLabels"}:
        raise ValueError(f"selector fields not translated: {sorted(set(selector) - {'matchLabels'})}")
    return [
        {
            "action": "keep",
            "source_labels": [
                f"__meta_kubernetes_pod_label_{_label(k)}",
                f"__meta_kubernetes_pod_labelpresent_{_label(k)}",
            ],
            "regex": f"({re.escape(v)});true",
        }
        for k, v in sorted(selector.get("matchLabels", {}).items())
    ]


def scrape_jobs(monitor: dict[str, Any], api_server: str, ca_file: Path, token_file: Path) -> list[dict[str, Any]]:
    """The scrape jobs of `monitor` (a PodMonitor as the API server returns it), discovering pods through
    `api_server` with the CA and the bearer token in those files."""
    meta, spec = monitor["metadata"], monitor["spec"]
    where = spec.get("namespaceSelector") or {}
    sd: dict[str, Any] = {
        "role": "pod",
        "api_server": api_server,
        "tls_config": {"ca_file": str(ca_file)},
        "authorization": {"credentials_file": str(token_file)},
    }
    if not where.get("any"):
        sd["namespaces"] = {"names": where.get("matchNames") or [meta["namespace"]]}
    job_label = f"{meta['namespace']}/{meta['name']}"
    jobs = []
    for i, ep in enumerate(spec["podMetricsEndpoints"]):
        if set(ep) - ENDPOINT_KEYS:
            raise ValueError(f"podMetricsEndpoints[{i}] fields not translated: {sorted(set(ep) - ENDPOINT_KEYS)}")
        relabel = [
            {"action": "drop", "source_labels": ["__meta_kubernetes_pod_phase"], "regex": "(Failed|Succeeded)"},
            *_selector_keeps(spec.get("selector") or {}),
        ]
        if "port" in ep:
            relabel.append(
                {"action": "keep", "source_labels": ["__meta_kubernetes_pod_container_port_name"], "regex": ep["port"]}
            )
        relabel += [
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            {"target_label": "job", "replacement": job_label},
            # as the operator does (pkg/prometheus/promcfg.go, generatePodMonitorConfig, v0.85.0): an
            # `endpoint` label only for an endpoint that names its port
            *([{"target_label": "endpoint", "replacement": ep["port"]}] if "port" in ep else []),
            *(_relabel(r) for r in ep.get("relabelings", [])),
        ]
        job: dict[str, Any] = {
            "job_name": f"podMonitor/{job_label}/{i}",
            "honor_labels": False,
            "kubernetes_sd_configs": [sd],
            "metrics_path": ep.get("path", "/metrics"),
            "relabel_configs": relabel,
        }
        if "interval" in ep:
            job["scrape_interval"] = job["scrape_timeout"] = ep["interval"]
        jobs.append(job)
    return jobs
