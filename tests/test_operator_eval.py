"""The evaluation after training, through the operator: a VideoFineTune with an evaluation block runs
`disney-train eval` after training in its RayJob, and the summary that writes to the run's prefix
(`eval/summary.json`) ends up in the VideoFineTune's status.

The operator runs as a subprocess against the API server; the test plays KubeRay and runs the RayJob's
own entrypoint (the real `disney-train eval` on the tiny models, from and to SeaweedFS); the progress
reader is also tested on its own against SeaweedFS.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from disney_operator.progress import Key, ProgressReader
from disney_operator.rayjob import CONFIG_DIR, EVAL_ENTRYPOINT, run_config_of
from disney_train.config import EvaluationConfig, S3Options, dump_config
from disney_train.eval.results import EVAL_JSON, REPORT_HTML, REPORT_MD, Headline, Summary
from disney_train.runs import SUMMARY_JSON, RunFiles
from tests.support.apiserver import ApiServer, eventually
from tests.support.kuberay import Cluster, OperatorProcess, Secrets
from tests.support.seaweed import RW, free_ports, upload_folder
from tests.support.vfts import evaluation


def evaluated_spec(endpoint: str, output_uri: str, **settings: Any) -> dict[str, Any]:
    """A t2v VideoFineTune spec whose run goes to `output_uri` on the S3 at `endpoint`, with an evaluation
    block (`settings` on top of tests.test_operator_rayjob.evaluation())."""
    return {
        "model": {"uri": "s3://models/CogVideoX-2b"},
        "dataset": {"uri": "s3://data/disney"},
        "output": {"uri": output_uri},
        "training": {"s3": {"endpoint_url": endpoint}},
        "s3Credentials": {"secretName": "s3-keys"},
        "evaluation": evaluation(**settings),
    }


def run_files(spec: dict[str, Any], name: str, owner: str | None = None) -> RunFiles:
    """The run's files on S3; with an owner, claimed by it as the run's first start does."""
    files = RunFiles.at(
        f"{spec['output']['uri']}/{name}", S3Options(endpoint_url=spec["training"]["s3"]["endpoint_url"])
    )
    files.claim(owner)
    return files


def summary_of(files: RunFiles, baseline: Headline, finetuned: Headline, videos: int = 8) -> Summary:
    """What `disney-train eval` writes for the run (disney_train.eval.evaluate), with the figures given."""
    return Summary(
        report=files.store.url(REPORT_HTML),
        markdown=files.store.url(REPORT_MD),
        json_uri=files.store.url(EVAL_JSON),
        baseline=baseline,
        finetuned=finetuned,
        videos=videos,
        truncated_prompts=0,
        created="2026-12-01T12:30:00+00:00",
    )


def write_summary(files: RunFiles, summary: Summary | bytes) -> None:
    """As `disney-train eval` writes it, or bytes as they are (garbage)."""
    if isinstance(summary, bytes):
        files.store.write_bytes(SUMMARY_JSON, summary)
    else:
        files.write_eval_summary(summary.model_dump_json(by_alias=True))


def figures(h: Headline) -> dict[str, float]:
    """A Headline as status.evaluation shows it."""
    return {
        "promptFidelity": h.prompt_fidelity,
        "temporalConsistency": h.temporal_consistency,
        "ssim": h.ssim,
        "styleDistance": h.style_distance,
    }


def condition(status: dict[str, Any], ctype: str) -> dict[str, Any]:
    for c in status.get("conditions", []):
        if c["type"] == ctype:
            found: dict[str, Any] = c
            return found
    raise KeyError(f"no condition {ctype} in {status.get('conditions')}")


BASELINE = Headline(prompt_fidelity=0.25, temporal_consistency=0.875, ssim=0.5, style_distance=40.5)
FINETUNED = Headline(prompt_fidelity=0.3125, temporal_consistency=0.9375, ssim=0.625, style_distance=12.25)


FAKE_RAY = f"""#!/usr/bin/env python3
# `ray job submit ... -- ENTRYPOINT` as KubeRay's submitter calls it: the job runs the words after `--` on
# the head, where the run's ConfigMap is mounted at {CONFIG_DIR} (here: the folder FAKE_RAY_CONFIG_DIR).
import os, sys
args = sys.argv[sys.argv.index("--") + 1 :]
args = [a.replace({CONFIG_DIR!r}, os.environ["FAKE_RAY_CONFIG_DIR"]) for a in args]
os.execvp(args[0], args)
"""


def run_entrypoint(
    rayjob: dict[str, Any], config_map: dict[str, Any], tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    """What KubeRay's submitter does with a RayJob (K8sJobMode): one `bash -c` line with `ray job submit`
    and the entrypoint pasted after `--`; the job runs on the head, its ConfigMap's files mounted, with the
    pod's environment (the S3 keys from the Secret: here this process' environment). A fake `ray` runs the
    job in place; no RAY_ADDRESS, so `eval` runs in the job's process, not as a Ray task."""
    bin_dir, mounted = tmp_path / "bin", tmp_path / "run-config"
    bin_dir.mkdir()
    mounted.mkdir()
    (bin_dir / "ray").write_text(FAKE_RAY)
    (bin_dir / "ray").chmod(0o755)
    for file, text in config_map["data"].items():
        (mounted / file).write_text(text)
    env = {
        **{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
        "FAKE_RAY_CONFIG_DIR": str(mounted),
        "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    line = f"ray job submit --address http://127.0.0.1:8265 --no-wait -- {rayjob['spec']['entrypoint']}"
    return subprocess.run(["bash", "-c", line], env=env, capture_output=True, text=True, timeout=300)


def test_the_rayjob_evaluates_after_training_and_the_figures_reach_the_status(
    operator_proc: OperatorProcess,
    apiserver: ApiServer,
    cluster: Cluster,
    ns: str,
    s3: S3Options,
    s3_uri: str,
    tiny_t2v: Path,
    tiny_clip_dir: Path,
    packed: Path,
    tiny_lora: bytes,
    tmp_path: Path,
) -> None:
    """The whole way: the operator's RayJob runs `disney-train train --evaluate` (the run's training is
    done: it goes straight to the evaluation) on the tiny models from S3; KubeRay completes the job; the
    figures eval wrote reach status.evaluation, the Evaluated condition and `kubectl get -o wide`."""
    assert s3.endpoint_url is not None
    for folder, where in ((tiny_t2v, "model"), (tiny_clip_dir, "clip"), (packed, "data")):
        upload_folder(folder, f"{s3_uri}/{where}", s3)
    spec = evaluated_spec(
        s3.endpoint_url,
        f"{s3_uri}/runs",
        clip_uri=f"{s3_uri}/clip",
        seeds=1,
        steps=2,
        reference_clips=2,
        reference_frames=2,
    )
    spec["model"]["uri"], spec["dataset"]["uri"] = f"{s3_uri}/model", f"{s3_uri}/data"
    spec["training"]["data"] = {"num_frames": 9, "height": 32, "width": 32, "id_token": "BW_STYLE"}
    cluster.create(ns, "evaluated", spec)
    rj = cluster.the_rayjob(ns, "evaluated")
    assert rj["spec"]["entrypoint"] == EVAL_ENTRYPOINT
    config_map = cluster.config_map(ns, rj)
    cfg = run_config_of(config_map)
    assert cfg.evaluation == EvaluationConfig.model_validate(spec["evaluation"])
    st = cluster.wait_status(ns, "evaluated", phase="Pending")
    assert (condition(st, "Evaluated")["status"], condition(st, "Evaluated")["reason"]) == ("False", "AfterTraining")

    cluster.run_cluster(ns, rj)
    cluster.wait_status(ns, "evaluated", phase="Running")
    files = RunFiles(cfg)  # the run's training finished (an attempt retried after it goes straight to eval)
    files.write_final(tiny_lora, dump_config(cfg))
    files.finish(30, {"phase": "finished", "step": 30, "epoch": 15, "loss": 0.25})
    done = run_entrypoint(rj, config_map, tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "already finished at step 30" in " ".join(done.stdout.split())
    summary = Summary.model_validate_json(files.store.read_bytes(SUMMARY_JSON))
    assert summary.videos == 4 and files.store.exists(REPORT_HTML) and files.store.exists(EVAL_JSON)
    cluster.set_rayjob_status(ns, rj["metadata"]["name"], jobDeploymentStatus="Complete", jobStatus="SUCCEEDED")

    st = eventually(  # the figures may show while the job still runs: the summary is read as soon as written
        lambda: (st := cluster.status(ns, "evaluated")).get("phase") == "Succeeded" and "evaluation" in st and st,
        what="Succeeded with status.evaluation",
    )
    assert st["evaluation"] == {
        "report": f"{s3_uri}/runs/evaluated/eval/report.html",
        "markdown": f"{s3_uri}/runs/evaluated/eval/report.md",
        "json": f"{s3_uri}/runs/evaluated/eval/eval.json",
        "baseline": figures(summary.baseline),
        "fineTuned": figures(summary.finetuned),
        "videos": 4,
        "truncatedPrompts": 0,
        "created": summary.created,
    }
    evaluated = eventually(
        lambda: (c := condition(cluster.status(ns, "evaluated"), "Evaluated"))["status"] == "True" and c,
        what="Evaluated=True",
    )
    assert evaluated["reason"] == "Evaluated" and evaluated["message"] == f"report: {summary.report}"
    header, row = apiserver.kubectl("-n", ns, "get", "vft", "evaluated", "-o", "wide").stdout.splitlines()
    shown = float(row[header.index("FIDELITY") :].split()[0])  # columns are aligned; empty ones blank
    assert math.isclose(shown, summary.finetuned.prompt_fidelity, rel_tol=1e-6)

    time.sleep(1.5)  # converged: nothing more is written, however often it is read again
    before = apiserver.writes()
    time.sleep(3)
    assert apiserver.writes() - before == {}


# --------------------------------------------------------------------------- the reader on its own

KEY = ("team-a", "evaluated")


def rayjobs(state: str) -> list[dict[str, Any]]:
    return [{"metadata": {"name": "evaluated-1-abcde"}, "status": {"jobDeploymentStatus": state}}]


UID = "0b9c6a4e-uid"
OWNER = f"{KEY[0]}/{KEY[1]}/{UID}"


def body(spec: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"namespace": KEY[0], "name": KEY[1], "uid": UID}, "spec": spec}


@pytest.fixture
def changes() -> list[Key]:
    return []


@pytest.fixture
def reader(changes: list[Key]) -> Iterator[ProgressReader]:
    # one read while running, then only the final one; with team-a's Secret (the specs' s3-keys)
    r = ProgressReader(every=3600, on_change=changes.append, endpoints=["*"], secrets=Secrets({KEY[0]: RW}))
    yield r
    r.close()


def test_the_summary_written_at_the_end_is_read_when_the_rayjob_ends(
    reader: ProgressReader, changes: list[Key], s3: S3Options, s3_uri: str
) -> None:
    assert s3.endpoint_url is not None
    spec = evaluated_spec(s3.endpoint_url, s3_uri)
    files = run_files(spec, KEY[1], OWNER)
    files.write_progress({"step": 5})
    assert reader.refresh(KEY, body(spec), rayjobs("Running"))
    eventually(lambda: reader.latest(KEY) == {"step": 5}, what="the progress read")
    assert reader.latest_evaluation(KEY) is None  # nothing evaluated yet

    summary = summary_of(files, BASELINE, FINETUNED)
    write_summary(files, summary)  # the evaluation, at the end of the RayJob
    assert not reader.refresh(KEY, body(spec), rayjobs("Running"))  # not due again for an hour
    assert reader.refresh(KEY, body(spec), rayjobs("Complete"))  # the read after the RayJob ends
    eventually(
        lambda: reader.latest_evaluation(KEY) == json.loads(summary.model_dump_json(by_alias=True)),
        what="the summary read",
    )
    eventually(lambda: changes == [KEY, KEY], what="on_change for the summary")
    assert not reader.refresh(KEY, body(spec), rayjobs("Complete"))  # once per ended RayJob


def test_without_an_evaluation_block_no_summary_is_read(reader: ProgressReader, s3: S3Options, s3_uri: str) -> None:
    assert s3.endpoint_url is not None
    spec = {k: v for k, v in evaluated_spec(s3.endpoint_url, s3_uri).items() if k != "evaluation"}
    files = run_files(spec, KEY[1], OWNER)
    write_summary(files, summary_of(files, BASELINE, FINETUNED))
    files.write_progress({"step": 9})
    assert reader.refresh(KEY, body(spec), rayjobs("Complete"))
    eventually(lambda: reader.latest(KEY) == {"step": 9}, what="the progress read")  # the same read as a summary's
    assert reader.latest_evaluation(KEY) is None


@pytest.mark.parametrize("garbage", [b"{not json", b"[1, 2]", b"\x80\x81"], ids=["not-json", "a-list", "not-utf8"])
def test_a_summary_that_is_not_a_json_object_is_logged_and_progress_still_read(
    reader: ProgressReader, s3: S3Options, s3_uri: str, caplog: pytest.LogCaptureFixture, garbage: bytes
) -> None:
    assert s3.endpoint_url is not None
    spec = evaluated_spec(s3.endpoint_url, s3_uri)
    files = run_files(spec, KEY[1], OWNER)
    write_summary(files, garbage)
    files.write_progress({"step": 12})
    with caplog.at_level(logging.WARNING, logger="disney_operator.progress"):
        assert reader.refresh(KEY, body(spec), rayjobs("Complete"))
        eventually(lambda: reader.latest(KEY) == {"step": 12}, what="the progress read")
        eventually(lambda: "evaluation summary" in caplog.text, what="the warning")
    assert reader.latest_evaluation(KEY) is None
    assert f"evaluation summary {s3_uri}/{KEY[1]}/eval/summary.json not understood" in caplog.text
    assert not reader.refresh(KEY, body(spec), rayjobs("Complete"))  # read: the same file is not read again


def test_an_unreachable_s3_is_read_again_after_the_rayjob_ended(
    reader: ProgressReader, s3: S3Options, s3_uri: str
) -> None:
    (port,) = free_ports(1)  # nothing listens there
    spec = evaluated_spec(f"http://127.0.0.1:{port}", s3_uri)
    assert reader.refresh(KEY, body(spec), rayjobs("Complete"))
    eventually(lambda: reader.refresh(KEY, body(spec), rayjobs("Complete")), what="the final read tried again")
    assert reader.latest(KEY) is None and reader.latest_evaluation(KEY) is None
