"""The Delta Lake sink: records committed in transactions that name the positions they cover.

Records are written to data files as batches arrive (see ``_delta_files``);
each commit adds the files written since the last one. Each commit carries
one Delta app transaction per source partition it holds,
``riprap/<pipeline>/<sink>/<partition>``, whose version is the partition's
position after the commit (the next offset to read, as a checkpoint stores
it). The table itself therefore says how far each partition is committed, and
a replay after a crash skips what the table already holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, final

import anyio
import anyio.lowlevel
import anyio.to_thread
import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, Transaction
from deltalake.exceptions import TableNotFoundError

from riprap import ConfigError, DataError, SystemClock
from riprap.lowlevel import optional_limit, optional_seconds

from ._arrow import NewColumns, TableEncoder, check_schema
from ._batches import by_partition, describer, pick
from ._delta_files import commit_files, delta_arrow_schema, write_data_file
from ._rollback import DeltaRollback, rollback_delta
from ._storage import LakeS3Options, Storage, open_storage, storage_options, table_uri

if TYPE_CHECKING:
    import os
    from collections.abc import Mapping
    from datetime import datetime, timedelta

    from deltalake.transaction import AddAction

    from riprap import Batch, Clock, SinkContext
    from riprap.lowlevel import Ack

    from ._parquet_sink import Compression


@final
@dataclass(frozen=True, slots=True)
class DeltaSinkStatistics:
    """What a :class:`DeltaSink` has done since it was opened.

    Attributes:
        commits: Table versions this sink committed.
        records_pending: Records waiting for the next commit.
        records_skipped: Replayed records the table already held.
        files_pending: Data files written and waiting for the next commit.
        bytes_buffered: Arrow bytes of records not yet written to a data
            file; below ``file_bytes`` whenever a write returns.
    """

    commits: int
    records_pending: int
    records_skipped: int
    files_pending: int = 0
    bytes_buffered: int = 0


@dataclass(slots=True)
class _Pending:
    """Records taken but not committed: buffered tables, written files, new positions and acks."""

    tables: list[pa.Table] = field(default_factory=list)
    nbytes: int = 0
    files: list[AddAction] = field(default_factory=list)
    rows: int = 0
    ends: dict[str, int] = field(default_factory=dict)
    acks: list[Ack] = field(default_factory=list)
    started: float | None = None


@final
class DeltaSink:
    """Appends records to a Delta Lake table, exactly once.

    **Commits.** Records are taken as batches arrive and committed in one
    table version when ``max_rows`` records wait, ``max_age`` seconds after
    the first of them arrived, on ``flush``, or earlier when the sink would
    otherwise hold more than ``max_in_flight - batch_size`` source records.
    Without ``max_rows`` and ``max_age`` every write is a commit. Until then
    the records are written to Parquet data files in the table's directory as
    they arrive: they wait as Arrow tables in memory only until about
    ``file_bytes`` have gathered, which then become one file. The commit
    writes the last file and one log entry adding every file since the last
    commit. A record is done (its position may be checkpointed) only once its
    commit succeeded. Files written by a run that was killed before their
    commit are in no version of the table: readers never see them and a full
    ``VACUUM`` (``DeltaTable.vacuum(full=True)``) removes them.

    **Exactly once.** Every commit carries, per source partition, a Delta app
    transaction ``riprap/<pipeline>/<sink>/<partition>`` whose version is the
    partition's position after the commit. Before a partition's first record
    the sink reads that version from the table: replayed records before it
    (committed by a run that was killed before its checkpoint) are skipped.
    Before committing, the sink checks that no one else advanced its
    transactions (a second process of the same pipeline): if so it stops with
    an error instead of writing twice; Delta's own conflict check catches a
    race between the two. Writers of other pipelines append freely (Delta
    retries the commit up to ``commit_retries`` times). This rests on the steps
    before the sink giving the same records for the same input and the items
    of one source record reaching the sink in one batch.

    **Schema.** The table's schema, else the declared ``schema``, else one
    inferred from the first records. A record that does not fit (see
    :class:`ParquetSink`) is a :class:`~riprap.DataError`, dead-lettered. A
    field the schema lacks is added as a nullable column with
    ``new_columns="add"`` (the commit merges the table schema) and refused with
    ``"refuse"``.

    Compaction (``OPTIMIZE``), ``VACUUM`` and checkpoints of the Delta log are
    the table's own maintenance, run with the Delta tools; the sink only appends.

    Args:
        location: The table: a local directory or ``s3://bucket/prefix``.
        new_columns: ``"add"`` or ``"refuse"`` (no default: choose).
        name: The step name of the sink.
        schema: The Arrow schema of a new table (``None``: inferred).
        compression: The Parquet codec of the data files.
        file_bytes: Arrow bytes of records held in memory before they are
            written as a data file (about; the sink's memory bound).
        max_rows: Records per commit (``None``: no count limit).
        max_age: Seconds (or a ``timedelta``) from a record's arrival to its
            commit at the latest (``None``: no time limit).
        commit_retries: How often Delta retries a commit that raced another writer.
        s3: How to reach S3 for an ``s3://`` location.
        clock: The clock ``max_age`` is measured on; in a pipeline it must be
            the pipeline's (the default).

    Raises:
        ConfigError: An option is invalid (named by the error).

    .. versionadded:: 0.1
    """

    idempotent = True
    """A replayed record already committed is skipped: the table holds each record once."""

    def __init__(
        self,
        location: str | os.PathLike[str],
        *,
        new_columns: NewColumns,
        name: str = "delta",
        schema: pa.Schema | None = None,
        compression: Compression = "zstd",
        file_bytes: int = 64 << 20,
        max_rows: int | None = None,
        max_age: float | timedelta | None = None,
        commit_retries: int = 15,
        s3: LakeS3Options | None = None,
        clock: Clock | None = None,
    ) -> None:
        if new_columns not in ("add", "refuse"):
            raise ConfigError("new_columns", f"expected 'add' or 'refuse', not {new_columns!r}")
        if compression not in ("zstd", "snappy", "gzip", "lz4", "brotli", "none"):
            raise ConfigError("compression", f"unknown codec {compression!r}")
        self.name = name
        self.uri = table_uri(location)
        self.new_columns: NewColumns = new_columns
        self.compression = compression
        self.file_bytes = optional_limit("file_bytes", file_bytes) or 1
        self.max_rows = optional_limit("max_rows", max_rows)
        self.max_age = optional_seconds("max_age", max_age)
        self.commit_retries = optional_limit("commit_retries", commit_retries) or 1
        self._s3 = s3
        self._options: Mapping[str, str] | None = storage_options(self.uri, s3)
        self._storage: Storage = open_storage(self.uri, s3)
        self._declared = check_schema("schema", schema)
        self._given_clock = clock
        self._clock: Clock = clock or SystemClock()
        self._pipeline = ""
        self._hold_limit: int | None = None
        self._holds = self.max_rows is not None or self.max_age is not None
        self._encoder = TableEncoder(self._declared, new_columns=new_columns)
        self._table: DeltaTable | None = None
        self._committed: dict[str, int | None] = {}
        self._last: dict[str, int] = {}
        self._pending = _Pending()
        self._taken: Batch | None = None
        self._lock = anyio.Lock()
        self._commits = self._skipped = 0

    def app_id(self, partition: str) -> str:
        """The Delta app transaction id of ``partition``'s commits."""
        return f"riprap/{self._pipeline}/{self.name}/{partition}"

    def rollback(
        self,
        *,
        pipeline: str,
        to: int | datetime | Mapping[str, int],
        dry_run: bool = True,
        force: bool = False,
    ) -> DeltaRollback:
        """Restore this sink's table to version ``to`` (a time's, or a checkpoint positions').

        The hook ``riprap rollback`` calls on every sink that has it; see
        :func:`rollback_delta`, whose result this is. Blocking.

        Raises:
            ConfigError: As :func:`rollback_delta`.
        """
        return rollback_delta(
            self.uri,
            pipeline=pipeline,
            to=to,
            sink=self.name,
            dry_run=dry_run,
            force=force,
            s3=self._s3,
        )

    def bind(self, context: SinkContext) -> None:
        """Take the pipeline's name, clock and in-flight bound (called by the runtime).

        Raises:
            ConfigError: ``clock`` is not the pipeline's.
        """
        if self._given_clock is not None and self._given_clock is not context.clock:
            raise ConfigError("clock", "must be the pipeline's clock, which wakes the sink")
        self._pipeline = context.pipeline
        self._clock = context.clock
        self._hold_limit = max(1, context.max_in_flight - context.batch_size)

    def wake_at(self) -> float | None:
        """When the waiting records reach ``max_age`` (on the clock), if ever."""
        started = self._pending.started
        return None if started is None or self.max_age is None else started + self.max_age

    def statistics(self) -> DeltaSinkStatistics:
        """Counts since the sink was opened."""
        pending = self._pending
        return DeltaSinkStatistics(
            self._commits, pending.rows, self._skipped, len(pending.files), pending.nbytes
        )

    async def open(self) -> None:
        """Load the table if it exists (its schema wins); forget what an earlier run held.

        Raises:
            ConfigError: ``new_columns="refuse"`` and the declared schema is not the table's.
        """
        async with self._lock:
            self._table = await anyio.to_thread.run_sync(self._load)
            declared = self._declared
            schema = None if declared is None else self._as_stored("schema", declared)
            if self._table is not None:
                stored = pa.schema(self._table.schema().to_arrow())
                if schema is not None and self.new_columns == "refuse" and schema != stored:
                    raise ConfigError("schema", f"the table's schema is {stored}, not {declared}")
                schema = stored
            self._encoder = TableEncoder(schema, new_columns=self.new_columns)
            self._committed, self._last = {}, {}
            self._pending = _Pending()
            self._taken = None
            self._commits = self._skipped = 0

    async def write(self, batch: Batch) -> None:
        """Take the batch's new records, write a data file if enough wait; commit if due.

        An empty batch commits waiting records whose ``max_age`` has passed. A
        retried call with the same batch (after a failed file write or commit)
        only writes and commits.

        Raises:
            DataError: A record does not fit the schema; nothing of the batch is taken.
            RuntimeError: An item's source position is unknown, a partition's
                records came out of order, or another writer of the same
                pipeline and sink committed to the table.
            deltalake.exceptions.CommitFailedError: Delta refused the commit.
        """
        async with self._lock:
            now = self._clock.monotonic()
            if batch is not self._taken:
                await self._take(batch, now)
                self._taken = batch
            if self._due(now):
                await self._commit()
            elif self._pending.nbytes >= self.file_bytes:
                await self._write_file()
            self._taken = None

    async def flush(self) -> None:
        """Commit every record waiting."""
        async with self._lock:
            await self._commit()

    async def aclose(self) -> None:
        """Drop the table handle; records not committed stay not done (they are replayed).

        Their data files already written stay in the table's directory, in no version.
        """
        self._table = None
        await anyio.lowlevel.checkpoint()

    # -- taking records ------------------------------------------------------------

    async def _take(self, batch: Batch, now: float) -> None:
        """Encode the records the table does not hold yet; add them to the pending commit."""
        tables: list[pa.Table] = []
        ends: dict[str, int] = {}
        lasts: dict[str, int] = {}
        skipped = 0
        schema = self._encoder.schema
        for partition, (offsets, indexes) in by_partition(batch, self.name).items():
            self._check_order(partition, offsets[0])
            committed = await self._committed_end(partition)
            lasts[partition] = offsets[-1]
            if committed is not None and offsets[0] < committed:
                keep = [i for i, offset in enumerate(offsets) if offset >= committed]
                skipped += len(offsets) - len(keep)
                offsets, indexes = [offsets[i] for i in keep], [indexes[i] for i in keep]
            if offsets:
                kept = offsets
                items = pick(batch.items, indexes)
                tables.append(self._encoder.encode(items, describer(partition, kept)))
                ends[partition] = kept[-1] + 1
        if self._encoder.schema is not schema:
            self._check_storable(schema)
        # Only now that every record fits does the batch count as taken.
        self._skipped += skipped
        self._last.update(lasts)
        if not tables:
            return
        pending = self._pending
        pending.tables.extend(tables)
        pending.nbytes += sum(t.nbytes for t in tables)
        pending.rows += sum(t.num_rows for t in tables)
        pending.ends.update(ends)
        batch.ack.retain()
        pending.acks.append(batch.ack)
        if pending.started is None:
            pending.started = now

    def _check_storable(self, before: pa.Schema | None) -> None:
        """Refuse a batch whose records gave the table a type Delta cannot store.

        Raises:
            DataError: Naming the type; the schema is what it was before the
                batch, so the records that fit are written when taken one by one.
        """
        widened = self._encoder.schema
        assert widened is not None
        try:
            delta_arrow_schema(widened)
        except Exception as exc:  # the Delta library raises plain exceptions here
            self._encoder.schema = before
            problem = f"Delta Lake cannot store a column of this record: {exc}".strip()
            raise DataError(f"{self.name}: {problem}", reason="schema") from None

    def _check_order(self, partition: str, first: int) -> None:
        last = self._last.get(partition)
        if last is not None and first <= last:
            raise RuntimeError(
                f"sink {self.name!r}: partition {partition!r} went back from {last} to "
                f"{first}; its records must arrive in order"
            )

    async def _committed_end(self, partition: str) -> int | None:
        """The position the table holds ``partition`` to (read from the table on first use)."""
        if partition not in self._committed:
            table = self._table
            version = None
            if table is not None:
                version = await anyio.to_thread.run_sync(
                    table.transaction_version, self.app_id(partition)
                )
            self._committed[partition] = version
        return self._committed[partition]

    def _due(self, now: float) -> bool:
        """Whether the waiting records must be committed now."""
        pending = self._pending
        if not pending.rows:
            return False
        if not self._holds or (self.max_rows is not None and pending.rows >= self.max_rows):
            return True
        if self._hold_limit is not None and pending.rows > self._hold_limit:
            return True
        return (
            self.max_age is not None
            and pending.started is not None
            and now >= pending.started + self.max_age
        )

    # -- committing ----------------------------------------------------------------

    async def _write_file(self) -> None:
        """Write the buffered records as one data file, to be added by the next commit."""
        pending = self._pending
        action = await anyio.to_thread.run_sync(
            write_data_file, self._storage, pending.tables, self.compression
        )
        pending.files.append(action)
        pending.tables, pending.nbytes = [], 0

    async def _commit(self) -> None:
        """Commit the waiting records in one table version; release their acks."""
        pending = self._pending
        if not pending.rows:
            await anyio.lowlevel.checkpoint()
            return
        if pending.tables:
            await self._write_file()
        await anyio.to_thread.run_sync(self._commit_blocking, pending)
        self._committed.update(pending.ends)
        self._pending = _Pending()
        self._commits += 1
        for ack in pending.acks:
            ack.release()

    def _commit_blocking(self, pending: _Pending) -> None:
        """Check no one else advanced our transactions, then append (in a worker thread)."""
        table = self._table
        if table is None:
            table = self._table = self._load()  # another writer may have created it
        else:
            table.update_incremental()
        if table is not None and self._landed(table, pending.ends):
            return  # a commit that raised after it was written: it is in the table
        signature = {"riprap.pipeline": self._pipeline, "riprap.sink": self.name}
        properties = CommitProperties(
            custom_metadata={
                **signature,
                "riprap.positions": dict(pending.ends),  # what a rollback reads back
                "riprap.rows": pending.rows,
            },
            max_commit_retries=self.commit_retries,
            app_transactions=[Transaction(self.app_id(p), end) for p, end in pending.ends.items()],
        )
        created = commit_files(
            table,
            self.uri,
            schema=self._encoder.schema or pa.schema([]),
            actions=pending.files,
            properties=properties,
            schema_properties=CommitProperties(
                custom_metadata=signature, max_commit_retries=self.commit_retries
            ),
            options=self._options,
        )
        if created or table is None:
            self._table = self._load()

    def _as_stored(self, option: str, schema: pa.Schema) -> pa.Schema:
        """``schema`` with Delta's types, so records are checked against what the table holds.

        Raises:
            ConfigError: A type Delta cannot store.
        """
        try:
            return delta_arrow_schema(schema)
        except Exception as exc:  # the Delta library raises plain exceptions here
            raise ConfigError(option, f"Delta Lake cannot store {schema}: {exc}") from None

    def _landed(self, table: DeltaTable, ends: Mapping[str, int]) -> bool:
        """Whether ``ends`` are already committed; raise if someone else moved our transactions.

        Raises:
            RuntimeError: A transaction of ours is at a version we did not commit.
        """
        found = {p: table.transaction_version(self.app_id(p)) for p in ends}
        if found == ends:
            return True
        for partition, version in found.items():
            if version != self._committed.get(partition):
                raise RuntimeError(
                    f"sink {self.name!r}: another writer of pipeline {self._pipeline!r} committed "
                    f"partition {partition!r} of {self.uri!r} up to position {version}; only one "
                    "run of a pipeline may write its table"
                )
        return False

    def _load(self) -> DeltaTable | None:
        """The table at its latest version, or ``None`` if there is none yet (blocking)."""
        options = None if self._options is None else dict(self._options)
        try:
            return DeltaTable(self.uri, storage_options=options)
        except TableNotFoundError:
            return None
