"""The `disney-train` command line."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from disney_train import __version__
from disney_train.config import (
    ConfigError,
    RunConfig,
    S3Options,
    config_from_yaml,
    dump_config,
    embedded_default,
    load_config,
)
from disney_train.errors import UserError

if TYPE_CHECKING:
    from disney_train.eval.results import EvalResults

app = typer.Typer(help="Fine-tune CogVideoX with LoRA into a Disney-style animation model.", no_args_is_help=True)
data_app = typer.Typer(help="Sample, pack, inspect and read video datasets.", no_args_is_help=True)
config_app = typer.Typer(help="Run configurations.", no_args_is_help=True)
model_app = typer.Typer(help="CogVideoX models: tiny test models, S3 upload and sync.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(model_app, name="model")
app.add_typer(config_app, name="config")

console = Console()
err_console = Console(stderr=True, soft_wrap=True)
T = TypeVar("T")

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "m": 1000**2,
    "g": 1000**3,
    "t": 1000**4,
    "ki": 1024,
    "mi": 1024**2,
    "gi": 1024**3,
    "ti": 1024**4,
}


def parse_size(text: str) -> int:
    """'256MB' -> 256_000_000, '64MiB' -> 67_108_864, '1000' -> 1000."""
    m = _SIZE.match(text)
    unit = (m.group(2) or "").lower().removesuffix("b") if m else ""
    if not m or unit not in _UNITS:
        raise typer.BadParameter(f"{text!r} is not a size (e.g. 256MB, 64MiB, 1000000)")
    value = int(float(m.group(1)) * _UNITS[unit])
    if value <= 0:
        raise typer.BadParameter(f"{text!r}: a size must be positive")
    return value


def progress_bar() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
    )


def _guard(fn: Callable[[], T]) -> T:
    """Run a command body; an error the user can act on (`UserError`) becomes one red line and exit status 1.
    Anything else is a bug and keeps its traceback."""
    try:
        return fn()
    except UserError as err:
        _fail(str(err))


def _fail(message: str) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, markup=True)  # a message is text
    raise typer.Exit(1)


EndpointOpt = Annotated[
    str | None,
    typer.Option("--endpoint-url", envvar="AWS_ENDPOINT_URL", help="S3 endpoint (keys come from AWS_* variables)."),
]


def _s3(endpoint: str | None) -> S3Options:
    return S3Options(endpoint_url=endpoint)


def _print_version(value: bool) -> None:
    if value:
        console.print(__version__)
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit.", callback=_print_version, is_eager=True)
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log more (retries are logged anyway).")] = False,
) -> None:
    # Warnings (an S3 retry, say) go to stderr beside the progress bars; never keys or secrets.
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False)],
        force=True,
    )


# --------------------------------------------------------------------------- data


@data_app.command("sample")
def data_sample(
    out: Annotated[Path, typer.Argument(help="Folder to write the dataset to.")],
    copies: Annotated[int, typer.Option(min=1, help="Repeat the clips under new names (benchmarks).")] = 1,
) -> None:
    """Write a small real dataset in the Disney layout, cut from Big Buck Bunny (CC-BY)."""
    from disney_train.data.sample import write_sample

    written = _guard(lambda: write_sample(out, copies=copies))
    console.print(f"wrote {len(written)} clip(s), prompt.txt and videos.txt to {out}")


@data_app.command("pack")
def data_pack(
    src: Annotated[Path, typer.Argument(help="Dataset folder: prompt.txt (or prompts.txt), videos.txt, videos/.")],
    dest: Annotated[str, typer.Argument(help="s3://bucket/prefix or a local folder.")],
    shard_size: Annotated[str, typer.Option(help="Target shard size (e.g. 256MB, 64MiB).")] = "256MiB",
    min_frames: Annotated[int, typer.Option(min=1, help="Reject clips with fewer frames than this.")] = 49,
    workers: Annotated[int, typer.Option(min=1, help="Processes checking clips.")] = 2,
    strict: Annotated[bool, typer.Option(help="Any rejected input is an error; nothing is written.")] = False,
    endpoint_url: EndpointOpt = None,
) -> None:
    """Check every clip, then write WebDataset tar shards and a manifest (last) to DEST."""
    from disney_train.data.pack import PackOptions, pack
    from disney_train.data.summary import rejects_table

    options = PackOptions(shard_bytes=parse_size(shard_size), min_frames=min_frames, workers=workers, strict=strict)
    with progress_bar() as progress:
        report = _guard(lambda: pack(src, dest, options, _s3(endpoint_url), progress))
    m = report.manifest
    if m.rejects:
        console.print(rejects_table(m.rejects))
    console.print(
        f"packed {m.totals.clips} clip(s) ({m.totals.frames} frames, {m.totals.seconds:.1f} s) into "
        f"{m.totals.shards} shard(s) at {report.dest}: {len(report.uploaded)} written, "
        f"{len(report.skipped)} already there; {m.totals.rejects} rejected"
    )
    if report.stale:
        console.print(
            f"{len(report.stale)} shard(s) of earlier packs are no longer referenced by the manifest "
            f"(kept, in case a running job still reads them): {', '.join(report.stale[:5])}"
            f"{' …' if len(report.stale) > 5 else ''}"
        )


@data_app.command("inspect")
def data_inspect(
    dest: Annotated[str, typer.Argument(help="Packed dataset: s3://bucket/prefix or a local folder.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    endpoint_url: EndpointOpt = None,
) -> None:
    """Summarise a packed dataset: clips, frames, duration and resolution spread, rejects."""
    from disney_train.data.pack import load_manifest
    from disney_train.data.summary import print_summary, summarize

    m = _guard(lambda: load_manifest(dest, _s3(endpoint_url)))
    if as_json:
        print(json.dumps(summarize(m), indent=1))
    else:
        print_summary(m, dest, console)


@data_app.command("read")
def data_read(
    config: Annotated[Path, typer.Option("--config", "-c", help="Run configuration (YAML).")],
    epochs: Annotated[int, typer.Option(min=1, help="Epochs to read.")] = 1,
    rank: Annotated[int, typer.Option(min=0)] = 0,
    world_size: Annotated[int, typer.Option(min=1)] = 1,
) -> None:
    """Read the training input of a run configuration (decode, sample, crop) and report what came."""
    cfg = _guard(lambda: load_config(config))
    _guard(lambda: _read_epochs(cfg, epochs, rank, world_size))


def _read_epochs(cfg: RunConfig, epochs: int, rank: int, world_size: int) -> dict[str, Any]:
    from disney_train.data.reader import TrainingClips
    from disney_train.model.spec import SPECS

    with_image = SPECS[cfg.model.variant].wants_image
    clips = TrainingClips(cfg.data, seed=cfg.seed, rank=rank, world_size=world_size, with_image=with_image, s3=cfg.s3)
    seen = 0
    shape: tuple[int, ...] = ()
    lo, hi = 1.0, -1.0
    t0 = time.perf_counter()
    with progress_bar() as progress:
        for epoch in range(epochs):
            task = progress.add_task(f"epoch {epoch}: decoding clips", total=len(clips))
            for sample in clips:
                seen += 1
                shape = tuple(sample["video"].shape)
                lo, hi = min(lo, float(sample["video"].min())), max(hi, float(sample["video"].max()))
                progress.advance(task)
    dt = time.perf_counter() - t0
    console.print(
        f"read {seen} clip(s) over {epochs} epoch(s) on rank {rank}/{world_size}: each {list(shape)} "
        f"(frames, channels, height, width), values in [{lo:.2f}, {hi:.2f}], {seen / dt:.1f} clips/s"
    )
    return {"clips": seen, "shape": shape, "seconds": dt}


# --------------------------------------------------------------------------- model


@model_app.command("tiny")
def model_tiny(
    out: Annotated[Path, typer.Argument(help="Folder to write the model to (diffusers layout).")],
    i2v: Annotated[bool, typer.Option("--i2v", help="An image-to-video model.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the random weights.")] = 0,
    generation: Annotated[str, typer.Option(help="CogVideoX 1.0 (as the 2b) or 1.5 (as CogVideoX1.5-5B).")] = "1.0",
) -> None:
    """Write a tiny CogVideoX with random weights, loadable like the real ones (tests, `make run`)."""
    from disney_train.model.tiny import write_tiny_model

    if generation not in ("1.0", "1.5"):
        raise typer.BadParameter(f"{generation!r}: 1.0 or 1.5", param_hint="--generation")
    write_tiny_model(out, "i2v" if i2v else "t2v", seed, "1.5" if generation == "1.5" else "1.0")
    console.print(f"wrote a tiny CogVideoX {generation} {'image' if i2v else 'text'}-to-video model to {out}")


@model_app.command("tiny-clip")
def model_tiny_clip(
    out: Annotated[Path, typer.Argument(help="Folder to write the model to (transformers layout).")],
    seed: Annotated[int, typer.Option(help="Seed of the random weights.")] = 0,
) -> None:
    """Write a tiny CLIP with random weights, loadable like the real ones (evaluation of smoke runs, `make run`)."""
    from disney_train.model.tiny_clip import write_tiny_clip

    write_tiny_clip(out, seed)
    console.print(f"wrote a tiny CLIP to {out}")


@model_app.command("push")
def model_push(
    src: Annotated[Path, typer.Argument(help="Model folder: CogVideoX (diffusers layout) or CLIP (transformers).")],
    dest: Annotated[str, typer.Argument(help="s3://bucket/prefix (or a folder).")],
    endpoint_url: EndpointOpt = None,
) -> None:
    """Upload a model folder, each file with its sha256, skipping files already there."""
    from disney_train.eval.metrics import check_clip_layout
    from disney_train.model.source import check_layout, push_model

    clip = (src / "config.json").is_file() and not (src / "model_index.json").is_file()
    written = _guard(lambda: push_model(src, dest, _s3(endpoint_url), check_clip_layout if clip else check_layout))
    console.print(f"{dest}: {len(written)} file(s) uploaded")


@model_app.command("fetch")
def model_fetch(
    uri: Annotated[str, typer.Argument(help="s3://bucket/prefix of a model (or a local folder to check).")],
    cache_dir: Annotated[Path | None, typer.Option(help="Cache folder (default ~/.cache/disney-train/models).")] = None,
    endpoint_url: EndpointOpt = None,
) -> None:
    """Sync a model to the local cache with integrity checks and print its folder."""
    from disney_train.model.source import resolve_model

    print(_guard(lambda: resolve_model(uri, _s3(endpoint_url), cache_dir)))


# --------------------------------------------------------------------------- config


@config_app.command("show")
def config_show(
    config: Annotated[Path | None, typer.Argument(help="Run configuration; default: the embedded one.")] = None,
) -> None:
    """Validate a run configuration and print it with every default filled in."""
    cfg = _guard(lambda: load_config(config or embedded_default()))
    sys.stdout.write(dump_config(cfg))


# --------------------------------------------------------------------------- train


SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a field: --set optim.epochs=3 (YAML value); repeatable."),
]
RayOpt = Annotated[
    str | None,
    typer.Option("--ray-address", envvar="RAY_ADDRESS", help="Ray cluster to join; default: start one on 127.0.0.1."),
]


def _overrides(items: list[str] | None) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected FIELD=VALUE, e.g. --set optim.epochs=3")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or "syntax error"
            raise ConfigError(
                f"--set {item!r}: the value is not YAML ({problem}); quote text: --set 'x=\"[\"'"
            ) from None
    return out


def _absolute(cfg: RunConfig, base: Path) -> RunConfig:
    """Local URIs become absolute (relative to `base`): Ray workers do not share our working folder."""
    for section in (cfg.model, cfg.data, cfg.output):
        section.uri = _absolute_uri(section.uri, base)
    if cfg.train.cache_uri:
        cfg.train.cache_uri = _absolute_uri(cfg.train.cache_uri, base)
    cfg.validation.images = [_absolute_uri(u, base) for u in cfg.validation.images]
    if cfg.evaluation is not None:
        cfg.evaluation.clip_uri = _absolute_uri(cfg.evaluation.clip_uri, base)
        cfg.evaluation.images = [_absolute_uri(u, base) for u in cfg.evaluation.images]
    return cfg


def _absolute_uri(uri: str, base: Path) -> str:
    return uri if uri.startswith("s3://") else str((base / uri).resolve())


def _ray_storage() -> Path:
    from disney_train.storage import cache_root

    return cache_root() / "ray-runs"


def _train(cfg: RunConfig, ray_address: str | None, cache_only: bool = False) -> dict[str, Any]:
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
        )


ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="Run configuration (YAML).")]
ConfigEnvOpt = Annotated[
    str | None,
    typer.Option("--config-env", help="Read the run configuration (YAML) from this environment variable instead."),
]


def _run_config(config: Path | None, config_env: str | None, set_: list[str] | None) -> RunConfig:
    """--config FILE (the operator's RayJobs: the run's ConfigMap, mounted on the head) or --config-env VAR,
    with --set on top."""
    if (config is None) == (config_env is None):
        raise ConfigError("give the run configuration as --config FILE or --config-env VARIABLE (one of them)")
    if config_env is not None:
        text = os.environ.get(config_env)
        if text is None:
            raise ConfigError(f"--config-env {config_env}: the environment variable is not set")
        cfg = config_from_yaml(text, f"${config_env}", _overrides(set_))
    else:
        assert config is not None
        cfg = load_config(config, _overrides(set_))
    return _absolute(cfg, Path.cwd())


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

    cfg = _guard(lambda: _run_config(config, config_env, set_))
    if evaluate:
        from disney_train.eval.evaluate import check_inputs

        _guard(lambda: check_inputs(cfg))  # a wrong CLIP or image found now, not after hours of training
    try:
        _guard(lambda: _train(cfg, ray_address))
        _print_outputs(cfg)
    except RunFinishedError as err:
        console.print(f"[bold yellow]{err}[/]", highlight=False)
    if evaluate:
        from disney_train.eval.evaluate import run_evaluation

        _print_evaluation(_guard(lambda: run_evaluation(cfg, "auto", ray_address, say=err_console.print)))


@app.command("cache")
def cache(
    config: ConfigOpt = None,
    config_env: ConfigEnvOpt = None,
    set_: SetOpt = None,
    ray_address: RayOpt = None,
) -> None:
    """Compute the latent cache of a run's dataset (VAE latents, T5 embeddings) on the worker group."""
    cfg = _guard(lambda: _run_config(config, config_env, set_))
    _guard(lambda: _train(cfg, ray_address, cache_only=True))
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


