"""Completion tracking: positions advance only over a contiguous done prefix (I1)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from riprap import StalledError
from riprap._runtime.acks import CompletionTracker, InFlight, PartitionTracker, combined_ack
from riprap.lowlevel import Ack

if TYPE_CHECKING:
    from collections.abc import Callable


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


@dataclass(frozen=True)
class Leaf:
    """Where one line of a fan-out tree ends: ``done`` (written or dropped), ``dlq``, ``fail``."""

    kind: str


@dataclass(frozen=True)
class Fork:
    """A fan-out: the batch goes to every child, its ack retained once per extra child."""

    children: tuple[Leaf | Fork, ...]


@dataclass(frozen=True)
class Side:
    """A stage with a side output: some records to ``side``, the rest on to ``main``.

    As a window or a validation stage does: the ack is retained once for the
    side output before the stage hands the rest on, or releases its own share
    when nothing goes on (``main`` is ``None``: absorbed or all sent aside).
    """

    main: Leaf | Fork | Side | None
    side: Leaf | Fork | Side


def trees() -> st.SearchStrategy[Leaf | Fork | Side]:
    """Random fan-out trees with side outputs: sinks that write, dead-letter or never finish."""
    leaves = st.builds(Leaf, st.sampled_from(["done", "done", "dlq", "fail"]))

    def nodes(
        children: st.SearchStrategy[Leaf | Fork | Side],
    ) -> st.SearchStrategy[Leaf | Fork | Side]:
        forks = st.builds(Fork, st.lists(children, min_size=1, max_size=3).map(tuple))
        return forks | st.builds(Side, st.none() | children, children)

    return st.recursive(leaves, nodes, max_leaves=6)


@dataclass(frozen=True)
class Token:
    """One share of a batch's ack on its way through the tree; ``release`` ends a dead letter."""

    batch: int
    node: Leaf | Fork | Side | None  # None: the dead-letter write became durable


def expected_positions(batches: list[tuple[str, int, int]], undone: set[int]) -> dict[str, int]:
    """Per partition: the start of the first batch not done, else the end of the last batch."""
    positions: dict[str, int] = {}
    blocked: set[str] = set()
    for i, (partition, start, size) in enumerate(batches):
        if partition in blocked:
            continue
        if i in undone:
            positions[partition] = start
            blocked.add(partition)
        else:
            positions[partition] = start + size
    return positions


@given(
    st.lists(
        st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 4), st.integers(0, 2), trees()),
        min_size=1,
        max_size=8,
    ),
    st.data(),
)
def test_done_prefix_holds_across_random_fan_out_trees(
    drawn: list[tuple[str, int, int, Leaf | Fork | Side]], data: st.DataObject
) -> None:
    """Fan-out trees, side outputs, dead letters and failed branches, in any interleaving (I1).

    Each step handles one pending share of some batch, as the runtime does: a
    fork retains the ack once per extra child before handing it on, a stage
    with a side output retains it once before its own share goes on, a sink
    releases its share, a dead letter retains it until its write is durable, a
    failed branch never releases. After every step each partition's position
    is exactly the start of its first batch some branch is not done with.
    """
    tracker = CompletionTracker({}, InFlight(1_000), lambda: None)
    batches: list[tuple[str, int, int]] = []
    nxt = {"a": 0, "b": 0}
    acks: list[Ack] = []
    pending: list[Token] = []
    for i, (partition, size, gap, tree) in enumerate(drawn):
        start = nxt[partition] + gap
        nxt[partition] = start + size
        batches.append((partition, start, size))
        acks.append(tracker.ack_for(partition, start, start + size, size, reserved=0))
        pending.append(Token(i, tree))
    failed: set[int] = set()
    assert expected_positions(batches, set(range(len(batches)))) == tracker.positions()
    while pending:
        token = pending.pop(data.draw(st.integers(0, len(pending) - 1)))
        ack, node = acks[token.batch], token.node
        if isinstance(node, Fork):
            ack.retain(len(node.children) - 1)
            pending += [Token(token.batch, child) for child in node.children]
        elif isinstance(node, Side):
            ack.retain()  # the side output's share, before the stage's own goes on
            pending.append(Token(token.batch, node.side))
            if node.main is None:
                ack.release()
            else:
                pending.append(Token(token.batch, node.main))
        elif node is None or node.kind == "done":
            ack.release()
        elif node.kind == "dlq":
            ack.retain()  # the router holds the record until its dead letter is durable
            pending += [Token(token.batch, Leaf("done")), Token(token.batch, None)]
        else:
            failed.add(token.batch)
        undone = failed | {t.batch for t in pending}
        assert expected_positions(batches, undone) == tracker.positions()
        assert all(acks[i].done == (i not in undone) for i in range(len(batches)))


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


