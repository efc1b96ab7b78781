"""Retries for remote (s3://) reads: exponential backoff with jitter, bounded attempts and time.

    from pretrain.s3retry import RetryPolicy, retry_call
    data = retry_call(lambda: fs.cat_file(path), url, RetryPolicy(retries=5, backoff=0.5))

What is transient (retried) and what is permanent (raised at once) follows what s3fs raises.
s3fs already retries some low-level errors itself (botocore's HTTPClientError family, socket
timeouts, IncompleteRead, ResponseParserError, aiohttp's ClientPayloadError, "SlowDown") and
translates every other botocore `ClientError` into a Python exception (`s3fs.errors`):
NoSuchKey/NoSuchBucket/404 -> FileNotFoundError, AccessDenied/403/InvalidAccessKeyId/
SignatureDoesNotMatch/ExpiredToken -> PermissionError, RequestTimeout -> TimeoutError,
500/InternalError -> OSError(EREMOTEIO), 503/SlowDown/ServiceUnavailable -> OSError(EBUSY),
InvalidRange/400 -> OSError(EINVAL), an unknown code -> OSError(EIO); the ClientError is kept
as `__cause__`. What escapes after s3fs's own retries is raw: botocore's EndpointConnectionError
(a botocore ConnectionError, not an OSError), ReadTimeoutError, aiohttp's client errors.

Transient: a ClientError (raised or as the cause) whose code or HTTP status says
throttling/server error/timeout (500, 502, 503, 504, 429, InternalError, ServiceUnavailable,
SlowDown, RequestTimeout, Throttling...); botocore connection/HTTP/read errors; aiohttp client
errors; ConnectionError, TimeoutError; an OSError whose errno is not a permanent one.
Permanent: FileNotFoundError, PermissionError, IsADirectoryError/NotADirectoryError, missing
credentials, ClientErrors with any other code (NoSuchKey, AccessDenied, ...), OSErrors with
ENOENT/EACCES/EPERM/EINVAL/..., and anything that is not an I/O error (a corrupt tar, bad JSON).

Each retry is logged at WARNING with the URL, the attempt and the error's type and message,
passed through `redact` (no access key id, secret or session token, no presigned-URL
signature); nothing here ever formats credentials.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

TRANSIENT_CODES = frozenset({
    "500", "502", "503", "504", "429", "InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout",
    "RequestTimeoutException", "Throttling", "ThrottlingException", "ThrottledException", "RequestLimitExceeded",
    "TooManyRequestsException", "ProvisionedThroughputExceededException", "BandwidthLimitExceeded",
    "OperationAborted", "EC2ThrottledException", "PriorRequestNotComplete", "IDPCommunicationError",
})  # fmt: skip
PERMANENT_ERRNOS = frozenset({
    errno.ENOENT, errno.EACCES, errno.EPERM, errno.EINVAL, errno.EISDIR, errno.ENOTDIR, errno.ENAMETOOLONG,
    errno.ENOSYS, errno.EMSGSIZE, errno.EEXIST, errno.ENOTEMPTY, errno.EROFS, getattr(errno, "EREMCHG", errno.ENOENT),
})  # fmt: skip
_PERMANENT_TYPES = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)


@dataclass(frozen=True)
class RetryPolicy:
    """`retries` more attempts after the first; the k-th retry waits backoff x 2^(k-1), capped at
    `max_delay`, with "equal jitter" (between half and all of it); no retry starts once
    `max_time` seconds have passed since the first attempt (or would, after its wait)."""

    retries: int = 5
    backoff: float = 0.5
    max_delay: float = 30.0
    max_time: float = 300.0

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        """The wait before retry number `retry` (1-based), jittered."""
        base = min(self.max_delay, self.backoff * 2 ** (retry - 1))
        return base / 2 + (rng or random).uniform(0, base / 2)


NO_RETRY = RetryPolicy(retries=0)


def is_remote(url: str) -> bool:
    """An fsspec URL that goes over the network (s3://, gs://, http://...), not a local path."""
    return "://" in url and not url.startswith("file://")


def _client_error_info(exn: BaseException) -> tuple[str, int] | None:
    """(error code, HTTP status) of a botocore ClientError-like exception, else None."""
    response = getattr(exn, "response", None)
    if not isinstance(response, dict) or "Error" not in response:
        return None
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
    return code, int(status) if str(status).isdigit() else 0


@functools.cache
def _transient_types() -> tuple[type, ...]:
    types: list[type] = [ConnectionError, TimeoutError]
    try:
        from botocore import exceptions as bx

        types += [bx.HTTPClientError, bx.ConnectionError, bx.IncompleteReadError]
        from botocore.parsers import ResponseParserError  # invalid XML from a throttling proxy

        types.append(ResponseParserError)
    except ImportError:  # pragma: no cover - s3fs brings botocore
        pass
    try:
        import aiohttp

        types += [aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, aiohttp.ServerTimeoutError]
    except ImportError:  # pragma: no cover
        pass
    try:
        from fsspec.exceptions import FSTimeoutError

        types.append(FSTimeoutError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(types)


@functools.cache
def _permanent_types() -> tuple[type, ...]:
    types: list[type] = list(_PERMANENT_TYPES)
    try:
        from botocore import exceptions as bx

        names = ("NoCredentialsError", "PartialCredentialsError", "NoRegionError", "ParamValidationError")
        types += [getattr(bx, n) for n in names if hasattr(bx, n)]
    except ImportError:  # pragma: no cover
        pass
    return tuple(types)


def is_transient(exn: BaseException) -> bool:
    """Whether a failed remote read is worth another try (see the module doc)."""
    if isinstance(exn, _permanent_types()):
        return False
    for err in (exn, exn.__cause__):  # s3fs keeps the ClientError as the cause of what it raises
        info = _client_error_info(err) if err is not None else None
        if info is not None:
            code, status = info
            return code in TRANSIENT_CODES or status >= 500 or status == 429
    if isinstance(exn, _transient_types()):
        return True
    if isinstance(exn, OSError):
        return exn.errno not in PERMANENT_ERRNOS
    return False


_SECRET_PATTERNS = (
    re.compile(r"\b(?:AKIA|ASIA|AROA|AIDA)[A-Z0-9]{12,}\b"),  # access key ids
    re.compile(r"(?i)(X-Amz-(?:Credential|Signature|Security-Token)=)[^&\s'\"]+"),  # presigned URLs
    re.compile(r"(?i)((?:aws_)?(?:secret_access_key|session_token|access_key_id|secret|token)['\"]?\s*[:=]\s*['\"]?)"
               r"[^\s'\",}]+"),
    re.compile(r"(://)[^/@\s:]+:[^/@\s]+@"),  # user:password@ in a URL
)  # fmt: skip


def redact(text: str) -> str:
    """`text` without the credentials of this process's environment or anything shaped like one."""
    for name in ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + "***", text)
    return text


def describe(exn: BaseException) -> str:
    """`Type: message`, redacted and short, for a log line or an error message."""
    return redact(f"{type(exn).__name__}: {exn}")[:300]


def retry_call(
    fn: Callable[[], T],
    url: str,
    policy: RetryPolicy | None = None,
    what: str = "read",
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """`fn()`, tried again after transient errors while `policy` allows; a local `url` is tried once.

    A permanent error, or the last transient one, is raised unchanged (a FileNotFoundError stays one).
    """
    policy = policy or RetryPolicy()
    if not is_remote(url):
        return fn()
    start, slept = time.monotonic(), 0.0
    for attempt in range(policy.retries + 1):
        try:
            return fn()
        except Exception as exn:
            if attempt >= policy.retries or not is_transient(exn):
                if attempt:
                    log.warning("s3 %s of %s failed after %d attempt(s): %s", what, redact(url), attempt + 1,
                                describe(exn))  # fmt: skip
                raise
            wait = policy.delay(attempt + 1)
            if max(time.monotonic() - start, slept) + wait > policy.max_time:
                log.warning("s3 %s of %s: giving up after %d attempt(s), %.0f s retry budget spent: %s",
                            what, redact(url), attempt + 1, policy.max_time, describe(exn))  # fmt: skip
                raise
            log.warning("s3 %s of %s failed (attempt %d of %d), retrying in %.2f s: %s", what, redact(url),
                        attempt + 1, policy.retries + 1, wait, describe(exn))  # fmt: skip
            sleep(wait)
            slept += wait
    raise AssertionError("unreachable")  # pragma: no cover
