"""Where a model comes from: a local folder in the diffusers layout, or an s3:// prefix synced to a
local cache with an integrity check (size, the ETag's MD5 where it is one, our sha256 metadata).

A synced copy is complete only when its marker (`.disney-train-sync.json`, listing every object's
key, size and ETag) is written, last; a later resolve of the same prefix whose listing is unchanged
downloads nothing. Files that changed in S3 are downloaded again; files gone from S3 are removed.
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Callable
from pathlib import Path

from disney_train.config import S3Options
from disney_train.errors import UserError
from disney_train.storage import S3Store, StorageError, cache_root, is_s3, open_store, sha256_file, split_s3

COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
INDEX = "model_index.json"
SYNC_MARKER = ".disney-train-sync.json"


class ModelError(UserError, RuntimeError):
    """A model folder or prefix cannot be used; the message names what is missing or wrong."""


def default_cache_dir() -> Path:
    return cache_root() / "models"


def check_layout(path: Path, where: str | None = None) -> Path:
    where = where or str(path)
    if not path.is_dir():
        raise ModelError(f"{where}: no such model folder")
    missing = [n for n in (INDEX, *COMPONENTS) if not (path / n).exists()]
    if missing:
        raise ModelError(
            f"{where}: not a video diffusion model in the diffusers layout; missing {', '.join(missing)} "
            f"(expected {INDEX} and the folders {', '.join(COMPONENTS)})"
        )
    return path


def resolve_model(
    uri: str,
    s3: S3Options | None = None,
    cache_dir: Path | None = None,
    check: Callable[[Path, str | None], Path] = check_layout,
) -> Path:
    """The local folder to load `uri` from, syncing it from S3 first when it is an s3:// prefix.
    `check` refuses a folder that is not the expected model (default: CogVideoX in the diffusers layout)."""
    if not is_s3(uri):
        return check(Path(uri), None)
    bucket, prefix = split_s3(uri)
    cache = (cache_dir or default_cache_dir()).resolve()
    local = cache / bucket / (prefix or "_root")
    segments = [bucket, *(prefix.split("/") if prefix else [])]
    if {".", "..", ""} & set(segments) or not local.resolve().is_relative_to(cache):
        raise ModelError(
            f"{uri}: '.', '..' or empty segments in an S3 URI; refused (the local copy would leave {cache})"
        )
    store = S3Store(bucket, prefix, s3 or S3Options())
    local.parent.mkdir(parents=True, exist_ok=True)
    # Workers on one node share the cache: one syncs, the others wait and then find it complete.
    with (local.parent / f".{local.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _sync(uri, store, local, check)


def _sync(uri: str, store: S3Store, local: Path, check: Callable[[Path, str | None], Path]) -> Path:
    objects = [o for o in store.list_objects() if not o.key.endswith("/")]
    if not objects:
        raise ModelError(f"{uri}: no objects under this prefix")
    listing = [{"key": o.key, "size": o.size, "etag": o.etag} for o in objects]
    marker = local / SYNC_MARKER
    if marker.is_file():
        try:
            done = json.loads(marker.read_text())
        except (OSError, ValueError):
            done = None
        if done == listing:
            return check(local, uri)
        marker.unlink()  # about to change the copy: it is incomplete until the new marker lands
    wanted = {o.key for o in objects}
    for path in sorted(local.rglob("*")) if local.is_dir() else []:
        rel = path.relative_to(local).as_posix()
        if path.is_file() and rel not in wanted and rel != SYNC_MARKER:
            path.unlink()
    for o in objects:
        dest = (local / o.key).resolve()
        if not dest.is_relative_to(local.resolve()):
            raise ModelError(f"{uri}: object key {o.key!r} would land outside the model folder; refused")
        if dest.is_file() and dest.stat().st_size == o.size and _unchanged(dest, store, o.key):
            continue
        try:
            store.download(o, dest)
        except StorageError as err:
            raise ModelError(f"cannot sync {uri} to {local}: {err}") from None
    check(local, uri)
    marker.write_text(json.dumps(listing))
    return local


def _unchanged(dest: Path, store: S3Store, key: str) -> bool:
    """A file left by an interrupted sync is kept only if it matches the object's sha256."""
    stored = store.stored_sha256(key)
    return stored is not None and sha256_file(dest) == stored


def push_model(
    src: Path, uri: str, s3: S3Options | None = None, check: Callable[[Path, str | None], Path] = check_layout
) -> list[str]:
    """Upload a model folder (each file with its sha256 in the object metadata); `check` refuses a folder
    that is not the expected model (default: CogVideoX in the diffusers layout)."""
    check(src, None)
    store = open_store(uri, s3)
    store.check_access(write=True)
    written = []
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        key = path.relative_to(src).as_posix()
        digest = sha256_file(path)
        if store.stored_sha256(key) != digest:
            store.write_file(key, path, digest)
            written.append(key)
    return written
