"""The Delta Lake source: the rows of a table's data files at a version, one partition per file."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, final

from deltalake import DeltaTable

from riprap import ConfigError

from ._parquet_source import RowFiles
from ._storage import LakeS3Options, storage_options, table_uri

if TYPE_CHECKING:
    import os

    from ._parquet_source import QuarantineHook

_UNSUPPORTED = ("deletionVectors", "columnMapping")
"""Reader features whose tables cannot be read file by file as plain Parquet."""


@final
class DeltaSource(RowFiles):
    """Reads the rows of a Delta Lake table, as of its latest or a given version.

    The table's data files at that version are the partitions, each named by
    its location, with positions and quarantine as in :class:`ParquetSource`
    (data files never change once written, so a file's row index is a stable
    position). Rows are read file by file, not in commit order. Tables whose
    rows are not plain Parquet rows are refused: partitioned tables (the
    partition values live in the log), deletion vectors and column mapping.

    Args:
        location: The table: a local directory or ``s3://bucket/prefix``.
        name: The step name of the source.
        version: The version to read, a ``datetime`` (the version current at
            that time) or ``None`` (the latest).
        columns: Columns to read (``None``: all).
        quarantine: Where corrupt files are copied (a local directory or ``s3://``).
        on_quarantine: Called (sync or async) for every quarantined file.
        s3: How to reach S3 for an ``s3://`` table.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        location: str | os.PathLike[str],
        *,
        name: str = "delta",
        version: int | datetime | None = None,
        columns: list[str] | None = None,
        quarantine: str | os.PathLike[str] | None = None,
        on_quarantine: QuarantineHook | None = None,
        s3: LakeS3Options | None = None,
    ) -> None:
        if version is not None and not isinstance(version, int | datetime):
            raise ConfigError("version", f"expected an int, a datetime or None, got {version!r}")
        super().__init__(
            location,
            name=name,
            columns=columns,
            quarantine=quarantine,
            on_quarantine=on_quarantine,
            s3=s3,
        )
        self.uri = table_uri(location)
        self.version = version
        options = storage_options(self.uri, s3)
        self._options = None if options is None else dict(options)

    def list_files(self) -> list[str]:
        """The table's data files at the version, relative to the table (blocking).

        Raises:
            ConfigError: The table is partitioned or uses deletion vectors or column mapping.
        """
        version = self.version if isinstance(self.version, int) else None
        table = DeltaTable(self.uri, version=version, storage_options=self._options)
        if isinstance(self.version, datetime):
            table.load_as_version(self.version)
        if table.metadata().partition_columns:
            raise ConfigError("location", f"{self.uri!r} is partitioned; not supported yet")
        features = set(table.protocol().reader_features or ())
        if features & set(_UNSUPPORTED):
            found = sorted(features & set(_UNSUPPORTED))
            raise ConfigError("location", f"{self.uri!r} uses {found}; not supported yet")
        root = self.uri.rstrip("/") + "/"
        return [uri.removeprefix(root) for uri in table.file_uris()]
