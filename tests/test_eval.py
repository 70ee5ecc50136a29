"""`disney-train eval` on the tiny random-weight models and a tiny random CLIP: baseline and fine-tuned
videos at the same seeds, every figure finite, the report, plots and JSON written to the run's prefix
on S3 and parsing; an evaluation again leaves no file of the earlier one; bad input named."""

from __future__ import annotations

import io
import json
import math
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from disney_train.cli import app
from disney_train.config import S3Options
from disney_train.eval.results import (
    EVAL_JSON,
    REPORT_HTML,
    REPORT_MD,
    EvalResults,
    ModelName,
    Summary,
)
from disney_train.model.tiny_clip import MAX_TOKENS
from disney_train.runs import FINAL_LORA, SUMMARY_JSON
from disney_train.storage import open_store

LONG = " ".join(["a cartoon mouse whistling on a steamboat"] * 8)  # far over the tiny CLIP's 32 tokens
PROMPTS = ["STEAMBOAT a cartoon mouse steers a boat down the river", f"STEAMBOAT {LONG}"]


def decoded(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data), mode="r") as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def write_config(path: Path, s3: S3Options, **evaluation: Any) -> Path:
    run: dict[str, Any] = {
        "name": "evaluated",
        "model": {"uri": "<set by the test>"},
        "data": {"uri": "<set by the test>", "num_frames": 9, "height": 32, "width": 32, "id_token": "STEAMBOAT"},
        "output": {"uri": "<set by the test>"},
        "s3": {"endpoint_url": s3.endpoint_url},
        "evaluation": {
            "prompts": PROMPTS,
            "clip_uri": "<set by the test>",
            "seeds": 2,
            "seed": 7,
            "steps": 2,
            "reference_clips": 3,
            "reference_frames": 4,
            **evaluation,
        },
    }
    path.write_text(yaml.safe_dump(run))
    return path


@pytest.fixture
def run_setup(
    tmp_path: Path, s3: S3Options, s3_uri: str, tiny_t2v: Path, tiny_clip_dir: Path, packed: Path, tiny_lora: bytes
) -> tuple[Path, list[str]]:
    """A finished run's LoRA on S3, CLIP on S3 (`disney-train model push`), the tiny model and the packed
    sample locally."""
    push = CliRunner().invoke(
        app, ["model", "push", str(tiny_clip_dir), f"{s3_uri}/clip", "--endpoint-url", str(s3.endpoint_url)]
    )
    assert push.exit_code == 0 and "7 file(s) uploaded" in " ".join(push.output.split()), push.output
    open_store(f"{s3_uri}/runs/evaluated", s3).write_bytes(FINAL_LORA, tiny_lora)
    config = write_config(tmp_path / "run.yaml", s3)
    where = [
        f"model.uri={tiny_t2v}",
        f"data.uri={packed}",
        f"output.uri={s3_uri}/runs",
        f"evaluation.clip_uri={s3_uri}/clip",
    ]
    return config, [x for w in where for x in ("--set", w)]


def evaluate(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["eval", "--device", "cpu", *args])
    return result.exit_code, result.output + (repr(result.exception) if result.exit_code not in (0, 1) else "")


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []
        self.tables = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tables += tag == "table"
        self.sources += [v for k, v in attrs if tag == "img" and k == "src" and v]


