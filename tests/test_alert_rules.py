"""The Prometheus alerting rules (charts/disney-train/rules/) and their promtool unit tests
(tests/rules/): promtool accepts the rules and passes the tests; every alert has a case where it
fires and one where it must not; and the tests fail when a rule is broken (mutants of the rules)."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.promql import promtool

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "charts" / "disney-train" / "rules" / "disney-train.rules.yaml"
RULE_TESTS = ROOT / "tests" / "rules" / "disney-train.rules.test.yaml"
SEVERITIES = {"warning", "critical"}
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def load(path: Path) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict), f"{path}: not a YAML mapping"
    return doc


def alerts(rules: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The alerting rules by name (recording rules aside)."""
    found: dict[str, dict[str, Any]] = {}
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                assert rule["alert"] not in found, f"alert {rule['alert']} defined twice"
                found[rule["alert"]] = rule
    return found


ALERTS = sorted(alerts(load(RULES)))


def seconds(duration: str) -> float:
    """A Prometheus duration (`15m`, `1h30m`, `90s`) in seconds."""
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|y)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a Prometheus duration: {duration!r}"
    return sum(int(n) * _UNITS[u] for n, u in parts)


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=120)


def output(res: subprocess.CompletedProcess[str]) -> str:
    return f"promtool exited {res.returncode}\n--- stdout\n{res.stdout}\n--- stderr\n{res.stderr}"


def test_promtool_installed() -> None:
    res = run_promtool("--version")
    assert res.returncode == 0, output(res)


def test_promtool_check_rules() -> None:
    res = run_promtool("check", "rules", str(RULES))
    assert res.returncode == 0, output(res)


def test_promtool_unit_tests_pass() -> None:
    res = run_promtool("test", "rules", str(RULE_TESTS))
    assert res.returncode == 0, output(res)


def test_rule_file_is_a_prometheusrule_spec() -> None:
    """Only `groups` at the top, so the chart can wrap the file verbatim as a PrometheusRule's spec."""
    assert list(load(RULES)) == ["groups"]


def test_unit_tests_use_the_chart_rules() -> None:
    rule_files = load(RULE_TESTS)["rule_files"]
    assert [(RULE_TESTS.parent / f).resolve() for f in rule_files] == [RULES.resolve()]


@pytest.mark.parametrize("name", ALERTS)
def test_alert_is_described(name: str) -> None:
    rule = alerts(load(RULES))[name]
    assert re.fullmatch(r"Disney(Train|Operator)[A-Z][A-Za-z]+", name), f"{name}: CamelCase, Disney… prefix"
    assert seconds(rule.get("for", "")) > 0, f"{name}: no `for:`"
    assert rule.get("labels", {}).get("severity") in SEVERITIES, f"{name}: severity not one of {SEVERITIES}"
    annotations = rule.get("annotations", {})
    for key in ("summary", "description"):
        assert str(annotations.get(key, "")).strip(), f"{name}: no {key}"
    assert "$labels." in annotations["summary"] + annotations["description"], f"{name}: annotations name no labels"
    assert "Check" in annotations["description"], f"{name}: the description says nothing of what to check"


def cases(name: str) -> list[tuple[float, list[Any]]]:
    """(eval_time in seconds, exp_alerts) of every alert_rule_test of `name`."""
    return [
        (seconds(case["eval_time"]), case.get("exp_alerts") or [])
        for group in load(RULE_TESTS)["tests"]
        for case in group.get("alert_rule_test", [])
        if case["alertname"] == name
    ]


def test_unit_tests_name_only_existing_alerts() -> None:
    """A case for a misspelt alert expecting nothing would pass whatever the rules say."""
    tested = {case["alertname"] for group in load(RULE_TESTS)["tests"] for case in group.get("alert_rule_test", [])}
    assert tested <= set(ALERTS), f"tests of unknown alerts: {sorted(tested - set(ALERTS))}"


@pytest.mark.parametrize("name", ALERTS)
def test_alert_has_firing_and_quiet_cases(name: str) -> None:
    pending_for = seconds(alerts(load(RULES))[name]["for"])
    found = cases(name)
    firing = [exp for _, exp in found if exp]
    assert firing, f"{name}: no test case where it fires"
    for exp in firing:
        for alert in exp:
            assert alert.get("exp_labels", {}).get("severity"), f"{name}: a firing case without its labels"
            assert set(alert.get("exp_annotations", {})) >= {"summary", "description"}, (
                f"{name}: a firing case that does not check the annotations"
            )
    # quiet at a time where a rule that is always true would already fire (past its `for:`)
    assert any(not exp and t >= pending_for for t, exp in found), (
        f"{name}: no test case where it must stay quiet at an eval_time >= its for: ({pending_for:g}s)"
    )


# ---------------------------------------------------------------------------- mutants


