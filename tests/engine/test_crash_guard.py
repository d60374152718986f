"""The crash guard's bookkeeping: unclean ends in a row, isolation ranges, records that died."""

from __future__ import annotations

import itertools
import logging
from dataclasses import replace

import anyio
import pytest

import riprap
from riprap.checkpoints import Checkpoint, Claim, CrashGuard, CrashRecord, MemoryCheckpoints
from riprap.checkpoints._guard import CrashWatch
from riprap.connectors.memory import IterableSource, MemorySink

pytestmark = pytest.mark.anyio


def died(guard: CrashGuard, frontier: dict[str, int] | None = None) -> CrashGuard:
    """``guard`` as the next run sees it after a run that read up to ``frontier`` died."""
    read = {"p": 30} if frontier is None else frontier
    return replace(guard, frontier=read).after_unclean_end({"p": 10}, max_crashes=3, now=5.0)


def test_unclean_ends_at_one_position_lead_to_isolation_up_to_the_frontier() -> None:
    """Three unclean ends at the same position isolate the range up to the read frontier."""
    first = died(CrashGuard(running=True), {"p": 30, "idle": 4})
    third = died(died(first))
    assert {"p": (10, 1), "idle": (-1, 1)} == dict(first.unclean)
    assert {} == dict(first.isolating)
    assert (10, 3) == third.unclean["p"]
    assert {"p": (30, 2)} == dict(third.isolating)  # 20 suspects, in chunks of 2


def test_only_partitions_the_dead_run_read_are_suspect() -> None:
    """A partition the dead run did not read, or read nothing new of, counts no unclean end."""
    guard = CrashGuard(running=True, unclean={"q": (0, 2)})
    assert {} == dict(died(guard, {"p": 10}).unclean)


def test_progress_between_crashes_restarts_the_count() -> None:
    """An unclean end at a new position counts one, not one more."""
    guard = CrashGuard(running=True, unclean={"p": (4, 2)})
    assert (10, 1) == died(guard).unclean["p"]


def test_a_death_in_a_chunk_narrows_isolation_to_it() -> None:
    """Dying while a chunk is in progress isolates just that chunk, in smaller chunks."""
    guard = CrashGuard(running=True, isolating={"p": (330, 20)}, in_progress=("p", 10, 30))
    narrowed = died(guard)
    assert {"p": (30, 2)} == dict(narrowed.isolating)
    assert (None, {}) == (narrowed.died(), dict(narrowed.crashes))


def test_a_single_record_that_dies_counts_a_crash_and_the_mark_is_cleared() -> None:
    """A death with one record in progress is recorded against it, with its times."""
    guard = CrashGuard(running=True, in_progress=("p", 12, 13))
    assert "p@12" == guard.died()
    marked_again = replace(died(guard), in_progress=("p", 12, 13))  # it dies again
    again = marked_again.after_unclean_end({"p": 12}, max_crashes=3, now=9.0)
    crash = again.crashes["p@12"]
    assert (5.0, 9.0, "") == (crash.first_at, crash.last_at, crash.stage)
    assert (None, {"p": (13, 1)}) == (again.in_progress, dict(again.isolating))


def test_pruning_forgets_done_records_and_finished_isolation() -> None:
    """Crashes of records behind the position and isolation ranges it passed are dropped."""
    crash = CrashRecord("parse", "boom", 1.0, 2.0)
    guard = CrashGuard(isolating={"p": (20, 1), "q": (5, 1)}, crashes={"p@3": crash, "p@25": crash})
    pruned = guard.pruned({"p": 10, "q": 5})
    assert {"p": (20, 1)} == dict(pruned.isolating)
    assert ["p@25"] == list(pruned.crashes)


def test_the_guard_survives_the_checkpoint_codec() -> None:
    """A checkpoint's guard is written and read back unchanged."""
    guard = CrashGuard(
        running=True,
        frontier={"p": 30},
        unclean={"p": (10, 2)},
        isolating={"p": (30, 2)},
        in_progress=("p", 11, 13),
        crashes={"p@11": CrashRecord("", "died", 1.0, 2.0)},
        read_bound=500,
    )
    checkpoint = Checkpoint("orders", 1, "me", seq=1, positions={"p": 10}, guard=guard)
    assert guard == Checkpoint.from_json(checkpoint.to_json()).guard


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"running": "yes"}, "running"),
        ({"frontier": {"p": "3"}}, "frontier"),
        ({"unclean": {"p": [1]}}, "unclean"),
        ({"crashes": {"p@1": ["s", "e", 1.0]}}, "crashes"),
        ({"in_progress": "p@3"}, "in_progress"),
        ({"isolating": {"p": 3}}, "isolating"),
        ({"read_bound": 0}, "read_bound"),
        ({"read_bound": "100"}, "read_bound"),
    ],
)
def test_a_damaged_guard_is_refused_with_the_field_named(raw: object, field: str) -> None:
    """A guard that is not what a run wrote names the field that is wrong."""
    with pytest.raises(ValueError, match=f"guard.{field}"):
        CrashGuard.from_dict(raw)


async def test_quarantine_without_a_dead_letter_store_stops_with_a_clear_error() -> None:
    """A record that crashed max_crashes times cannot be skipped silently without dead_letter=."""
    backend = MemoryCheckpoints()
    claim = await backend.claim("poisoned", "earlier")
    await backend.save(
        Checkpoint("poisoned", claim.epoch, "earlier", seq=1, crash_counts={"numbers@1": 3})
    )
    pipeline = (
        riprap.Pipeline("poisoned", checkpoint=backend)
        .source(IterableSource("numbers", [1, 2, 3], partition="numbers"))
        .sink(MemorySink())
    )
    with pytest.raises(riprap.ConfigError, match=r"^dead_letter: record numbers@1 stopped"):
        await pipeline.run()


