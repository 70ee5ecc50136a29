"""Object storage behind one small interface: a local folder or an S3 prefix.

Writes are atomic (a local temp file renamed into place; an S3 PUT or a completed multipart
upload, which S3 never shows half-done). Transient S3 errors (5xx, throttling, dropped or
truncated bodies) are retried with exponential backoff; permanent ones (403, 404) raise a
`StorageError` naming the object and what to check. Credentials come from the environment
(boto3's default chain), or are given (`S3Keys`: the operator reads a run with its tenant's Secret), and are
never printed.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import multiprocessing
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tenacity import (
    RetryCallState,
    retry,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)
from tenacity.stop import stop_base

from disney_train.config import S3Options
from disney_train.errors import UserError

log = logging.getLogger(__name__)

SHA256_META = "sha256"
WRITE_CHECK_KEY = ".disney-train-write-check"


class StorageError(UserError, RuntimeError):
    """An object could not be read or written; the message names it and the cause."""


class NoSuchObjectError(StorageError):
    """The object is not there (as opposed to a store that could not be reached)."""


class TooLargeError(StorageError, ValueError):
    """The object holds more than the reader takes (`Store.read_capped`)."""


class IoCounters:
    """This process's S3 traffic, for the workers' metrics: bytes read and written, retries, and
    requests that failed for good. Kept in shared memory so that the decode workers a DataLoader
    forks add to the same figures (a process started with "spawn" or "forkserver" counts on its
    own, unseen). Made with the fork context explicitly: the default one would fix the process's
    start method at import."""

    FIELDS = ("read_bytes", "written_bytes", "retries", "failures")

    def __init__(self) -> None:
        self._values = multiprocessing.get_context("fork").Array("q", len(self.FIELDS))

    def add(self, field: str, n: int = 1) -> None:
        i = self.FIELDS.index(field)
        with self._values.get_lock():
            self._values[i] += n

    def snapshot(self) -> dict[str, int]:
        with self._values.get_lock():
            return dict(zip(self.FIELDS, self._values[:], strict=True))


IO = IoCounters()


class Waiting:
    """One S3 call being watched: since when it has had no answer (`moved()` when bytes come or go)."""

    def __init__(self, what: str, warn_after: float, give_up: float) -> None:
        self.what, self.warn_after, self.give_up = what, warn_after, give_up
        self.since = time.monotonic()
        self.next_warning = warn_after

    def moved(self, *_: object) -> None:  # also an s3transfer callback (bytes transferred)
        self.since = time.monotonic()
        self.next_warning = self.warn_after

    def idle(self) -> float:
        return time.monotonic() - self.since


class _NoAnswerFor(stop_base):
    """tenacity: stop once the call has had no answer for its `give_up` seconds."""

    def __init__(self, waiting: Waiting) -> None:
        self.waiting = waiting

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.waiting.idle() >= self.waiting.give_up


class StallWatch:
    """Names S3 calls that get no answer, while they wait: a frozen S3 otherwise says nothing until the last
    retry gives up (minutes). A call that moves bytes (a large download or upload) is not idle. One daemon
    thread per process, started at the first call (a forked decode worker starts its own), looks every
    `every` seconds."""

    def __init__(self, every: float = 1.0) -> None:
        self.every = every
        self._pid = -1
        self._tokens = itertools.count()

    def _start(self) -> None:
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()  # new state in a forked child: the parent's lock may have been held at the fork
        self._lock = threading.Lock()
        self._waiting: dict[int, Waiting] = {}
        threading.Thread(target=self._run, name="s3-stall-watch", daemon=True).start()

    @contextlib.contextmanager
    def watch(self, what: str, warn_after: float, give_up: float) -> Iterator[Waiting]:
        self._start()
        token, waiting = next(self._tokens), Waiting(what, warn_after, give_up)
        with self._lock:
            self._waiting[token] = waiting
        try:
            yield waiting
        finally:
            with self._lock:
                self._waiting.pop(token, None)

    def _run(self) -> None:
        while True:
            time.sleep(self.every)
            due = []
            with self._lock:
                for w in self._waiting.values():
                    idle = w.idle()
                    if idle >= w.next_warning:
                        w.next_warning += w.warn_after
                        due.append((w, idle))
            for w, idle in due:
                log.warning(
                    "S3 %s: no answer for %.0f s (slow or not answering; given up at %g s)", w.what, idle, w.give_up
                )


STALLS = StallWatch()


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


def _read_umask() -> int:
    mask = os.umask(0o022)  # read once, at import: os.umask is process-wide and not thread-safe
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _fsync_dir(path: Path) -> None:
    """Make a rename durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


