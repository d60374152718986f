"""Keyed state: per-key values a step keeps across records, saved with the positions.

``.map(step_id, fn, state=True)`` calls ``fn(value, state)`` with the
:class:`State` of the record's key; a custom stage keeps a :class:`KeyedState`.
State is partitioned like the input and a checkpoint holds exactly the state
its positions imply (I3), in memory (:class:`MemoryStore`, saved whole in the
checkpoint) or on local disk (:class:`SqliteStore`, one database per
partition, reconciled with the checkpoint on start). With a :class:`Changelog`
(``Pipeline(..., changelog=KafkaChangelog(...))``) every change is also
logged there, so a partition's state follows it to whichever process is
given the partition.

.. versionadded:: 0.1
"""

from __future__ import annotations

from riprap._core.public import fixup_module_metadata
from riprap._core.state_stores import Changelog as Changelog
from riprap._core.state_stores import RestoredState as RestoredState
from riprap._core.state_stores import StateStore as StateStore
from riprap._core.state_values import MissingKeyError as MissingKeyError
from riprap._core.state_values import PartitionGivenUp as PartitionGivenUp
from riprap._core.state_values import StateStoreError as StateStoreError
from riprap._core.state_values import StateValueError as StateValueError
from riprap._runtime.keyed_state import KeyedState as KeyedState
from riprap._runtime.keyed_state import State as State
from riprap._runtime.state_memory import MemoryStore as MemoryStore
from riprap._runtime.state_sqlite import SqliteStore as SqliteStore

__all__ = (
    "Changelog",
    "KeyedState",
    "MemoryStore",
    "MissingKeyError",
    "PartitionGivenUp",
    "RestoredState",
    "SqliteStore",
    "State",
    "StateStore",
    "StateStoreError",
    "StateValueError",
)

fixup_module_metadata(__name__, globals())
