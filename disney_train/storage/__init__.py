"""Object storage behind one small interface: a local folder or an S3 prefix.

Writes are atomic (a local temp file renamed into place; an S3 PUT or a completed multipart
upload, which S3 never shows half-done). Transient S3 errors (5xx, throttling, dropped or
truncated bodies) are retried with exponential backoff; permanent ones (403, 404) raise a
`StorageError` naming the object and what to check. Credentials come from the environment
(boto3's default chain), or are given (`S3Keys`: the operator reads a run with its tenant's Secret), and are
never printed.

    base       the `Store` interface, its errors, URI and checksum helpers
    uri        `open_store` and `read_uri`: a store or an object by its URI
    local      `LocalStore`
    s3         `S3Store` (and, for S3 only, `list_objects`/`download`: the model source's mirror)
    s3_errors  which S3 failures are retried, and how they are described
    watch      the S3 traffic counters (`IO`) and the watch that names calls without answer (`STALLS`)
"""

from disney_train.storage.base import (
    SHA256_META,
    WRITE_CHECK_KEY,
    NoSuchObjectError,
    ObjectInfo,
    StorageError,
    Store,
    TooLargeError,
    cache_root,
    is_s3,
    sha256_file,
    split_s3,
)
from disney_train.storage.local import LocalStore
from disney_train.storage.s3 import S3Keys, S3Store
from disney_train.storage.uri import open_store, read_uri
from disney_train.storage.watch import IO, STALLS

__all__ = [
    "IO",
    "SHA256_META",
    "STALLS",
    "WRITE_CHECK_KEY",
    "LocalStore",
    "NoSuchObjectError",
    "ObjectInfo",
    "S3Keys",
    "S3Store",
    "StorageError",
    "Store",
    "TooLargeError",
    "cache_root",
    "is_s3",
    "open_store",
    "read_uri",
    "sha256_file",
    "split_s3",
]
