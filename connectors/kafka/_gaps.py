"""Offset gaps: a checkpointed offset outside the range of offsets the broker still keeps.

Two ways a position can fall outside a partition's ``earliest..latest``:
below it, when retention deleted records the pipeline never read (it was down
longer than ``retention.ms``); above it, when the topic was deleted and
recreated and its offsets started again from 0. A third keeps the position
inside: the topic was recreated and already holds more records than the
checkpoint, so only the record before the position tells (it is not the one
the pipeline read there). None may pass silently (I7): the source stops with
:class:`OffsetGapError`, or with ``on_gap="skip"`` counts the gap and resumes
at the earliest offset.
"""

from __future__ import annotations

from typing import Literal, final

from riprap import EngineError

GapKind = Literal["retention", "beyond", "replaced"]
"""``retention``: records before the earliest offset are gone; ``beyond``: past the latest;
``replaced``: the record before the position is not the one read there."""


def offset_gap(offset: int, earliest: int, latest: int) -> GapKind | None:
    """Whether resuming at ``offset`` leaves a gap in a partition that keeps ``earliest..latest``.

    ``latest`` is the offset after the last record (the next one to be written),
    so resuming exactly there is no gap: the partition was read to its end.
    """
    if offset < earliest:
        return "retention"
    if offset > latest:
        return "beyond"
    return None


@final
class OffsetGapError(EngineError):
    """A checkpointed offset lies outside the offsets the broker keeps for its partition.

    Attributes:
        topic: The topic.
        partition: The partition number.
        offset: The checkpointed offset (the later of the pipeline's and the group's).
        earliest: The partition's earliest offset on the broker.
        latest: The partition's latest offset (the next to be written).
        kind: ``"retention"`` (records below ``earliest`` were deleted),
            ``"beyond"`` (the offset is past ``latest``: the topic was recreated)
            or ``"replaced"`` (the record before the offset is not the one the
            pipeline read there: the topic was recreated and refilled).
    """

    def __init__(
        self, topic: str, partition: int, *, offset: int, earliest: int, latest: int, kind: GapKind
    ) -> None:
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.earliest = earliest
        self.latest = latest
        self.kind = kind
        super().__init__(describe_gap(topic, partition, offset, earliest, latest, kind))


def describe_gap(
    topic: str, partition: int, offset: int, earliest: int, latest: int, kind: GapKind
) -> str:
    """One sentence naming the partition, the checkpointed offset and the broker's range."""
    where = f"topic {topic!r} partition {partition}: checkpointed offset {offset}"
    keeps = f"the broker keeps offsets {earliest}..{latest}"
    if kind == "retention":
        why = (
            f"is below the earliest offset ({keeps}): records {offset}..{earliest - 1} "
            "were deleted by retention before this pipeline read them"
        )
    elif kind == "beyond":
        why = (
            f"is beyond the latest offset ({keeps}): the topic was probably deleted "
            "and recreated, and its offsets started again"
        )
    else:
        why = (
            f"follows a record (offset {offset - 1}) that is not the one this pipeline "
            f"read there ({keeps}): the topic was probably deleted and recreated, and "
            "already holds more records than the checkpoint counted"
        )
    return f"{where} {why}; set on_gap='skip' to count the gap and resume at offset {earliest}"
