"""Checkpoints kept as the consumer group's committed offsets (stateless pipelines only).

The group's offsets are the only state: no file, no table. Kafka fences a
stale member by itself (a commit from an old generation is refused), and the
source sends no commit at all once its session has expired, so no epoch is
stored and the group's offsets never move backwards: a member frozen past its
session timeout wakes up fenced, its commit is dropped, and when it gets its
partitions back it starts from the offsets the group committed meanwhile.
Operator state and crash counts have nowhere to go, so a pipeline with
stateful stages is refused before it runs: use
:class:`~riprap.checkpoints.SqliteCheckpoints` or the S3 backend for those,
or keep keyed state in a :class:`~riprap.connectors.kafka.KafkaChangelog`,
which this backend accepts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, final

from aiokafka.errors import KafkaError

from riprap.checkpoints import Checkpoint, CheckpointError, Claim

if TYPE_CHECKING:
    from ._source import KafkaSource


@final
class KafkaCheckpoints:
    """A checkpoint backend that commits positions through ``source``'s consumer group.

    Args:
        source: The pipeline's :class:`KafkaSource`; only it can commit for the group.
    """

    supports_state = False

    def __init__(self, source: KafkaSource) -> None:
        self.source = source

    async def claim(self, pipeline: str, owner: str) -> Claim:
        """Nothing to claim: the group's generation fences members; positions come from it."""
        return Claim(epoch=1, owner=owner, checkpoint=None)

    async def save(self, checkpoint: Checkpoint) -> None:
        """Commit the snapshot's positions as the group's offsets.

        Only forwards, and only for partitions the source owns now (see
        :meth:`KafkaSource.commit`).

        Raises:
            CheckpointError: The snapshot holds operator state, or the group refused
                the commit (this member was fenced by a rebalance or its session
                expired: nothing was committed) or timed out.
        """
        held = sorted(step for step, state in checkpoint.state.items() if state is not None)
        if held:  # keyed state kept in a changelog snapshots as None
            stages = ", ".join(held)
            raise CheckpointError(
                f"KafkaCheckpoints keeps only positions, but stages {stages} have state; "
                "use SqliteCheckpoints or S3Checkpoints"
            )
        try:
            await self.source.commit(checkpoint.positions)
        except (KafkaError, TimeoutError) as exc:
            raise CheckpointError(
                f"group {self.source.group_id!r} refused the commit: {type(exc).__name__}: {exc}"
            ) from exc

    async def load(self, pipeline: str) -> Checkpoint | None:
        """The source reads the group's offsets itself when it joins; nothing to load here."""
        return None

    async def aclose(self) -> None:
        """The source owns the consumer; nothing to close."""
