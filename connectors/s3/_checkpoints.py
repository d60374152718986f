"""The S3 checkpoint backend: one object per pipeline, fenced by conditional writes.

Per pipeline (name percent-encoded) the prefix holds one object,
``<prefix><name>.checkpoint.json``::

    {"version": 1, "pipeline": ..., "epoch": N, "owner": ..., "checkpoint": {...} | null}

The latest claim and the latest snapshot live in the *same* object, so every
claim and every save is one compare-and-swap: read the object and its ETag,
check, and write it back with ``If-Match: <ETag>`` (``If-None-Match: *`` when it
does not exist yet). A write that loses a race (412 Precondition Failed, or 409
for two concurrent conditional writes) is retried from the read, a bounded
number of times.

Fencing (I5) follows: a zombie's save reads the newer epoch and is refused by
:func:`~riprap.checkpoints._memory.check_save`; if a claim lands between its read and
its write, the ETag has changed and the write fails, and the retry reads the
claim and refuses. Keeping claim and snapshot in one object closes the window
two objects would leave (a zombie's write landing after the new owner's claim
but before its first save).
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, final
from urllib.parse import quote

import anyio
import anyio.lowlevel
import orjson

from riprap.checkpoints import (
    Checkpoint,
    CheckpointError,
    Claim,
    check_save,
    claim_problem,
    decode,
    encode,
)

from ._client import (
    S3ClientConfig,
    call,
    client_error_types,
    is_missing,
    is_precondition_failure,
    new_session,
    open_client,
    read_body,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


@dataclass(frozen=True, slots=True)
class _Stored:
    """The pipeline's object as read: claim, snapshot and the ETag to write against."""

    epoch: int
    owner: str | None
    checkpoint: Checkpoint | None
    snapshot: bytes | None
    etag: str | None


