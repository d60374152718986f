"""Downloads that verify themselves: the whole object, or an error that names it.

An HTTP body can end early without any error: a proxy or a broken connection
may close it with a ``Content-Length`` that matches what was sent. So the bytes
read (as stored, before any gunzip) are compared with the answer's
``Content-Length`` and, when the object was listed, with its listed size; the
GET is conditional on the listed ETag, so both describe the same version. An
object stored with a full-object checksum (CRC32, SHA256...) is also checked
against it (``ChecksumMode=ENABLED``; botocore verifies while reading).

A read that comes up short, is cut off or fails its checksum raises
:class:`S3ReadError`, a transient error that :func:`download` retries with a
fresh GET (botocore's retries do not cover reading the body). If it persists,
the last :class:`S3ReadError` is raised: it names the object and what was
expected, and nothing of the object has been used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, final

import anyio

from riprap import TransientError
from riprap.policies import Classifier, Retry, retry

from ._client import (
    DEFAULT_ATTEMPTS,
    Listed,
    S3ClientConfig,
    call,
    client_error_types,
    is_precondition_failure,
)
from ._formats import ObjectTooLargeError, too_large

if TYPE_CHECKING:
    from collections.abc import Sequence

    from riprap import Clock
    from riprap.policies import PolicyHook, Verdict


@final
class S3ReadError(TransientError):
    """An object's bytes did not arrive whole: short, cut off, or failing their checksum.

    Args:
        bucket: The object's bucket.
        key: The object's key.
        problem: What went wrong.
        expected: The size the object should have, if known.
        got: The bytes actually read (``None``: the read broke off).

    The arguments are kept as attributes of the same names.

    .. versionadded:: 0.2
    """

    def __init__(
        self, bucket: str, key: str, problem: str, *, expected: int | None, got: int | None
    ) -> None:
        self.bucket = bucket
        self.key = key
        self.expected = expected
        self.got = got
        self.problem = problem
        super().__init__(f"s3://{bucket}/{key}: {problem}")


def _only_reads(exc: BaseException) -> Verdict:
    """Retry incomplete reads only: botocore has retried the calls themselves already."""
    return "transient" if isinstance(exc, S3ReadError) else "permanent"


_READS_ONLY = Classifier()
_READS_ONLY.add_hook(_only_reads)


async def download(
    config: S3ClientConfig,
    client: Any,
    bucket: str,
    key: str,
    *,
    listed: Listed | None = None,
    clock: Clock | None = None,
    hooks: Sequence[PolicyHook] = (),
    stage: str | None = None,
    max_bytes: int | None = None,
) -> tuple[bytes, dict[str, Any]]:
    """The whole object ``key`` and its GET response, verified (see the module docstring).

    Incomplete reads are retried with a fresh GET, ``config.max_attempts``
    (default 3) attempts in all, each retry reported to ``hooks``.

    Raises:
        ObjectTooLargeError: The answer announces more than ``max_bytes``
            bytes; none of the body is read.
        S3ReadError: Every attempt read the object short, cut off or corrupted.
        botocore.exceptions.ClientError: S3 refused the GET (after botocore's retries).
        TimeoutError: The GET took longer than ``config.call_timeout``.
    """
    policy = Retry(
        attempts=config.max_attempts or DEFAULT_ATTEMPTS,
        timeout=None,
        wait_initial=0.05,
        wait_max=2.0,
        classifier=_READS_ONLY,
    )
    fetch = retry(policy, clock=clock, hooks=hooks, stage=stage, dependency="s3")(get_verified)
    return await fetch(config, client, bucket, key, listed, max_bytes)


async def get_verified(
    config: S3ClientConfig,
    client: Any,
    bucket: str,
    key: str,
    listed: Listed | None,
    max_bytes: int | None = None,
) -> tuple[bytes, dict[str, Any]]:
    """One GET of the whole object, its bytes checked; no retry.

    Raises:
        ObjectTooLargeError: The answer announces more than ``max_bytes`` bytes.
        S3ReadError: The bytes are short, cut off or fail the object's checksum.
    """
    try:
        response = await _get(config, client, bucket, key, listed)
    except client_error_types() as exc:
        if listed is None or not is_precondition_failure(exc):
            raise
        # Replaced since it was listed: check against the version there now.
        listed = await _head(config, client, bucket, key)
        response = await _get(config, client, bucket, key, listed)
    announced = response.get("ContentLength")
    if max_bytes is not None and announced is not None and announced > max_bytes:
        async with response["Body"]:  # hands the connection back without reading the body
            pass
        raise ObjectTooLargeError(too_large(announced, max_bytes), announced)
    expected = listed.size if listed is not None else announced
    data = await _read(config, response, bucket, key, expected)
    got = len(data)
    if announced is not None and got != announced:
        problem = f"read {got} bytes, but the answer announced {announced}"
        raise S3ReadError(bucket, key, problem, expected=expected, got=got)
    if listed is not None and got != listed.size:
        problem = f"read {got} bytes, but S3 lists the object at {listed.size} bytes"
        raise S3ReadError(bucket, key, problem, expected=listed.size, got=got)
    return data, response


async def _get(
    config: S3ClientConfig, client: Any, bucket: str, key: str, listed: Listed | None
) -> dict[str, Any]:
    condition = {"IfMatch": listed.etag} if listed is not None and listed.etag else {}
    request = client.get_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED", **condition)
    response: dict[str, Any] = await call(config, request)
    return response


async def _head(config: S3ClientConfig, client: Any, bucket: str, key: str) -> Listed:
    head = await call(config, client.head_object(Bucket=bucket, Key=key))
    return Listed(key, int(head["ContentLength"]), head.get("ETag"))


async def _read(
    config: S3ClientConfig, response: dict[str, Any], bucket: str, key: str, expected: int | None
) -> bytes:
    """The body, under the call timeout; a broken or corrupt read is an :class:`S3ReadError`."""
    import aiohttp

    broken: tuple[type[BaseException], ...] = (
        *client_error_types(),
        aiohttp.ClientError,
        ConnectionError,
        TimeoutError,
    )
    try:
        async with response["Body"] as body:
            with anyio.fail_after(config.call_timeout):
                data: bytes = await body.read()
    except broken as exc:
        size = f"{expected} bytes" if expected is not None else "the object"
        problem = f"reading {size} broke off or failed the checksum: {type(exc).__name__}: {exc}"
        raise S3ReadError(bucket, key, problem, expected=expected, got=None) from exc
    return data