def test_eval_writes_figures_report_plots_and_videos_to_the_run(
    run_setup: tuple[Path, list[str]], s3: S3Options, s3_uri: str, tmp_path: Path
) -> None:
    config, sets = run_setup
    code, out = evaluate("--config", str(config), *sets)
    assert code == 0, out
    store = open_store(f"{s3_uri}/runs/evaluated", s3)

    results = EvalResults.model_validate_json(store.read_bytes(EVAL_JSON))
    assert results.all_finite()
    assert results.settings.seeds == [7, 8, 9, 10] and results.settings.seed_sets == 2  # set k starts at 7 + 2k
    pairs = {m: sorted((v.prompt, v.seed) for v in results.videos if v.model == m) for m in ("baseline", "finetuned")}
    assert pairs["baseline"] == pairs["finetuned"] == [(0, 7), (0, 9), (1, 8), (1, 10)]
    # CLIP scored the prompts without the id token; the long one was cut to the tiny CLIP's limit
    assert [p.scored for p in results.prompts] == [p.removeprefix("STEAMBOAT ") for p in PROMPTS]
    assert [p.truncated for p in results.prompts] == [False, True]
    assert results.prompts[1].tokens > MAX_TOKENS == results.clip_max_tokens
    assert results.reference.clips == 3 and results.reference.frames == 12
    assert results.ran_on.startswith("process ")  # no Ray address: in this process
    for v in results.videos:
        assert len(v.metrics.clip_adjacent) == len(v.metrics.ssim_adjacent) == 8  # 9 frames
        assert -1 <= v.metrics.clip_score <= 1 and 0 <= v.metrics.clipscore <= 100
    for model in ("baseline", "finetuned"):
        s = results.summary[model]
        assert s.style_frechet >= 0 and 0 <= s.style_cosine <= 2
        assert math.isclose(s.clip_score, np.mean([v.metrics.clip_score for v in results.videos if v.model == model]))

    # the videos: 9x32x32; the LoRA changes every one of them
    video = {(v.model, v.prompt, v.seed): decoded(store.read_bytes(f"eval/{v.video}")) for v in results.videos}
    for (model, prompt, seed), frames in video.items():
        assert frames.shape == (9, 32, 32, 3)
        if model == "finetuned":
            assert not np.array_equal(frames, video[("baseline", prompt, seed)])

    # each video is the one `disney-train generate` renders at its (prompt, seed), with and without the LoRA
    runner, common = CliRunner(), ["--frames", "9", "--height", "32", "--width", "32", "--steps", "2", "--fps", "8"]
    both: list[tuple[ModelName, list[str]]] = [("baseline", []), ("finetuned", ["--lora", f"{s3_uri}/runs/evaluated"])]
    for model, lora in both:
        gen = runner.invoke(app, [
            "generate", "--model", sets[1].removeprefix("model.uri="), "--out", str(tmp_path / model),
            "--prompt", PROMPTS[1], "--seed", "8", "--device", "cpu", "--endpoint-url", str(s3.endpoint_url),
            *common, *lora,
        ])  # fmt: skip
        assert gen.exit_code == 0, gen.output
        np.testing.assert_array_equal(decoded((tmp_path / model / "video-00.mp4").read_bytes()), video[(model, 1, 8)])

    # the headline figures the operator reads
    head = Summary.model_validate_json(store.read_bytes(SUMMARY_JSON))
    assert head.report == store.url(REPORT_HTML) and head.json_uri == store.url(EVAL_JSON)
    assert head.finetuned.prompt_fidelity == results.summary["finetuned"].clip_score
    assert head.baseline.style_distance == results.summary["baseline"].style_frechet
    assert head.videos == 8 and head.truncated_prompts == 1

    # the report: Markdown with the table's numbers, HTML whose every image was written
    markdown = store.read_bytes(REPORT_MD).decode()
    assert f"{results.summary['finetuned'].clip_score:.4f}" in markdown
    assert f"{results.summary['baseline'].style_frechet:.4f}" in markdown
    assert f"{MAX_TOKENS}" in markdown
    page = _Images()
    page.feed(store.read_bytes(REPORT_HTML).decode())
    assert page.tables >= 1 and page.sources
    for src in page.sources:
        with Image.open(io.BytesIO(store.read_bytes(f"eval/{src}"))) as im:
            assert im.width >= 32 and im.height >= 32
    plots = [k for k in store.list_keys("eval/plots/") if k.endswith(".png")]
    assert len(plots) >= 3

    # the command's own summary names the report
    assert f"{s3_uri}/runs/evaluated/{REPORT_HTML}" in " ".join(out.split())


def test_eval_again_replaces_the_earlier_one_and_bad_input_is_named(
    run_setup: tuple[Path, list[str]], s3: S3Options, s3_uri: str
) -> None:
    config, sets = run_setup
    store = open_store(f"{s3_uri}/runs/evaluated", s3)
    code, out = evaluate("--config", str(config), *sets)
    assert code == 0, out
    first = set(store.list_keys("eval/"))
    code, out = evaluate(
        "--config", str(config), *sets, "--set", "evaluation.seeds=1", "--set", f"evaluation.prompts={PROMPTS[:1]}"
    )
    assert code == 0, out
    now = set(store.list_keys("eval/"))
    results = EvalResults.model_validate_json(store.read_bytes(EVAL_JSON))
    assert len(results.videos) == 2 and {f"eval/{v.video}" for v in results.videos} <= now
    assert "eval/videos/baseline-p01-s8.mp4" in first - now  # the earlier evaluation's files are gone
    assert not [k for k in now if "p01" in k]
    assert json.loads(store.read_bytes(SUMMARY_JSON))["videos"] == 2

    store.delete([FINAL_LORA])
    code, out = evaluate("--config", str(config), *sets)
    assert code == 1 and f"{store.url(FINAL_LORA)}: no fine-tuned LoRA" in " ".join(out.split())
    code, out = evaluate("--config", str(config), *sets, "--set", "evaluation.num_frames=10")
    assert code == 1 and "evaluation.num_frames" in out and "4N+1" in out
    code, out = evaluate("--config", str(config), *sets, "--set", "evaluation.num_frames=13")
    assert code == 1 and "evaluation.num_frames 13: a cogvideox model takes 8N+1 frames" in " ".join(out.split())
    code, out = evaluate("--config", str(config), *sets, "--set", "evaluation=null")
    assert code == 1 and "no evaluation section" in out
    code, out = evaluate("--config", str(config), *sets, "--set", "evaluation.images=[a.png]")
    assert code == 1 and "evaluation.images: a text-to-video run takes no images" in " ".join(out.split())
    code, out = evaluate("--config", str(config), *sets, "--set", f"evaluation.clip_uri={s3_uri}/runs")
    assert code == 1 and f"evaluation.clip_uri: {s3_uri}/runs: not a CLIP model" in " ".join(out.split())


