"""`disney-train dashboards` and `monitor` (a run with a local Prometheus)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from disney_train.cli.app import app
from disney_train.cli.common import (
    SetOpt,
    console,
    fail,
    guard,
)
from disney_train.cli.train import EmbeddedConfigOpt, WorkdirOpt, embedded_config, run_embedded
from disney_train.config import (
    embedded_default,
    load_config,
    parse_overrides,
)

RULES = Path("charts/disney-train/rules/disney-train.rules.yaml")


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
        fail(f"the dashboards are generated with grafana-foundation-sdk (the dev extra): {err}")
    if check:
        stale = stale_dashboards(folder)
        if stale:
            fail(f"{folder}: {', '.join(stale)} differ from the generator; run `disney-train dashboards`")
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
        base = guard(lambda: load_config(config or embedded_default(), parse_overrides(overrides))).name
        overrides.append(f"name={base[:40]}-{time.strftime('%Y%m%d-%H%M%S')}")
    cfg = embedded_config(workdir, config, overrides)
    if not cfg.metrics.port:
        fail("metrics.port is 0: the workers serve no metrics to monitor")
    rule_files = [rules] if rules is not None else [RULES] if RULES.is_file() else []
    targets = [f"127.0.0.1:{cfg.metrics.port + i}" for i in range(cfg.train.workers.bounds[1])]
    prom = LocalPrometheus(workdir / "prometheus", [ScrapeJob("disney-train-workers", targets)], port=port,
                           rule_files=rule_files)  # fmt: skip
    try:
        prom.start()
    except PrometheusError as err:
        fail(str(err))
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
        run_embedded(workdir, cfg)
        t1 = time.time()
        series = prom.query_range(loss, t0, t1, max(1.0, (t1 - t0) / 1000))
        if not series:
            fail(f"Prometheus at {prom.url} scraped no loss of run {cfg.name}: targets {prom.targets()}")
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
            fail(f"prometheus exited: {prom.log_tail()}")
    except KeyboardInterrupt:
        console.print("stopped")
    except PrometheusError as err:
        fail(str(err))
    finally:
        prom.stop()
