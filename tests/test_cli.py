"""The commands a user types, run as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent / "disney-train"


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "160"}
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


@pytest.mark.ray
def test_run_on_the_embedded_default(tmp_path: Path) -> None:
    res = run("run", "--workdir", str(tmp_path / "w"))
    assert res.returncode == 0, res.stderr
    out = res.stdout
    w = tmp_path / "w"
    run_dir = w / "output" / "local-demo"
    assert f"LoRA        {run_dir / 'final' / 'pytorch_lora_weights.safetensors'}" in out
    assert (w / "packed" / "manifest.json").is_file()
    assert (w / "sample" / "ATTRIBUTION.txt").read_text().startswith("Clips cut from Big Buck Bunny")
    assert len(list((w / "packed" / "cache").rglob("*.safetensors"))) == 4  # the latent cache
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-000000020", "step-000000030"]
    assert (run_dir / "validation" / "step-000000030" / "video-00.mp4").stat().st_size > 1000
    progress = json.loads((run_dir / "progress.json").read_text())
    assert progress["phase"] == "finished" and progress["step"] == 30 and progress["world_size"] == 2
    state = json.loads((run_dir / "checkpoints" / "step-000000030" / "state.json").read_text())
    losses = [m["loss"] for m in state["metrics"]]
    assert len(losses) == 6 and losses[-1] < losses[0]  # the LoRA learns (seeded: the same every run)
    # the last step: baseline versus fine-tuned, with a tiny random CLIP written beside the model
    assert (w / "model" / "tiny-clip" / "config.json").is_file()
    summary = json.loads((run_dir / "eval" / "summary.json").read_text())
    assert summary["videos"] == 4 and summary["report"] == str(run_dir / "eval" / "report.html")
    assert (run_dir / "eval" / "report.md").read_text().count(f"{summary['finetuned']['prompt_fidelity']:.4f}") >= 1
    assert f"report      {run_dir / 'eval' / 'report.html'}" in out
    # the user's story only: no worker chatter, library bars or warnings (they are in the named log folder)
    said = res.stdout + res.stderr
    noises = ("TrainController", "Reporting training result", "FutureWarning", "Writing model shards", "it/s]")
    notices = ("Setting accelerator to CPU", "Token authentication is enabled")  # DeepSpeed's and Ray's
    for noise in (*noises, *notices):
        assert noise not in said, noise
    assert "worker logs " in out
    again = run("run", "--workdir", str(w))  # a second run reuses every shard and trains nothing
    assert again.returncode == 0, again.stderr
    assert "0 shard(s) written" in again.stdout
    assert "already finished at step 30" in " ".join(again.stdout.split())
    assert "evaluated already" in again.stdout


def test_config_show_and_bad_config(tmp_path: Path) -> None:
    from disney_train import __version__

    assert run("--version").stdout.strip() == __version__
    res = run("config", "show")
    assert res.returncode == 0 and "learning_rate: 0.001" in res.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {uri: m}\ndata: {uri: d, num_frames: 48}\noutput: {uri: o}\n")
    res = run("config", "show", str(bad))
    assert res.returncode == 1
    assert "data.num_frames" in res.stderr and "4N+1" in res.stderr and str(bad) in res.stderr


def test_pack_errors_are_one_clear_line(tmp_path: Path) -> None:
    res = run("data", "pack", str(tmp_path / "nowhere"), str(tmp_path / "out"))
    assert res.returncode == 1
    assert "error:" in res.stderr and "no such folder" in res.stderr and "Traceback" not in res.stderr
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "videos.txt").write_text("a.mp4\n")
    res = run("data", "pack", str(tmp_path / "src"), str(tmp_path / "out"))
    assert res.returncode == 1 and "no prompt.txt or prompts.txt" in res.stderr
    res = run("data", "inspect", str(tmp_path / "out"))
    assert res.returncode == 1 and "no manifest" in res.stderr


def test_data_read_command(tmp_path: Path) -> None:
    sample, packed = tmp_path / "s", tmp_path / "p"
    assert run("data", "sample", str(sample)).returncode == 0
    res = run("data", "pack", str(sample), str(packed), "--min-frames", "9", "--shard-size", "300KB")
    assert res.returncode == 0, res.stderr
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        f"model: {{uri: m}}\ndata: {{uri: {packed}, num_frames: 9, height: 32, width: 32}}\noutput: {{uri: o}}\n"
    )
    res = run("data", "read", "--config", str(cfg), "--world-size", "2", "--rank", "1")
    assert res.returncode == 0, res.stderr
    assert "read 2 clip(s) over 1 epoch(s) on rank 1/2" in res.stdout


def test_inspect_of_a_foreign_manifest_is_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text('{"format": "something-else"}')
    res = run("data", "inspect", str(tmp_path))
    assert res.returncode == 1 and "not a disney-train manifest" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.ray
def test_cache_command_builds_the_latent_cache(tiny_t2v: Path, packed: Path, tmp_path: Path) -> None:
    from disney_train.config import dump_config
    from tests.support.training import train_config

    cfg = tmp_path / "run.yaml"
    cfg.write_text(dump_config(train_config(tiny_t2v, packed, tmp_path / "out")))
    res = run("cache", "--config", str(cfg), "--set", "train.workers.replicas=1")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "latent cache ready" in res.stdout
    assert len(list((packed / "cache").rglob("*.safetensors"))) == 4
    bad = run("cache", "--config", str(cfg), "--set", "train.workers.replicas")
    assert bad.returncode == 1 and "expected FIELD=VALUE" in bad.stderr


def test_the_configuration_from_an_environment_variable(tmp_path: Path) -> None:
    """`disney-train train --config-env VAR`, for launchers that hand over the configuration that way. Its
    errors name the variable."""
    env = {**os.environ, "COLUMNS": "160", "RUN_CFG": "name: [unclosed\n"}
    res = subprocess.run([str(BIN), "train", "--config-env", "RUN_CFG"], capture_output=True, text=True, env=env)
    assert res.returncode == 1 and "error: $RUN_CFG: not valid YAML at line 2" in res.stderr, res.stderr
    env["RUN_CFG"] = "model: {uri: m}\ndata: {uri: d, num_frames: 48}\noutput: {uri: o}\n"
    res = subprocess.run([str(BIN), "cache", "--config-env", "RUN_CFG"], capture_output=True, text=True, env=env)
    assert res.returncode == 1 and "data.num_frames: must be 4N+1" in res.stderr, res.stderr
    res = run("train", "--config-env", "NOT_SET_ANYWHERE")
    assert res.returncode == 1 and "--config-env NOT_SET_ANYWHERE: the environment variable is not set" in res.stderr
    res = run("train", "--config", str(tmp_path / "a.yaml"), "--config-env", "RUN_CFG")
    assert res.returncode == 1 and "one of them" in res.stderr
