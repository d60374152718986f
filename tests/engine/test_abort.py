"""An abort at any moment ends a run cleanly: outcome aborted, final checkpoint, no internal error.

In-process cases for the causes the signal race test (``test_abort_race.py``)
hits by chance: a runner that reaches its send after the abort closed its
receiver, an abort during start-up, during the final flush, and signals that
arrive before the run exists.
"""

from __future__ import annotations

import itertools
import os
import signal
import threading
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
import pytest

import riprap
import riprap.checkpoints
import riprap.deadletters
from riprap._runtime.channel import channel
from riprap._runtime.run import catch_signals
from riprap._runtime.runtime import open_pipeline
from riprap.connectors.memory import IterableSource, MemorySink
from riprap.testing import wait_until

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from riprap._runtime.channel import ChannelReceiver, ChannelSender
    from riprap._runtime.run import CaughtSignals

pytestmark = pytest.mark.anyio

LIMIT = 5.0
"""Seconds any one run here may take: an abort that does not end it fails the test."""


def pipeline(**options: Any) -> riprap.Pipeline:
    """A pipeline on in-memory checkpoints, small batches."""
    options.setdefault("checkpoint", riprap.checkpoints.MemoryCheckpoints())
    return riprap.Pipeline("p", batch_size=10, **options)


class ThreadedLetters:
    """A dead-letter store that writes in a worker thread (as the built-in ones do).

    A write, once begun, finishes even if the run is cancelled meanwhile: the
    test holds it until it lets it go.
    """

    name = "threaded"

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.letters: list[riprap.deadletters.DeadLetter] = []

    async def open(self) -> None:
        """Nothing to open."""

    async def write(self, letters: Sequence[riprap.deadletters.DeadLetter]) -> None:
        """Store ``letters`` in a worker thread, once the test releases it."""
        await anyio.to_thread.run_sync(self._write, list(letters))

    def _write(self, letters: list[riprap.deadletters.DeadLetter]) -> None:
        self.entered.set()
        self.release.wait(LIMIT)
        self.letters.extend(letters)

    async def aclose(self) -> None:
        """Nothing to close."""


async def refuse_multiples_of_25(n: int) -> int:
    """``n``, asynchronously; a multiple of 25 is a data error (a dead letter)."""
    await anyio.lowlevel.checkpoint()
    if n % 25 == 0 and n:
        raise riprap.DataError(f"{n} is a multiple of 25")
    return n


async def test_abort_while_a_runner_writes_dead_letters_ends_the_run_aborted() -> None:
    """An abort while a runner is in a dead-letter write (between receive and send) ends aborted."""
    letters = ThreadedLetters()
    sink = MemorySink()
    p = (
        pipeline(dead_letter=letters)
        .source(IterableSource("n", itertools.count()))
        .map("check", refuse_multiples_of_25, concurrency=4)
        .sink(sink)
    )
    with anyio.fail_after(LIMIT):
        async with p.open() as running:
            await wait_until(letters.entered.is_set, what="the dead-letter write")
            running.abort()
            # The sink's task ends and closes its channel while the write goes on.
            await anyio.wait_all_tasks_blocked()
            letters.release.set()
            report = await running.wait()
    # The runner's send after the write is cancelled, not BrokenResourceError.
    expected = ("aborted", None)
    assert expected == (report.outcome, running.error)


async def test_a_send_cancelled_together_with_its_receiver_is_cancelled_not_broken() -> None:
    """A send to a receiver closed by the cancellation that also cancels the sender is cancelled."""
    ends: tuple[ChannelSender[int], ChannelReceiver[int]] = channel(1)
    send, receive = ends
    with anyio.CancelScope() as scope:
        scope.cancel()
        receive.close()
        await send.send(1)
    expected = (True, 0)
    assert expected == (scope.cancelled_caught, receive.buffered())


