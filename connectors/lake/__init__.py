"""riprap.connectors.lake: Parquet files and Delta Lake tables, on local disks or S3.

* :class:`ParquetSink`: each source partition's records in Parquet files named
  by their positions, so a replay lines up with what is stored (exactly once).
* :class:`DeltaSink`: appends to a Delta Lake table; each commit names, per
  source partition, the position it covers (an app transaction), so a replay
  skips what the table holds (exactly once).
* :class:`ParquetSource`: the rows of Parquet files, one partition per file,
  resumed mid-file from a row position; a corrupt file is quarantined.
* :class:`DeltaSource`: the rows of a Delta table at a version, the same way.
* :func:`rollback_delta`: restore a Delta sink's table to an earlier version
  and say which positions the pipeline resumes from (``riprap checkpoint set``);
  ``riprap rollback`` does both, through :meth:`DeltaSink.rollback`.
* :class:`LakeS3Options`: how to reach S3 for an ``s3://`` location.

Needs the ``lake`` extra (``pyarrow``, ``deltalake``).
"""

from __future__ import annotations

from riprap.lowlevel import fixup_module_metadata

from ._delta_sink import DeltaSink as DeltaSink
from ._delta_sink import DeltaSinkStatistics as DeltaSinkStatistics
from ._delta_source import DeltaSource as DeltaSource
from ._parquet_sink import ParquetSink as ParquetSink
from ._parquet_sink import ParquetSinkStatistics as ParquetSinkStatistics
from ._parquet_source import FILE_COMPLETE as FILE_COMPLETE
from ._parquet_source import ParquetSource as ParquetSource
from ._parquet_source import ParquetSourceStatistics as ParquetSourceStatistics
from ._parquet_source import QuarantinedFile as QuarantinedFile
from ._rollback import DeltaRollback as DeltaRollback
from ._rollback import rollback_delta as rollback_delta
from ._storage import LakeS3Options as LakeS3Options

__all__ = (
    "FILE_COMPLETE",
    "DeltaRollback",
    "DeltaSink",
    "DeltaSinkStatistics",
    "DeltaSource",
    "LakeS3Options",
    "ParquetSink",
    "ParquetSinkStatistics",
    "ParquetSource",
    "ParquetSourceStatistics",
    "QuarantinedFile",
    "rollback_delta",
)

fixup_module_metadata(__name__, globals())
