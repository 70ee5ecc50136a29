"""The code stays ruff- and mypy-clean: CI runs `make test` only, so the suite checks it."""

from __future__ import annotations

import os
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


def _collect(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    """pytest collecting one test file of `source` with this suite's conftest (its markers and checks)."""
    (tmp_path / "test_probe.py").write_text(source)
    args = ["-p", "tests.conftest", "-p", "no:xdist", "-p", "no:cacheprovider", "--rootdir", str(tmp_path)]
    cmd = [sys.executable, "-m", "pytest", *args, "--collect-only", "-q", "test_probe.py"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_a_ray_marker_the_scheduler_cannot_read_stops_collection(tmp_path: Path) -> None:
    """xdist's scheduler reads the `ray` marker from the source: a marker applied some other way would put
    a test on Ray beside the others, so collection refuses it; the ways the reader knows collect."""
    hidden = _collect(tmp_path, "import pytest\nmark = pytest.mark.ray\n\n@mark\ndef test_hidden():\n    pass\n")
    assert hidden.returncode != 0 and "reads these tests' ray marker wrongly" in hidden.stdout + hidden.stderr
    seen = "import pytest\n\n@pytest.mark.ray\ndef test_seen():\n    pass\n\ndef test_other():\n    pass\n"
    assert _collect(tmp_path, seen).returncode == 0, _collect(tmp_path, seen).stdout
    module = "import pytest\n\npytestmark = [pytest.mark.ray, pytest.mark.timeout(5)]\n\ndef test_a():\n    pass\n"
    assert _collect(tmp_path, module).returncode == 0