async def test_abort_while_the_source_opens_cancels_start_up() -> None:
    """An abort while the source is still opening ends the run at once, aborted, nothing read."""
    opening = anyio.Event()

    class HangingSource:
        """A source whose ``open`` never returns (a broker that does not answer)."""

        name = "hanging"

        async def open(self, context: riprap.SourceContext) -> None:
            """Wait forever."""
            opening.set()
            await anyio.sleep_forever()

        async def read(self, max_records: int) -> riprap.SourceBatch | None:
            """Never reached."""
            raise AssertionError("read after an aborted start-up")

        async def aclose(self) -> None:
            """Nothing to close."""

    backend = riprap.checkpoints.MemoryCheckpoints()
    plan = pipeline(checkpoint=backend).source(HangingSource()).sink(MemorySink()).plan()
    handles: list[riprap.RunningPipeline] = []

    async def abort_once_opening() -> None:
        await opening.wait()
        handles[0].abort()

    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(abort_once_opening)
            async with open_pipeline(plan, created=handles.append) as running:
                report = await running.wait()
    saved = await backend.load("p")
    expected: tuple[str, int, dict[str, int], dict[str, int] | None] = ("aborted", 0, {}, {})
    assert expected == (
        report.outcome,
        report.records_in,
        dict(report.positions),
        None if saved is None else dict(saved.positions),
    )


async def test_abort_during_the_final_flush_cancels_it_and_still_checkpoints() -> None:
    """An abort while the final flush hangs cancels the flush; the final checkpoint is written."""
    flushing = anyio.Event()

    class HangingFlushSink:
        """Writes at once (durably, say) but never finishes a flush."""

        name = "hanging-flush"
        idempotent = True

        def __init__(self) -> None:
            self.values: list[int] = []

        async def open(self) -> None:
            """Nothing to open."""

        async def write(self, batch: riprap.Batch) -> None:
            """Keep the values."""
            self.values.extend(batch.items)

        async def flush(self) -> None:
            """Hang."""
            flushing.set()
            await anyio.sleep_forever()

        async def aclose(self) -> None:
            """Nothing to close."""

    backend = riprap.checkpoints.MemoryCheckpoints()
    sink = HangingFlushSink()
    p = pipeline(checkpoint=backend).source(IterableSource("n", list(range(30)))).sink(sink)
    with anyio.fail_after(LIMIT):
        async with p.open() as running:
            await flushing.wait()
            running.abort()
            report = await running.wait()
    saved = await backend.load("p")
    expected = ("aborted", 30, {"memory": 30}, {"memory": 30})
    assert expected == (
        report.outcome,
        len(sink.values),
        dict(report.positions),
        None if saved is None else dict(saved.positions),
    )


async def test_a_bug_raised_by_a_step_during_an_abort_is_still_a_failure() -> None:
    """A step raising a bug of its own while the abort cancels it fails the run (not aborted)."""
    entered = anyio.Event()

    async def flawed(n: int) -> int:
        entered.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            raise RuntimeError("cleanup went wrong") from None
        return n

    p = pipeline().source(IterableSource("n", itertools.count())).map("flawed", flawed)
    handles: list[riprap.RunningPipeline] = []

    async def run_and_abort() -> None:
        async with p.sink(MemorySink()).open() as running:
            handles.append(running)
            await entered.wait()
            running.abort()
            await running.wait()

    with anyio.fail_after(LIMIT), pytest.raises(riprap.PipelineError) as raised:
        await run_and_abort()
    expected = ("failed", RuntimeError)
    assert expected == (handles[0].statistics().outcome, type(raised.value.error))


def received(caught: CaughtSignals, count: int) -> Callable[[], bool]:
    """Whether ``caught`` has received ``count`` signals yet."""
    return lambda: len(caught.received) >= count


def endless() -> riprap.Pipeline:
    """Numbers forever into memory: only a stop or an abort ends it."""
    return pipeline().source(IterableSource("n", itertools.count())).sink(MemorySink())


@pytest.mark.parametrize(("signals", "outcome"), [(1, "stopped"), (2, "aborted")])
async def test_signals_received_before_the_run_exists_reach_it_at_once(
    signals: int, outcome: str
) -> None:
    """SIGTERMs caught before the run starts stop (one) or abort (two) it before any read."""
    with catch_signals() as caught, anyio.fail_after(LIMIT):
        for n in range(1, signals + 1):
            os.kill(os.getpid(), signal.SIGTERM)
            # One at a time: two signals pending at once may merge into one.
            await wait_until(received(caught, n), what=f"signal {n}")
        report = await riprap.run_async(endless(), handle_signals=True)
    expected = (outcome, 0)
    assert expected == (report.outcome, report.records_in)
