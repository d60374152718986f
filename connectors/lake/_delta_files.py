"""Delta data files written before their commit, and the commit that adds them to the table.

A :class:`DeltaSink` writes each run of buffered records as a Parquet file in
the table's directory (or S3 prefix) as soon as the buffer is full, and later
commits every file written since its last commit in one table version. A file
written but never committed (the run was killed first) is referenced by no
version of the log: readers never see it, and a full ``VACUUM`` of the table
(``DeltaTable.vacuum(full=True)``) deletes it once it is older than the
retention period.

Every function here blocks (file system, network): callers use worker threads.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import DeltaTable
from deltalake import Schema as DeltaSchema
from deltalake.exceptions import DeltaError
from deltalake.transaction import AddAction, RemoveAction, create_table_with_add_actions

if TYPE_CHECKING:
    from collections.abc import Mapping

    from deltalake import CommitProperties

    from ._storage import Storage, Writable


def delta_arrow_schema(schema: pa.Schema) -> pa.Schema:
    """``schema`` as the table stores it (Delta's types: ``timestamp[us]``, ``string``...).

    A timestamp with a time zone other than UTC (a datetime with an offset)
    is stored as Delta's ``timestamp``, which is UTC: the same instants.

    Raises:
        Exception: A type Delta cannot store (the Delta library's own error).
    """
    utc = pa.schema([f.with_type(_utc(f.type)) for f in schema], metadata=schema.metadata)
    return pa.schema(DeltaSchema.from_arrow(utc).to_arrow())


def _utc(kind: pa.DataType) -> pa.DataType:
    """``kind`` with every zoned timestamp in it zoned UTC."""
    if pa.types.is_timestamp(kind) and kind.tz is not None:
        return pa.timestamp(kind.unit, tz="UTC")
    if pa.types.is_struct(kind):
        return pa.struct(
            [kind.field(i).with_type(_utc(kind.field(i).type)) for i in range(kind.num_fields)]
        )
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        item = kind.value_field.with_type(_utc(kind.value_type))
        return pa.large_list(item) if pa.types.is_large_list(kind) else pa.list_(item)
    return kind


def write_data_file(storage: Storage, tables: list[pa.Table], compression: str) -> AddAction:
    """Write ``tables`` as one new Parquet data file of the table; the action that adds it.

    The file gets a fresh name, so a crash before the commit leaves an orphan
    that no version references, never a file a version already holds.
    """
    data = pa.concat_tables(tables, promote_options="default")
    stored = delta_arrow_schema(data.schema)
    if not data.schema.equals(stored, check_metadata=True):
        # Not when the types are already Delta's (the usual case): a process's first
        # cast sets up Arrow's cast kernels, which costs more than writing a small file.
        data = data.cast(stored)
    name = f"part-{uuid.uuid4().hex}.{compression}.parquet"

    def fill(out: Writable) -> None:
        pq.write_table(data, out, compression=compression, write_page_checksum=True)

    size = storage.write("", name, fill)
    stats = {"numRecords": data.num_rows}
    return AddAction(
        path=name,
        size=size,
        partition_values={},
        modification_time=int(time.time() * 1000),
        data_change=True,
        stats=orjson.dumps(stats).decode(),
    )


def commit_files(
    table: DeltaTable | None,
    uri: str,
    *,
    schema: pa.Schema,
    actions: list[AddAction],
    properties: CommitProperties,
    schema_properties: CommitProperties,
    options: Mapping[str, str] | None,
) -> bool:
    """Commit ``actions`` in one table version; create the table if there is none.

    Columns of ``schema`` the table lacks are first added (nullable) in a
    version of their own, signed with ``schema_properties``: a crash between the
    two leaves only an empty column behind.

    Returns:
        Whether the commit created the table (``False`` also when another
        writer created it first: the files are then appended).

    Raises:
        deltalake.exceptions.CommitFailedError: Delta refused the commit.
    """
    storage_options = None if options is None else dict(options)
    if table is None:
        try:
            create_table_with_add_actions(
                uri,
                DeltaSchema.from_arrow(delta_arrow_schema(schema)),
                actions,
                mode="error",
                storage_options=storage_options,
                commit_properties=properties,
            )
        except DeltaError as exc:
            if "already exists" not in str(exc):
                raise
            table = DeltaTable(uri, storage_options=storage_options)  # another writer's
        else:
            return True
    known = set(pa.schema(table.schema().to_arrow()).names)
    new = [f.with_nullable(True) for f in delta_arrow_schema(schema) if f.name not in known]
    if new:
        fields = DeltaSchema.from_arrow(pa.schema(new)).fields
        table.alter.add_columns(fields, commit_properties=schema_properties)
    changes: list[AddAction | RemoveAction] = [*actions]
    table.create_write_transaction(changes, "append", table.schema(), commit_properties=properties)
    return False
