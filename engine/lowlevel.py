"""What connectors, stages and embedding services build on, beyond the core in :mod:`riprap`.

Acks tie derived records to their source position; origins map a batch's items
back to source records; ``Emit`` is how a stage hands on results;
``fsync_directory`` makes a file sink's new files and renames durable,
``make_directory`` creates a sink's missing directory the way riprap's own
stores do, ``use_wal`` puts a SQLite connection in WAL mode even while
another process opens the same new database, and
``optional_limit``/``optional_seconds`` check a plug-in's options with the
same errors as riprap's own, and ``PartitionIdentities`` keeps what a
source's positions count in (its ``identities()``).

.. versionadded:: 0.1
"""

from __future__ import annotations

from riprap._core.files import fsync_directory as fsync_directory
from riprap._core.files import make_directory as make_directory
from riprap._core.identities import PartitionIdentities as PartitionIdentities
from riprap._core.options import optional_limit as optional_limit
from riprap._core.options import optional_seconds as optional_seconds
from riprap._core.protocols import Emit as Emit
from riprap._core.public import fixup_module_metadata as fixup_module_metadata
from riprap._core.records import Assignment as Assignment
from riprap._core.records import DropsOrigin as DropsOrigin
from riprap._core.records import Headers as Headers
from riprap._core.records import IndexOrigin as IndexOrigin
from riprap._core.records import Origin as Origin
from riprap._core.records import SourceOrigin as SourceOrigin
from riprap._core.sqlite_wal import use_wal as use_wal
from riprap._runtime.acks import Ack as Ack
from riprap._runtime.allocator import keep_freed_memory as keep_freed_memory

__all__ = (
    "Ack",
    "Assignment",
    "DropsOrigin",
    "Emit",
    "Headers",
    "IndexOrigin",
    "Origin",
    "PartitionIdentities",
    "SourceOrigin",
    "fixup_module_metadata",
    "fsync_directory",
    "keep_freed_memory",
    "make_directory",
    "optional_limit",
    "optional_seconds",
    "use_wal",
)

fixup_module_metadata(__name__, globals())
