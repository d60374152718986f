"""The S3 checkpoint backend: one object per pipeline, fenced by conditional writes.

Per pipeline (name percent-encoded) the prefix holds two objects. The first,
``<prefix><name>.checkpoint.json``, holds the claim and the snapshot::

    {"version": 1, "pipeline": ..., "epoch": N, "owner": ..., "checkpoint": {...} | null}

The latest claim and the latest snapshot live in the *same* object, so every
claim and every save is one compare-and-swap: read the object and its ETag,
check, and write it back with ``If-Match: <ETag>`` (``If-None-Match: *`` when it
does not exist yet). A write that loses a race (412 Precondition Failed, or 409
for two concurrent conditional writes) is retried from the read, a bounded
number of times.

A write can take effect while its answer is lost (a connection reset after
S3 stored it): botocore then retries it with the same condition and gets 412,
or it fails outright. Either way the object is read again, and if it holds
exactly the bytes this write sent (the same claim, epoch and snapshot), the
write counts as done. Anything else is a lost race as above, or a fencing
conflict.

Fencing (I5) follows: a zombie's save reads the newer epoch and is refused by
:func:`~riprap.checkpoints.check_save`; if a claim lands between its read and
its write, the ETag has changed and the write fails, and the retry reads the
claim and refuses. Keeping claim and snapshot in one object closes the window
two objects would leave (a zombie's write landing after the new owner's claim
but before its first save).

Integrity (I5): the snapshot carries a checksum, verified on every read, and
a generation. The second object, ``<prefix><name>.generation.json``, records
the highest generation saved (:func:`~riprap.checkpoints.encode_generation`),
written after the save succeeded with a conditional PUT that never lowers it.
A checkpoint object replaced by an older copy (an older object version
restored, a copy from elsewhere) or deleted is then behind the record, and a
claim refuses it with :class:`~riprap.checkpoints.CheckpointIntegrityError`.
Readers read the record first, so a save between the two reads cannot look
like a rollback. Deleting both objects looks like a first start.

History: after each save (and operator overwrite) the snapshot is also put
as ``<prefix><name>.history/<generation:020d>.json``, and older ones beyond
``history`` are thinned (:func:`~riprap.checkpoints.stale_generations`).
Only a save that won its fenced write gets there, and a kept snapshot is
verified like the latest when read back.
"""

from __future__ import annotations

import contextlib
import random
import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, final
from urllib.parse import quote, unquote

import anyio
import anyio.lowlevel
import orjson

from riprap.checkpoints import (
    Checkpoint,
    CheckpointError,
    CheckpointIntegrityError,
    CheckpointStatus,
    Claim,
    check_generation,
    check_save,
    claim_problem,
    decode,
    decode_generation,
    encode,
    encode_generation,
    encode_in_thread,
    stale_generations,
)
from riprap.lowlevel import optional_limit

from ._client import (
    S3ClientConfig,
    call,
    check_bucket,
    client_error_types,
    is_missing,
    is_precondition_failure,
    list_keys,
    new_session,
    open_client,
)
from ._reads import S3ReadError, download

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

_CHECKPOINT = ".checkpoint.json"
_RECORD = ".generation.json"


@dataclass(frozen=True, slots=True)
class _Stored:
    """The pipeline's object as read: claim, snapshot and the ETag to write against."""

    epoch: int
    owner: str | None
    checkpoint: Checkpoint | None
    snapshot: bytes | None
    etag: str | None
    raw: bytes | None = None
    """The object's bytes as stored."""


