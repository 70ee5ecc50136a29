"""Checkpoints: committed by a marker written last, checked on load, the last K kept; local and S3."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import yaml
from diffusers import CogVideoXPipeline

from disney_train.config import LoraConfig, S3Options
from disney_train.model.lora import lora_file_bytes, read_lora_file
from disney_train.storage import Store, open_store
from disney_train.train.checkpoint import (
    COMMIT,
    Checkpoint,
    CheckpointError,
    CheckpointStore,
    config_of,
    step_prefix,
)


def _ckpt(step: int) -> Checkpoint:
    lora = {"blocks.0.to_q.lora_A.weight": torch.full((2, 4), float(step))}
    return Checkpoint(
        step,
        lora_file_bytes(lora, LoraConfig(rank=2, alpha=2, target_modules=["to_q"]), CogVideoXPipeline),
        {"blocks.0.to_q.lora_A.default.weight.exp_avg": torch.ones(2, 4) * step},
        {"step": step, "reader": {"epoch": 1, "consumed": 2}},
        "name: x\n",
    )


def _exercise(store: Store) -> None:
    ckpts = CheckpointStore(store, keep=2)
    assert ckpts.latest() is None
    for step in (10, 20, 30):
        ckpts.save(_ckpt(step))
    assert ckpts.committed() == [20, 30]  # the last K
    back = ckpts.load(30)
    assert back.state["reader"] == {"epoch": 1, "consumed": 2} and back.config_yaml == "name: x\n"
    assert float(read_lora_file(back.lora_file)["blocks.0.to_q.lora_A.weight"][0, 0]) == 30.0
    torch.testing.assert_close(back.optimizer["blocks.0.to_q.lora_A.default.weight.exp_avg"], torch.ones(2, 4) * 30)

    # a save that died before its commit: invisible, and removed by the next save
    store.write_bytes(f"{step_prefix(40)}/state.json", b"{}")
    assert ckpts.latest() == 30
    ckpts.save(_ckpt(50))
    assert not store.list_keys(step_prefix(40)) and ckpts.committed() == [30, 50]

    # a file that does not match its commit is refused by name
    store.write_bytes(f"{step_prefix(50)}/state.json", b'{"step": 49}')
    with pytest.raises(CheckpointError, match=r"step-000000050: state.json does not match the sha256"):
        ckpts.load(50)
    commit = json.loads(store.read_bytes(f"{step_prefix(30)}/{COMMIT}"))
    assert set(commit["files"]) == {
        "pytorch_lora_weights.safetensors",
        "optimizer.safetensors",
        "state.json",
        "config.yaml",
    }


def test_local_checkpoints(tmp_path: Path) -> None:
    _exercise(open_store(str(tmp_path / "run")))


def test_s3_checkpoints(s3: S3Options, s3_uri: str) -> None:
    _exercise(open_store(s3_uri, s3))


def test_lora_file_loads_into_the_diffusers_pipeline(tiny_t2v: Path) -> None:
    """The saved file is what CogVideoXPipeline.load_lora_weights reads, with its rank and alpha."""

    from disney_train.generate import apply_lora
    from disney_train.model.load import load_transformer
    from disney_train.model.lora import add_lora, peft_key

    cfg = LoraConfig(rank=4, alpha=8)
    transformer = load_transformer(tiny_t2v)
    params = add_lora(transformer, cfg)
    g = torch.Generator().manual_seed(0)
    state = {peft_key(n): torch.randn(p.shape, generator=g) for n, p in params}
    data = lora_file_bytes(state, cfg, CogVideoXPipeline)

    pipe = CogVideoXPipeline.from_pretrained(str(tiny_t2v))
    before = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    apply_lora(pipe, data)
    by_param = {n: v for n, v in pipe.transformer.named_parameters() if "lora_" in n}
    for key, value in state.items():
        module, kind, _w = key.rsplit(".", 2)
        match = [v for n, v in by_param.items() if n.startswith(f"{module}.{kind}.") and n.endswith(".weight")]
        assert len(match) == 1, key
        torch.testing.assert_close(match[0].detach(), value)
    assert len(by_param) == len(state) == 8  # A and B for to_q, to_k, to_v, to_out.0
    scale = pipe.transformer.transformer_blocks[0].attn1.to_q.scaling
    assert list(scale.values()) == [2.0]  # alpha / rank from the file's metadata
    assert all(torch.equal(before[k], v) for k, v in pipe.transformer.state_dict().items() if k in before)


def test_a_checkpoint_of_another_run_is_refused_before_any_worker_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same run name with another LoRA shape: `launch` refuses on the driver, naming the
    checkpoint and the field, before it starts Ray; the workers' own check says the same."""
    from disney_train.config import dump_config
    from disney_train.runs import RunFiles
    from disney_train.train.launch import TrainingError, _resume_refusal, launch
    from disney_train.train.trainer import latest_usable as _latest_usable
    from tests.support.training import train_config

    saved = train_config(tmp_path / "model", tmp_path / "data", tmp_path / "out", name="shape")
    ckpts = CheckpointStore(RunFiles(saved).store, 3)
    ckpts.save(dataclasses.replace(_ckpt(4), config_yaml=dump_config(saved)))
    ckpts.save(_ckpt(8))  # the newest, saved with an unreadable configuration: the one before it decides
    RunFiles(saved).store.write_bytes(f"{step_prefix(8)}/config.yaml", b"model: [unclosed\n")
    assert ckpts.saved_config(8) is None and ckpts.saved_config(4) == yaml.safe_load(dump_config(saved))
    assert config_of("") == {} and config_of("- a list\n") == {}  # no mapping: another run, on both sides

    other = saved.model_copy(deep=True)
    other.lora.rank = saved.lora.rank * 2

    def no_ray(*_: object) -> bool:
        pytest.fail("launch started Ray for a run it must refuse")

    monkeypatch.setattr("disney_train.train.launch.ensure_ray", no_ray)  # refused before Ray (and any GPU)
    with pytest.raises(TrainingError, match=r"'shape' cannot resume: checkpoint .*step-000000004 belongs to another "):
        launch(other, storage_path=tmp_path / "ray")
    with pytest.raises(CheckpointError, match=r"step-000000004 belongs to another run \(lora was"):
        _latest_usable(CheckpointStore(RunFiles(other).store, 3), other)
    expert = saved.model_copy(deep=True)  # a Wan 2.2 expert's LoRA never resumes the other expert's run
    expert.model.family, expert.model.expert = "wan", "low"
    with pytest.raises(CheckpointError, match=r"belongs to another run \(model.expert was None, this run has 'low'"):
        _latest_usable(CheckpointStore(RunFiles(expert).store, 3), expert)
    same = saved.model_copy(deep=True)
    same.train.zero_stage = 3  # how it trains is no part of which run it is
    assert _resume_refusal(RunFiles(same), same) is None
