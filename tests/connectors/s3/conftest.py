"""A moto S3 server for the session, a fresh bucket per test, and a small async S3 helper."""

from __future__ import annotations

import contextlib
import gzip
import os
import uuid
from typing import TYPE_CHECKING, Any, final

import anyio
import pytest

from riprap.connectors.s3 import S3ClientConfig
from riprap.connectors.s3._client import list_keys, open_client, read_body

# The Kafka broker too, for objects whose keys go through a topic (test_objects_over_kafka).
from ..kafka.conftest import kafka, kafka_bootstrap  # noqa: F401

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

REGION = "us-east-1"
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
"""Fake keys: moto accepts any."""
FAKE_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}


def client_config() -> S3ClientConfig:
    """Short timeouts and fake credentials for the local server."""
    return S3ClientConfig(
        region_name=REGION,
        connect_timeout=5.0,
        read_timeout=10.0,
        call_timeout=20.0,
        client_kwargs=CREDENTIALS,
    )


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A moto S3 server on a free port of 127.0.0.1, for the whole session; its URL."""
    from moto.server import ThreadedMotoServer

    with pytest.MonkeyPatch.context() as patch:
        for name, value in FAKE_ENV.items():
            patch.setenv(name, value)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            yield f"http://{host}:{port}"
        finally:
            server.stop()


async def create_bucket(endpoint: str, name: str) -> None:
    """Create the bucket ``name``."""
    async with contextlib.AsyncExitStack() as stack:
        client = await open_client(stack, client_config(), endpoint)
        await client.create_bucket(Bucket=name)


@pytest.fixture
def bucket(moto_endpoint: str) -> str:
    """A new, empty bucket for one test (sync, so that subprocess tests can use it too)."""
    name = f"test-{uuid.uuid4().hex[:16]}"
    anyio.run(create_bucket, moto_endpoint, name)
    return name


@final
class Store:
    """Test-side access to the bucket: put, get and list objects."""

    def __init__(self, client: Any, bucket: str, endpoint: str) -> None:
        self.client = client
        self.bucket = bucket
        self.endpoint = endpoint
        self.config = client_config()

    async def put(self, key: str, data: bytes) -> None:
        """Store ``data`` at ``key``."""
        await self.client.put_object(Bucket=self.bucket, Key=key, Body=data)

    async def put_lines(self, key: str, lines: list[bytes], *, compress: bool = False) -> None:
        """Store ``lines`` (newline-terminated), gzipped if asked."""
        data = b"".join(line + b"\n" for line in lines)
        await self.put(key, gzip.compress(data) if compress else data)

    async def get(self, key: str) -> bytes:
        """The bytes stored at ``key``."""
        response = await self.client.get_object(Bucket=self.bucket, Key=key)
        return await read_body(self.config, response)

    async def head(self, key: str) -> dict[str, Any]:
        """The metadata of ``key``."""
        response: dict[str, Any] = await self.client.head_object(Bucket=self.bucket, Key=key)
        return response

    async def keys(self, prefix: str = "") -> list[str]:
        """The keys under ``prefix``, sorted."""
        return sorted(await list_keys(self.config, self.client, self.bucket, prefix))


@pytest.fixture
async def store(moto_endpoint: str, bucket: str) -> AsyncIterator[Store]:
    """A :class:`Store` on this test's bucket."""
    async with contextlib.AsyncExitStack() as stack:
        client = await open_client(stack, client_config(), moto_endpoint)
        yield Store(client, bucket, moto_endpoint)
