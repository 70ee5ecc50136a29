"""`disney-train train`, `cache` and `run` (the embedded default end to end)."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from disney_train.cli.app import app
from disney_train.cli.common import (
    ConfigEnvOpt,
    ConfigOpt,
    RayOpt,
    SetOpt,
    console,
    err_console,
    evaluate_once,
    guard,
    print_evaluation,
    progress_bar,
    quiet_libraries,
    run_config,
)
from disney_train.config import (
    RunConfig,
    absolute_uris,
    embedded_default,
    load_config,
    parse_overrides,
)


def _ray_storage() -> Path:
    from disney_train.storage import cache_root

    return cache_root() / "ray-runs"


def _train(cfg: RunConfig, ray_address: str | None, cache_only: bool = False, quiet: bool = False) -> dict[str, Any]:
    from disney_train.runs import RunFiles
    from disney_train.train.launch import launch

    files = RunFiles(cfg)
    if cfg.metrics.port and not cache_only:
        ports = f"{cfg.metrics.port}..{cfg.metrics.port + cfg.train.workers.bounds[1] - 1}"
        where = "127.0.0.1" if ray_address is None and not os.environ.get("RAY_ADDRESS") else "<node IP>"
        console.print(
            f"metrics     http://{where}:{cfg.metrics.port}/metrics (rank 0; the worker of local rank i "
            f"serves port {cfg.metrics.port}+i: {ports})",
            highlight=False,
            soft_wrap=True,
        )
    with progress_bar() as progress:
        task = progress.add_task("cache stage" if cache_only else f"training {cfg.name}", total=None)

        def on_progress(p: dict[str, Any]) -> None:
            loss = p.get("loss")
            text = f"training {cfg.name}: epoch {p.get('epoch')}" + (f", loss {loss:.4f}" if loss is not None else "")
            progress.update(task, completed=p.get("step", 0), total=p.get("horizon"), description=text)

        return launch(
            cfg,
            storage_path=_ray_storage(),
            cache_only=cache_only,
            address=ray_address,
            on_progress=None if cache_only else on_progress,
            files=files,
            worker_lines=not quiet,
        )


@app.command("train")
def train(
    config: ConfigOpt = None,
    config_env: ConfigEnvOpt = None,
    set_: SetOpt = None,
    ray_address: RayOpt = None,
    evaluate: Annotated[
        bool,
        typer.Option(
            "--evaluate",
            help="Then run the configuration's evaluation (`disney-train eval`), also when the run had finished "
            "already; its inputs (CLIP, images) are checked before training. What the operator's RayJobs run.",
        ),
    ] = False,
) -> None:
    """Train (or resume) the run of a configuration on a Ray worker group: what cluster workers run."""
    from disney_train.train.launch import RunFinishedError

    cfg = guard(lambda: run_config(config, config_env, set_))
    if evaluate:
        from disney_train.eval.evaluate import check_inputs
        from disney_train.eval.preload import preload

        guard(lambda: check_inputs(cfg))  # a wrong CLIP or image found now, not after hours of training
        preload()  # while the workers train: the evaluation's imports
    try:
        guard(lambda: _train(cfg, ray_address))
        _print_outputs(cfg)
    except RunFinishedError as err:
        console.print(f"[bold yellow]{err}[/]", highlight=False)
    if evaluate:
        from disney_train.eval.evaluate import run_evaluation

        print_evaluation(guard(lambda: run_evaluation(cfg, "auto", ray_address, say=err_console.print)))


@app.command("cache")
def cache(
    config: ConfigOpt = None,
    config_env: ConfigEnvOpt = None,
    set_: SetOpt = None,
    ray_address: RayOpt = None,
) -> None:
    """Compute the latent cache of a run's dataset (VAE latents, T5 embeddings) on the worker group."""
    cfg = guard(lambda: run_config(config, config_env, set_))
    guard(lambda: _train(cfg, ray_address, cache_only=True))
    console.print(f"latent cache ready beside {cfg.train.cache_uri or cfg.data.uri + '/cache'}")


