"""Amazon S3 (and compatible stores): source, sink, dead letters and checkpoints.

Needs the ``s3`` extra (aiobotocore). aiobotocore is imported only when a
connector opens its client, so importing this package is cheap.

* :class:`S3Source`: JSON Lines or CSV objects under a prefix, one partition
  per object, resumable inside an object; corrupt objects are quarantined whole.
* :class:`S3ObjectReader`: a ``.flat_map`` step that reads the objects a record
  names (keys or S3 event notifications delivered through Kafka), so that a
  consumer group spreads objects over machines.
* :class:`S3Sink`: each source partition's records in objects cut by count,
  size and age, named by the source positions they hold: exactly once, even
  when a replay cuts them differently.
* :class:`S3DeadLetters`: a :class:`~riprap.deadletters.DeadLetterSink`, one object per write;
  :func:`iter_s3_dead_letters`, :class:`S3DeadLetterSource` and
  :func:`purge_s3_dead_letters` read, replay and purge them (``riprap dlq ... s3://``).
* :class:`S3ReadError`: an object that kept arriving short, cut off or failing
  its checksum; every connector checks each download before using it.
* :class:`S3Checkpoints`: a :class:`~riprap.checkpoints.CheckpointBackend` fenced by
  conditional writes (``If-Match`` / ``If-None-Match``).
"""

from __future__ import annotations

from riprap.lowlevel import fixup_module_metadata

from ._checkpoints import S3Checkpoints as S3Checkpoints
from ._client import S3ClientConfig as S3ClientConfig
from ._deadletters import S3DeadLetters as S3DeadLetters
from ._dlq_reader import S3DeadLetterSource as S3DeadLetterSource
from ._dlq_reader import S3PurgeReport as S3PurgeReport
from ._dlq_reader import iter_s3_dead_letters as iter_s3_dead_letters
from ._dlq_reader import purge_s3_dead_letters as purge_s3_dead_letters
from ._objects import S3ObjectReader as S3ObjectReader
from ._reads import S3ReadError as S3ReadError
from ._sink import S3Sink as S3Sink
from ._sink import S3SinkStatistics as S3SinkStatistics
from ._source import OBJECT_COMPLETE as OBJECT_COMPLETE
from ._source import QuarantinedObject as QuarantinedObject
from ._source import S3Source as S3Source
from ._source import S3SourceStatistics as S3SourceStatistics

__all__ = (
    "OBJECT_COMPLETE",
    "QuarantinedObject",
    "S3Checkpoints",
    "S3ClientConfig",
    "S3DeadLetterSource",
    "S3DeadLetters",
    "S3ObjectReader",
    "S3PurgeReport",
    "S3ReadError",
    "S3Sink",
    "S3SinkStatistics",
    "S3Source",
    "S3SourceStatistics",
    "iter_s3_dead_letters",
    "purge_s3_dead_letters",
)


fixup_module_metadata(__name__, globals())
