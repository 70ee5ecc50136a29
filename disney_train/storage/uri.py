"""Opening a store, or reading one object, by its URI: `s3://bucket/prefix` or a local path."""

from __future__ import annotations

from pathlib import Path

from disney_train.config import S3Options
from disney_train.storage.base import StorageError, Store, is_s3, split_s3
from disney_train.storage.local import LocalStore
from disney_train.storage.s3 import S3Keys, S3Store


def open_store(
    uri: str, s3: S3Options | None = None, keys: S3Keys | None = None, deadline: float | None = None
) -> Store:
    """The store at `uri`: an S3 prefix (`keys` and `deadline` as `S3Store` takes them) or a local folder."""
    if is_s3(uri):
        bucket, prefix = split_s3(uri)
        return S3Store(bucket, prefix, s3 or S3Options(), keys=keys, deadline=deadline)
    return LocalStore(Path(uri))


def read_uri(uri: str, s3: S3Options | None = None) -> bytes:
    """One object by its full URI: a local file path or s3://bucket/key."""
    parent, _, name = uri.rstrip("/").rpartition("/")
    if not name or (is_s3(uri) and parent.count("/") < 2):
        raise StorageError(f"{uri}: not a file or object URI")
    return open_store(parent or ".", s3).read_bytes(name)
