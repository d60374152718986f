"""Async steps keep ``concurrency`` calls in flight across batch boundaries.

Counted at the dependency (the step function): how many calls run at once,
in which order records of one key run, and what reaches the sink. Time is
virtual, so the delays cost nothing and the counts do not depend on the machine.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

import anyio
import pytest

import riprap
from riprap.checkpoints import MemoryCheckpoints
from riprap.connectors.memory import IterableSource, MemorySink
from riprap.deadletters import SqliteDeadLetters, read_dead_letters
from riprap.testing import VirtualClock, run_pipeline

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.anyio


class Dependency:
    """An async function that takes ``delay(x)`` virtual seconds and counts calls in flight."""

    def __init__(self, clock: VirtualClock, delay: Any) -> None:
        self.clock = clock
        self.delay = delay
        self.in_flight = 0
        self.peak = 0
        self.calls: list[Any] = []

    async def __call__(self, x: Any) -> Any:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        self.calls.append(x)
        try:
            await self.clock.sleep(self.delay(x))
        finally:
            self.in_flight -= 1
        return x


def pipeline(
    values: list[Any], *, batch_size: int, sink: MemorySink, dlq: SqliteDeadLetters | None = None
) -> riprap.Pipeline:
    return riprap.Pipeline(
        "concurrency",
        checkpoint=MemoryCheckpoints(),
        batch_size=batch_size,
        max_in_flight=max(batch_size, 1_000),
        dead_letter=dlq,
    ).source(IterableSource("values", values))


@pytest.mark.parametrize("batch_size", [1, 2, 10, 100])
async def test_concurrency_is_kept_when_batches_are_smaller_than_it(batch_size: int) -> None:
    clock = VirtualClock()
    dependency = Dependency(clock, lambda x: 0.01)
    sink = MemorySink()
    values = list(range(400))
    p = pipeline(values, batch_size=batch_size, sink=sink).map(
        "call", dependency, concurrency=16, retry=None, attempt_timeout=None
    )
    await run_pipeline(p.sink(sink), clock=clock)
    assert values == sink.values
    assert 16 == dependency.peak


async def test_a_slow_call_does_not_hold_up_the_next_batches() -> None:
    # Record 0 takes as long as all others together: they all run meanwhile,
    # batch after batch, and the output still keeps input order.
    clock = VirtualClock()
    dependency = Dependency(clock, lambda x: 10.0 if x == 0 else 0.01)
    sink = MemorySink()
    values = list(range(400))
    p = pipeline(values, batch_size=4, sink=sink).map(
        "call", dependency, concurrency=8, retry=None, attempt_timeout=None
    )
    started = clock.monotonic()
    await run_pipeline(p.sink(sink), clock=clock)
    assert values == sink.values
    # Record 0 takes 10 s; the other 399 at 7 calls at a time take about 0.6 s
    # meanwhile, so the run ends with record 0. Batch by batch, the 99 batches
    # after the first would start only after it: 10 s + 99 x 0.01 s.
    assert clock.monotonic() - started < 10.5


async def test_outputs_keep_input_order_across_batches_with_random_delays() -> None:
    clock = VirtualClock()
    rng = random.Random(3)
    delays = {x: rng.random() / 10 for x in range(300)}
    dependency = Dependency(clock, delays.__getitem__)
    sink = MemorySink()
    values = list(range(300))
    p = pipeline(values, batch_size=7, sink=sink).map(
        "call", dependency, concurrency=12, retry=None, attempt_timeout=None
    )
    await run_pipeline(p.sink(sink), clock=clock)
    assert values == sink.values
    assert 12 == dependency.peak


async def test_an_unordered_step_loses_nothing_and_keeps_its_concurrency() -> None:
    clock = VirtualClock()
    rng = random.Random(5)
    delays = {x: rng.random() / 10 for x in range(300)}
    dependency = Dependency(clock, delays.__getitem__)
    sink = MemorySink()
    values = list(range(300))
    p = pipeline(values, batch_size=5, sink=sink).map(
        "call", dependency, concurrency=10, ordered=False, retry=None, attempt_timeout=None
    )
    await run_pipeline(p.sink(sink), clock=clock)
    assert values == sorted(sink.values)
    assert len(values) == len(sink.values)
    assert 10 == dependency.peak


async def test_records_of_one_key_run_one_at_a_time_in_order_across_batches() -> None:
    clock = VirtualClock()
    rng = random.Random(11)
    values = [(i % 5, i) for i in range(250)]
    delays = {v: rng.random() / 10 for v in values}
    active: dict[int, int] = {}
    overlaps = 0
    order: dict[int, list[int]] = {}

    async def call(value: tuple[int, int]) -> tuple[int, int]:
        nonlocal overlaps
        key, i = value
        active[key] = active.get(key, 0) + 1
        overlaps += active[key] > 1
        order.setdefault(key, []).append(i)
        await clock.sleep(delays[value])
        active[key] -= 1
        return value

    sink = MemorySink()
    p = pipeline(values, batch_size=3, sink=sink).map(
        "call", call, concurrency=5, key=lambda v: v[0], retry=None, attempt_timeout=None
    )
    await run_pipeline(p.sink(sink), clock=clock)
    assert values == sink.values
    assert 0 == overlaps
    assert {k: [i for key, i in values if key == k] for k in range(5)} == order


async def test_failures_in_later_batches_are_dead_lettered_while_an_earlier_one_waits(
    tmp_path: Path,
) -> None:
    clock = VirtualClock()

    async def call(x: int) -> int:
        await clock.sleep(5.0 if x == 0 else 0.01)
        if x % 10 == 3:
            raise riprap.DataError("bad", reason="bad_value")
        return x

    sink, dlq = MemorySink(), SqliteDeadLetters(tmp_path / "dlq.db")
    values = list(range(60))
    p = pipeline(values, batch_size=4, sink=sink, dlq=dlq).map(
        "call", call, concurrency=8, retry=None, attempt_timeout=None
    )
    report = await run_pipeline(p.sink(sink), clock=clock)
    assert [x for x in values if x % 10 != 3] == sink.values
    assert report.outcome == "completed"
    letters = list(read_dead_letters(tmp_path / "dlq.db"))
    assert [3, 13, 23, 33, 43, 53] == sorted(letter.original_value() for letter in letters)
    assert {"bad_value"} == {letter.reason for letter in letters}


async def test_a_stop_while_calls_are_in_flight_drains_them() -> None:
    # Calls of several batches are in flight when the run is asked to stop:
    # every record read is done (written) before the run ends.
    clock = VirtualClock()
    dependency = Dependency(clock, lambda x: 0.05)
    sink = MemorySink()

    def endless() -> Any:
        i = 0
        while True:
            yield i
            i += 1

    p = (
        riprap.Pipeline("drain", checkpoint=MemoryCheckpoints(), batch_size=2, clock=clock)
        .source(IterableSource("endless", endless()))
        .map("call", dependency, concurrency=8, retry=None, attempt_timeout=None)
        .sink(sink)
    )
    async with clock.autojump(), p.open() as run:
        while dependency.peak < 8 or len(sink.values) < 50:
            await clock.sleep(0.01)
        run.stop()
        report = await run.wait()
    assert report.outcome == "stopped"
    assert list(range(len(sink.values))) == sink.values
    assert len(dependency.calls) == len(sink.values)
    assert 0 == dependency.in_flight


async def test_an_empty_input_ends() -> None:
    sink = MemorySink()

    async def call(x: int) -> int:
        await anyio.lowlevel.checkpoint()
        return x

    p = pipeline([], batch_size=4, sink=sink).map("call", call, concurrency=4)
    await run_pipeline(p.sink(sink))
    assert [] == sink.values


@pytest.mark.parametrize("record", [False, True])
async def test_an_async_map_may_return_records_and_fail_records(
    tmp_path: Path, record: bool
) -> None:
    """A ``Record`` result passes on its value; a failing call's record goes to the DLQ."""
    sink = MemorySink()
    dlq = SqliteDeadLetters(tmp_path / "dlq.db")

    async def call(x: Any) -> Any:
        await anyio.lowlevel.checkpoint()
        value = x.value if record else x
        if value % 5 == 3:
            raise riprap.DataError(f"no {value}")
        return riprap.Record(value * 10) if value % 2 else value * 10

    p = pipeline(list(range(20)), batch_size=4, sink=sink, dlq=dlq)
    p = p.map("call", call, concurrency=3, record=record, retry=None)
    await run_pipeline(p.sink(sink))
    assert [v * 10 for v in range(20) if v % 5 != 3] == sink.values
    letters = read_dead_letters(tmp_path / "dlq.db")
    assert [(3, "no 3"), (8, "no 8"), (13, "no 13"), (18, "no 18")] == [
        (letter.offset, letter.message) for letter in letters
    ]


