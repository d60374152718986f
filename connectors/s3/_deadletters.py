"""The S3 dead-letter sink: one JSON Lines object per write, durable when the PUT returns."""

from __future__ import annotations

import contextlib
import hashlib
from typing import TYPE_CHECKING, Any, final

import anyio.lowlevel

from riprap.deadletters import DeadLetter

from ._client import S3ClientConfig, call, check_bucket, list_keys, open_client
from ._reads import download

if TYPE_CHECKING:
    from collections.abc import Sequence


@final
class S3DeadLetters:
    """Dead letters as S3 objects: ``<prefix><sha256 of the letter ids>.jsonl``.

    Each ``write`` stores its letters (one envelope per line, in order) as one
    object and returns once the PUT succeeded, so the letters are durable
    (I6). The name is a hash of the letters' ids (which are themselves
    deterministic), so writing the same letters again after a crash overwrites
    the same object. Letters grouped differently on a rerun land in another
    object: every reader keeps one letter per ``id`` and counts the repeats.

    Args:
        bucket: The bucket (it must exist).
        prefix: Key prefix of the objects (e.g. ``"dlq/orders/"``).
        name: The sink's name in metrics and logs.
        endpoint_url: A non-AWS endpoint (MinIO, a test server).
        client_config: Timeouts, retries, region and credentials.

    .. versionadded:: 0.1
    """

    idempotent = False
    """The same letter may be stored in two objects if a replay groups it differently."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        name: str = "dlq",
        endpoint_url: str | None = None,
        client_config: S3ClientConfig | None = None,
    ) -> None:
        self.name = name
        self.bucket = check_bucket("S3DeadLetters", bucket)
        self.prefix = prefix
        self.endpoint_url = endpoint_url
        self.client_config = client_config or S3ClientConfig()
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: Any = None

    def object_key(self, letters: Sequence[DeadLetter]) -> str:
        """The key a write of ``letters`` goes to."""
        digest = hashlib.sha256("\n".join(letter.id for letter in letters).encode()).hexdigest()
        return f"{self.prefix}{digest}.jsonl"

    async def open(self) -> None:
        """Open the S3 client."""
        if self._client is not None:
            await anyio.lowlevel.checkpoint()
            return
        stack = contextlib.AsyncExitStack()
        self._client = await open_client(stack, self.client_config, self.endpoint_url)
        self._stack = stack

    async def write(self, letters: Sequence[DeadLetter]) -> None:
        """Store ``letters`` as one object; all or nothing.

        Raises:
            botocore.exceptions.ClientError: S3 refused the PUT.
            TimeoutError: The PUT took longer than ``client_config.call_timeout``.
        """
        if not letters:
            await anyio.lowlevel.checkpoint()
            return
        if self._client is None:
            raise RuntimeError(f"dead-letter sink {self.name!r} is not open")
        body = b"".join([letter.to_json() + b"\n" for letter in letters])
        request = self._client.put_object(
            Bucket=self.bucket,
            Key=self.object_key(letters),
            Body=body,
            ContentType="application/x-ndjson",
            ChecksumAlgorithm="CRC32",
        )
        await call(self.client_config, request)

    async def read(self) -> list[DeadLetter]:
        """Every letter stored under the prefix, one per id, in key order of their objects."""
        if self._client is None:
            raise RuntimeError(f"dead-letter sink {self.name!r} is not open")
        letters: dict[str, DeadLetter] = {}
        keys = await list_keys(self.client_config, self._client, self.bucket, self.prefix)
        for key in sorted(keys):
            data, _ = await download(self.client_config, self._client, self.bucket, key)
            for line in data.splitlines():
                if line.strip():
                    letter = DeadLetter.from_json(line)
                    letters.setdefault(letter.id, letter)
        return list(letters.values())

    async def aclose(self) -> None:
        """Close the S3 client; idempotent."""
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()
        else:
            await anyio.lowlevel.checkpoint()
