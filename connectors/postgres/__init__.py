"""PostgreSQL: a change-data-capture source and an upsert sink (needs the ``postgres`` extra).

:class:`PostgresCDCSource` reads a logical replication slot (``pgoutput``)
after a consistent snapshot of the tables, and advances the slot only over
checkpointed changes; :class:`PostgresSink` upserts by key, one COPY and one
merge statement per batch. Both use asyncpg: ``pip install 'riprap[postgres]'``.
"""

from __future__ import annotations

from riprap.lowlevel import fixup_module_metadata

try:
    import asyncpg  # noqa: F401  # fail early with an actionable message
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the environment
    raise ModuleNotFoundError(
        "riprap.connectors.postgres needs asyncpg: pip install 'riprap[postgres]'", name=exc.name
    ) from exc

from ._cdc import PostgresCDCSource as PostgresCDCSource
from ._errors import ReplicationSlotError as ReplicationSlotError
from ._lag import PostgresCDCStatistics as PostgresCDCStatistics
from ._sink import PostgresSink as PostgresSink

__all__ = ("PostgresCDCSource", "PostgresCDCStatistics", "PostgresSink", "ReplicationSlotError")

fixup_module_metadata(__name__, globals())