def test_train_with_evaluate_checks_the_evaluations_inputs_before_training(
    run_setup: tuple[Path, list[str]], s3: S3Options, s3_uri: str, tmp_path: Path, tiny_i2v: Path
) -> None:
    """`disney-train train --evaluate` (the operator's entrypoint) refuses a wrong CLIP or a broken image
    before it trains anything, naming the field."""
    config, sets = run_setup
    store = open_store(f"{s3_uri}/runs/evaluated", s3)
    store.delete([FINAL_LORA])  # a run not trained yet
    runner = CliRunner()
    res = runner.invoke(
        app, ["train", "--config", str(config), *sets, "--set", "evaluation.clip_uri=/nowhere", "--evaluate"]
    )
    assert res.exit_code == 1 and "evaluation.clip_uri: /nowhere: no such model folder" in " ".join(res.output.split())
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    i2v = ["--set", f"model.uri={tiny_i2v}", "--set", "model.variant=i2v", "--set", f"evaluation.prompts={PROMPTS[:1]}"]
    res = runner.invoke(
        app, ["train", "--config", str(config), *sets, *i2v, "--set", f"evaluation.images=[{broken}]", "--evaluate"]
    )
    assert res.exit_code == 1 and f"evaluation.images[0] {broken}: not an image that decodes" in " ".join(
        res.output.split()
    )
    assert store.list_keys() == []  # nothing trained, nothing written


def test_image_to_video_evaluation(
    tmp_path: Path, s3: S3Options, tiny_i2v: Path, packed: Path, tiny_lora: bytes
) -> None:
    """I2V: each prompt's image conditions both models' videos, and the report names it. CLIP from
    `disney-train model tiny-clip`, in a local folder."""
    tiny_clip_dir = tmp_path / "tiny-clip"
    made = CliRunner().invoke(app, ["model", "tiny-clip", str(tiny_clip_dir)])
    assert made.exit_code == 0, made.output
    image = tmp_path / "first-frame.png"
    Image.fromarray(np.linspace(0, 255, 32 * 32 * 3).astype(np.uint8).reshape(32, 32, 3)).save(image)
    open_store(f"{tmp_path}/runs/evaluated").write_bytes(FINAL_LORA, tiny_lora)  # attention shapes as the t2v model's
    config = write_config(tmp_path / "run.yaml", s3, prompts=PROMPTS[:1], images=[str(image)], seeds=1)
    code, out = evaluate(
        "--config", str(config),
        "--set", f"model.uri={tiny_i2v}", "--set", "model.variant=i2v", "--set", f"data.uri={packed}",
        "--set", f"output.uri={tmp_path}/runs", "--set", f"evaluation.clip_uri={tiny_clip_dir}",
    )  # fmt: skip
    assert code == 0, out
    run = tmp_path / "runs" / "evaluated" / "eval"
    results = EvalResults.model_validate_json((run / "eval.json").read_text())
    assert results.variant == "i2v" and results.prompts[0].image == str(image) and results.all_finite()
    assert len(results.videos) == 2 and str(image) in (run / "report.html").read_text()  # its text, unescaped