def test_a_watch_covers_what_the_dead_run_may_have_read() -> None:
    """Below frontier + bound in a partition of the frontier, the first bound records of others."""
    watch = CrashWatch.after(CrashGuard(running=True, frontier={"p": 100}, read_bound=50))
    assert watch.covers("p", 145, 5)
    assert not watch.covers("p", 150, 5)
    assert [True, True, False] == [watch.covers("q", start, 25) for start in (7, 32, 57)]


def test_a_watch_after_a_run_without_a_bound_covers_everything() -> None:
    """A snapshot of a version that did not bound its reads: every batch is watched."""
    watch = CrashWatch.after(CrashGuard(running=True, frontier={"p": 100}))
    assert watch.covers("p", 10**9, 5)
    assert watch.covers("q", 10**9, 5)


class CountingCheckpoints:
    """Memory checkpoints that keep every checkpoint saved."""

    def __init__(self) -> None:
        self.inner = MemoryCheckpoints()
        self.saved: list[Checkpoint] = []

    async def claim(self, pipeline: str, owner: str) -> Claim:
        return await self.inner.claim(pipeline, owner)

    async def save(self, checkpoint: Checkpoint) -> None:
        await self.inner.save(checkpoint)
        self.saved.append(checkpoint)

    async def load(self, pipeline: str) -> Checkpoint | None:
        return await self.inner.load(pipeline)

    async def aclose(self) -> None: ...


def bounded(backend: CountingCheckpoints, records: int) -> riprap.Pipeline:
    """A pipeline whose read bound is 500 records and whose periodic checkpoints never come."""
    return (
        riprap.Pipeline(
            "bounded", checkpoint=backend, batch_size=5, max_in_flight=5, checkpoint_interval=3600
        )
        .source(IterableSource("numbers", list(range(records)), partition="p"))
        .sink(MemorySink())
    )


async def test_a_run_saves_before_reading_past_its_bound() -> None:
    """Between two saves a run reads at most read_bound records (plus the batch that crossed it)."""
    backend = CountingCheckpoints()
    await bounded(backend, 5_000).run()
    frontiers = [0] + [c.guard.frontier.get("p", 0) for c in backend.saved]
    gaps = [after - before for before, after in itertools.pairwise(frontiers)]
    assert 9 <= len(backend.saved)
    assert max(gaps) <= 500 + 5
    assert {500} == {c.guard.read_bound for c in backend.saved}


async def seeded(backend: CountingCheckpoints, guard: CrashGuard) -> None:
    """A dead run's last snapshot: position 80, read up to 100."""
    claim = await backend.claim("bounded", "dead")
    await backend.save(
        Checkpoint("bounded", claim.epoch, "dead", seq=1, positions={"p": 80}, guard=guard)
    )
    backend.saved.clear()


async def test_a_run_after_a_crash_watches_only_what_the_dead_run_may_have_read() -> None:
    """Saves before each batch below frontier + bound (80 to 150), then at the bound only."""
    backend = CountingCheckpoints()
    await seeded(backend, CrashGuard(running=True, frontier={"p": 100}, read_bound=50))
    await bounded(backend, 5_000).run()
    watched = [c for c in backend.saved if c.guard.frontier.get("p", 0) <= 150]
    assert 14 <= len(watched)
    assert len(backend.saved) < 14 + 20
    assert {"p": 5_000} == backend.saved[-1].positions


async def test_a_run_after_a_crash_of_an_unbounded_run_watches_every_batch() -> None:
    """The dead run's snapshot has no read bound: every batch is watched, as before bounds."""
    backend = CountingCheckpoints()
    await seeded(backend, CrashGuard(running=True, frontier={"p": 100}))
    await bounded(backend, 5_000).run()
    assert (5_000 - 80) // 5 <= len(backend.saved)


class RefusingCheckpoints(CountingCheckpoints):
    """Counting checkpoints whose saves fail (naming a DSN with a password) until told otherwise."""

    def __init__(self) -> None:
        super().__init__()
        self.refusing = False
        self.attempts = 0

    async def save(self, checkpoint: Checkpoint) -> None:
        self.attempts += 1
        if self.refusing:
            raise OSError("connect postgres://app:hunter2-secret@db.internal/ckpt refused")
        await super().save(checkpoint)


async def test_a_store_that_refuses_bound_saves_slows_no_record(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every bound save fails: the run still ends with every record, retries a bound apart.

    The failures are logged (redacted) and counted; nothing waits for the store.
    """
    backend = RefusingCheckpoints()
    sink = MemorySink()
    pipeline = (
        riprap.Pipeline(
            "bounded", checkpoint=backend, batch_size=5, max_in_flight=5, checkpoint_interval=3600
        )
        .source(IterableSource("numbers", list(range(5_000)), partition="p"))
        .sink(sink)
    )
    caplog.set_level(logging.WARNING, logger="riprap")
    async with pipeline.open() as running:
        backend.refusing = True  # after the start-up mark
        with anyio.fail_after(10):
            while len(sink.values) < 4_000:
                await anyio.lowlevel.checkpoint()
        backend.refusing = False
        report = await running.wait()
    assert list(range(5_000)) == sink.values
    assert {"p": 5_000} == report.positions
    warnings = [r.getMessage() for r in caplog.records if "will retry" in r.getMessage()]
    assert 3 <= len(warnings)
    assert backend.attempts < 5_000 // 500 + 5  # a bound apart, not one per batch
    assert all("hunter2-secret" not in message for message in warnings)
