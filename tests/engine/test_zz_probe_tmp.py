from __future__ import annotations

import itertools
import threading
from collections.abc import Sequence

import anyio
import anyio.to_thread
import pytest

import riprap
import riprap.checkpoints
import riprap.deadletters
from riprap.connectors.memory import IterableSource, MemorySink

pytestmark = pytest.mark.anyio


class SlowLetters:
    name = "slow"

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.letters: list[riprap.deadletters.DeadLetter] = []

    async def open(self) -> None: ...
    def _write(self, letters: Sequence[riprap.deadletters.DeadLetter]) -> None:
        self.entered.set()
        self.release.wait(10)
        self.letters.extend(letters)

    async def write(self, letters: Sequence[riprap.deadletters.DeadLetter]) -> None:
        await anyio.to_thread.run_sync(self._write, letters)

    async def aclose(self) -> None: ...


async def check(v: int) -> int:
    if v == 25:
        raise riprap.DataError("bad")
    await anyio.lowlevel.checkpoint()
    return v


async def test_dlq_write_during_abort() -> None:
    letters = SlowLetters()
    p = (
        riprap.Pipeline(
            "p",
            checkpoint=riprap.checkpoints.MemoryCheckpoints(),
            batch_size=10,
            dead_letter=letters,
        )
        .source(IterableSource("n", itertools.count()))
        .map("check", check)
        .sink(MemorySink())
    )
    async with p.open() as running:
        while not letters.entered.is_set():
            await anyio.sleep(0.001)
        running.abort()
        await anyio.wait_all_tasks_blocked()
        letters.release.set()
        report = await running.wait()
    assert "aborted" == report.outcome