def _print_outputs(cfg: RunConfig) -> None:
    from disney_train.runs import FINAL_LORA, RunFiles

    def out(text: str) -> None:  # paths are never broken across lines
        console.print(text, soft_wrap=True, highlight=False)

    files = RunFiles(cfg)
    progress = files.read_progress() or {}
    videos = [k for k in files.store.list_keys("validation/") if k.endswith(".mp4")]
    console.rule("[bold]outputs")
    out(f"run         {files.uri}")
    loss = progress.get("loss")
    out(f"steps       {progress.get('step')} (epoch {progress.get('epoch')}), last loss {loss:.4f}" if loss else "")
    out(f"checkpoint  {progress.get('last_checkpoint')}")
    out(f"LoRA        {files.store.url(FINAL_LORA)}")
    for key in videos[-3:]:
        out(f"video       {files.store.url(key)}")
    from disney_train.train.launch import local_logs

    if (logs := local_logs()) is not None:
        out(f"worker logs {logs} (the workers' own lines; --verbose shows them as they come)")


WorkdirOpt = Annotated[Path, typer.Option(help="Where the embedded default writes its data and outputs.")]


EmbeddedConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="Run configuration; default: embedded.")]


def run_embedded(workdir: Path, cfg: RunConfig) -> None:
    """The embedded default end to end (`run`, and `monitor` around it): sample -> pack -> tiny model ->
    cache -> train -> LoRA -> evaluation, the stages shown one by one."""
    from disney_train import pipeline
    from disney_train.data.summary import print_summary
    from disney_train.train.launch import RunFinishedError

    quiet = not logging.getLogger().isEnabledFor(logging.INFO)  # the root callback's --verbose
    if quiet:
        quiet_libraries()
    t0 = time.perf_counter()
    console.rule("[bold]1. sample dataset")
    src, written = pipeline.write_sample_dataset(workdir)
    console.print(f"{src}: 4 clips cut from Big Buck Bunny (CC-BY){'' if written else ', already there'}")
    console.rule("[bold]2. pack")
    with progress_bar() as progress:
        report = guard(lambda: pipeline.pack_sample(src, cfg, progress))
    console.print(f"{report.dest}: {len(report.uploaded)} shard(s) written, {len(report.skipped)} already there")
    print_summary(report.manifest, report.dest, console)
    console.rule("[bold]3. tiny model")
    pipeline.tiny_model_if_missing(cfg)
    console.print(f"{cfg.model.uri}: {FAMILY_NAMES[cfg.model.family]} ({cfg.model.variant}) with tiny random weights")
    if pipeline.tiny_clip_if_missing(cfg):
        console.print(
            f"{cfg.evaluation.clip_uri if cfg.evaluation else ''}: CLIP with tiny random weights (the evaluation's)"
        )
    console.rule("[bold]4. latent cache and training")
    if cfg.evaluation is not None:
        from disney_train.eval.preload import preload

        preload()  # while the workers train: the evaluation's imports
    try:
        guard(lambda: _train(cfg, None, quiet=quiet))
    except RunFinishedError as err:
        console.print(f"[bold yellow]{err}[/]", highlight=False)
    _print_outputs(cfg)
    if cfg.evaluation is not None:
        evaluate_once(cfg)
    console.print(f"dataset     {src} -> {report.dest}", soft_wrap=True, highlight=False)
    console.print(f"took        {time.perf_counter() - t0:.0f} s")


FAMILY_NAMES = {"cogvideox": "CogVideoX", "wan": "Wan 2.1"}
# `run --family wan`: the embedded default on a tiny Wan, in its own model folder and run (a run's
# checkpoints resume only the same model)
FAMILY_OVERRIDES = {"cogvideox": [], "wan": ["model.family=wan", "model.uri=model/tiny-wan", "name=local-demo-wan"]}
FamilyOpt = Annotated[
    str, typer.Option("--family", help="The tiny model's family: cogvideox or wan (Wan 2.1).", show_default=True)
]


def embedded_config(workdir: Path, config: Path | None, overrides: list[str] | None) -> RunConfig:
    """The run's configuration (the embedded default unless `config`), its local URIs under `workdir`."""
    workdir.mkdir(parents=True, exist_ok=True)
    return guard(lambda: absolute_uris(load_config(config or embedded_default(), parse_overrides(overrides)), workdir))


@app.command("run")
def run(
    workdir: WorkdirOpt = Path(".run"),
    config: EmbeddedConfigOpt = None,
    set_: SetOpt = None,
    family: FamilyOpt = "cogvideox",
) -> None:
    """The main job on the embedded default: sample -> pack -> tiny model -> cache -> train -> LoRA -> evaluation."""
    if family not in FAMILY_OVERRIDES:
        raise typer.BadParameter(f"{family!r}: one of {', '.join(FAMILY_OVERRIDES)}", param_hint="--family")
    run_embedded(workdir, embedded_config(workdir, config, [*FAMILY_OVERRIDES[family], *(set_ or [])]))
