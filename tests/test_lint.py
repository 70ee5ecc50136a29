"""The code stays ruff- and mypy-clean: CI runs `make test` only, so the suite checks it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_ruff() -> None:
    for args in (["check", "."], ["format", "--check", "."]):
        res = subprocess.run([str(BIN / "ruff"), *args], cwd=ROOT, capture_output=True, text=True)
        assert res.returncode == 0, res.stdout + res.stderr


def test_mypy() -> None:
    res = subprocess.run([str(BIN / "mypy")], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_layers() -> None:
    """The architecture in pyproject.toml's [tool.importlinter]: cli above eval above train above generate
    above model and metrics, above data, runs and media, storage and config; the operator takes only the run's
    files, the configuration and storage from the library, and nothing of torch, Ray or diffusers."""
    res = subprocess.run([str(BIN / "lint-imports"), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_test_modules_share_helpers_only_through_tests_support() -> None:
    """A test module importing another test module runs that module's fixtures and imports at collection
    and hides where a helper lives: shared builders belong in tests/support/."""
    found = [
        f"{path.relative_to(ROOT)}: {line.strip()}"
        for path in sorted((ROOT / "tests").rglob("*.py"))
        for line in path.read_text().splitlines()
        if line.startswith(("from tests.test_", "import tests.test_", "from tests.e2e.test_"))
    ]
    assert not found, found
