"""What every store shares: the `Store` interface, its errors, and the URI and checksum helpers."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from disney_train.errors import UserError

SHA256_META = "sha256"
WRITE_CHECK_KEY = ".disney-train-write-check"


class StorageError(UserError, RuntimeError):
    """An object could not be read or written; the message names it and the cause."""


class NoSuchObjectError(StorageError):
    """The object is not there (as opposed to a store that could not be reached)."""


class TooLargeError(StorageError, ValueError):
    """The object holds more than the reader takes (`Store.read_capped`)."""


class Store(Protocol):
    """A folder of objects addressed by relative keys (`shards/shard-000000.tar`)."""

    @property
    def uri(self) -> str: ...

    def url(self, key: str) -> str: ...
    def exists(self, key: str) -> bool: ...
    def read_capped(self, key: str, limit: int) -> bytes | None: ...
    def stored_sha256(self, key: str) -> str | None: ...
    def read_bytes(self, key: str) -> bytes: ...
    def read_range(self, key: str, offset: int, size: int) -> bytes: ...
    def write_bytes(self, key: str, data: bytes) -> None: ...
    def create_bytes(self, key: str, data: bytes) -> bool: ...
    def write_file(self, key: str, path: Path, sha256: str) -> None: ...
    def list_keys(self, prefix: str = "") -> list[str]: ...
    def delete(self, keys: list[str]) -> None: ...
    def check_access(self, write: bool) -> None: ...


@dataclass(frozen=True)
class ObjectInfo:
    key: str  # relative to the store's prefix
    size: int
    etag: str


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def cache_root() -> Path:
    """Where disney-train keeps what a later run can reuse (models, compiled ops, Ray run state):
    $DISNEY_TRAIN_CACHE, else $XDG_CACHE_HOME/disney-train, else ~/.cache/disney-train."""
    base = os.environ.get("DISNEY_TRAIN_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "disney-train"
    )
    return Path(base)


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    rest = uri.removeprefix("s3://")
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise StorageError(f"{uri}: an S3 URI is s3://bucket/prefix")
    return bucket, prefix.strip("/")