# --------------------------------------------------------------------------- local folder


@dataclass
class LocalStore:
    root: Path

    @property
    def uri(self) -> str:
        return str(self.root)

    def url(self, key: str) -> str:
        return str(self.root / key)

    def _path(self, key: str) -> Path:
        return self.root / key

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def read_capped(self, key: str, limit: int) -> bytes | None:
        """The object, when there is one; TooLargeError when it holds more than `limit` bytes (not read)."""
        try:
            with self._path(key).open("rb") as f:
                data = f.read(limit + 1)
        except FileNotFoundError:
            return None
        except OSError as err:
            raise StorageError(f"cannot read {self.url(key)}: {err.strerror or err}") from err
        if len(data) > limit:
            raise TooLargeError(f"{self.url(key)}: more than {limit} bytes")
        return data

    def stored_sha256(self, key: str) -> str | None:
        p = self._path(key)
        return sha256_file(p) if p.is_file() else None

    def read_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as err:
            raise NoSuchObjectError(f"cannot read {self.url(key)}: no such object") from err
        except OSError as err:
            raise StorageError(f"cannot read {self.url(key)}: {err.strerror or err}") from err

    def read_range(self, key: str, offset: int, size: int) -> bytes:
        try:
            with self._path(key).open("rb") as f:
                f.seek(offset)
                data = f.read(size)
        except OSError as err:
            raise StorageError(f"cannot read {self.url(key)}: {err.strerror or err}") from err
        if len(data) != size:
            raise StorageError(f"{self.url(key)}: wanted {size} bytes at {offset}, the file has {len(data)}")
        return data

    def _atomic_write(self, key: str, write: Any) -> None:
        dest = self._path(key)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        except OSError as err:
            raise StorageError(f"cannot write {dest}: {err.strerror or err}") from err
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fchmod(f.fileno(), 0o666 & ~_UMASK)  # mkstemp makes 0600; others may read it
                os.fsync(f.fileno())
            os.replace(tmp, dest)
            _fsync_dir(dest.parent)
        except BaseException as err:
            Path(tmp).unlink(missing_ok=True)
            if isinstance(err, OSError):
                raise StorageError(f"cannot write {dest}: {err.strerror or err}") from err
            raise

    def write_bytes(self, key: str, data: bytes) -> None:
        self._atomic_write(key, lambda f: f.write(data))

    def create_bytes(self, key: str, data: bytes) -> bool:
        """Write the object only when there is none (False when there is): written aside, then linked into
        place, which fails when the name exists."""
        dest = self._path(key)
        if dest.exists():
            return False
        aside = f".{dest.name}.{uuid.uuid4().hex}.new"
        self.write_bytes(str(Path(key).with_name(aside)), data)
        try:
            os.link(dest.with_name(aside), dest)
        except FileExistsError:
            return False
        except OSError as err:
            raise StorageError(f"cannot write {dest}: {err.strerror or err}") from err
        finally:
            dest.with_name(aside).unlink(missing_ok=True)
        return True

    def write_file(self, key: str, path: Path, sha256: str) -> None:
        def copy(f: Any) -> None:
            with path.open("rb") as src:
                while block := src.read(1 << 20):
                    f.write(block)

        self._atomic_write(key, copy)

    def list_keys(self, prefix: str = "") -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            str(p.relative_to(self.root))
            for p in self.root.rglob("*")
            if p.is_file() and str(p.relative_to(self.root)).startswith(prefix)
        )

    def delete(self, keys: list[str]) -> None:
        """Remove the files, then the folders that this leaves empty (S3 has no folders to leave)."""
        parents: set[Path] = set()
        for key in keys:
            path = self._path(key)
            try:
                path.unlink(missing_ok=True)
            except OSError as err:
                raise StorageError(f"cannot delete {self.url(key)}: {err.strerror or err}") from err
            parents.update(p for p in path.parents if self.root in p.parents)
        for folder in sorted(parents, key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):  # not empty (or gone): keep it
                folder.rmdir()

    def check_access(self, write: bool) -> None:
        if write:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise StorageError(f"cannot create {self.root}: {err.strerror or err}") from err
            if not os.access(self.root, os.W_OK):
                raise StorageError(f"{self.root}: not writable")
        elif not self.root.is_dir():
            raise StorageError(f"{self.root}: no such folder")


