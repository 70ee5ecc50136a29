from __future__ import annotations

from pathlib import Path

import pytest

from disney_train.config import ConfigError, RunConfig, embedded_default, load_config

MINIMAL = "model: {uri: s3://models/cogvideox-2b}\ndata: {uri: s3://data/disney}\noutput: {uri: s3://runs/out}\n"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "run.yaml"
    p.write_text(text)
    return p


def test_defaults_are_the_seed_recipe(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL))
    assert cfg.optim.learning_rate == 1e-4
    assert cfg.optim.batch_size == 4
    assert cfg.optim.epochs == 30
    assert (cfg.data.num_frames, cfg.data.height, cfg.data.width) == (49, 480, 720)
    assert (cfg.lora.rank, cfg.lora.alpha) == (128, 64)
    assert cfg.lora.target_modules == ["to_q", "to_k", "to_v", "to_out.0"]
    assert cfg.model.variant == "t2v"


@pytest.mark.parametrize(
    ("extra", "field", "fragment"),
    [
        ("data: {uri: x, num_frames: 50}", "data.num_frames", "must be 4N+1"),
        ("data: {uri: x, num_frames: 45}", "(top level)", "data.num_frames 45: a cogvideox model takes 8N+1 frames"),
        ("data: {uri: x, height: 470}", "data.height", "multiple of 16"),
        ("optim: {lr: 0.1}", "optim.lr", "unknown field"),
        ("optim: {learning_rate: -1}", "optim.learning_rate", "greater than 0"),
        ("model: {uri: m, variant: v2v}", "model.variant", "'t2v' or 'i2v'"),
        ("name: Bad_Name", "name", "should match pattern"),
    ],
)
def test_errors_name_the_file_and_field(tmp_path: Path, extra: str, field: str, fragment: str) -> None:
    base = {line.split(":")[0]: line for line in MINIMAL.splitlines()}
    base[extra.split(":")[0]] = extra
    path = write(tmp_path, "\n".join(base.values()) + "\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert str(path) in text
    assert f"  - {field}: " in text
    assert fragment in text


def test_missing_sections_are_listed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "seed: 1\n"))
    for field in ("model", "data", "output"):
        assert f"  - {field}: Field required" in str(err.value)


def test_credentials_are_refused_and_not_echoed(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "s3: {endpoint_url: http://x, aws_secret_access_key: hunter2}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "s3.aws_secret_access_key" in str(err.value)
    assert "hunter2" not in str(err.value)


def test_bad_yaml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "model: [unclosed\n"))
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_config(tmp_path / "nope.yaml")


def test_overrides_and_round_trip(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL), {"data.num_frames": 17, "optim.batch_size": 1})
    assert (cfg.data.num_frames, cfg.optim.batch_size) == (17, 1)
    assert RunConfig.model_validate(cfg.model_dump()) == cfg


def test_embedded_default_loads() -> None:
    cfg = load_config(embedded_default())
    assert cfg.data.num_frames % 8 == 1


def test_config_imports_without_torch() -> None:
    """The operator imports the config with the light core only."""
    import subprocess
    import sys

    code = "import sys, disney_train.config, disney_train.storage; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


HEAVY = ("torch", "ray", "diffusers", "deepspeed", "transformers", "torchvision", "accelerate", "peft")


def test_the_operator_imports_and_plans_where_no_heavy_module_can_be_imported() -> None:
    """The operator image has no torch, Ray or diffusers: every operator module imports, and the CLI answers,
    where importing them fails (as it would there), not only where they happen not to be imported."""
    import subprocess
    import sys

    code = f"""
import importlib.abc, pkgutil, sys
class NoHeavy(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {HEAVY!r}:
            raise ImportError(f"{{name}}: not in the operator's image")
sys.meta_path.insert(0, NoHeavy())
import disney_operator
for info in pkgutil.walk_packages(disney_operator.__path__, "disney_operator."):
    importlib.import_module(info.name)
from disney_operator.cli import main
sys.argv = ["disney-train-operator", "crd"]
main()
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "kind: CustomResourceDefinition" in out.stdout


def test_yaml_errors_never_echo_the_text(tmp_path: Path) -> None:
    path = write(tmp_path, 's3: {endpoint_url: x, aws_secret_access_key: "SUPERSECRET", ]\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "line 1" in str(err.value) and "SUPERSECRET" not in str(err.value)
