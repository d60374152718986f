"""Sinks whose writes overlap (``start_write``): the next batches go out while earlier ones wait.

The sink here is a server in miniature: a started write lands (or fails)
when the server answers, some virtual milliseconds later, and ``landed`` is
what the server holds, in the order it arrived. Every test asserts on that,
not on what the engine counted.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Literal

import anyio
import anyio.lowlevel
import pytest

import riprap
import riprap.checkpoints
import riprap.deadletters
from riprap import DataError, PipelineError, TransientError
from riprap.connectors.memory import IterableSource
from riprap.policies import BreakerConfig, CircuitBreaker
from riprap.testing import VirtualClock

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from pathlib import Path

    from riprap import Batch

pytestmark = pytest.mark.anyio

Fate = Literal["ok", "lose", "hang", "refuse"]
RECORDS = list(range(200))
BATCH = 10


@pytest.fixture
async def clock() -> AsyncIterator[VirtualClock]:
    """A virtual clock whose time jumps whenever every task waits, for the whole test."""
    clock = VirtualClock()
    async with clock.autojump():
        yield clock


class AnsweringSink:
    """Starts writes at once; the server answers each ``latency`` seconds later.

    ``fates`` says what the server does with the n-th write started (from 0,
    retries included): ``ok`` lands it; ``lose`` lands its first half, then
    fails transiently (a connection lost mid-write); ``hang`` never answers;
    ``refuse`` fails with an error no retry helps.
    """

    name = "answering"
    idempotent = False

    def __init__(
        self,
        clock: VirtualClock,
        fates: Callable[[int], Fate] = lambda n: "ok",
        *,
        rejects: Callable[[Any], bool] = lambda value: False,
        latency: float = 0.005,
    ) -> None:
        self.clock = clock
        self.fates = fates
        self.rejects = rejects
        self.latency = latency
        self.lost_message = "connection lost mid-write"
        self.landed: list[Any] = []
        self.started = 0
        self.waiting = 0
        self.most_waiting = 0
        self._answers: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        await anyio.lowlevel.checkpoint()

    async def start_write(self, batch: Batch) -> asyncio.Future[None]:
        await anyio.lowlevel.checkpoint()
        items = list(batch.items)
        if any(map(self.rejects, items)):
            raise DataError("the server refuses this value", reason="refused_value")
        fate = self.fates(self.started)
        self.started += 1
        delivery: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting += 1
        self.most_waiting = max(self.most_waiting, self.waiting)
        if fate != "hang":
            task = asyncio.ensure_future(self._answer(delivery, items, fate))
            self._answers.add(task)
            task.add_done_callback(self._answers.discard)
        return delivery

    async def _answer(self, delivery: asyncio.Future[None], items: list[Any], fate: Fate) -> None:
        await self.clock.sleep(self.latency)
        self.waiting -= 1
        if fate == "ok":
            self.landed.extend(items)
            delivery.set_result(None)
        elif fate == "lose":
            self.landed.extend(items[: len(items) // 2])
            delivery.set_exception(TransientError(self.lost_message))
        else:
            delivery.set_exception(ValueError("the server refuses the write"))

    async def write(self, batch: Batch) -> None:
        await (await self.start_write(batch))

    async def flush(self) -> None:
        await anyio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await anyio.lowlevel.checkpoint()


def pipeline(
    sink: AnsweringSink,
    checkpoints: riprap.checkpoints.MemoryCheckpoints | None = None,
    records: list[int] = RECORDS,
    **sink_options: Any,
) -> riprap.Pipeline:
    return (
        riprap.Pipeline(
            "pipelined",
            checkpoint=checkpoints or riprap.checkpoints.MemoryCheckpoints(),
            batch_size=BATCH,
        )
        .source(IterableSource("numbers", records))
        .sink(sink, **sink_options)
    )


def in_order_of_last_copies(landed: list[Any]) -> list[Any]:
    """The values ordered by where their last copy landed."""
    last = {value: i for i, value in enumerate(landed)}
    return sorted(last, key=last.__getitem__)


async def run(p: riprap.Pipeline, clock: VirtualClock) -> riprap.RunReport:
    return await p.with_options(clock=clock).run()


async def test_writes_overlap_and_every_record_lands_once_in_order(clock: VirtualClock) -> None:
    sink = AnsweringSink(clock)
    report = await run(pipeline(sink), clock)
    assert RECORDS == sink.landed
    assert 2 <= sink.most_waiting <= 4  # several on their way, never more than the window
    assert len(RECORDS) == report.records_out


async def test_a_write_lost_on_its_way_is_written_again_with_those_after_it(
    clock: VirtualClock,
) -> None:
    """Nothing is lost, only later records are repeated, and the last copies keep input order."""
    sink = AnsweringSink(clock, lambda n: "lose" if n == 5 else "ok")
    report = await run(pipeline(sink), clock)
    assert RECORDS == in_order_of_last_copies(sink.landed)
    first_lost = 5 * BATCH
    assert RECORDS[:first_lost] == sink.landed[:first_lost]  # before it: exactly once
    assert len(sink.landed) > len(RECORDS)
    assert len(RECORDS) == report.records_out
    assert 1 == next(step.errors for step in report.steps if step.step_id == "answering")


async def test_a_lost_write_is_logged_without_the_secrets_its_error_carries(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The warning names the failure, redacted: no password of a DSN, no bearer token."""
    sink = AnsweringSink(clock, lambda n: "lose" if n == 2 else "ok")
    sink.lost_message = (
        "connect postgres://app:hunter2-secret@db.internal:5432/orders failed; "
        "sent Authorization: Bearer tok-9f8e7d6c5b4a"
    )
    caplog.set_level(logging.WARNING, logger="riprap.runtime")
    await run(pipeline(sink), clock)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "writing it and the" in logged
    assert "hunter2-secret" not in logged
    assert "tok-9f8e7d6c5b4a" not in logged
    assert RECORDS == in_order_of_last_copies(sink.landed)


