"""Completion tracking: positions advance only over a contiguous done prefix (I1)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from riprap._runtime.acks import CompletionTracker, InFlight, PartitionTracker, combined_ack
from riprap.lowlevel import Ack


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[tuple[str, int, int]], list[int], list[int]]:
    """Batches (partition, start, size), fan-outs per batch, and a release order."""
    batches: list[tuple[str, int, int]] = []
    nxt = {"a": 0, "b": 0}
    for _ in range(draw(st.integers(1, 12))):
        partition = draw(st.sampled_from(["a", "b"]))
        size = draw(st.integers(0, 5))
        gap = draw(st.integers(0, 2))  # sources may skip positions (compaction)
        start = nxt[partition] + gap
        batches.append((partition, start, size))
        nxt[partition] = start + size
    fanouts = [draw(st.integers(1, 3)) for _ in batches]
    releases = [i for i, k in enumerate(fanouts) for _ in range(k)]
    order = draw(st.permutations(releases))
    return batches, fanouts, list(order)


@given(scenarios())
def test_position_never_passes_an_unfinished_record(
    scenario: tuple[list[tuple[str, int, int]], list[int], list[int]],
) -> None:
    """Under any completion order and fan-out, no committed position covers an undone record."""
    batches, fanouts, order = scenario
    tracker = CompletionTracker({}, InFlight(1_000), lambda: None)
    acks: list[Ack] = []
    for (partition, start, size), fanout in zip(batches, fanouts, strict=True):
        ack = tracker.ack_for(partition, start, start + size, size, reserved=0)
        if fanout > 1:
            ack.retain(fanout - 1)
        acks.append(ack)
    for step, i in enumerate(order):
        acks[i].release()
        released = order[: step + 1]
        positions = tracker.positions()
        for j, (partition, start, size) in enumerate(batches):
            if released.count(j) < fanouts[j] and size > 0:
                assert positions[partition] <= start
    ends: dict[str, int] = {}
    for partition, start, size in batches:
        ends[partition] = start + size
    assert ends == tracker.positions()


def test_in_order_completion_advances_each_batch() -> None:
    """Completing ranges in order moves the position to each range's end."""
    tracker = PartitionTracker("p", 0)
    first = tracker.open(0, 10, 10)
    second = tracker.open(10, 20, 10)
    tracker.complete(first)
    assert 10 == tracker.committable
    tracker.complete(second)
    assert 20 == tracker.committable


def test_out_of_order_completion_waits_for_the_gap() -> None:
    """A later range done first does not move the position past an earlier one."""
    tracker = PartitionTracker("p", 5)
    first = tracker.open(5, 10, 5)
    second = tracker.open(10, 20, 10)
    tracker.complete(second)
    assert 5 == tracker.committable
    tracker.complete(first)
    assert 20 == tracker.committable


def test_overlapping_range_is_refused() -> None:
    """Handing out a position twice is a bug in the source and is refused loudly."""
    tracker = PartitionTracker("p", 0)
    tracker.open(0, 10, 10)
    with pytest.raises(ValueError, match="overlaps"):
        tracker.open(5, 15, 10)


def test_combined_ack_releases_all_parts() -> None:
    """A merged batch's ack completes each contributing ack once."""
    done: list[str] = []
    a, b = Ack(lambda: done.append("a")), Ack(lambda: done.append("b"))
    merged = combined_ack([a, b])
    merged.release()
    assert ["a", "b"] == done


def test_over_release_is_an_error() -> None:
    """Releasing more often than retained raises instead of corrupting the count."""
    ack = Ack(lambda: None)
    ack.release()
    with pytest.raises(RuntimeError, match="released more often"):
        ack.release()


@pytest.mark.anyio
async def test_in_flight_waits_for_room() -> None:
    """The in-flight bound makes the next acquire wait until records are released."""
    import anyio

    bound = InFlight(10)
    await bound.acquire(8)
    got = anyio.Event()

    async def taker() -> None:
        await bound.acquire(5)
        got.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(taker)
        await anyio.wait_all_tasks_blocked()
        assert not got.is_set()
        bound.release(8)
        await got.wait()
    assert 5 == bound.in_flight