# --------------------------------------------------------------------------- S3

_TRANSIENT_CODES = {
    "InternalError",
    "ServiceUnavailable",
    "SlowDown",
    "RequestTimeout",
    "Throttling",
    "ThrottlingException",
    "ConditionalRequestConflict",  # another conditional write to the key in flight (AWS asks for a retry)
    "503",
    "500",
    "502",
    "504",
}
_DENIED_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "Forbidden"}


def _root_cause(err: BaseException) -> BaseException:
    """boto3's upload_file wraps the ClientError in S3UploadFailedError: judge by what is inside."""
    from botocore.exceptions import BotoCoreError, ClientError

    seen = err
    while not isinstance(seen, ClientError | BotoCoreError):
        nxt = seen.__cause__ or seen.__context__
        if nxt is None:
            return err
        seen = nxt
    found: BaseException = seen
    return found


def _is_transient(err: BaseException) -> bool:
    err = _root_cause(err)
    from botocore.exceptions import (
        ClientError,
        ConnectionError,
        HTTPClientError,
        IncompleteReadError,
        ResponseStreamingError,
    )

    if isinstance(err, _ShortRead | IncompleteReadError | ResponseStreamingError | ConnectionError):
        return True
    if isinstance(err, HTTPClientError):  # ReadTimeout, ConnectionClosed and friends
        return True
    if isinstance(err, ClientError):
        code = str(err.response.get("Error", {}).get("Code", ""))
        status = int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        return code in _TRANSIENT_CODES or status >= 500 or status == 429
    # local file errors (a full disk, a permission) and anything else are not worth a retry
    return False


class _ShortRead(Exception):
    pass


class _IntegrityError(_ShortRead):
    """Downloaded bytes do not match the object's checksum (retried: transit corruption is transient)."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str  # relative to the store's prefix
    size: int
    etag: str


def _etag_md5(etag: str) -> str | None:
    """A single-part upload's ETag is the MD5 of its bytes; a multipart one ('…-N') is not."""
    value = etag.strip('"')
    return value if len(value) == 32 and "-" not in value else None


def _log_retry(state: RetryCallState) -> None:
    err = state.outcome.exception() if state.outcome else None
    IO.add("retries")
    log.warning("S3 attempt %d failed (%s); retrying", state.attempt_number, type(err).__name__)


def _describe(err: BaseException) -> str:
    from botocore.exceptions import ClientError

    err = _root_cause(err)
    if isinstance(err, ClientError):
        e = err.response.get("Error", {})
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return f"{e.get('Code', '?')} (HTTP {status}): {e.get('Message', '')}".rstrip(": ")
    return f"{type(err).__name__}: {err}"


@dataclass(frozen=True)
class S3Keys:
    """Keys given to a store, not taken from the environment (the operator's reads use a tenant's own)."""

    access_key_id: str
    secret_access_key: str = field(repr=False)