async def test_a_write_never_answered_is_written_again_after_the_attempt_timeout(
    clock: VirtualClock,
) -> None:
    sink = AnsweringSink(clock, lambda n: "hang" if n == 3 else "ok")
    started = clock.monotonic()
    await run(pipeline(sink, attempt_timeout=20.0), clock)
    assert RECORDS == in_order_of_last_copies(sink.landed)
    assert set(RECORDS) == set(sink.landed)
    assert clock.monotonic() - started >= 20.0


async def test_a_refused_write_stops_the_run_naming_its_batch_and_loses_nothing(
    clock: VirtualClock,
) -> None:
    """The run stops at the refused batch; the next run, from the checkpoint, writes the rest."""
    checkpoints = riprap.checkpoints.MemoryCheckpoints()
    refusing = AnsweringSink(clock, lambda n: "refuse" if n >= 7 else "ok")
    with pytest.raises(PipelineError) as info:
        await run(pipeline(refusing, checkpoints), clock)
    assert ("memory", 7 * BATCH) == (info.value.partition, info.value.offset)
    assert "refuses the write" in str(info.value)
    assert RECORDS[: 7 * BATCH] == refusing.landed  # the refused and later ones never landed
    healthy = AnsweringSink(clock)
    await run(pipeline(healthy, checkpoints), clock)
    assert set(RECORDS) == set(refusing.landed) | set(healthy.landed)
    assert healthy.landed[0] <= 7 * BATCH  # read again from at most the refused batch


async def test_a_value_refused_when_the_write_starts_is_dead_lettered(
    clock: VirtualClock, tmp_path: Path
) -> None:
    sink = AnsweringSink(clock, rejects=lambda value: value == 123)
    dlq = tmp_path / "dlq.jsonl"
    p = pipeline(sink).with_options(dead_letter=riprap.deadletters.JsonLinesDeadLetters(dlq))
    report = await run(p, clock)
    assert [v for v in RECORDS if v != 123] == in_order_of_last_copies(sink.landed)
    assert 123 not in sink.landed
    letters = [(d.original_value(), d.reason) for d in riprap.deadletters.read_dead_letters(dlq)]
    assert [(123, "refused_value")] == letters
    assert {"refused_value": 1} == dict(report.dead_lettered)


async def test_a_sink_behind_a_breaker_writes_one_batch_at_a_time(clock: VirtualClock) -> None:
    """A breaker must admit every write, so they do not overlap."""
    sink = AnsweringSink(clock)
    breaker = CircuitBreaker("server", BreakerConfig(), clock=clock)
    await run(pipeline(sink, breaker=breaker), clock)
    assert RECORDS == sink.landed
    assert 1 == sink.most_waiting
