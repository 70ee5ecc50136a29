"""A store under an S3 prefix: retried (transient errors with backoff; a call without answer named while it
waits), checked (sizes, MD5 ETags, the sha256 our uploads carry), conditional creates."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tenacity import (
    RetryCallState,
    retry,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from disney_train.config import S3Options
from disney_train.storage.base import (
    SHA256_META,
    WRITE_CHECK_KEY,
    NoSuchObjectError,
    ObjectInfo,
    StorageError,
    TooLargeError,
)
from disney_train.storage.s3_errors import DENIED_CODES, IntegrityError, ShortRead, describe, is_transient, root_cause
from disney_train.storage.watch import IO, STALLS, Waiting, _NoAnswerFor

log = logging.getLogger(__name__)


def _etag_md5(etag: str) -> str | None:
    """A single-part upload's ETag is the MD5 of its bytes; a multipart one ('…-N') is not."""
    value = etag.strip('"')
    return value if len(value) == 32 and "-" not in value else None


def _log_retry(state: RetryCallState) -> None:
    err = state.outcome.exception() if state.outcome else None
    IO.add("retries")
    log.warning("S3 attempt %d failed (%s); retrying", state.attempt_number, type(err).__name__)


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
            retry=retry_if_exception(is_transient),
            # attempts, or time without an answer (a transfer that moves bytes is not given up)
            stop=stop_after_attempt(self.options.max_attempts) | _NoAnswerFor(waiting),
            wait=wait_exponential_jitter(multiplier=0.1, max=5.0, jitter=0.2),
            before_sleep=_log_retry,
            reraise=True,
        )

    def _fail(self, op: str, key: str, err: BaseException) -> StorageError:
        from botocore.exceptions import ClientError, NoCredentialsError

        where = self.url(key) if key else self.uri
        err = root_cause(err)
        if isinstance(err, NoCredentialsError):
            return StorageError(
                f"{op} {where}: no S3 credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "(in Kubernetes: the Secret named in the spec)"
            )
        if isinstance(err, ClientError):
            code = str(err.response.get("Error", {}).get("Code", ""))
            if code in DENIED_CODES:
                return StorageError(
                    f"{op} {where}: S3 refused the request, {describe(err)}. Check that "
                    "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY are right and allow this "
                    f"{'write' if op in ('write', 'upload') else 'read'}."
                )
            if code == "NoSuchBucket" or (not key and code in ("404", "NotFound")):
                return StorageError(f"{op} {where}: bucket {self.bucket!r} does not exist")
            if code in ("NoSuchKey", "404", "NotFound"):
                return NoSuchObjectError(f"{op} {where}: no such object")
        transient = " after retries" if is_transient(err) else ""
        return StorageError(f"{op} {where} failed{transient}: {describe(err)}")

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
                raise ShortRead(f"got {len(data)} of {size} bytes")
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
                raise ShortRead(f"got {len(data)} of {resp['ContentLength']} bytes")
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
                raise ShortRead(f"got {len(data)} of {size} bytes")
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
                    raise IntegrityError(f"got {size} of {obj.size} bytes")
                # sha256 is the stronger check; an ETag is an MD5 only for single-part uploads without KMS
                kms = str(resp.get("ServerSideEncryption", "")).startswith("aws:kms")
                want = None if (expected_sha or kms) else _etag_md5(obj.etag)
                if want and md5.hexdigest() != want:
                    raise IntegrityError(f"MD5 {md5.hexdigest()} does not match the ETag {want}")
                if expected_sha and sha.hexdigest() != expected_sha:
                    raise IntegrityError(f"sha256 {sha.hexdigest()} does not match the stored {expected_sha}")
                os.replace(tmp, dest)
            finally:
                tmp.unlink(missing_ok=True)
            IO.add("read_bytes", size)
            return sha.hexdigest()

        result: str = self._call("read", obj.key, fetch, moving=True)
        return result
