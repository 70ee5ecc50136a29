"""The files of a run under `<output.uri>/<name>/`, besides its checkpoints: their names, and reading
and writing them. Shared by training, evaluation and the operator (pydantic and storage only: the
operator imports it without torch).

progress.json                 live progress (step, epoch, loss, last checkpoint): the operator
                              and `disney-train status` read it
final/pytorch_lora_weights.safetensors, final/config.yaml   the trained LoRA
validation/step-000000120/video-00.mp4 (+ prompts.json)      validation videos
finished.json                 written last, when the run is done: a finished run is not rerun
owner.json                    who the run belongs to (output.owner: namespace/name/uid of the operator's
                              VideoFineTune): written at its first start, checked at every start and by
                              the operator (another namespace or name is refused)
starts.json                   how often the run's worker group started, and at which sizes (restarts
                              and resizes in the workers' metrics)
eval/                         `disney-train eval` (disney_train.eval.results): eval.json, report.md,
                              report.html, plots, and summary.json, the headline figures the operator
                              copies into the VideoFineTune's status
"""

from __future__ import annotations

import json
import time
from typing import Any

import yaml

from disney_train.config import RunConfig, S3Options
from disney_train.errors import UserError
from disney_train.storage import S3Keys, Store, open_store

PROGRESS = "progress.json"
LORA_FILE = "pytorch_lora_weights.safetensors"  # the name diffusers' save_lora_weights gives the file
FINAL_LORA = f"final/{LORA_FILE}"
FINAL_CONFIG = "final/config.yaml"
FINISHED = "finished.json"
STARTS = "starts.json"
OWNER = "owner.json"
EVAL_DIR = "eval"  # `disney-train eval`'s outputs (disney_train.eval.results)
SUMMARY_JSON = f"{EVAL_DIR}/summary.json"  # the headline figures the operator copies into the status
MAX_RECORD_BYTES = 256 * 1024  # progress.json, owner.json, eval/summary.json are a few kB


def same_owner(a: str, b: str) -> bool:
    """Two owner records of one namespace and name (uids aside: the VideoFineTune made again)."""
    return a.rsplit("/", 1)[0] == b.rsplit("/", 1)[0]


class RunOwnedError(UserError, ValueError):
    """The run's prefix belongs to another owner (another VideoFineTune, in this or another namespace)."""


# What makes a run the run it is. Resuming it (or finding it finished) under a configuration that
# differs in these would mix two runs: a new model, dataset or LoRA shape needs a new run name.
IDENTITY = ("model.uri", "model.variant", "model.expert", "data.uri", "lora")


