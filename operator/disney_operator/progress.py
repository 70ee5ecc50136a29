"""The runs' progress records (`<output.uri>/<name>/progress.json`, written by training) and evaluation
summaries (`eval/summary.json`, written by `disney-train eval` at the end of the RayJob), read in the
background so that a slow or unreachable S3 never holds a reconcile up.

A reconcile asks `latest(key)` and `latest_evaluation(key)` (what was last read) and `refresh(...)` (read
again if due: every `progress_seconds` while the RayJob runs, and once more when it ends, which is when
the evaluation's summary is there). The summary is read only for a VideoFineTune with an evaluation block.
A read that finds something new calls `on_change(key)`, which reconciles that VideoFineTune again.

The endpoint, bucket and prefix are the tenant's choice, so the operator holds no S3 keys of its own for
them: it reads with the keys of the Secret the VideoFineTune gives its pods (`spec.s3Credentials`, in its own
namespace), only at endpoints the chart allows (`endpoints`; "*": any), each file capped in size (the
largest record a run writes) and in time (`deadline`), and only the run the VideoFineTune owns (owner.json).
A VideoFineTune that names no Secret shows no progress.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pydantic import ValidationError

from disney_operator.api import S3Credentials
from disney_operator.rayjob import owner_of
from disney_train.config import S3Options
from disney_train.runs import OWNER, PROGRESS, SUMMARY_JSON, RunFiles, same_owner
from disney_train.storage import S3Keys, is_s3

log = logging.getLogger(__name__)

Key = tuple[str, str]
ENDED = ("Complete", "Failed")
# (namespace, name) -> the Secret's data, decoded; raises when there is none (`Kube.secret_data`)
SecretReader = Callable[[str, str], dict[str, str]]
DEADLINE = 20.0  # seconds a read of one file may take, retries included


def _no_secrets(namespace: str, name: str) -> dict[str, str]:
    raise LookupError("the operator was given no way to read Secrets")


class ProgressReader:
    def __init__(
        self,
        every: float,
        on_change: Callable[[Key], None] = lambda key: None,
        endpoints: list[str] | None = None,
        workers: int = 4,
        secrets: SecretReader = _no_secrets,
        deadline: float = DEADLINE,
    ) -> None:
        self.every, self.on_change, self.secrets, self.deadline = every, on_change, secrets, deadline
        self.endpoints = ["aws"] if endpoints is None else endpoints  # AWS itself; "*": any
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="progress")
        self._lock = threading.Lock()
        self._latest: dict[Key, dict[str, Any]] = {}
        self._evaluation: dict[Key, dict[str, Any]] = {}
        self._read_at: dict[Key, float] = {}
        self._final: dict[Key, set[str]] = {}  # the ended RayJobs whose last record was read
        self._busy: set[Key] = set()
        self._refused: set[Key] = set()
        self._runs: dict[Key, tuple[tuple[str, S3Keys], RunFiles]] = {}  # each run's S3 client, made once
        self._owned: set[tuple[Key, str, str]] = set()  # (run, where, owner) found to be the VideoFineTune's own

    def latest(self, key: Key) -> dict[str, Any] | None:
        with self._lock:
            return self._latest.get(key)

    def latest_evaluation(self, key: Key) -> dict[str, Any] | None:
        """The run's evaluation summary (`disney_train.eval.results.Summary` as JSON), once read."""
        with self._lock:
            return self._evaluation.get(key)

    def forget(self, key: Key) -> None:
        with self._lock:
            self._latest.pop(key, None)
            self._evaluation.pop(key, None)
            self._read_at.pop(key, None)
            self._final.pop(key, None)
            self._runs.pop(key, None)
            self._owned = {o for o in self._owned if o[0] != key}
            self._refused.discard(key)

    def refresh(self, key: Key, vft: dict[str, Any], rayjobs: list[dict[str, Any]]) -> bool:
        """Start a read when one is due; True when it was started. Never waits for it."""
        states = {rj["metadata"]["name"]: (rj.get("status") or {}).get("jobDeploymentStatus") for rj in rayjobs}
        ended = [name for name, s in states.items() if s in ENDED]
        now = time.monotonic()
        with self._lock:
            if key in self._busy:
                return False
            final = next((name for name in ended if name not in self._final.get(key, set())), None)
            running = "Running" in states.values()
            if final is None and not (running and now - self._read_at.get(key, float("-inf")) >= self.every):
                return False
            spec = vft.get("spec") or {}
            output = (spec.get("output") or {}).get("uri")
            try:
                s3 = S3Options.model_validate({**((spec.get("training") or {}).get("s3") or {}), "max_attempts": 2})
                creds = S3Credentials.model_validate(spec["s3Credentials"]) if spec.get("s3Credentials") else None
            except ValidationError:
                return False  # the reconcile reports the spec's problem
            if not output or not is_s3(output):
                return False  # the CRD admits s3:// only; never a path on the operator's disk
            refused = self._refusal(s3, creds)
            if refused:
                if key not in self._refused:
                    self._refused.add(key)
                    log.warning("%s/%s: progress not read: %s", *key, refused)
                return False
            assert creds is not None
            self._busy.add(key)
            self._read_at[key] = now
        evaluated = bool(spec.get("evaluation"))
        owner = owner_of(vft["metadata"])
        run = f"{output.rstrip('/')}/{key[1]}"
        self._pool.submit(self._read, key, run, s3, creds, final, evaluated, owner)
        return True

    def _refusal(self, s3: S3Options, creds: S3Credentials | None) -> str | None:
        """Why a run's files are not to be read, or None."""
        endpoint = s3.endpoint_url or "aws"
        if "*" not in self.endpoints and endpoint not in self.endpoints:
            return (
                f"S3 endpoint {endpoint} is not one the operator may read (the chart's operator.progressEndpoints: "
                f"{', '.join(self.endpoints) or 'none'})"
            )
        if creds is None:
            return "spec.s3Credentials names no Secret (the operator reads a run's files only with its tenant's keys)"
        return None

    def _files(self, key: Key, uri: str, s3: S3Options, creds: S3Credentials) -> RunFiles:
        """The run's files, read with the keys the VideoFineTune's Secret holds now (read at every poll: keys
        rotate), through one S3 client while they and the place stay the same."""
        data = self.secrets(key[0], creds.secretName)
        missing = [k for k in (creds.accessKeyIdKey, creds.secretAccessKeyKey) if not data.get(k)]
        if missing:
            raise LookupError(f"Secret {key[0]}/{creds.secretName} has no {' or '.join(missing)}")
        keys = S3Keys(data[creds.accessKeyIdKey], data[creds.secretAccessKeyKey])
        where = (f"{uri} {s3.model_dump_json()}", keys)
        if key not in self._runs or self._runs[key][0] != where:
            self._runs[key] = (where, RunFiles.at(uri, s3, keys, self.deadline))
        return self._runs[key][1]

    def _read(
        self, key: Key, uri: str, s3: S3Options, creds: S3Credentials, final: str | None, evaluated: bool, owner: str
    ) -> None:
        ok, progress, summary = False, None, None
        try:
            files = self._files(key, uri, s3, creds)
            where = f"{uri} {s3.model_dump_json()}"
            # only the run this VideoFineTune owns (its owner.json, written at its first start): never another
            # tenant's figures, of a VideoFineTune of the same name elsewhere or of one deleted before it
            # (once found this VideoFineTune's, a run stays its own: owner.json is not read again)
            with self._lock:
                mine = (key, where, owner) in self._owned
            if not mine:
                ok, recorded = _attempt(key, "owner", f"{uri}/{OWNER}", lambda: {"owner": files.owner()})
                theirs = (recorded or {}).get("owner")
                mine = ok and theirs is not None and same_owner(theirs, owner)  # else not started, or another's
                if mine:
                    with self._lock:
                        self._owned.add((key, where, owner))
                elif ok and theirs is not None:
                    log.warning("%s/%s: run files at %s belong to %s: not read", *key, uri, theirs)
            if mine:
                ok, progress = _attempt(key, "progress", f"{uri}/{PROGRESS}", files.read_progress)
            # the summary is written at the RayJob's end: read by the read after it ended, not all through
            # training (S3 failed the progress read: it waits for the next read)
            if mine and evaluated and ok and final is not None:
                ok, summary = _attempt(key, "evaluation summary", f"{uri}/{SUMMARY_JSON}", files.read_eval_summary)
        except Exception as err:  # progress is a nicety: never a reason to stop reconciling
            log.warning("%s/%s: run files at %s not read: %s", *key, uri, err)
        finally:
            with self._lock:
                self._busy.discard(key)
        changed = False
        with self._lock:
            if final is not None and ok:  # else the ended RayJob's last read is tried again
                self._final.setdefault(key, set()).add(final)
            for value, store in ((progress, self._latest), (summary, self._evaluation)):
                if value is not None and value != store.get(key):
                    store[key] = value
                    changed = True
        if changed:
            self.on_change(key)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _attempt(
    key: Key, what: str, uri: str, read: Callable[[], dict[str, Any] | None]
) -> tuple[bool, dict[str, Any] | None]:
    """(read, value): one file of the run, a failure logged, never raised. A file that is there but is not
    a JSON object counts as read (reading it again gives the same); an S3 error does not (it is tried again)."""
    try:
        return True, read()
    except ValueError as err:
        log.warning("%s/%s: %s %s not understood: %s", *key, what, uri, err)
        return True, None
    except Exception as err:
        log.warning("%s/%s: %s %s not read: %s", *key, what, uri, err)
        return False, None
