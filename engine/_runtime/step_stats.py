"""Per-step statistics keyed by step id, whether or not steps were fused into one loop.

Fusion is an implementation detail: a metric series must not be renamed when
a step is added next to another. A fused loop counts per batch only what it
must (each step's errors and a filter's drops, as they happen); each step's
records in and out are derived here, at snapshot time, from the loop's batch
lengths: forward from the records that entered, through maps and filters, and
backward from the records that came out, through the steps after the last
flat_map (whose outputs are counted when another flat_map follows it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from riprap._runtime.segments import FusedSegment
from riprap.observability._statistics import StepStats

if TYPE_CHECKING:
    from collections.abc import Sequence

    from riprap._runtime.segments import Segment


def segment_step_stats(segment: Segment) -> tuple[StepStats, ...]:
    """The statistics of every step a segment runs, one per step id."""
    if isinstance(segment, FusedSegment):
        return fused_step_stats(segment)
    return (segment.counters.freeze(),)


def entry_step_id(segment: Segment) -> str:
    """The step id of the queue in front of ``segment``: its first step's."""
    if isinstance(segment, FusedSegment):
        return segment.steps[0].step_id
    return segment.counters.step_id


def fused_step_stats(segment: FusedSegment) -> tuple[StepStats, ...]:
    """Each step of a fused loop, with the loop's batches, time and latency."""
    loop = segment.counters.freeze()
    kinds = [step.kind for step in segment.steps]
    records_in, records_out = _flow(
        kinds, segment.op_errors, segment.op_counts, loop.records_in, loop.records_out
    )
    return tuple(
        StepStats(
            step.step_id,
            records_in[i],
            records_out[i],
            segment.op_errors[i],
            segment.op_counts[i] if step.kind == "filter" else 0,
            batches=loop.batches,
            busy_seconds=loop.busy_seconds,
            latency=loop.latency,
        )
        for i, step in enumerate(segment.steps)
    )


def _flow(
    kinds: Sequence[str], errors: Sequence[int], counts: Sequence[int], entered: int, left: int
) -> tuple[list[int], list[int]]:
    """Records in and out of each step of a chain that ``entered`` and ``left`` as a whole."""
    n = len(kinds)
    records_in = [0] * n
    records_out = [0] * n
    last_flat_map = max((i for i, kind in enumerate(kinds) if kind == "flat_map"), default=-1)
    flowing = entered
    for i in range(last_flat_map + 1):
        records_in[i] = flowing
        if kinds[i] == "flat_map":
            flowing = counts[i]  # the last flat_map's outputs come from the backward pass
        else:
            flowing -= errors[i] + (counts[i] if kinds[i] == "filter" else 0)
        records_out[i] = flowing
    flowing = left
    for i in range(n - 1, last_flat_map, -1):
        records_out[i] = flowing
        flowing += errors[i] + (counts[i] if kinds[i] == "filter" else 0)
        records_in[i] = flowing
    if last_flat_map >= 0:
        records_out[last_flat_map] = flowing
    return records_in, records_out