@dataclass(frozen=True, slots=True)
class _Record:
    """The pipeline's generation record as read: the generation (0: none) and its ETag."""

    generation: int
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
        history: Snapshots kept per pipeline, the latest included (see :meth:`history`).

    .. versionadded:: 0.1
    """

    __slots__ = ("_history", "_session", "bucket", "client_config", "endpoint_url", "prefix")

    race_attempts = 10

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        client_config: S3ClientConfig | None = None,
        history: int = 10,
    ) -> None:
        self._history = optional_limit("history", history) or 1
        self.bucket = check_bucket("S3Checkpoints", bucket)
        self.prefix = prefix
        self.endpoint_url = endpoint_url
        self.client_config = client_config or S3ClientConfig()
        self._session: Any = None

    @property
    def location(self) -> str:
        """``s3://bucket/prefix``, as ``riprap checkpoint`` takes it (with ``--endpoint-url``)."""
        return f"s3://{self.bucket}/{self.prefix}"

    def key(self, pipeline: str) -> str:
        """The object key that holds ``pipeline``'s claim and snapshot."""
        return f"{self.prefix}{quote(pipeline, safe='')}{_CHECKPOINT}"

    def record_key(self, pipeline: str) -> str:
        """The object key that records ``pipeline``'s highest saved generation."""
        return f"{self.prefix}{quote(pipeline, safe='')}{_RECORD}"

    async def claim(self, pipeline: str, owner: str) -> Claim:
        """Take the next epoch of ``pipeline`` for ``owner``; return it with the latest snapshot.

        Raises:
            CheckpointIntegrityError: The stored snapshot is damaged, missing or
                older than the recorded generation.
            CheckpointError: S3 failed, or every attempt lost a race.
        """
        async with self._s3() as client:
            record = await self._read_record(client, pipeline)
            for attempt in range(self.race_attempts):
                stored = await self._read_trusted(client, pipeline, record.generation)
                latest = stored.checkpoint
                last = latest.epoch if latest is not None else 0
                epoch = max(stored.epoch, last) + 1
                body = _container(pipeline, epoch, owner, stored.snapshot)
                if await self._write(client, pipeline, body, stored.etag, attempt):
                    if latest is not None and latest.generation > record.generation:
                        # The last save died before recording its generation.
                        await self._record(client, pipeline, latest.generation, record)
                    return Claim(epoch, owner, latest)
        raise self._raced(pipeline, "claim")

    async def save(self, checkpoint: Checkpoint) -> None:
        """Store ``checkpoint`` if its writer still holds the claim (see ``check_save``).

        Raises:
            FencedError: The writer's claim is stale, or the snapshot is not newer.
            CheckpointError: The state is not JSON, the object is corrupt, the
                generation is below the recorded one, S3 failed, or every
                attempt lost a race.
        """
        data = await encode_in_thread(checkpoint)  # off the loop, however large the state
        pipeline = checkpoint.pipeline
        async with self._s3() as client:
            record = await self._read_record(client, pipeline)
            for attempt in range(self.race_attempts):
                stored = await self._read(client, pipeline)
                body = _container(pipeline, stored.epoch, stored.owner, data)
                if stored.raw == body:
                    break  # stored already, by an earlier try of this very save
                cp = stored.checkpoint
                saved = (cp.epoch, cp.seq) if cp is not None else None
                check_save(
                    checkpoint,
                    epoch=stored.epoch,
                    owner=stored.owner,
                    saved=saved,
                    recorded=record.generation,
                )
                if await self._write(client, pipeline, body, stored.etag, attempt):
                    break
            else:
                raise self._raced(pipeline, "save")
            # Only once the snapshot is stored: the record must never be ahead of it.
            await self._record(client, pipeline, checkpoint.generation, record)
            await self._keep(client, pipeline, checkpoint.generation, data)

    async def load(self, pipeline: str) -> Checkpoint | None:
        """The latest snapshot of ``pipeline``, or ``None``.

        Raises:
            CheckpointIntegrityError: The snapshot is damaged, missing or older than recorded.
            CheckpointError: S3 failed.
        """
        async with self._s3() as client:
            record = await self._read_record(client, pipeline)
            return (await self._read_trusted(client, pipeline, record.generation)).checkpoint

    async def history(self, pipeline: str) -> list[Checkpoint]:
        """The kept snapshots of ``pipeline``, newest first, each verified.

        Raises:
            CheckpointIntegrityError: A kept snapshot is damaged.
            CheckpointError: S3 failed.
        """
        async with self._s3() as client:
            kept = []
            for key in reversed(await self._kept_keys(client, pipeline)):
                data, _ = await self._get(client, key)
                if data is not None:  # deleted by a save since the listing
                    kept.append(decode(data, where=f"s3://{self.bucket}/{key}", pipeline=pipeline))
            return kept

    async def _keep(
        self, client: Any, pipeline: str, generation: int, data: bytes, *, prune: bool = True
    ) -> None:
        """Put the snapshot just saved as a kept generation; delete the oldest kept.

        An operator's overwrite (``prune=False``) deletes nothing: the tool may
        not know the ``history`` the pipeline's runs keep.
        """
        key = f"{self._history_prefix(pipeline)}{generation:020d}.json"
        errors: tuple[type[BaseException], ...] = (*client_error_types(), TimeoutError)
        try:
            request = client.put_object(Bucket=self.bucket, Key=key, Body=data)
            await call(self.client_config, request)
            kept = await self._kept_keys(client, pipeline) if prune else []
            prefix = self._history_prefix(pipeline)
            generations = [int(k[len(prefix) : -5]) for k in kept]
            for old in stale_generations(generations, self._history):
                stale = client.delete_object(Bucket=self.bucket, Key=f"{prefix}{old:020d}.json")
                await call(self.client_config, stale)
        except errors as exc:
            raise CheckpointError(
                f"s3://{self.bucket}/{key}: cannot keep generation {generation}"
                f" (the checkpoint itself is saved): {exc}"
            ) from exc

    async def _kept_keys(self, client: Any, pipeline: str) -> list[str]:
        """The kept snapshots' keys, oldest first."""
        prefix = self._history_prefix(pipeline)
        errors: tuple[type[BaseException], ...] = (*client_error_types(), TimeoutError)
        try:
            keys = await list_keys(self.client_config, client, self.bucket, prefix)
        except errors as exc:
            raise CheckpointError(f"s3://{self.bucket}/{prefix}: cannot list: {exc}") from exc
        return sorted(k for k in keys if k.endswith(".json") and k[len(prefix) : -5].isdigit())

    def _history_prefix(self, pipeline: str) -> str:
        return f"{self.prefix}{quote(pipeline, safe='')}.history/"

    async def aclose(self) -> None:
        """Nothing to release: every call opens and closes its own client."""
        await anyio.lowlevel.checkpoint()

    async def pipelines(self) -> list[str]:
        """The pipelines with a checkpoint object or a generation record under the prefix."""
        async with self._s3() as client:
            errors: tuple[type[BaseException], ...] = (*client_error_types(), TimeoutError)
            try:
                keys = await list_keys(self.client_config, client, self.bucket, self.prefix)
            except errors as exc:
                raise CheckpointError(f"{self.location}: cannot list: {exc}") from exc
        names = {
            unquote(key[len(self.prefix) : -len(suffix)])
            for key in keys
            for suffix in (_CHECKPOINT, _RECORD)
            if key.endswith(suffix) and len(key) > len(self.prefix) + len(suffix)
        }
        return sorted(names)

    async def status(self, pipeline: str) -> CheckpointStatus:
        """What is stored for ``pipeline``, damage included, without changing anything."""
        async with self._s3() as client:
            status, _ = await self._status(client, pipeline)
            return status

    async def overwrite(
        self,
        pipeline: str,
        owner: str,
        build: Callable[[CheckpointStatus, int], Checkpoint],
    ) -> Checkpoint:
        """Claim a new epoch for ``owner`` and store ``build(status, epoch)``: one conditional PUT.

        See :class:`~riprap.checkpoints.RepairableBackend`; ``build`` may be
        called again if the write loses a race.
        """
        async with self._s3() as client:
            for attempt in range(self.race_attempts):
                status, etag = await self._status(client, pipeline)
                last = status.checkpoint.epoch if status.checkpoint is not None else 0
                epoch = max(status.epoch, last) + 1
                checkpoint = build(status, epoch)
                status.check_replacement(checkpoint, epoch=epoch, owner=owner)
                data = encode(checkpoint)
                body = _container(pipeline, epoch, owner, data)
                if await self._write(client, pipeline, body, etag, attempt):
                    await self._record(client, pipeline, checkpoint.generation, None, repair=True)
                    await self._keep(client, pipeline, checkpoint.generation, data, prune=False)
                    return checkpoint
        raise self._raced(pipeline, "overwrite")

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

    def _record_where(self, pipeline: str) -> str:
        return f"s3://{self.bucket}/{self.record_key(pipeline)}"

    def _store(self) -> str:
        """The store as the ``riprap checkpoint`` command line takes it."""
        store = shlex.quote(self.location)
        if self.endpoint_url is not None:
            store += f" --endpoint-url {shlex.quote(self.endpoint_url)}"
        return store

    async def _get(self, client: Any, key: str) -> tuple[bytes | None, str | None]:
        """``(body, ETag)`` of ``key``; ``(None, None)`` if it does not exist."""
        where = f"s3://{self.bucket}/{key}"
        try:
            data, response = await download(self.client_config, client, self.bucket, key)
        except S3ReadError as exc:
            raise CheckpointError(f"{where}: cannot read: {exc.problem}") from exc
        except client_error_types() as exc:
            if is_missing(exc):
                return None, None
            raise CheckpointError(f"{where}: cannot read: {exc}") from exc
        except TimeoutError as exc:
            raise CheckpointError(f"{where}: cannot read: timed out") from exc
        return data, response["ETag"]

    async def _read(self, client: Any, pipeline: str) -> _Stored:
        data, etag = await self._get(client, self.key(pipeline))
        if data is None or etag is None:
            return _Stored(0, None, None, None, None)
        return _parse(data, where=self._where(pipeline), pipeline=pipeline, etag=etag)

    async def _holds(self, client: Any, pipeline: str, body: bytes) -> bool:
        """Whether the pipeline's object holds exactly ``body`` (a write of it took effect)."""
        data, _ = await self._get(client, self.key(pipeline))
        return data == body

    async def _read_trusted(self, client: Any, pipeline: str, recorded: int) -> _Stored:
        """The stored object, refused if its snapshot is damaged, missing or older than recorded."""
        try:
            stored = await self._read(client, pipeline)
        except CheckpointIntegrityError as exc:
            raise exc.located(
                expected=recorded, record=self._record_where(pipeline), store=self._store()
            ) from exc
        check_generation(
            stored.checkpoint,
            recorded,
            pipeline=pipeline,
            where=self._where(pipeline),
            record=self._record_where(pipeline),
            store=self._store(),
        )
        return stored

    async def _read_record(self, client: Any, pipeline: str) -> _Record:
        data, etag = await self._get(client, self.record_key(pipeline))
        if data is None:
            return _Record(0, None)
        where = self._record_where(pipeline)
        return _Record(decode_generation(data, where=where, pipeline=pipeline), etag)

    async def _record(
        self,
        client: Any,
        pipeline: str,
        generation: int,
        known: _Record | None,
        *,
        repair: bool = False,
    ) -> None:
        """Raise the recorded generation to ``generation`` with conditional PUTs; never lower it.

        ``known`` is the record as last read (read again if ``None`` or after a
        lost race). With ``repair`` a corrupt record is replaced.
        """
        key = self.record_key(pipeline)
        record = known
        for attempt in range(self.race_attempts):
            if record is None:
                try:
                    record = await self._read_record(client, pipeline)
                except CheckpointError:
                    if not repair:
                        raise
                    _, etag = await self._get(client, key)
                    record = _Record(-1, etag)
            if record.generation >= generation:
                return
            condition = {"IfMatch": record.etag} if record.etag else {"IfNoneMatch": "*"}
            request = client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=encode_generation(pipeline, generation),
                ContentType="application/json",
                ChecksumAlgorithm="CRC32",
                **condition,
            )
            try:
                await call(self.client_config, request)
            except client_error_types() as exc:
                if not is_precondition_failure(exc) and not is_missing(exc):
                    if await self._recorded(client, pipeline, generation):
                        return  # the write took effect; its answer was lost
                    raise self._unrecorded(pipeline, generation, exc) from exc
            except TimeoutError as exc:
                if await self._recorded(client, pipeline, generation):
                    return
                raise self._unrecorded(pipeline, generation, "timed out") from exc
            else:
                return
            record = None  # lost a race: read what the winner wrote
            await anyio.sleep(random.uniform(0, 0.01 * 2 ** min(attempt, 6)))
        raise self._raced(pipeline, "recording the generation")

    async def _recorded(self, client: Any, pipeline: str, generation: int) -> bool:
        """Whether the record holds ``generation`` or more (read again after a failed write)."""
        return (await self._read_record(client, pipeline)).generation >= generation

    def _unrecorded(self, pipeline: str, generation: int, error: object) -> CheckpointError:
        return CheckpointError(
            f"{self._record_where(pipeline)}: cannot record generation {generation}"
            f" (the checkpoint itself is saved): {error}"
        )

    async def _status(self, client: Any, pipeline: str) -> tuple[CheckpointStatus, str | None]:
        """The status, and the ETag of the checkpoint object it was read from."""
        record_data, _ = await self._get(client, self.record_key(pipeline))  # the record first
        data, etag = await self._get(client, self.key(pipeline))
        where = self._where(pipeline)
        record_where = self._record_where(pipeline)

        def recorded() -> int:
            if record_data is None:
                return 0
            return decode_generation(record_data, where=record_where, pipeline=pipeline)

        def stored() -> _Stored:
            if data is None or etag is None:
                return _Stored(0, None, None, None, None)
            return _parse(data, where=where, pipeline=pipeline, etag=etag)

        def claim() -> tuple[int, str | None]:
            if data is None:
                return 0, None
            try:
                raw = orjson.loads(data)
            except orjson.JSONDecodeError:
                return 0, None  # reported as the snapshot's damage
            if claim_problem(raw, pipeline) is not None:
                return 0, None
            return raw["epoch"], raw["owner"]

        status = CheckpointStatus.examine(
            pipeline,
            where=where,
            record=record_where,
            store=self._store(),
            recorded=recorded,
            claim=claim,
            snapshot=lambda: stored().checkpoint,
        )
        return status, etag

    async def _write(
        self, client: Any, pipeline: str, body: bytes, etag: str | None, attempt: int
    ) -> bool:
        """Write ``body`` if the object still has ``etag``; ``False`` if a race was lost.

        A write that failed, or lost to a retry of itself, counts as done if
        the object now holds ``body`` (see the module docstring).
        """
        condition = {"IfMatch": etag} if etag is not None else {"IfNoneMatch": "*"}
        request = client.put_object(
            Bucket=self.bucket,
            Key=self.key(pipeline),
            Body=body,
            ContentType="application/json",
            ChecksumAlgorithm="CRC32",
            **condition,
        )
        try:
            await call(self.client_config, request)
        except client_error_types() as exc:
            if await self._holds(client, pipeline, body):
                return True
            if not is_precondition_failure(exc) and not is_missing(exc):
                raise CheckpointError(f"{self._where(pipeline)}: cannot write: {exc}") from exc
        except TimeoutError as exc:
            if await self._holds(client, pipeline, body):
                return True
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
        raise _corrupt(where, pipeline, str(exc)) from exc
    problem = _problem(raw, pipeline)
    if problem is not None:
        raise _corrupt(where, pipeline, problem)
    if raw["checkpoint"] is None:
        return _Stored(raw["epoch"], raw["owner"], None, None, etag, data)
    # The snapshot's checksum covers its canonical form, so re-serialising it is safe.
    snapshot = orjson.dumps(raw["checkpoint"])
    checkpoint = decode(snapshot, where=where, pipeline=pipeline)
    return _Stored(raw["epoch"], raw["owner"], checkpoint, snapshot, etag, data)


def _corrupt(where: str, pipeline: str, problem: str) -> CheckpointIntegrityError:
    return CheckpointIntegrityError(
        where, f"corrupt checkpoint object: {problem}", pipeline=pipeline, damaged=True
    )


def _problem(raw: object, pipeline: str) -> str | None:
    problem = claim_problem(raw, pipeline)
    if problem is not None:
        return problem
    assert isinstance(raw, dict)
    if not isinstance(raw.get("checkpoint"), dict | None):
        return "checkpoint is neither an object nor null"
    return None