@dataclass
class S3Store:
    bucket: str
    prefix: str
    options: S3Options
    multipart_threshold: int = 64 * 1024 * 1024
    multipart_chunksize: int = 16 * 1024 * 1024
    keys: S3Keys | None = field(default=None, repr=False)  # None: boto3's default chain (the environment)
    # `read_capped`'s bound in all, retries included, and each connect and socket read's (None: 10 s and 60 s):
    # the operator reads at endpoints tenants name, where a server that trickles bytes must not hold a thread
    deadline: float | None = None

    def __post_init__(self) -> None:
        self._client: Any = None
        self._client_pid = -1

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def url(self, key: str) -> str:
        return f"{self.uri}/{key}"

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    @property
    def client(self) -> Any:
        # One client per process: boto3 clients must not cross a fork (decode workers fork).
        if self._client is None or self._client_pid != os.getpid():
            import boto3
            from botocore.config import Config

            cfg = Config(
                # Retries are ours (tenacity, below): one policy for requests and body reads alike.
                retries={"total_max_attempts": 1, "mode": "standard"},
                connect_timeout=min(10, self.deadline or 10, self.options.give_up_seconds),
                read_timeout=min(60, self.deadline or 60, self.options.give_up_seconds),
                region_name=self.options.region,
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            )
            endpoint = self.options.endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None
            keys = {}
            if self.keys is not None:
                keys = {
                    "aws_access_key_id": self.keys.access_key_id,
                    "aws_secret_access_key": self.keys.secret_access_key,
                }
            self._client = boto3.session.Session(**keys).client("s3", endpoint_url=endpoint, config=cfg)
            self._client_pid = os.getpid()
        return self._client

    def _retrying(self, waiting: Waiting) -> Any:
        return retry(
            retry=retry_if_exception(_is_transient),
            # attempts, or time without an answer (a transfer that moves bytes is not given up)
            stop=stop_after_attempt(self.options.max_attempts) | _NoAnswerFor(waiting),
            wait=wait_exponential_jitter(multiplier=0.1, max=5.0, jitter=0.2),
            before_sleep=_log_retry,
            reraise=True,
        )

    def _fail(self, op: str, key: str, err: BaseException) -> StorageError:
        from botocore.exceptions import ClientError, NoCredentialsError

        where = self.url(key) if key else self.uri
        err = _root_cause(err)
        if isinstance(err, NoCredentialsError):
            return StorageError(
                f"{op} {where}: no S3 credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "(in Kubernetes: the Secret named in the spec)"
            )
        if isinstance(err, ClientError):
            code = str(err.response.get("Error", {}).get("Code", ""))
            if code in _DENIED_CODES:
                return StorageError(
                    f"{op} {where}: S3 refused the request, {_describe(err)}. Check that "
                    "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY are right and allow this "
                    f"{'write' if op in ('write', 'upload') else 'read'}."
                )
            if code == "NoSuchBucket" or (not key and code in ("404", "NotFound")):
                return StorageError(f"{op} {where}: bucket {self.bucket!r} does not exist")
            if code in ("NoSuchKey", "404", "NotFound"):
                return NoSuchObjectError(f"{op} {where}: no such object")
        transient = " after retries" if _is_transient(err) else ""
        return StorageError(f"{op} {where} failed{transient}: {_describe(err)}")

    def _call(self, op: str, key: str, fn: Any, moving: bool = False) -> Any:
        """fn() with retries, watched for stalls; `moving`: fn(waiting), which calls waiting.moved() as bytes move."""
        try:
            where = self.url(key) if key else self.uri
            with STALLS.watch(f"{op} {where}", self.options.stall_warn_seconds, self.options.give_up_seconds) as w:
                return self._retrying(w)(lambda: fn(w) if moving else fn())()
        except StorageError:
            IO.add("failures")
            raise
        except Exception as err:
            IO.add("failures")
            raise self._fail(op, key, err) from err

    def _head(self, key: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        def head() -> dict[str, Any] | None:
            try:
                result: dict[str, Any] = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
                return result
            except ClientError as err:
                if str(err.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
                    return None
                raise

        result: dict[str, Any] | None = self._call("read", key, head)
        return result

    def exists(self, key: str) -> bool:
        return self._head(key) is not None

    def read_capped(self, key: str, limit: int) -> bytes | None:
        """The object in one request, when there is one; TooLargeError when it holds more than `limit` bytes
        (its body left unread); with a `deadline`, StorageError when it is not read within it."""
        start = time.monotonic()

        def late() -> None:
            if self.deadline is not None and time.monotonic() - start > self.deadline:
                raise StorageError(f"read {self.url(key)}: not read within {self.deadline:g} s")

        def get() -> bytes:
            late()
            resp = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            size = int(resp.get("ContentLength", 0))
            body = resp["Body"]
            if size > limit:
                body.close()
                raise TooLargeError(f"{self.url(key)}: {size} bytes, more than {limit}")
            # body.read() waits for the whole body however slowly it comes (each socket read has its own
            # timeout, not the whole): read what has come, as it comes, and look at the time between reads
            raw: Any = getattr(body, "_raw_stream", body)  # urllib3's response, under botocore's StreamingBody
            read = raw.read1 if hasattr(raw, "read1") else body.read
            chunks: list[bytes] = []
            with contextlib.closing(body):
                while chunk := read(64 * 1024):
                    chunks.append(chunk)
                    late()
            data = b"".join(chunks)
            if len(data) != size:
                raise _ShortRead(f"got {len(data)} of {size} bytes")
            IO.add("read_bytes", len(data))
            return data

        try:
            result: bytes = self._call("read", key, get)
        except NoSuchObjectError:
            return None
        return result

    def stored_sha256(self, key: str) -> str | None:
        head = self._head(key)
        if head is None:
            return None
        value = head.get("Metadata", {}).get(SHA256_META)
        return str(value) if value else None

    def read_bytes(self, key: str) -> bytes:
        def get() -> bytes:
            resp = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            data: bytes = resp["Body"].read()
            if len(data) != int(resp.get("ContentLength", len(data))):
                raise _ShortRead(f"got {len(data)} of {resp['ContentLength']} bytes")
            IO.add("read_bytes", len(data))
            return data

        result: bytes = self._call("read", key, get)
        return result

    def read_range(self, key: str, offset: int, size: int) -> bytes:
        def get() -> bytes:
            resp = self.client.get_object(
                Bucket=self.bucket, Key=self._key(key), Range=f"bytes={offset}-{offset + size - 1}"
            )
            data: bytes = resp["Body"].read()
            if len(data) != size:
                raise _ShortRead(f"got {len(data)} of {size} bytes")
            IO.add("read_bytes", len(data))
            return data

        result: bytes = self._call("read", key, get)
        return result

    def write_bytes(self, key: str, data: bytes) -> None:
        digest = hashlib.sha256(data).hexdigest()
        self._call(
            "write",
            key,
            lambda: self.client.put_object(
                Bucket=self.bucket, Key=self._key(key), Body=data, Metadata={SHA256_META: digest}
            ),
        )
        IO.add("written_bytes", len(data))

    def create_bytes(self, key: str, data: bytes) -> bool:
        """Write the object only when there is none (False when there is): a conditional put
        (`If-None-Match: *`), so of two writers racing for one key exactly one succeeds."""
        from botocore.exceptions import ClientError

        digest = hashlib.sha256(data).hexdigest()

        def put() -> bool:
            try:
                self.client.put_object(
                    Bucket=self.bucket, Key=self._key(key), Body=data, Metadata={SHA256_META: digest}, IfNoneMatch="*"
                )
            except ClientError as err:
                if str(err.response.get("Error", {}).get("Code")) in ("PreconditionFailed", "412"):
                    return False
                raise
            return True

        created: bool = self._call("write", key, put)
        if created:
            IO.add("written_bytes", len(data))
        return created

    def write_file(self, key: str, path: Path, sha256: str) -> None:
        from boto3.s3.transfer import TransferConfig

        tc = TransferConfig(
            multipart_threshold=self.multipart_threshold,
            multipart_chunksize=self.multipart_chunksize,
            max_concurrency=4,
            use_threads=True,
        )
        # upload_file aborts a failed multipart upload, so nothing half-written is ever visible.
        self._call(
            "upload",
            key,
            lambda waiting: self.client.upload_file(
                str(path),
                self.bucket,
                self._key(key),
                ExtraArgs={"Metadata": {SHA256_META: sha256}},
                Config=tc,
                Callback=waiting.moved,
            ),
            moving=True,
        )
        IO.add("written_bytes", path.stat().st_size)

    def list_keys(self, prefix: str = "") -> list[str]:
        def listing() -> list[str]:
            keys: list[str] = []
            base = self._key("") if self.prefix else ""
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=base + prefix):
                keys.extend(obj["Key"][len(base) :] for obj in page.get("Contents", []))
            return sorted(keys)

        result: list[str] = self._call("list", prefix, listing)
        return result

    def delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):  # DeleteObjects takes up to 1000 keys
            batch = keys[start : start + 1000]

            def remove(batch: list[str] = batch) -> None:
                resp = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": [{"Key": self._key(k)} for k in batch], "Quiet": True}
                )
                errors = resp.get("Errors") or []
                if errors:
                    first = errors[0]
                    raise StorageError(
                        f"delete {self.url(batch[0])}…: {len(errors)} object(s) not deleted "
                        f"({first.get('Key')}: {first.get('Code')} {first.get('Message')})"
                    )

            self._call("delete", batch[0], remove)

    def check_access(self, write: bool) -> None:
        """Fail fast, before any work, when the bucket is missing or the keys are refused: reading
        the bucket, and for `write` putting (then deleting) a small object under the prefix."""
        self._call("read", "", lambda: self.client.head_bucket(Bucket=self.bucket))
        if write:
            key = WRITE_CHECK_KEY
            self._call("write", key, lambda: self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=b""))
            self._call("write", key, lambda: self.client.delete_object(Bucket=self.bucket, Key=self._key(key)))

    def list_objects(self, prefix: str = "") -> list[ObjectInfo]:
        def listing() -> list[ObjectInfo]:
            out: list[ObjectInfo] = []
            base = self._key("") if self.prefix else ""
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base + prefix):
                out.extend(
                    ObjectInfo(o["Key"][len(base) :], int(o["Size"]), str(o.get("ETag", "")))
                    for o in page.get("Contents", [])
                )
            return sorted(out, key=lambda o: o.key)

        result: list[ObjectInfo] = self._call("list", prefix, listing)
        return result

    def download(self, obj: ObjectInfo, dest: Path) -> str:
        """Stream an object to `dest` (temp file, then rename) and return its sha256.

        Checked against the listed size, the ETag when it is an MD5 (single-part uploads) and the
        sha256 metadata our uploads carry; a mismatch is retried, then raised naming the object."""

        def fetch(waiting: Waiting) -> str:
            resp = self.client.get_object(Bucket=self.bucket, Key=self._key(obj.key))
            expected_sha = resp.get("Metadata", {}).get(SHA256_META)
            sha, md5, size = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
            tmp = Path(name)
            try:
                with os.fdopen(fd, "wb") as f:
                    for chunk in resp["Body"].iter_chunks(1 << 20):
                        waiting.moved()
                        f.write(chunk)
                        sha.update(chunk)
                        md5.update(chunk)
                        size += len(chunk)
                if size != obj.size:
                    raise _IntegrityError(f"got {size} of {obj.size} bytes")
                # sha256 is the stronger check; an ETag is an MD5 only for single-part uploads without KMS
                kms = str(resp.get("ServerSideEncryption", "")).startswith("aws:kms")
                want = None if (expected_sha or kms) else _etag_md5(obj.etag)
                if want and md5.hexdigest() != want:
                    raise _IntegrityError(f"MD5 {md5.hexdigest()} does not match the ETag {want}")
                if expected_sha and sha.hexdigest() != expected_sha:
                    raise _IntegrityError(f"sha256 {sha.hexdigest()} does not match the stored {expected_sha}")
                os.replace(tmp, dest)
            finally:
                tmp.unlink(missing_ok=True)
            IO.add("read_bytes", size)
            return sha.hexdigest()

        result: str = self._call("read", obj.key, fetch, moving=True)
        return result