def run_mutant(tmp_path: Path, name: str, mutate: Callable[[str], str]) -> subprocess.CompletedProcess[str]:
    """The unit tests against a copy of the rules in which `mutate(expr)` replaces alert `name`'s expression."""
    rules = load(RULES)
    rule = alerts(rules)[name]
    rule["expr"] = mutate(rule["expr"])
    mutant = tmp_path / "mutant.rules.yaml"
    mutant.write_text(yaml.safe_dump(rules, sort_keys=False))
    tests = load(RULE_TESTS)
    tests["rule_files"] = [str(mutant)]
    test_file = tmp_path / "mutant.rules.test.yaml"
    test_file.write_text(yaml.safe_dump(tests, sort_keys=False))
    check = run_promtool("check", "rules", str(mutant))
    assert check.returncode == 0, f"the mutant is not a valid rule file\n{output(check)}"
    return run_promtool("test", "rules", str(test_file))


def failed_case(res: subprocess.CompletedProcess[str], name: str, *, expected_quiet: bool) -> bool:
    """Whether promtool reports a failed case of alert `name`; with expected_quiet, one that expected no alert."""
    exp = r"\[\]" if expected_quiet else r"\[\s*\n"
    return re.search(rf"alertname: {re.escape(name)}, time: \w+,\s*exp:{exp}", res.stdout + res.stderr) is not None


@pytest.mark.parametrize("name", ALERTS)
def test_a_rule_that_never_fires_fails_the_tests(tmp_path: Path, name: str) -> None:
    res = run_mutant(tmp_path, name, lambda _: "vector(0) > 1")
    assert res.returncode != 0, f"the tests pass with {name} never firing\n{output(res)}"
    assert failed_case(res, name, expected_quiet=False), output(res)


@pytest.mark.parametrize("name", ALERTS)
def test_a_rule_that_always_fires_fails_the_tests(tmp_path: Path, name: str) -> None:
    res = run_mutant(tmp_path, name, lambda _: "vector(1)")
    assert res.returncode != 0, f"the tests pass with {name} always firing\n{output(res)}"
    assert failed_case(res, name, expected_quiet=True), output(res)


# (alert, what in its expression, replaced by, the case that must catch it)
MUTANTS = [
    ("DisneyTrainStalled", "[15m:1m]) == 1", "[1m:1m]) == 1", "a long validation counted as a stall"),
    ("DisneyTrainStalled", ") >= 15", ") >= 1", "a young run, training without its first step yet, is not stalled"),
    ("DisneyTrainStalled", "<= 900", "<= 600", "stalled after 10 minutes instead of 15"),
    ("DisneyTrainLossNotFinite", "disney_train_loss != disney_train_loss\nor ", "", "NaN not caught"),
    ("DisneyTrainLossDiverging", "> 2 < +Inf", "> 2", "an infinite recent loss taken for a divergence"),
    ("DisneyTrainLossDiverging", "> 2 < +Inf", "> 1.5 < +Inf", "a rise of 1.9x taken for a divergence"),
    (
        "DisneyTrainWorkersRestarting",
        None,
        "sum by (namespace, run) (increase(disney_train_restarts_total[30m])) >= 2",
        "increase() misses the restarts of a rank that moves to another pod",
    ),
    ("DisneyTrainWorkersRestarting", ">= 2", "> 0", "a single restart (an elastic resize, a resume) alerts"),
    ("DisneyTrainWorkersRestarting", ">= 2", ">= 3", "two restarts within 30 minutes do not alert"),
    ("DisneyTrainWorkersRestarting", "[30m]", "[1h]", "two restarts 40 minutes apart taken for a crash loop"),
    ("DisneyTrainDataStarved", "> 0.5", "> 0.05", "waiting 8% of the time taken for starvation"),
    (
        "DisneyTrainGpuMemoryNearLimit",
        "(disney_train_gpu_memory_total_bytes > 0)",
        "disney_train_gpu_memory_total_bytes",
        "a GPU reporting 0 bytes in all",
    ),
    (
        "DisneyOperatorReconcileErrors",
        None,
        "sum by (namespace) (increase(disney_operator_reconcile_errors_total[10m])) > 0",
        "increase() misses the error that creates the series",
    ),
    ("DisneyOperatorWriteConflictsHigh", ">= 10", ">= 0", "a few conflicts of a quiet operator"),
    ("DisneyOperatorWorkingReplicasNotOne", "!= 1", "> 1", "no replica working goes unnoticed"),
]


@pytest.mark.parametrize(("name", "old", "new", "why"), MUTANTS, ids=[f"{m[0]}-{m[3]}" for m in MUTANTS])
def test_a_broken_rule_fails_the_tests(tmp_path: Path, name: str, old: str | None, new: str, why: str) -> None:
    def mutate(expr: str) -> str:
        if old is None:
            return new
        assert expr.count(old) == 1, f"{name}: expression changed, update this mutant ({old!r} not found once)"
        return expr.replace(old, new)

    res = run_mutant(tmp_path, name, mutate)
    assert res.returncode != 0, f"the tests pass with {name} broken ({why})\n{output(res)}"
    assert re.search(rf"alertname: {re.escape(name)},", res.stdout + res.stderr), output(res)


def test_every_alert_has_a_targeted_mutant() -> None:
    assert {m[0] for m in MUTANTS} == set(ALERTS)
