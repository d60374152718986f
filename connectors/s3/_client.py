"""The aiobotocore client every S3 connector opens, with a timeout on every call.

aiobotocore and botocore are imported here, lazily, and nowhere else in riprap:
``import riprap`` (and even ``import riprap.connectors.s3``) never loads them.
botocore is untyped, so clients and responses are ``Any`` at this boundary.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, final
from urllib.parse import quote

import anyio

from riprap import ConfigError

if TYPE_CHECKING:
    import contextlib
    from collections.abc import Awaitable, Mapping

_PRECONDITION_CODES = frozenset(("PreconditionFailed", "ConditionalRequestConflict", "412", "409"))
_MISSING_CODES = frozenset(("NoSuchKey", "404", "NotFound"))

DEFAULT_ATTEMPTS = 3
"""botocore's attempts per call for connectors that have no riprap retry around their calls."""


@final
@dataclass(frozen=True, slots=True)
class S3ClientConfig:
    """How the connectors talk to S3.

    Attributes:
        region_name: The AWS region (``None``: botocore's default chain).
        connect_timeout: Seconds to establish a connection (botocore).
        read_timeout: Seconds to wait for data on a socket (botocore).
        call_timeout: Seconds one whole call may take, botocore's own retries
            included; past it the call raises ``TimeoutError`` (transient).
        max_attempts: botocore's attempts per call (``standard`` retry mode).
            ``None`` (the default): 1 for :class:`S3Sink`, whose writes the
            pipeline's sink policy retries (one retrier, its retries counted,
            logged and waited out like any sink's), and 3 for the source,
            dead letters and checkpoints, which have no riprap retry around
            their calls. A source or sink in a pipeline reports the retries
            botocore makes to the pipeline's policy hooks, so they count in the
            run report and ``riprap_retries_total`` with riprap's own.
        client_kwargs: Extra keyword arguments for ``create_client``
            (credentials, ``verify``...).

    .. versionadded:: 0.1
    """

    region_name: str | None = None
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    call_timeout: float = 120.0
    max_attempts: int | None = None
    client_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for option in ("connect_timeout", "read_timeout", "call_timeout"):
            if not 0 < getattr(self, option) < math.inf:
                raise ConfigError(
                    option, f"must be positive and finite, got {getattr(self, option)!r}"
                )
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ConfigError("max_attempts", f"must be at least 1, got {self.max_attempts}")


def new_session() -> Any:
    """A botocore session: caches service models and credentials, bound to no event loop."""
    from aiobotocore.session import get_session

    return get_session()


async def open_client(
    stack: contextlib.AsyncExitStack,
    config: S3ClientConfig,
    endpoint_url: str | None,
    session: Any = None,
    *,
    attempts: int = DEFAULT_ATTEMPTS,
) -> Any:
    """Create an S3 client whose lifetime is ``stack``'s (from ``session`` if given).

    ``attempts`` is botocore's attempts per call unless ``config.max_attempts`` says.
    """
    from aiobotocore.config import AioConfig

    max_attempts = config.max_attempts if config.max_attempts is not None else attempts
    botocore_config = AioConfig(
        connect_timeout=config.connect_timeout,
        read_timeout=config.read_timeout,
        retries={"max_attempts": max_attempts, "mode": "standard"},
    )
    creator = (session or new_session()).create_client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=config.region_name,
        config=botocore_config,
        **dict(config.client_kwargs),
    )
    return await stack.enter_async_context(creator)


async def call(config: S3ClientConfig, awaitable: Awaitable[Any]) -> Any:
    """Await one S3 call under ``config.call_timeout``.

    Raises:
        TimeoutError: The call took longer (classified transient).
    """
    with anyio.fail_after(config.call_timeout):
        return await awaitable


async def read_body(config: S3ClientConfig, response: Any) -> bytes:
    """The whole body of a ``get_object`` response, under the call timeout."""
    async with response["Body"] as body:
        with anyio.fail_after(config.call_timeout):
            data: bytes = await body.read()
    return data


def error_code(exc: BaseException) -> str | None:
    """The S3 error code of a botocore ``ClientError`` (``None`` for anything else)."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None
    code = response.get("Error", {}).get("Code")
    return str(code) if code is not None else None


def is_precondition_failure(exc: BaseException) -> bool:
    """Whether a conditional write lost its race (412, or 409 for a concurrent one)."""
    return error_code(exc) in _PRECONDITION_CODES


def is_missing(exc: BaseException) -> bool:
    """Whether the object does not exist."""
    return error_code(exc) in _MISSING_CODES


def client_error_types() -> tuple[type[BaseException], ...]:
    """botocore's error roots; call only once a client exists (botocore is loaded then)."""
    from botocore.exceptions import BotoCoreError, ClientError

    return (ClientError, BotoCoreError)


def sanitize(partition: str) -> str:
    """A partition name as one S3 key segment: percent-encoded, injective, no ``/``."""
    return quote(partition, safe="-_.=")


@final
@dataclass(frozen=True, slots=True)
class Listed:
    """An object as a listing shows it: its key, size in bytes and ETag."""

    key: str
    size: int
    etag: str | None


async def list_objects(
    config: S3ClientConfig, client: Any, bucket: str, prefix: str
) -> list[Listed]:
    """Every object under ``prefix``, one timed call per page of the listing."""
    found: list[Listed] = []
    token: str | None = None
    while True:
        extra = {"ContinuationToken": token} if token else {}
        page = await call(config, client.list_objects_v2(Bucket=bucket, Prefix=prefix, **extra))
        found.extend(
            Listed(item["Key"], int(item.get("Size", 0)), item.get("ETag"))
            for item in page.get("Contents", ())
        )
        token = page.get("NextContinuationToken")
        if not page.get("IsTruncated") or not token:
            return found


async def list_keys(config: S3ClientConfig, client: Any, bucket: str, prefix: str) -> list[str]:
    """Every key under ``prefix``, one timed call per page of the listing."""
    return [listed.key for listed in await list_objects(config, client, bucket, prefix)]


_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IP_ADDRESS = re.compile(r"\d+\.\d+\.\d+\.\d+")
_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")


def check_bucket(owner: str, bucket: object) -> str:
    """``bucket`` if it follows S3's naming rules for general purpose buckets.

    3 to 63 lowercase letters, digits, dots and hyphens, starting and ending
    with a letter or digit, no two dots in a row, not an IP address, and none
    of the prefixes and suffixes S3 reserves. Checked when a connector is
    built, so that a typo is a named error before the run, not a failed call
    at the first write.

    Raises:
        ConfigError: Naming ``<owner>.bucket`` and the rule broken.
    """
    option = f"{owner}.bucket"
    if not isinstance(bucket, str):
        raise ConfigError(option, f"must be a str, got {bucket!r}")
    if _BUCKET.fullmatch(bucket) is None:
        problem = (
            "it must be 3 to 63 lowercase letters, digits, '.' and '-', "
            "starting and ending with a letter or digit"
        )
    elif ".." in bucket:
        problem = "it must not hold two dots in a row"
    elif _IP_ADDRESS.fullmatch(bucket):
        problem = "it must not look like an IP address"
    elif bucket.startswith(_RESERVED_PREFIXES) or bucket.endswith(_RESERVED_SUFFIXES):
        problem = "it must not use a prefix or suffix S3 reserves (xn--, sthree-, -s3alias...)"
    else:
        return bucket
    raise ConfigError(option, f"{bucket!r} is not a valid S3 bucket name: {problem}")
