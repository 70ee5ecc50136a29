"""`disney-train generate` and `eval`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from disney_train.cli.app import app
from disney_train.cli.common import (
    ConfigEnvOpt,
    ConfigOpt,
    EndpointOpt,
    SetOpt,
    console,
    err_console,
    guard,
    print_evaluation,
    run_config,
    s3_options,
)


@app.command("generate")
def generate_cmd(
    model: Annotated[str, typer.Option("--model", help="Base model: a folder or s3:// prefix (diffusers layout).")],
    out: Annotated[str, typer.Option("--out", help="Folder or s3:// prefix for video-NN.mp4 and generate.json.")],
    prompt: Annotated[list[str] | None, typer.Option("--prompt", help="A prompt (repeatable).")] = None,
    prompts: Annotated[Path | None, typer.Option("--prompts", help="A file of prompts, one per line.")] = None,
    image: Annotated[
        list[str] | None,
        typer.Option("--image", help="Image-to-video: the first frame, one per prompt or one for all (file or s3://)."),
    ] = None,
    lora: Annotated[
        list[str] | None,
        typer.Option(
            "--lora",
            help="A LoRA: a .safetensors file, a folder or s3:// prefix holding one, or a run's prefix (its final/ "
            "LoRA); URI@SCALE sets its scale (default 1). Repeatable: all are applied together.",
        ),
    ] = None,
    frames: Annotated[int, typer.Option(help="Frames (4N+1; CogVideoX 8N+1).")] = 49,
    height: Annotated[int, typer.Option(help="Height (a multiple of 16).")] = 480,
    width: Annotated[int, typer.Option(help="Width (a multiple of 16).")] = 720,
    fps: Annotated[float, typer.Option(help="Frames per second of the mp4 files.")] = 8.0,
    steps: Annotated[int, typer.Option(help="Denoising steps.")] = 50,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance scale.")] = 6.0,
    seed: Annotated[int, typer.Option(help="Seed of the first video; the next ones take seed+1, seed+2, ...")] = 42,
    device: Annotated[str, typer.Option(help="auto (CUDA when there is a GPU, bf16), cuda or cpu.")] = "auto",
    endpoint_url: EndpointOpt = None,
) -> None:
    """Text-to-video from prompts, or image-to-video from images and prompts, with the base model and
    optionally LoRAs; writes mp4 files. The validation videos of a training run come from the same code."""
    from disney_train.generate import GenerateRequest, LoraRef, generate, read_prompts

    def body() -> list[str]:
        texts = list(prompt or []) + (read_prompts(prompts) if prompts else [])
        req = GenerateRequest(
            model=model,
            out=out,
            prompts=texts,
            images=list(image or []),
            loras=[LoraRef.parse(x) for x in lora or []],
            num_frames=frames,
            height=height,
            width=width,
            fps=fps,
            steps=steps,
            guidance_scale=guidance,
            seed=seed,
            device=device,
        )
        return generate(req, s3_options(endpoint_url))

    console.print(f"generating with {model}")
    written = guard(body)
    for uri in written:
        console.print(uri)


@app.command("eval")
def eval_cmd(
    config: ConfigOpt = None,
    config_env: ConfigEnvOpt = None,
    set_: SetOpt = None,
    device: Annotated[str, typer.Option(help="auto (CUDA when there is a GPU, bf16), cuda or cpu.")] = "auto",
    ray_address: Annotated[
        str | None,
        typer.Option(
            "--ray-address",
            help="Run the evaluation as one task on this Ray cluster, with a training worker's resources "
            "(default: RAY_ADDRESS when set, else in this process).",
        ),
    ] = None,
) -> None:
    """Baseline versus fine-tuned: render the configuration's held-out prompts (its evaluation section)
    with the base model and with the run's LoRA at the same seeds, measure prompt fidelity, temporal
    consistency and style closeness, and write the report, plots and figures to <run>/eval/."""
    from disney_train.eval.evaluate import run_evaluation

    cfg = guard(lambda: run_config(config, config_env, set_))
    print_evaluation(guard(lambda: run_evaluation(cfg, device, ray_address, say=err_console.print)))
