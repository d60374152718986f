"""Amazon S3 (and compatible stores): source, sink, dead letters and checkpoints.

Needs the ``s3`` extra (aiobotocore). aiobotocore is imported only when a
connector opens its client, so importing this package is cheap.

* :class:`S3Source`: JSON Lines or CSV objects under a prefix, one partition
  per object, resumable inside an object; corrupt objects are quarantined whole.
* :class:`S3Sink`: one object per batch and source partition, named by the
  source positions it holds: idempotent.
* :class:`S3DeadLetters`: a :class:`~riprap.DeadLetterSink`, one object per write.
* :class:`S3Checkpoints`: a :class:`~riprap.CheckpointBackend` fenced by
  conditional writes (``If-Match`` / ``If-None-Match``).
"""

from __future__ import annotations

import contextlib

from ._checkpoints import S3Checkpoints as S3Checkpoints
from ._client import S3ClientConfig as S3ClientConfig
from ._deadletters import S3DeadLetters as S3DeadLetters
from ._sink import S3Sink as S3Sink
from ._source import OBJECT_COMPLETE as OBJECT_COMPLETE
from ._source import QuarantinedObject as QuarantinedObject
from ._source import S3Source as S3Source
from ._source import S3SourceStatistics as S3SourceStatistics

__all__ = (
    "OBJECT_COMPLETE",
    "QuarantinedObject",
    "S3Checkpoints",
    "S3ClientConfig",
    "S3DeadLetters",
    "S3Sink",
    "S3Source",
    "S3SourceStatistics",
)


def _public_module_names() -> None:
    """Show public names as ``riprap.connectors.s3.X`` rather than their private modules."""
    for name in __all__:
        obj = globals()[name]
        if getattr(obj, "__module__", "").startswith(__name__ + "._"):
            with contextlib.suppress(AttributeError, TypeError):
                obj.__module__ = __name__


_public_module_names()