@pytest.mark.ray
def test_eval_on_ray_runs_as_one_task_with_a_workers_resources(
    run_setup: tuple[Path, list[str]], s3: S3Options, s3_uri: str
) -> None:
    """With a Ray address the evaluation is one Ray task (on a GPU worker of a GPU cluster); its errors
    come back as the same clear message."""
    import ray

    from disney_train.config import RunConfig
    from disney_train.eval.evaluate import eval_resources
    from disney_train.train.launch import local_ray_init

    config, sets = run_setup
    gpu = RunConfig.model_validate(
        {
            "model": {"uri": "m"},
            "data": {"uri": "d"},
            "output": {"uri": "o"},
            "train": {"workers": {"device": "cuda", "cpus_per_worker": 6}},
        }
    )
    assert eval_resources(gpu, cluster_gpus=0) == {"CPU": 6, "GPU": 1.0}
    local_ray_init(num_cpus=2)  # the S3 keys in this process' environment reach its workers
    try:
        one = ["--set", "evaluation.seeds=1", "--set", f"evaluation.prompts={PROMPTS[:1]}"]
        code, out = evaluate("--config", str(config), *sets, *one, "--ray-address", "auto")
        assert code == 0, out
        results = EvalResults.model_validate_json(open_store(f"{s3_uri}/runs/evaluated", s3).read_bytes(EVAL_JSON))
        assert results.ran_on.startswith("Ray task ") and len(results.videos) == 2 and results.all_finite()
        code, out = evaluate(
            "--config", str(config), *sets, *one, "--set", "evaluation.clip_uri=/nowhere", "--ray-address", "auto"
        )
        assert code == 1 and "/nowhere: no such model folder" in out and "Traceback" not in out
    finally:
        ray.shutdown()


def test_a_corrupt_training_clip_is_named_and_left_out_of_the_style_reference(packed: Path, tmp_path: Path) -> None:
    from disney_train.config import RunConfig
    from disney_train.data.pack import load_manifest
    from disney_train.eval.evaluate import EvalError, reference_frames

    manifest = load_manifest(str(packed))
    bad = manifest.samples[1]

    def corrupt(key: str) -> None:  # one flipped byte: the clip's sha256 no longer matches
        rec = next(s for s in manifest.samples if s.key == key)
        shard = packed / manifest.shards[rec.shard].key
        data = bytearray(shard.read_bytes())
        data[rec.video.offset + rec.video.size // 2] ^= 0xFF
        shard.write_bytes(bytes(data))

    corrupt(bad.key)
    cfg = RunConfig.model_validate(
        {
            "model": {"uri": "m"},
            "data": {"uri": str(packed), "num_frames": 9, "height": 32, "width": 32},
            "output": {"uri": str(tmp_path)},
            "evaluation": {"prompts": ["p"], "clip_uri": "c", "reference_clips": 4, "reference_frames": 3},
        }
    )
    assert cfg.evaluation is not None
    said: list[str] = []
    ref = reference_frames(cfg, cfg.evaluation, said.append)
    assert ref.keys == [s.key for s in manifest.samples if s.key != bad.key]
    assert ref.frames.shape == (3 * len(ref.keys), 32, 32, 3) and ref.frames.dtype == np.uint8
    assert len(ref.skipped) == 1 and bad.key in ref.skipped[0] and "sha256" in ref.skipped[0]
    assert said and bad.key in said[0]
    for s in manifest.samples[2:] + manifest.samples[:1]:  # every clip unreadable: an error naming the dataset
        corrupt(s.key)
    with pytest.raises(EvalError, match=f"{packed}: none of the training clips could be read"):
        reference_frames(cfg, cfg.evaluation, said.append)


def test_the_id_token_is_left_out_of_what_clip_scores_only_as_a_word() -> None:
    from disney_train.eval.evaluate import scored_prompt

    assert scored_prompt("BW_STYLE a mouse", "BW_STYLE") == "a mouse"
    assert scored_prompt("BW_STYLE, a mouse", "BW_STYLE") == "a mouse"
    assert scored_prompt("BW_STYLEX a mouse", "BW_STYLE") == "BW_STYLEX a mouse"  # another word
    assert scored_prompt("a BW_STYLE mouse", "BW_STYLE") == "a BW_STYLE mouse"  # only a leading token
    assert scored_prompt("BW_STYLE", "BW_STYLE") == "BW_STYLE" and scored_prompt("a mouse", None) == "a mouse"


def test_the_evaluation_preload_imports_every_module_it_names_and_survives_a_bad_name() -> None:
    """A stale name in preload.MODULES would be skipped quietly at run time (the evaluation reports its own
    import errors), so the list is checked here: in a fresh interpreter, every module is imported."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from disney_train.eval.preload import MODULES, preload\n"
        "preload((*MODULES, 'disney_train.no_such_module')).join(300)\n"
        "print(','.join(m for m in MODULES if m not in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert done.stdout.strip() == "", done.stdout
