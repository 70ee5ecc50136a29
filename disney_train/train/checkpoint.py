"""Checkpoints of a run: small, world-size independent, committed atomically, the last K kept.

    <run>/checkpoints/step-000000120/pytorch_lora_weights.safetensors  the LoRA (diffusers format)
    <run>/checkpoints/step-000000120/optimizer.safetensors  full AdamW moments per LoRA parameter
    <run>/checkpoints/step-000000120/state.json             step, data position, LR schedule, metrics
    <run>/checkpoints/step-000000120/config.yaml            the run configuration
    <run>/checkpoints/step-000000120/commit.json            written last: every file's size and sha256

A checkpoint exists only once its `commit.json` does; loading checks every file against it. A
crash mid-save leaves files without a commit, which the next save removes. The optimizer state is
gathered from ZeRO's partitions into one tensor per parameter, so a run resumes at any world size
(DeepSpeed's own partitioned checkpoints cannot be loaded at another world size).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import yaml

from disney_train.errors import UserError
from disney_train.storage import NoSuchObjectError, StorageError, Store

COMMIT = "commit.json"
LORA = "pytorch_lora_weights.safetensors"
OPTIMIZER = "optimizer.safetensors"
STATE = "state.json"
CONFIG = "config.yaml"
_STEP_DIR = re.compile(r"^checkpoints/step-(\d{9})/")


class CheckpointError(UserError, RuntimeError):
    """A checkpoint cannot be used; the message names it and what is wrong."""


class CheckpointDamaged(CheckpointError):
    """A committed checkpoint whose files are missing or do not match its commit: it never loads again
    (unlike one S3 could not serve for a while, which raises CheckpointError)."""


def step_prefix(step: int) -> str:
    return f"checkpoints/step-{step:09d}"


def config_of(config_yaml: str) -> dict[str, Any]:
    """A checkpoint's saved run configuration as a mapping ({} when it holds none), read the same way
    by the driver's check before a resume and by the workers that load it."""
    saved = yaml.safe_load(config_yaml)
    return saved if isinstance(saved, dict) else {}


@dataclass
class Checkpoint:
    step: int
    lora_file: bytes  # the diffusers LoRA file
    optimizer: dict[str, torch.Tensor]  # "<param>.exp_avg", "<param>.exp_avg_sq"
    state: dict[str, Any] = field(default_factory=dict)
    config_yaml: str = ""


class CheckpointStore:
    def __init__(self, store: Store, keep: int) -> None:
        self.store = store
        self.keep = keep
        self.last_saved_bytes: int | None = None  # the files of the last checkpoint saved here

    def url(self, step: int) -> str:
        return self.store.url(step_prefix(step))

    def _steps(self) -> tuple[list[int], list[int]]:
        """(committed steps, steps with files but no commit), both ascending."""
        files: dict[int, set[str]] = {}
        for key in self.store.list_keys("checkpoints/"):
            m = _STEP_DIR.match(key)
            if m:
                files.setdefault(int(m.group(1)), set()).add(key[m.end() :])
        committed = sorted(s for s, names in files.items() if COMMIT in names)
        partial = sorted(s for s, names in files.items() if COMMIT not in names)
        return committed, partial

    def committed(self) -> list[int]:
        return self._steps()[0]

    def latest(self) -> int | None:
        steps = self.committed()
        return steps[-1] if steps else None

    def save(self, ckpt: Checkpoint) -> str:
        from safetensors.torch import save

        prefix = step_prefix(ckpt.step)
        files = {
            LORA: ckpt.lora_file,
            OPTIMIZER: save({k: v.detach().to("cpu").contiguous() for k, v in ckpt.optimizer.items()}),
            STATE: json.dumps(ckpt.state, indent=1, sort_keys=True).encode(),
            CONFIG: ckpt.config_yaml.encode(),
        }
        for name, data in files.items():
            self.store.write_bytes(f"{prefix}/{name}", data)
        self.last_saved_bytes = sum(len(d) for d in files.values())
        commit = {
            "step": ckpt.step,
            "time": time.time(),
            "files": {n: {"bytes": len(d), "sha256": hashlib.sha256(d).hexdigest()} for n, d in files.items()},
        }
        self.store.write_bytes(f"{prefix}/{COMMIT}", json.dumps(commit, indent=1).encode())
        self._prune(ckpt.step)
        return self.store.url(prefix)

    def _prune(self, newest: int) -> None:
        """Keep the last `keep` committed checkpoints up to `newest`, the one just saved, which always stays.
        Committed ones after it are of a timeline the run left: it resumed from before them only because
        they were damaged (`CheckpointDamaged`; one S3 could not serve fails the start instead), and they
        would be taken for the latest at the next start: they go too."""
        committed, partial = self._steps()
        behind = [s for s in committed if s <= newest]
        doomed = behind[: max(0, len(behind) - self.keep)] + [s for s in committed if s > newest]
        doomed += [s for s in partial if s < newest]
        for step in doomed:
            keys = self.store.list_keys(step_prefix(step) + "/")
            # the commit goes first: a half-deleted checkpoint must never look committed
            self.store.delete(sorted(keys, key=lambda k: not k.endswith(COMMIT)))

    def saved_config(self, step: int) -> dict[str, Any] | None:
        """The run configuration saved with checkpoint `step`, without reading the rest of it;
        None when it cannot be read (`load` then says why)."""
        try:
            return config_of(self.store.read_bytes(f"{step_prefix(step)}/{CONFIG}").decode())
        except (StorageError, yaml.YAMLError, UnicodeDecodeError):
            return None

    def load(self, step: int) -> Checkpoint:
        from safetensors.torch import load

        prefix = step_prefix(step)
        where = self.store.url(prefix)
        try:
            commit = json.loads(self.store.read_bytes(f"{prefix}/{COMMIT}"))
            data = {name: self.store.read_bytes(f"{prefix}/{name}") for name in commit["files"]}
        except (NoSuchObjectError, ValueError, KeyError) as err:
            raise CheckpointDamaged(f"checkpoint {where} is damaged: {err}") from None
        except StorageError as err:
            raise CheckpointError(f"checkpoint {where} cannot be read: {err}") from None
        for name, meta in commit["files"].items():
            if hashlib.sha256(data[name]).hexdigest() != meta["sha256"]:
                raise CheckpointDamaged(f"checkpoint {where}: {name} does not match the sha256 in its {COMMIT}")
        return Checkpoint(
            step=int(commit["step"]),
            lora_file=data[LORA],
            optimizer=load(data[OPTIMIZER]),
            state=json.loads(data[STATE]),
            config_yaml=data[CONFIG].decode(),
        )
