"""How an S3 failure is judged: worth a retry (5xx, throttling, a dropped or short body, bytes that do not
match their checksum) or not (403, 404, a local disk), and how it is described to the user."""

from __future__ import annotations

TRANSIENT_CODES = {
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
DENIED_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "Forbidden"}


def root_cause(err: BaseException) -> BaseException:
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


def is_transient(err: BaseException) -> bool:
    err = root_cause(err)
    from botocore.exceptions import (
        ClientError,
        ConnectionError,
        HTTPClientError,
        IncompleteReadError,
        ResponseStreamingError,
    )

    if isinstance(err, ShortRead | IncompleteReadError | ResponseStreamingError | ConnectionError):
        return True
    if isinstance(err, HTTPClientError):  # ReadTimeout, ConnectionClosed and friends
        return True
    if isinstance(err, ClientError):
        code = str(err.response.get("Error", {}).get("Code", ""))
        status = int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        return code in TRANSIENT_CODES or status >= 500 or status == 429
    # local file errors (a full disk, a permission) and anything else are not worth a retry
    return False


class ShortRead(Exception):
    pass


class IntegrityError(ShortRead):
    """Downloaded bytes do not match the object's checksum (retried: transit corruption is transient)."""


def describe(err: BaseException) -> str:
    from botocore.exceptions import ClientError

    err = root_cause(err)
    if isinstance(err, ClientError):
        e = err.response.get("Error", {})
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return f"{e.get('Code', '?')} (HTTP {status}): {e.get('Message', '')}".rstrip(": ")
    return f"{type(err).__name__}: {err}"
