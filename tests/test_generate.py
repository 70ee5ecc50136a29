"""`disney-train generate` on the tiny random-weight models: text-to-video and image-to-video, LoRAs from
a file, a run's prefix and S3 with their scales, mp4 files and generate.json written locally or to S3."""

from __future__ import annotations

import io
import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from disney_train.cli import app
from disney_train.config import S3Options
from disney_train.storage import open_store

SMALL = ["--frames", "9", "--height", "32", "--width", "32", "--steps", "2", "--device", "cpu"]


def decoded(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data), mode="r") as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["generate", *args])
    return result.exit_code, result.output + (str(result.exception) if result.exit_code not in (0, 1) else "")


def test_text_to_video_with_loras_and_their_scales(
    tiny_t2v: Path, tiny_lora: bytes, tmp_path: Path, s3: S3Options, s3_uri: str
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("A grey rabbit yawns under a tree.\n\nA bird flies over a meadow.\n")
    open_store(f"{s3_uri}/run", s3).write_bytes("final/pytorch_lora_weights.safetensors", tiny_lora)

    code, out = run("--model", str(tiny_t2v), "--out", str(tmp_path / "base"), "--prompts", str(prompts), *SMALL)
    assert code == 0, out
    # a run's prefix on S3 (its final/ LoRA), output to S3
    code, out = run(
        "--model", str(tiny_t2v), "--out", f"{s3_uri}/gen", "--prompts", str(prompts), "--lora", f"{s3_uri}/run",
        "--endpoint-url", str(s3.endpoint_url), *SMALL,
    )  # fmt: skip
    assert code == 0, out
    store = open_store(f"{s3_uri}/gen", s3)
    record = json.loads(store.read_bytes("generate.json"))
    assert [v["prompt"] for v in record["videos"]] == [
        "A grey rabbit yawns under a tree.",
        "A bird flies over a meadow.",
    ]
    assert [v["seed"] for v in record["videos"]] == [42, 43] and record["loras"] == [
        {"uri": f"{s3_uri}/run", "scale": 1.0}
    ]
    for i in range(2):
        base = decoded((tmp_path / "base" / f"video-{i:02d}.mp4").read_bytes())
        with_lora = decoded(store.read_bytes(f"video-{i:02d}.mp4"))
        assert base.shape == with_lora.shape == (9, 32, 32, 3)
        assert not np.array_equal(base, with_lora)  # the LoRA changes the video
    # the two prompts' videos differ (their own prompts and seeds)
    assert not np.array_equal(decoded((tmp_path / "base" / "video-00.mp4").read_bytes()), base)


def test_loras_apply_together_each_with_its_scale(tiny_t2v: Path, tiny_lora: bytes) -> None:
    """Two LoRA files as two adapters; each layer's scaling is alpha / rank (2.0 in the file) times its scale."""
    from diffusers import CogVideoXPipeline

    from disney_train.generate import apply_loras

    pipe = CogVideoXPipeline.from_pretrained(str(tiny_t2v))
    apply_loras(pipe, [(tiny_lora, 1.0), (tiny_lora, 0.25)])
    layer = pipe.transformer.transformer_blocks[0].attn1.to_q
    assert layer.scaling == {"lora0": 2.0, "lora1": 0.5}
    assert set(layer.active_adapters) == {"lora0", "lora1"}


def test_image_to_video_with_one_image_for_every_prompt(tiny_i2v: Path, tmp_path: Path) -> None:
    from PIL import Image

    image = tmp_path / "first.png"
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(image)
    code, out = run(
        "--model", str(tiny_i2v), "--out", str(tmp_path / "i2v"), "--image", str(image),
        "--prompt", "a rabbit", "--prompt", "a bird", *SMALL,
    )  # fmt: skip
    assert code == 0, out
    record = json.loads((tmp_path / "i2v" / "generate.json").read_text())
    assert record["variant"] == "i2v" and [v["image"] for v in record["videos"]] == [str(image)] * 2
    assert decoded((tmp_path / "i2v" / "video-01.mp4").read_bytes()).shape == (9, 32, 32, 3)


def test_bad_input_is_refused_by_name(tiny_t2v: Path, tiny_i2v: Path, tmp_path: Path) -> None:
    model = ["--model", str(tiny_t2v), "--out", str(tmp_path / "x")]
    i2v = ["--model", str(tiny_i2v), "--out", str(tmp_path / "y")]
    bad_prompts = tmp_path / "bad.txt"
    bad_prompts.write_bytes(b"caf\xe9\n")
    cases = [
        ([*model, "--prompt", "p", "--frames", "10"], "--frames 10: 4N+1 frames"),
        ([*model, "--prompt", "p", "--frames", "13"], f"--frames 13: {tiny_t2v} is a cogvideox model: 8N+1 frames"),
        ([*model, "--prompt", "p", "--width", "40"], "--width 40: a positive multiple of 16"),
        ([*model], "no prompt"),
        ([*model, "--prompts", str(bad_prompts)], f"--prompts {bad_prompts}: not UTF-8"),
        ([*model, "--prompt", "p", "--image", "x.png"], "is a text-to-video model"),
        ([*model, "--prompt", "p", "--lora", str(tmp_path / "nothing")], f"no LoRA file at {tmp_path / 'nothing'}"),
        ([*model, "--prompt", "p", "--lora", "x@high"], "the scale after '@' is not a number"),
        (
            [*i2v, "--prompt", "a", "--prompt", "b", "--prompt", "c", "--image", "1.png", "--image", "2.png"],
            "give one image, or one per prompt (3), not 2",
        ),
        (
            ["--model", str(tmp_path), "--out", str(tmp_path / "z"), "--prompt", "p"],
            "not a video diffusion model in the diffusers layout",
        ),
    ]
    for args, message in cases:
        code, out = run(*SMALL, *args)  # the case's own options last: they win
        assert code == 1 and message in " ".join(out.split()), (args, out)
    assert not (tmp_path / "x").exists()  # nothing written by a refused request


def test_the_device_and_precision_rendering_picks(monkeypatch: pytest.MonkeyPatch) -> None:
    """auto renders on the GPU in bf16 when torch sees one (generate, validation, eval), else on the CPU in fp32."""
    from disney_train.generate import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("auto") == ("cuda", torch.bfloat16)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == ("cpu", torch.float32)
    assert pick_device("cuda") == ("cuda", torch.bfloat16) and pick_device("cpu") == ("cpu", torch.float32)
