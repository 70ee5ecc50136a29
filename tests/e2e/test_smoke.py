"""The smoke job (jobs/smoke.yaml, as this CPU cluster runs it: `jobs.smoke_job`) from `kubectl apply` to
Succeeded, its LoRA in S3 loading into the tiny pipeline; its prompts are what a shell would act on, and
arrive byte for byte (issue 16, finding 1: KubeRay's submitter line once ran them)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from disney_train.model.lora import lora_part
from tests.e2e.jobs import BUCKET, JOBS_NS, SMOKE, apply, bucket, clear, cli, dump, keys, phase_is, smoke_job
from tests.support.cluster import Kube, wait_until

# (the timeout counts the session's set-up too when this module runs first: helm install, data pack)
pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1500)]

# Command substitution, variables, both quotes, backslashes, a line break, a tab, characters beyond ASCII
HOSTILE = (
    'A rabbit\'s "price" is $5: $(touch /tmp/pwned) `id` ${HOME} \\ back\\slash;\nline two\tand 🐰, 漢字 && exit 1'
)


def read(s3: dict[str, str], key: str) -> bytes:
    data: bytes = bucket(s3).get_object(Bucket=BUCKET, Key=key)["Body"].read()
    return data


def test_smoke_job_trains_to_succeeded_with_its_lora_in_s3(
    kube: Kube, s3: dict[str, str], installed: None, inputs: Path, tmp_path: Path
) -> None:
    kube.kubectl("-n", JOBS_NS, "delete", "vft", SMOKE, "--ignore-not-found", "--wait")
    clear(s3, f"smoke/{SMOKE}/")
    started = time.monotonic()
    job = smoke_job(s3)
    job["spec"]["training"]["validation"]["prompts"] = [HOSTILE]
    job["spec"]["evaluation"]["prompts"] = [HOSTILE]
    apply(kube, job)
    try:
        done = wait_until(f"{SMOKE} Succeeded", lambda: phase_is(kube, SMOKE, "Succeeded"), timeout=600)
    except AssertionError as err:
        raise AssertionError(f"{err}\n{dump(kube, SMOKE)}") from None
    took = time.monotonic() - started
    status = done["status"]
    assert status["progress"]["step"] == 12, status
    assert status["progress"]["loss"] > 0, status
    assert status["progress"].get("lastCheckpointTime"), status
    # no queue name: Kueue (running in this cluster) left its RayJob alone, no Workload was made for it
    uid = kube.get("rayjobs", status["rayJob"]["name"], JOBS_NS)["metadata"]["uid"]
    assert not kube.items("workloads.kueue.x-k8s.io", JOBS_NS, f"kueue.x-k8s.io/job-uid={uid}")
    assert "queue" not in status, status
    row = kube.kubectl("-n", JOBS_NS, "get", "vft", SMOKE, "--no-headers").stdout.split()
    assert row[1] == "Succeeded" and "12" in row, row
    saved = keys(s3, f"smoke/{SMOKE}/")
    assert any(k.startswith(f"smoke/{SMOKE}/final/") for k in saved), saved
    assert f"smoke/{SMOKE}/finished.json" in saved, saved
    # the prompts arrived as written: in the run's configuration, the validation videos' index, the evaluation
    final = yaml.safe_load(read(s3, f"smoke/{SMOKE}/final/config.yaml"))
    assert final["validation"]["prompts"] == final["evaluation"]["prompts"] == [HOSTILE], final
    (index,) = [k for k in saved if k.startswith(f"smoke/{SMOKE}/validation/") and k.endswith("/prompts.json")]
    assert list(json.loads(read(s3, index)).values()) == [HOSTILE]
    assert [p["text"] for p in json.loads(read(s3, f"smoke/{SMOKE}/eval/eval.json"))["prompts"]] == [HOSTILE]
    # the final LoRA loads into the tiny pipeline and renders
    cli(
        s3, "generate", "--model", str(inputs), "--out", str(tmp_path / "gen"),
        "--lora", f"s3://{BUCKET}/smoke/{SMOKE}", "--prompt", "a cartoon mouse",
        "--frames", "9", "--height", "32", "--width", "32", "--steps", "2", "--device", "cpu",
    )  # fmt: skip
    assert (tmp_path / "gen" / "video-00.mp4").stat().st_size > 0
    print(f"smoke job: apply -> Succeeded in {took:.0f} s")


@pytest.mark.parametrize(
    ("generation", "expert"),
    [("2.1", None), ("2.2", "low")],
    ids=["wan-2.1", "wan-2.2-low-noise-expert"],
)
def test_a_wan_job_goes_through_the_operator_like_a_cogvideox_one(
    generation: str, expert: str | None, kube: Kube, s3: dict[str, str], installed: None, inputs: Path, tmp_path: Path
) -> None:
    """The smoke job on a tiny Wan T2V (`model.family: wan`, pushed as a user pushes it): Wan 2.1, and
    Wan 2.2 A14B's low-noise expert (`model.expert: low`, through the CRD's schema): the same RayJob, to
    Succeeded with step, loss and checkpoint in the status; the pods trained and rendered the validation
    and evaluation with the Wan specification and pipeline (2.2: both experts, the LoRA on
    transformer_2); the final LoRA in S3 renders here with `disney-train generate`."""
    name = f"{SMOKE}-wan" + generation.replace(".", "")
    # the runs before are checked: their Ray clusters (kept for the operator's cluster TTL) leave the CPUs to this one
    runs = (SMOKE, f"{SMOKE}-wan", f"{SMOKE}-wan21")  # -wan: the name before Wan 2.2, on a cluster kept up
    kube.kubectl("-n", JOBS_NS, "delete", "vft", *runs, "--ignore-not-found", "--wait")
    clear(s3, f"smoke/{name}/")
    model = tmp_path / "tiny-wan"
    cli(s3, "model", "tiny", "--family", "wan", "--generation", generation, str(model))
    cli(s3, "model", "push", str(model), f"s3://{BUCKET}/models/tiny-wan{generation}-t2v")
    job = smoke_job(s3, name)
    job["spec"]["model"] = {"uri": f"s3://{BUCKET}/models/tiny-wan{generation}-t2v", "family": "wan", "variant": "t2v"}
    if expert:
        job["spec"]["model"]["expert"] = expert
    apply(kube, job)
    try:
        done = wait_until(f"{name} Succeeded", lambda: phase_is(kube, name, "Succeeded"), timeout=600)
    except AssertionError as err:
        raise AssertionError(f"{err}\n{dump(kube, name)}") from None
    status = done["status"]
    assert status["progress"]["step"] == 12 and 0.1 < status["progress"]["loss"] < 10, status  # flow matching: ~2
    assert status["progress"].get("lastCheckpointTime"), status
    final = yaml.safe_load(read(s3, f"smoke/{name}/final/config.yaml"))
    assert final["model"]["family"] == "wan" and final["model"].get("expert") == expert, final
    saved = keys(s3, f"smoke/{name}/")
    assert any(k.endswith(".mp4") and "/validation/" in k for k in saved), saved
    lora = tmp_path / "final.safetensors"  # for the expert it trained: what generate and the pods load it into
    lora.write_bytes(read(s3, f"smoke/{name}/final/pytorch_lora_weights.safetensors"))
    assert lora_part(lora) == ("transformer_2" if expert == "low" else "transformer")
    evaluation = json.loads(read(s3, f"smoke/{name}/eval/eval.json"))  # rendered with WanPipeline in the pod
    assert evaluation["variant"] == "t2v" and len(evaluation["videos"]) == 2, evaluation
    cli(
        s3, "generate", "--model", str(model), "--out", str(tmp_path / "gen"),
        "--lora", f"s3://{BUCKET}/smoke/{name}", "--prompt", "a cartoon mouse",
        "--frames", "9", "--height", "32", "--width", "32", "--steps", "2", "--device", "cpu",
    )  # fmt: skip
    generated = json.loads((tmp_path / "gen" / "generate.json").read_text())
    assert generated["model_spec"] == f"wan-{generation}-t2v", generated