@final
class S3Checkpoints:
    """Checkpoints as S3 objects under ``prefix`` in ``bucket``, fenced by conditional writes.

    Args:
        bucket: The bucket (it must exist).
        prefix: Key prefix of the checkpoint objects (e.g. ``"checkpoints/"``).
        endpoint_url: A non-AWS endpoint (MinIO, a test server).
        client_config: Timeouts, retries, region and credentials.
        race_attempts: How often a claim or save re-reads after losing a
            conditional-write race before it raises ``CheckpointError``.

    .. versionadded:: 0.1
    """

    __slots__ = ("_session", "bucket", "client_config", "endpoint_url", "prefix")

    race_attempts = 10

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        client_config: S3ClientConfig | None = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint_url = endpoint_url
        self.client_config = client_config or S3ClientConfig()
        self._session: Any = None

    def key(self, pipeline: str) -> str:
        """The object key that holds ``pipeline``'s claim and snapshot."""
        return f"{self.prefix}{quote(pipeline, safe='')}.checkpoint.json"

    async def claim(self, pipeline: str, owner: str) -> Claim:
        """Take the next epoch of ``pipeline`` for ``owner``; return it with the latest snapshot.

        Raises:
            CheckpointError: The object is corrupt, S3 failed, or every attempt lost a race.
        """
        async with self._s3() as client:
            for attempt in range(self.race_attempts):
                stored = await self._read(client, pipeline)
                last = stored.checkpoint.epoch if stored.checkpoint is not None else 0
                epoch = max(stored.epoch, last) + 1
                body = _container(pipeline, epoch, owner, stored.snapshot)
                if await self._write(client, pipeline, body, stored.etag, attempt):
                    return Claim(epoch, owner, stored.checkpoint)
        raise self._raced(pipeline, "claim")

    async def save(self, checkpoint: Checkpoint) -> None:
        """Store ``checkpoint`` if its writer still holds the claim (see ``check_save``).

        Raises:
            FencedError: The writer's claim is stale, or the snapshot is not newer.
            CheckpointError: The state is not JSON, the object is corrupt, S3
                failed, or every attempt lost a race.
        """
        data = encode(checkpoint)
        pipeline = checkpoint.pipeline
        async with self._s3() as client:
            for attempt in range(self.race_attempts):
                stored = await self._read(client, pipeline)
                cp = stored.checkpoint
                saved = (cp.epoch, cp.seq) if cp is not None else None
                check_save(checkpoint, epoch=stored.epoch, owner=stored.owner, saved=saved)
                body = _container(pipeline, stored.epoch, stored.owner, data)
                if await self._write(client, pipeline, body, stored.etag, attempt):
                    return
        raise self._raced(pipeline, "save")

    async def load(self, pipeline: str) -> Checkpoint | None:
        """The latest snapshot of ``pipeline``, or ``None``.

        Raises:
            CheckpointError: The object is corrupt or S3 failed.
        """
        async with self._s3() as client:
            return (await self._read(client, pipeline)).checkpoint

    async def aclose(self) -> None:
        """Nothing to release: every call opens and closes its own client."""
        await anyio.lowlevel.checkpoint()

    @contextlib.asynccontextmanager
    async def _s3(self) -> AsyncIterator[Any]:
        """A client for one claim, save or load.

        A client holds connections bound to the running event loop, and the
        pipeline does not close a backend it was given; a client per call never
        outlives its loop (``riprap.run`` twice with one backend works). The
        botocore session, which caches the service model, is kept.
        """
        if self._session is None:
            self._session = new_session()
        async with contextlib.AsyncExitStack() as stack:
            yield await open_client(stack, self.client_config, self.endpoint_url, self._session)

    def _where(self, pipeline: str) -> str:
        return f"s3://{self.bucket}/{self.key(pipeline)}"

    async def _read(self, client: Any, pipeline: str) -> _Stored:
        where = self._where(pipeline)
        errors = client_error_types()
        try:
            response = await call(
                self.client_config, client.get_object(Bucket=self.bucket, Key=self.key(pipeline))
            )
            data = await read_body(self.client_config, response)
        except errors as exc:
            if is_missing(exc):
                return _Stored(0, None, None, None, None)
            raise CheckpointError(f"{where}: cannot read: {exc}") from exc
        except TimeoutError as exc:
            raise CheckpointError(f"{where}: cannot read: timed out") from exc
        return _parse(data, where=where, pipeline=pipeline, etag=response["ETag"])

    async def _write(
        self, client: Any, pipeline: str, body: bytes, etag: str | None, attempt: int
    ) -> bool:
        """Write ``body`` if the object still has ``etag``; ``False`` if a race was lost."""
        condition = {"IfMatch": etag} if etag is not None else {"IfNoneMatch": "*"}
        request = client.put_object(
            Bucket=self.bucket,
            Key=self.key(pipeline),
            Body=body,
            ContentType="application/json",
            **condition,
        )
        try:
            await call(self.client_config, request)
        except client_error_types() as exc:
            if not is_precondition_failure(exc) and not is_missing(exc):
                raise CheckpointError(f"{self._where(pipeline)}: cannot write: {exc}") from exc
        except TimeoutError as exc:
            raise CheckpointError(f"{self._where(pipeline)}: cannot write: timed out") from exc
        else:
            return True
        # Lost a race: back off a little (full jitter) so that racers spread out.
        await anyio.sleep(random.uniform(0, 0.01 * 2 ** min(attempt, 6)))
        return False

    def _raced(self, pipeline: str, what: str) -> CheckpointError:
        return CheckpointError(
            f"{self._where(pipeline)}: {what} lost {self.race_attempts} conditional-write "
            "races in a row"
        )


def _container(pipeline: str, epoch: int, owner: str | None, snapshot: bytes | None) -> bytes:
    fragment = orjson.Fragment(snapshot) if snapshot is not None else None
    record = {
        "version": 1,
        "pipeline": pipeline,
        "epoch": epoch,
        "owner": owner,
        "checkpoint": fragment,
    }
    return orjson.dumps(record)


def _parse(data: bytes, *, where: str, pipeline: str, etag: str) -> _Stored:
    """Check and split a stored object (see the module docstring)."""
    try:
        raw = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise CheckpointError(f"{where}: corrupt checkpoint object: {exc}") from exc
    problem = _problem(raw, pipeline)
    if problem is not None:
        raise CheckpointError(f"{where}: corrupt checkpoint object: {problem}")
    if raw["checkpoint"] is None:
        return _Stored(raw["epoch"], raw["owner"], None, None, etag)
    snapshot = orjson.dumps(raw["checkpoint"])
    checkpoint = decode(snapshot, where=where, pipeline=pipeline)
    return _Stored(raw["epoch"], raw["owner"], checkpoint, snapshot, etag)


def _problem(raw: object, pipeline: str) -> str | None:
    problem = claim_problem(raw, pipeline)
    if problem is not None:
        return problem
    assert isinstance(raw, dict)
    if not isinstance(raw.get("checkpoint"), dict | None):
        return "checkpoint is neither an object nor null"
    return None
