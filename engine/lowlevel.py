"""What connectors, stages and embedding services build on, beyond the core in :mod:`riprap`.

Acks tie derived records to their source position; origins map a batch's items
back to source records; ``Emit`` is how a stage hands on results;
``fsync_directory`` makes a file sink's new files and renames durable, and
``make_directory`` creates a sink's missing directory the way riprap's own
stores do.

.. versionadded:: 0.1
"""

from __future__ import annotations

from riprap._core.files import fsync_directory as fsync_directory
from riprap._core.files import make_directory as make_directory
from riprap._core.protocols import Emit as Emit
from riprap._core.public import fixup_module_metadata as fixup_module_metadata
from riprap._core.records import DropsOrigin as DropsOrigin
from riprap._core.records import Headers as Headers
from riprap._core.records import Origin as Origin
from riprap._core.records import SourceOrigin as SourceOrigin
from riprap._runtime.acks import Ack as Ack
from riprap._runtime.allocator import keep_freed_memory as keep_freed_memory

__all__ = (
    "Ack",
    "DropsOrigin",
    "Emit",
    "Headers",
    "Origin",
    "SourceOrigin",
    "fixup_module_metadata",
    "fsync_directory",
    "keep_freed_memory",
    "make_directory",
)

fixup_module_metadata(__name__, globals())
