"""A real Prometheus (Debian's) scraping a real two-worker embedded run: `disney-train monitor`,
the command behind `make monitor`, started as users start it. The dashboards' queries and the
alert rules are then run by that Prometheus against what it scraped."""

from __future__ import annotations

import itertools
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from disney_train.metrics.prometheus import LocalPrometheus, PrometheusError
from tests.support.promql import GPU_ONLY, RULES, concrete, dashboard_exprs, rule_exprs
from tests.support.seaweed import consecutive_free_ports, free_ports

pytestmark = pytest.mark.ray

RUN = "prom-run"
STEPS = 240  # 2 workers, 2 clips each, batch 1: 2 steps an epoch
KILL_AFTER = 101  # rank 1 SIGKILLed right after this step: Ray restarts the group from step 100
READY = "Prometheus keeps serving at"


@dataclass
class Monitored:
    prom: LocalPrometheus
    output: str
    start: float
    end: float
    at: float  # a moment during training: every rate window ending here lies inside the run


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Monitored]:
    work = tmp_path_factory.mktemp("monitor")
    prom_port, worker_port = free_ports(1)[0], consecutive_free_ports(2)
    args = [
        str(Path(sys.executable).parent / "disney-train"),
        "monitor",
        "--workdir",
        str(work),
        "--port",
        str(prom_port),
        "--rules",
        str(RULES),
        "--set",
        f"name={RUN}",
        "--set",
        f"metrics.port={worker_port}",
        "--set",
        f"optim.epochs={STEPS // 2}",
        "--set",
        "validation.every=0",
        "--set",
        "train.checkpoint_every=50",
    ]
    log = work / "monitor.log"
    start = time.time()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            args,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "COLUMNS": "200", "DISNEY_TRAIN_CHAOS": f"kill:{KILL_AFTER}:1:{work / 'killed-once'}"},
        )
    try:
        deadline = time.monotonic() + 420
        while READY not in log.read_text(errors="replace"):
            if proc.poll() is not None:
                pytest.fail(f"disney-train monitor exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"disney-train monitor did not finish its run:\n{log.read_text()[-4000:]}")
            time.sleep(0.5)
        end = time.time()
        prom = LocalPrometheus(work / "prometheus", [], port=prom_port)
        # the last moment rank 0 was training: every window ending there lies in the run
        training = prom.query_range(f'disney_train_stage{{run="{RUN}",rank="0",stage="training"}} == 1', start, end, 1)
        assert training, f"Prometheus never saw rank 0 training:\n{log.read_text()[-3000:]}"
        at = float(training[0]["values"][-1][0])
        yield Monitored(prom, log.read_text(errors="replace"), start, end, at)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C, as a user stops it
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert proc.returncode == 0, log.read_text()[-3000:]


def test_monitor_prints_where_the_loss_is(monitored: Monitored) -> None:
    out = monitored.output
    assert f"{monitored.prom.url}/graph?g0.expr=disney_train_loss" in out
    assert f"{monitored.prom.url}/api/v1/query" in out and f'disney_train_loss{{run="{RUN}"}}' in out
    assert "rank 0:" in out and "rank 1:" in out  # the loss as Prometheus scraped it, per rank
    assert "metrics     http://127.0.0.1:" in out  # what `run` prints


def test_both_workers_scraped_with_loss_per_rank(monitored: Monitored) -> None:
    p = monitored.prom
    targets = [t for t in p.targets() if t["labels"]["job"] == "disney-train-workers"]
    assert len(targets) == 2
    loss = p.query_range(f'disney_train_loss{{run="{RUN}"}}', monitored.start, monitored.end, 1)
    assert sorted(s["metric"]["rank"] for s in loss) == ["0", "1"]
    for s in loss:
        values = [float(v) for _, v in s["values"]]
        assert len(values) >= 5 and all(math.isfinite(v) and v > 0 for v in values)


def test_step_counter_increases_to_the_end(monitored: Monitored) -> None:
    """Up to the end, but for the restart: back to the checkpoint once, never by more."""
    series = monitored.prom.query_range(f'disney_train_step{{run="{RUN}",rank="0"}}', monitored.start, monitored.end, 1)
    steps = [float(v) for _, v in series[0]["values"]]
    back = [(a, b) for a, b in itertools.pairwise(steps) if b < a]
    assert len(back) <= 1 and all(a - b <= KILL_AFTER - 100 for a, b in back), back
    assert len(set(steps)) >= 4 and steps[-1] == STEPS


def test_a_restart_continues_the_series(monitored: Monitored) -> None:
    """The killed worker's group came back on the same ports: the restart counter reached 1 in the
    same series without a reset, resizes stayed 0, and one restart raised no alert (the rules test above)."""
    p, m = monitored.prom, monitored
    restarts = p.query_range(f'disney_train_restarts_total{{run="{RUN}"}}', m.start, m.end, 1)
    assert sorted(s["metric"]["rank"] for s in restarts) == ["0", "1"]
    for s in restarts:
        values = [float(v) for _, v in s["values"]]
        # 0 while the first group trained (when a scrape caught it: on a loaded machine a busy worker
        # may miss its 1 s scrapes for those few seconds), then 1: never back to 0, never past 1
        assert values == sorted(values) and set(values) <= {0.0, 1.0} and values[-1] == 1, (values[:5], values[-5:])
    resizes = p.query_range(f'max(disney_train_resizes_total{{run="{RUN}"}})', m.start, m.end, 1)
    assert {float(v) for _, v in resizes[0]["values"]} == {0.0}
    assert "rank 1: " in m.output  # the monitor's own summary saw both ranks


def test_histograms_populated(monitored: Monitored) -> None:
    p, at = monitored.prom, monitored.at
    for name in ("disney_train_step_duration_seconds", "disney_train_data_wait_seconds"):
        counts = p.query(f'{name}_count{{run="{RUN}"}}', at)
        assert sorted(c["metric"]["rank"] for c in counts) == ["0", "1"]
        assert all(float(c["value"][1]) > 10 for c in counts)
        buckets = p.query(f'{name}_bucket{{run="{RUN}",rank="0"}}', at)
        assert len(buckets) >= 10
    p50 = p.query(
        f'histogram_quantile(0.5, sum by (le) (rate(disney_train_step_duration_seconds_bucket{{run="{RUN}"}}[15s])))',
        at,
    )
    assert p50 and 0 < float(p50[0]["value"][1]) < 60
    ckpt = p.query(f'disney_train_checkpoint_duration_seconds_count{{run="{RUN}"}}', at)
    assert ckpt and all(float(c["value"][1]) >= 1 for c in ckpt)


def test_every_training_dashboard_query_runs_and_returns_series(monitored: Monitored) -> None:
    """Each expr is run by Prometheus over the run, as a dashboard panel would: it must parse, and
    return series unless it needs a GPU (none here: those must return nothing rather than something
    wrong)."""
    m = monitored
    problems: list[str] = []
    exprs = dashboard_exprs("training.json")
    assert len(exprs) >= 15
    for title, expr in exprs:
        q = concrete(expr, RUN, "15s")
        result = m.prom.query_range(q, m.start, m.end, 1)  # raises on a query Prometheus refuses
        if GPU_ONLY.search(q):
            if result:
                problems.append(f"{title}: {q} returned series on a machine without a GPU")
        elif not result:
            problems.append(f"{title}: {q} returned nothing")
    assert not problems, "\n".join(problems)


def test_rules_loaded_and_healthy_and_quiet_on_a_healthy_run(monitored: Monitored) -> None:
    rules = monitored.prom.rules()
    names = sorted(r["name"] for r in rules)
    assert names == sorted(n for n, _ in rule_exprs())
    unhealthy = [f"{r['name']}: {r.get('lastError')}" for r in rules if r["health"] != "ok"]
    assert not unhealthy, unhealthy
    # every alert that was pending or firing at any moment of the run (every rule is evaluated each second)
    raised = monitored.prom.query_range("ALERTS", monitored.start, monitored.end, 1)
    alerts = {a["metric"]["alertname"] for a in raised}
    # the tiny CPU run really is data-bound (a step computes ~20 ms and waits as long for its clip)
    assert alerts <= {"DisneyTrainDataStarved"}, raised


def test_every_rule_expr_is_valid_promql_on_the_run(monitored: Monitored) -> None:
    for name, expr in rule_exprs():
        try:
            monitored.prom.query(expr, monitored.at)
        except PrometheusError as err:
            pytest.fail(f"rule {name}: {err}")
