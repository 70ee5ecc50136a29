"""What every command shares: the consoles, the one place a user's error is printed, the options."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn, TypeVar

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from disney_train.config import (
    ConfigError,
    RunConfig,
    S3Options,
    absolute_uris,
    config_from_yaml,
    load_config,
    parse_overrides,
)
from disney_train.errors import UserError

if TYPE_CHECKING:
    from disney_train.eval.results import EvalResults

    pass


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


def guard(fn: Callable[[], T]) -> T:
    """Run a command body; an error the user can act on (`UserError`) becomes one red line and exit status 1.
    Anything else is a bug and keeps its traceback."""
    try:
        return fn()
    except UserError as err:
        fail(str(err))


def fail(message: str) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, markup=True)  # a message is text
    raise typer.Exit(1)


EndpointOpt = Annotated[
    str | None,
    typer.Option("--endpoint-url", envvar="AWS_ENDPOINT_URL", help="S3 endpoint (keys come from AWS_* variables)."),
]


def s3_options(endpoint: str | None) -> S3Options:
    return S3Options(endpoint_url=endpoint)


SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a field: --set optim.epochs=3 (YAML value); repeatable."),
]


RayOpt = Annotated[
    str | None,
    typer.Option("--ray-address", envvar="RAY_ADDRESS", help="Ray cluster to join; default: start one on 127.0.0.1."),
]


ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="Run configuration (YAML).")]


ConfigEnvOpt = Annotated[
    str | None,
    typer.Option("--config-env", help="Read the run configuration (YAML) from this environment variable instead."),
]


def run_config(config: Path | None, config_env: str | None, set_: list[str] | None) -> RunConfig:
    """--config FILE (the operator's RayJobs: the run's ConfigMap, mounted on the head) or --config-env VAR,
    with --set on top."""
    if (config is None) == (config_env is None):
        raise ConfigError("give the run configuration as --config FILE or --config-env VARIABLE (one of them)")
    if config_env is not None:
        text = os.environ.get(config_env)
        if text is None:
            raise ConfigError(f"--config-env {config_env}: the environment variable is not set")
        cfg = config_from_yaml(text, f"${config_env}", parse_overrides(set_))
    else:
        assert config is not None
        cfg = load_config(config, parse_overrides(set_))
    return absolute_uris(cfg, Path.cwd())


def evaluate_once(cfg: RunConfig) -> None:
    """`run`'s last step: the evaluation, unless the run has one already (`disney-train eval` redoes it)."""
    from disney_train.eval.evaluate import run_evaluation
    from disney_train.runs import SUMMARY_JSON, RunFiles

    console.rule("[bold]5. evaluation: baseline versus fine-tuned")
    files = RunFiles(cfg)
    if files.store.exists(SUMMARY_JSON):
        console.print(f"{files.store.url(SUMMARY_JSON)}: evaluated already (`disney-train eval` evaluates again)")
        return
    print_evaluation(guard(lambda: run_evaluation(cfg, "auto", None, say=err_console.print)))


def figures_table(results: EvalResults) -> Table:
    """The evaluation's figures, one row per metric, in 80 columns: baseline, fine-tuned, and which way is
    better (↑ higher, ↓ lower)."""
    from disney_train.eval.results import LABELS, METRICS, MODELS

    table = Table(title=None, box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("metric", overflow="fold", max_width=46)
    for m in MODELS:
        table.add_column(LABELS[m], justify="right", no_wrap=True)
    table.add_column("", no_wrap=True)
    for metric in METRICS:
        figures = [f"{results.figure(m, metric.key):.4f}" for m in MODELS]
        table.add_row(metric.label, *figures, "↑" if metric.higher_is_better else "↓")
    return table


def print_evaluation(results: EvalResults) -> None:
    from disney_train.eval.results import EVAL_JSON, REPORT_HTML, REPORT_MD

    console.rule("[bold]figures (↑ higher is better, ↓ lower)")
    console.print(figures_table(results))
    if results.truncated_prompts():
        console.print(
            f"prompts {', '.join(map(str, results.truncated_prompts()))}: longer than CLIP's "
            f"{results.clip_max_tokens} tokens; only their start was scored",
            highlight=False,
        )
    for key in (REPORT_HTML, REPORT_MD, EVAL_JSON):
        console.print(f"report      {results.run}/{key}", soft_wrap=True, highlight=False)


def quiet_libraries() -> None:
    """`make run` shows the user's story: the stages, one progress bar, the outputs, the figures. The
    libraries' own progress bars, notices and FutureWarnings (here and in the Ray workers this process
    starts, which inherit its environment) are left out; `--verbose` keeps them."""
    import warnings

    for key, value in {
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "DIFFUSERS_VERBOSITY": "error",
        "TQDM_DISABLE": "1",
        "PYTHONWARNINGS": "ignore::FutureWarning,ignore::UserWarning",
    }.items():
        os.environ.setdefault(key, value)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    import torch

    if not torch.cuda.is_available():  # DeepSpeed's CPU, named: its guess warns "unable to detect" a GPU
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    # Ray's notice that the local cluster's token authentication is on (it stays on)
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
