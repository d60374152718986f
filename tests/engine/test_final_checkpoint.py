"""A final flush or checkpoint that fails ends the run with an error, never a hang."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import anyio
import pytest

import riprap
from riprap import Batch, PipelineError
from riprap.checkpoints import Checkpoint, CheckpointBackend, Claim, MemoryCheckpoints
from riprap.connectors.memory import IterableSource

if TYPE_CHECKING:
    from collections.abc import Callable

pytestmark = pytest.mark.anyio

BOUND = 10.0
"""Seconds a run here may take before the test calls it a hang (each takes milliseconds)."""


class SavesFail:
    """A memory store whose claims work and whose every save raises ``OSError``."""

    def __init__(self) -> None:
        self.store = MemoryCheckpoints()

    async def claim(self, pipeline: str, owner: str) -> Claim:
        return await self.store.claim(pipeline, owner)

    async def save(self, checkpoint: Checkpoint) -> None:
        raise OSError("no space left on device")

    async def load(self, pipeline: str) -> Checkpoint | None:
        return await self.store.load(pipeline)

    async def aclose(self) -> None:
        await self.store.aclose()


class Count:
    """Counts what it is given; its final flush raises ``flush_error``, if one is given."""

    idempotent = True

    def __init__(self, flush_error: Exception | None = None) -> None:
        self.name = "count"
        self.written = 0
        self.flush_error = flush_error

    async def open(self) -> None:
        return None

    async def write(self, batch: Batch) -> None:
        self.written += len(batch.items)

    async def flush(self) -> None:
        if self.flush_error is not None:
            raise self.flush_error

    async def aclose(self) -> None:
        return None


def pipeline(
    backend: CheckpointBackend, sink: Count, step: Callable[[int], int]
) -> riprap.Pipeline:
    return (
        riprap.Pipeline("ending", checkpoint=backend, checkpoint_interval=60)
        .source(IterableSource("numbers", list(range(500))))
        .map("step", step)
        .sink(sink)
    )


async def test_a_final_checkpoint_that_fails_is_the_runs_error() -> None:
    """Every save fails: the run ends, raising the save's error, after writing every record."""
    sink = Count()
    with anyio.fail_after(BOUND):
        with pytest.raises(OSError, match="no space left"):
            await pipeline(SavesFail(), sink, lambda n: n).run()
    assert 500 == sink.written


async def test_a_final_flush_that_fails_is_the_runs_error() -> None:
    """The sink's final flush fails: the run ends with that error; the checkpoint is still saved."""
    backend = MemoryCheckpoints()
    with anyio.fail_after(BOUND):
        with pytest.raises(ConnectionResetError, match="peer reset"):
            await pipeline(backend, Count(ConnectionResetError("peer reset")), lambda n: n).run()
    saved = await backend.load("ending")
    assert saved is not None
    assert not saved.guard.running


async def test_an_earlier_error_stays_the_runs_and_the_failed_save_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A step's bug stops the run, then the final save fails: the bug is raised, the save logged."""

    def breaks(n: int) -> int:
        if n == 250:
            raise ZeroDivisionError("a bug in the step")
        return n

    caplog.set_level(logging.WARNING, logger="riprap.runtime")
    with anyio.fail_after(BOUND):
        with pytest.raises(PipelineError) as raised:
            await pipeline(SavesFail(), Count(), breaks).run()
    assert isinstance(raised.value.__cause__, ZeroDivisionError)
    assert any("no space left" in r.getMessage() for r in caplog.records)


async def test_an_open_run_ends_when_its_final_save_fails() -> None:
    """Embedded with ``open()``: ``wait()`` returns the failure instead of waiting forever."""
    with anyio.fail_after(BOUND):
        with pytest.raises(OSError, match="no space left"):
            async with pipeline(SavesFail(), Count(), lambda n: n).open() as running:
                await running.wait()


class NeverFlushes(Count):
    """Its final flush waits for an answer that never comes (a store gone silent)."""

    async def flush(self) -> None:
        await anyio.Event().wait()


async def test_a_final_flush_that_never_ends_is_given_up_and_said(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run ends at the final checkpoint's bound, says so, and the next start reads again."""
    from riprap._runtime import runtime

    monkeypatch.setattr(runtime, "FINAL_CHECKPOINT_TIMEOUT", 0.2)
    caplog.set_level(logging.WARNING, logger="riprap.runtime")
    backend = MemoryCheckpoints()
    with anyio.fail_after(BOUND):
        await pipeline(backend, NeverFlushes(), lambda n: n).run()
    assert any("did not finish within 0.2 s" in r.getMessage() for r in caplog.records)
    saved = await backend.load("ending")
    assert saved is None or saved.guard.running  # not a clean end: the next run knows