# --------------------------------------------------------------------------- run

WorkdirOpt = Annotated[Path, typer.Option(help="Where the embedded default writes its data and outputs.")]
EmbeddedConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="Run configuration; default: embedded.")]


@app.command("run")
def run(
    workdir: WorkdirOpt = Path(".run"),
    config: EmbeddedConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """The main job on the embedded default: sample -> pack -> tiny model -> cache -> train -> LoRA -> evaluation."""
    from disney_train.data.pack import PackOptions, pack
    from disney_train.data.sample import write_sample
    from disney_train.data.summary import print_summary
    from disney_train.model.tiny import write_tiny_model

    workdir.mkdir(parents=True, exist_ok=True)
    cfg_path = config or embedded_default()
    cfg = _guard(lambda: _absolute(load_config(cfg_path, _overrides(set_)), workdir))
    t0 = time.perf_counter()
    src = workdir / "sample"
    console.rule("[bold]1. sample dataset")
    write_sample(src)
    console.print(f"{src}: 4 clips cut from Big Buck Bunny (CC-BY)")
    console.rule("[bold]2. pack")
    with progress_bar() as progress:
        report = _guard(
            lambda: pack(
                src,
                cfg.data.uri,
                PackOptions(min_frames=cfg.data.num_frames, shard_bytes=512 * 1024),
                cfg.s3,
                progress,
            )
        )
    console.print(f"{report.dest}: {len(report.uploaded)} shard(s) written, {len(report.skipped)} already there")
    print_summary(report.manifest, report.dest, console)
    console.rule("[bold]3. tiny model")
    model = Path(cfg.model.uri)
    if not cfg.model.uri.startswith("s3://") and not (model / "model_index.json").is_file():
        write_tiny_model(model, cfg.model.variant)
    console.print(f"{cfg.model.uri}: CogVideoX ({cfg.model.variant}) with tiny random weights")
    clip = cfg.evaluation.clip_uri if cfg.evaluation else None
    if clip is not None and not clip.startswith("s3://") and not (Path(clip) / "config.json").is_file():
        from disney_train.model.tiny_clip import write_tiny_clip

        write_tiny_clip(Path(clip))
        console.print(f"{clip}: CLIP with tiny random weights (the evaluation's)")
    console.rule("[bold]4. latent cache and training")
    from disney_train.train.launch import RunFinishedError

    try:
        _guard(lambda: _train(cfg, None))
    except RunFinishedError as err:
        console.print(f"[bold yellow]{err}[/]", highlight=False)
    _print_outputs(cfg)
    if cfg.evaluation is not None:
        _evaluate_once(cfg)
    console.print(f"dataset     {src} -> {report.dest}", soft_wrap=True, highlight=False)
    console.print(f"took        {time.perf_counter() - t0:.0f} s")


RULES = Path("charts/disney-train/rules/disney-train.rules.yaml")


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
    frames: Annotated[int, typer.Option(help="Frames (8N+1).")] = 49,
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
        return generate(req, _s3(endpoint_url))

    console.print(f"generating with {model}")
    written = _guard(body)
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

    cfg = _guard(lambda: _run_config(config, config_env, set_))
    _print_evaluation(_guard(lambda: run_evaluation(cfg, device, ray_address, say=err_console.print)))


def _evaluate_once(cfg: RunConfig) -> None:
    """`run`'s last step: the evaluation, unless the run has one already (`disney-train eval` redoes it)."""
    from disney_train.eval.evaluate import run_evaluation
    from disney_train.runs import SUMMARY_JSON, RunFiles

    console.rule("[bold]5. evaluation: baseline versus fine-tuned")
    files = RunFiles(cfg)
    if files.store.exists(SUMMARY_JSON):
        console.print(f"{files.store.url(SUMMARY_JSON)}: evaluated already (`disney-train eval` evaluates again)")
        return
    _print_evaluation(_guard(lambda: run_evaluation(cfg, "auto", None, say=err_console.print)))


def _print_evaluation(results: EvalResults) -> None:
    from disney_train.eval.results import EVAL_JSON, LABELS, METRICS, MODELS, REPORT_HTML, REPORT_MD

    console.rule("[bold]figures")
    for metric in METRICS:
        figures = "  ".join(f"{LABELS[m]} {results.figure(m, metric.key):.4f}" for m in MODELS)
        arrow = "higher is better" if metric.higher_is_better else "lower is better"
        console.print(f"{metric.label:<54} {figures}  ({arrow})", highlight=False)
    if results.truncated_prompts():
        console.print(
            f"prompts {', '.join(map(str, results.truncated_prompts()))}: longer than CLIP's "
            f"{results.clip_max_tokens} tokens; only their start was scored",
            highlight=False,
        )
    for key in (REPORT_HTML, REPORT_MD, EVAL_JSON):
        console.print(f"report      {results.run}/{key}", soft_wrap=True, highlight=False)


@app.command("dashboards")
def dashboards(
    folder: Annotated[Path, typer.Option("--out", help="Where the dashboards' JSON goes.")] = Path(
        "charts/disney-train/dashboards"
    ),
    check: Annotated[bool, typer.Option("--check", help="Write nothing; exit 1 when a file differs.")] = False,
) -> None:
    """Generate the Grafana dashboards (grafana-foundation-sdk) into the chart's folder."""
    try:
        from disney_train.metrics.dashboards import stale_dashboards, write_dashboards
    except ImportError as err:
        _fail(f"the dashboards are generated with grafana-foundation-sdk (the dev extra): {err}")
    if check:
        stale = stale_dashboards(folder)
        if stale:
            _fail(f"{folder}: {', '.join(stale)} differ from the generator; run `disney-train dashboards`")
        console.print(f"{folder}: up to date")
        return
    for path in write_dashboards(folder):
        console.print(f"wrote {path}")


@app.command("monitor")
def monitor(
    workdir: WorkdirOpt = Path(".run"),
    config: EmbeddedConfigOpt = None,
    set_: SetOpt = None,
    port: Annotated[int, typer.Option(help="Port of the local Prometheus (on 127.0.0.1).")] = 9090,
    rules: Annotated[
        Path | None, typer.Option(help=f"Alert rules Prometheus evaluates (default: {RULES} when it exists).")
    ] = None,
    keep: Annotated[bool, typer.Option("--keep/--exit", help="Keep Prometheus serving after the run.")] = True,
) -> None:
    """`run` with a local Prometheus scraping its workers: prints where to see the loss, and keeps
    serving after the run (Ctrl-C stops it). Each call trains a new run (its name gets a time suffix)."""
    from disney_train.metrics.prometheus import LocalPrometheus, PrometheusError, ScrapeJob

    overrides = list(set_ or [])
    if not any(o.split("=", 1)[0].strip() == "name" for o in overrides):
        base = _guard(lambda: load_config(config or embedded_default(), _overrides(overrides))).name
        overrides.append(f"name={base[:40]}-{time.strftime('%Y%m%d-%H%M%S')}")
    cfg = _guard(lambda: _absolute(load_config(config or embedded_default(), _overrides(overrides)), workdir))
    if not cfg.metrics.port:
        _fail("metrics.port is 0: the workers serve no metrics to monitor")
    rule_files = [rules] if rules is not None else [RULES] if RULES.is_file() else []
    targets = [f"127.0.0.1:{cfg.metrics.port + i}" for i in range(cfg.train.workers.bounds[1])]
    prom = LocalPrometheus(workdir / "prometheus", [ScrapeJob("disney-train-workers", targets)], port=port,
                           rule_files=rule_files)  # fmt: skip
    try:
        prom.start()
    except PrometheusError as err:
        _fail(str(err))
    try:
        loss = f'disney_train_loss{{run="{cfg.name}"}}'
        console.rule("[bold]Prometheus")
        console.print(f"prometheus  {prom.url} scrapes {', '.join(targets)} every second", highlight=False)
        console.print(f"rules       {', '.join(map(str, rule_files)) or '(none)'}", highlight=False)
        console.print(f"loss        {prom.graph_url(loss)}", highlight=False, soft_wrap=True)
        console.print(
            f"query       curl -s '{prom.url}/api/v1/query' --data-urlencode 'query={loss}'",
            highlight=False,
            soft_wrap=True,
        )
        t0 = time.time()
        run(workdir=workdir, config=config, set_=overrides)
        t1 = time.time()
        series = prom.query_range(loss, t0, t1, max(1.0, (t1 - t0) / 1000))
        if not series:
            _fail(f"Prometheus at {prom.url} scraped no loss of run {cfg.name}: targets {prom.targets()}")
        console.rule("[bold]loss, as Prometheus scraped it")
        for s in sorted(series, key=lambda s: s["metric"].get("rank", "")):
            values = [float(v) for _, v in s["values"]]
            console.print(
                f"rank {s['metric'].get('rank')}: {len(values)} samples, first {values[0]:.4f}, last {values[-1]:.4f}",
                highlight=False,
            )
        if keep:
            console.print(f"Prometheus keeps serving at {prom.url}; Ctrl-C stops it.", highlight=False)
            while prom.proc is not None and prom.proc.poll() is None:
                time.sleep(1)
            _fail(f"prometheus exited: {prom.log_tail()}")
    except KeyboardInterrupt:
        console.print("stopped")
    except PrometheusError as err:
        _fail(str(err))
    finally:
        prom.stop()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
