"""The aiobotocore client every S3 connector opens, with a timeout on every call.

aiobotocore and botocore are imported here, lazily, and nowhere else in riprap:
``import riprap`` (and even ``import riprap.connectors.s3``) never loads them.
botocore is untyped, so clients and responses are ``Any`` at this boundary.
"""

from __future__ import annotations

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
        client_kwargs: Extra keyword arguments for ``create_client``
            (credentials, ``verify``...).

    .. versionadded:: 0.1
    """

    region_name: str | None = None
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    call_timeout: float = 120.0
    max_attempts: int = 3
    client_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for option in ("connect_timeout", "read_timeout", "call_timeout"):
            if not getattr(self, option) > 0:
                raise ConfigError(option, f"must be positive, got {getattr(self, option)!r}")
        if self.max_attempts < 1:
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
) -> Any:
    """Create an S3 client whose lifetime is ``stack``'s (from ``session`` if given)."""
    from aiobotocore.config import AioConfig

    botocore_config = AioConfig(
        connect_timeout=config.connect_timeout,
        read_timeout=config.read_timeout,
        retries={"max_attempts": config.max_attempts, "mode": "standard"},
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


async def list_keys(config: S3ClientConfig, client: Any, bucket: str, prefix: str) -> list[str]:
    """Every key under ``prefix``, one timed call per page of the listing."""
    keys: list[str] = []
    token: str | None = None
    while True:
        extra = {"ContinuationToken": token} if token else {}
        page = await call(config, client.list_objects_v2(Bucket=bucket, Prefix=prefix, **extra))
        keys.extend(item["Key"] for item in page.get("Contents", ()))
        token = page.get("NextContinuationToken")
        if not page.get("IsTruncated") or not token:
            return keys