def _source_acks(bound: InFlight, sizes: list[int]) -> list[Ack]:
    """One source batch's ack per size, its records taken from ``bound``."""
    tracker = CompletionTracker({}, bound, lambda: None)
    acks = []
    start = 0
    for size in sizes:
        bound.in_flight += size
        acks.append(tracker.ack_for("p", start, start + size, size, size))
        start += size
    return acks


async def _acquire_outcome(bound: InFlight, n: int, park: Callable[[], None]) -> str:
    """Start an acquire of ``n`` that must wait, ``park`` while it waits, and say how it ended."""
    outcome = "waiting"

    async def taker() -> None:
        nonlocal outcome
        try:
            await bound.acquire(n)
        except StalledError as exc:
            outcome = f"stalled: {exc.stages} {exc.records} {exc.bound}={exc.limit}"
        else:
            outcome = "acquired"

    async with anyio.create_task_group() as tg:
        tg.start_soon(taker)
        await anyio.wait_all_tasks_blocked()
        park()
        await anyio.wait_all_tasks_blocked()
        tg.cancel_scope.cancel()
    return outcome


@pytest.mark.anyio
async def test_a_source_waiting_while_every_record_in_flight_is_parked_is_stalled() -> None:
    """Parking the last batch in flight while the source waits ends the wait with StalledError."""
    bound = InFlight(10)
    first, second = _source_acks(bound, [6, 4])
    bound.park(first, "gate")
    outcome = await _acquire_outcome(bound, 5, lambda: bound.park(second, "window"))
    assert "stalled: ('gate', 'window') 10 max_in_flight=10" == outcome


@pytest.mark.anyio
async def test_a_record_in_flight_that_is_not_parked_may_still_arrive() -> None:
    """A batch nobody parked keeps the source waiting (it may yet reach the waiting stage)."""
    bound = InFlight(10)
    first, _ = _source_acks(bound, [6, 4])
    assert "waiting" == await _acquire_outcome(bound, 5, lambda: bound.park(first, "gate"))


@pytest.mark.anyio
async def test_a_parked_ack_also_held_elsewhere_is_not_a_stall() -> None:
    """A source batch cut into parts, one parked and one still on its way, may yet arrive."""
    bound = InFlight(10)
    (ack,) = _source_acks(bound, [10])
    ack.retain()  # a second part of the batch, still upstream
    assert "waiting" == await _acquire_outcome(bound, 1, lambda: bound.park(ack, "gate"))
    bound.park(ack, "gate")  # the second part arrives and is parked too
    outcome = await _acquire_outcome(bound, 1, lambda: None)
    assert "stalled: ('gate',) 10 max_in_flight=10" == outcome


@pytest.mark.anyio
async def test_the_last_other_holder_letting_go_while_the_source_waits_is_a_stall() -> None:
    """A batch one branch still writes and another parked: once the writer lets go, only the
    park holds it, and the waiting source finds the stall without any record completing.
    """
    bound = InFlight(10)
    (ack,) = _source_acks(bound, [10])
    ack.retain()  # the other branch's share
    bound.park(ack, "gate")
    outcome = await _acquire_outcome(bound, 1, ack.release)
    assert "stalled: ('gate',) 10 max_in_flight=10" == outcome


@pytest.mark.anyio
async def test_a_stall_under_the_byte_bound_names_it() -> None:
    """With room in records but none in bytes, the error names max_in_flight_bytes."""
    bound = InFlight(100, byte_capacity=1_000)
    (ack,) = _source_acks(bound, [3])
    bound.bytes = 1_000
    outcome = await _acquire_outcome(bound, 1, lambda: bound.park(ack, "gate"))
    assert "stalled: ('gate',) 3 max_in_flight_bytes=1000" == outcome


def test_unparking_a_batch_never_parked_is_an_error() -> None:
    """Park and unpark come in pairs per stage; a stray unpark is a bug, not ignored."""
    bound = InFlight(10)
    (ack,) = _source_acks(bound, [2])
    bound.park(ack, "gate")
    with pytest.raises(RuntimeError, match="'window' unparked a batch it did not park"):
        bound.unpark(ack, "window")
    bound.unpark(ack, "gate")
    with pytest.raises(RuntimeError, match="did not park"):
        bound.unpark(ack, "gate")