@pytest.mark.parametrize("calls_fail", [False, True])
@pytest.mark.parametrize("options", [{}, {"record": True}, {"key": lambda x: x % 3}])
async def test_records_failing_after_an_async_map_are_named_by_their_source_offset(
    tmp_path: Path, calls_fail: bool, options: dict[str, Any]
) -> None:
    """A step after an async map dead-letters the right source record.

    With no call failing a batch leaves the async step as it came (its
    origin unchanged); with some failing, its survivors are mapped back.
    """
    sink = MemorySink()
    dlq = SqliteDeadLetters(tmp_path / "dlq.db")

    async def call(x: Any) -> Any:
        await anyio.lowlevel.checkpoint()
        value = x.value if options.get("record") else x
        if calls_fail and value % 7 == 2:
            raise riprap.DataError(f"call {value}")
        return value + 1000

    def check(v: int) -> int:
        if v % 5 == 0:
            raise riprap.DataError(f"check {v}")
        return v

    p = pipeline(list(range(40)), batch_size=6, sink=sink, dlq=dlq)
    p = p.map("call", call, concurrency=4, retry=None, **options).map("check", check)
    await run_pipeline(p.sink(sink))
    failed_call = {x for x in range(40) if calls_fail and x % 7 == 2}
    failed_check = {x for x in range(40) if x not in failed_call and (x + 1000) % 5 == 0}
    kept = [x + 1000 for x in range(40) if x not in failed_call | failed_check]
    assert (kept if "key" not in options else sorted(kept)) == (
        sink.values if "key" not in options else sorted(sink.values)
    )
    letters = list(read_dead_letters(tmp_path / "dlq.db"))
    expected = [(x, f"call {x}") for x in sorted(failed_call)]
    expected += [(x, f"check {x + 1000}") for x in sorted(failed_check)]
    assert sorted(expected) == sorted((letter.offset, letter.message) for letter in letters)
    assert all(letter.original_value() == letter.offset for letter in letters)