def _dig(data: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    return data


def identity_mismatch(saved: dict[str, Any], cfg: RunConfig) -> str | None:
    """How a saved run configuration (a checkpoint's, the final one) is another run than `cfg`, if it is."""
    now = cfg.model_dump(mode="json")
    for dotted in IDENTITY:
        if _dig(saved, dotted) != _dig(now, dotted):
            return f"{dotted} was {_dig(saved, dotted)!r}, this run has {_dig(now, dotted)!r}"
    return None


def checkpoint_identity_error(url: str, saved: dict[str, Any], cfg: RunConfig) -> str | None:
    """Why the checkpoint at `url`, saved with the configuration `saved`, cannot resume `cfg`, if it cannot."""
    mismatch = identity_mismatch(saved, cfg)
    if mismatch is None:
        return None
    return (
        f"checkpoint {url} belongs to another run ({mismatch}): a run cannot change its "
        "model, dataset or LoRA shape; use a new run name"
    )


def run_uri(cfg: RunConfig) -> str:
    return f"{cfg.output.uri.rstrip('/')}/{cfg.name}"


class RunFiles:
    def __init__(self, cfg: RunConfig, store: Store | None = None) -> None:
        self.uri = run_uri(cfg)
        self.store = store or open_store(self.uri, cfg.s3)

    @classmethod
    def at(cls, uri: str, s3: S3Options, keys: S3Keys | None = None, deadline: float | None = None) -> RunFiles:
        """The files of the run at `uri` (`<output.uri>/<name>`), without its configuration: the operator reads
        them (with the tenant's `keys`, each read bounded by `deadline`)."""
        files = cls.__new__(cls)
        files.uri, files.store = uri, open_store(uri, s3, keys, deadline)
        return files

    def _json(self, key: str, value: dict[str, Any]) -> None:
        self.store.write_bytes(key, json.dumps(value, indent=1, sort_keys=True).encode())

    def write_progress(self, progress: dict[str, Any]) -> None:
        self._json(PROGRESS, progress)

    def _read_object(self, key: str) -> dict[str, Any] | None:
        """A JSON object the run wrote; None when there is none, ValueError when it is not a JSON object or is
        larger than any record a run writes (the operator reads these at places tenants name: never an
        unbounded body), read in one request."""
        data = self.store.read_capped(key, MAX_RECORD_BYTES)
        if data is None:
            return None
        value = json.loads(data)
        if not isinstance(value, dict):
            raise ValueError(f"{self.store.url(key)}: not a JSON object but {type(value).__name__}")
        return value

    def read_progress(self) -> dict[str, Any] | None:
        return self._read_object(PROGRESS)

    def write_eval_summary(self, summary_json: str) -> None:
        """`eval/summary.json`, the evaluation's last file (`disney_train.eval.results.Summary` as JSON)."""
        self.store.write_bytes(SUMMARY_JSON, (summary_json + "\n").encode())

    def read_eval_summary(self) -> dict[str, Any] | None:
        """`eval/summary.json` as written (`disney_train.eval.results.Summary`), None while there is none.
        Its fields are not checked here: the operator takes what it can use from them."""
        return self._read_object(SUMMARY_JSON)

    def write_final(self, lora_file: bytes, config_yaml: str) -> None:
        self.store.write_bytes(FINAL_CONFIG, config_yaml.encode())
        self.store.write_bytes(FINAL_LORA, lora_file)

    def write_validation(self, step: int, videos: list[bytes], prompts: list[str]) -> list[str]:
        """A step's validation videos, then prompts.json naming each one's prompt."""
        folder = f"validation/step-{step:09d}"
        names = [f"video-{i:02d}.mp4" for i in range(len(videos))]
        for name, mp4 in zip(names, videos, strict=True):
            self.store.write_bytes(f"{folder}/{name}", mp4)
        index = dict(zip(names, prompts, strict=True))
        self.store.write_bytes(f"{folder}/prompts.json", json.dumps(index, indent=1).encode())
        return [self.store.url(f"{folder}/{name}") for name in names]

    def owner(self) -> str | None:
        """Whom the run's owner.json names (None: no record)."""
        record = self._read_object(OWNER) or {}
        owner = record.get("owner")
        return owner if isinstance(owner, str) else None

    def claim(self, owner: str | None) -> None:
        """Record `owner` (`<namespace>/<name>/<uid>`) as the run's owner at its first start; refuse a run
        another namespace or name recorded. The first record is a conditional write (written only where none
        is), so of two VideoFineTunes starting on one prefix at once exactly one owns it; it is read back, for
        a store that ignores the condition. A VideoFineTune made again under the same namespace and name (its
        tenant's own, by the namespace's RBAC) adopts the run: the record takes its uid. None (a local run)
        claims nothing and is refused nothing."""
        if owner is None:
            return
        record = {"owner": owner, "time": time.time(), "before": None}
        if self.store.create_bytes(OWNER, json.dumps(record, indent=1, sort_keys=True).encode()):
            recorded = self.owner()
        else:
            recorded = self.owner()
            if recorded is None:
                raise RunOwnedError(
                    f"{self.store.url(OWNER)} names no owner: the run's owner is unknown, so it is not taken; "
                    "delete that file if the run is yours"
                )
            if recorded != owner and same_owner(recorded, owner):
                self._json(OWNER, record | {"before": recorded})
                recorded = owner
        if recorded != owner:
            raise RunOwnedError(
                f"{self.uri} belongs to {recorded}, not {owner}: a run is never resumed or reported by another "
                "owner; pick another name or output.uri (or delete that prefix if it is yours)"
            )

    def record_start(self, world_size: int) -> dict[str, Any]:
        """Count one more start of the run's worker group (rank 0, before training): every start
        after the first is a restart (a failed worker, an elastic resize, an operator retry, a resumed
        run), and a start at another world size than the last one is a resize."""
        last: dict[str, Any] = json.loads(self.store.read_bytes(STARTS)) if self.store.exists(STARTS) else {}
        starts = int(last.get("starts", 0)) + 1
        resized = "world_size" in last and int(last["world_size"]) != world_size
        record = {
            "starts": starts,
            "resizes": int(last.get("resizes", 0)) + int(resized),
            "world_size": world_size,
            "time": time.time(),
        }
        self._json(STARTS, record)
        return record

    def finish(self, step: int, progress: dict[str, Any]) -> None:
        self.write_progress(progress)
        self._json(FINISHED, {"step": step, "time": time.time(), "lora": self.store.url(FINAL_LORA)})

    def final_config(self) -> dict[str, Any] | None:
        if not self.store.exists(FINAL_CONFIG):
            return None
        value = yaml.safe_load(self.store.read_bytes(FINAL_CONFIG))
        return value if isinstance(value, dict) else None

    def finished(self) -> dict[str, Any] | None:
        return self._read_object(FINISHED)
