"""Periodic, on-demand and final checkpoints of one run (I3, I4).

A snapshot (positions, operator state, crash counts) is taken with no await
in between, so it is a consistent cut under asyncio. The cut only takes
references: each stage's ``snapshot()`` returns data it never changes again
(a large state as a :class:`~riprap.checkpoints.DeferredState`, handed over
in O(1)), and the backend encodes it in a worker thread, so a checkpoint holds
the event loop for milliseconds whatever the size of the state. Saves are
serialised by a lock: a periodic tick that finds a save still running skips
instead of queueing behind it, and processing never waits for a save.

Whether anything changed since the last save is an identity check for a stage
that hands out the same snapshot object while its state is unchanged (as
``Dedupe`` does), never a walk over a large state. The real interval between
periodic checkpoints is measured; one that runs over the configured interval
by :data:`LATE_FACTOR` is counted and logged (at most once a minute).

Each snapshot's generation is the claimed snapshot's plus its ``seq``, so it
grows with every save call of the pipeline, across runs (I5); operator notes
of the claimed snapshot are carried on.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, final

import anyio

from riprap._core.errors import FencedError
from riprap.checkpoints._guard import CrashGuard
from riprap.checkpoints._snapshot import Checkpoint, CheckpointBackend
from riprap.policies._timeout import fail_after

if TYPE_CHECKING:
    from riprap._core.clock import Clock
    from riprap._runtime.acks import CompletionTracker

log = logging.getLogger("riprap.checkpoint")

SAVE_TIMEOUT = 60.0
"""Seconds one checkpoint save may take; a hung store must not hang the run."""

StateSource = Callable[[], Mapping[str, Any]]

LATE_FACTOR = 2.0
"""A periodic checkpoint this many configured intervals after the previous one is late."""

LATE_LOG_EVERY = 60.0
"""Seconds of the clock between two warnings about late checkpoints."""


@final
class Checkpointer:
    """Takes and saves snapshots for one run; tracks their count, age and duration."""

    def __init__(
        self,
        *,
        pipeline: str,
        backend: CheckpointBackend,
        epoch: int,
        owner: str,
        tracker: CompletionTracker,
        state: StateSource,
        crash_counts: dict[str, int],
        clock: Clock,
        on_saved: Callable[[Mapping[str, int]], Awaitable[None]] | None = None,
        guard: CrashGuard | None = None,
        previous: Checkpoint | None = None,
        redact: Callable[[str], str] = str,
        before_save: Callable[[Mapping[str, int]], Awaitable[None]] | None = None,
        identities: Callable[[Mapping[str, int]], Mapping[str, str]] | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.identities = identities
        """The source's ``identities()``, saved with the positions (``None``: it has none)."""
        self.before_save = before_save
        """Awaited with a cut's positions before it is saved (a changelog commits the cut)."""
        self.redact = redact
        """Cleans error text before it is logged (a store's error may name a DSN or a key)."""
        self.backend = backend
        self.epoch = epoch
        self.owner = owner
        self.tracker = tracker
        self.state = state
        self.crash_counts = crash_counts
        self.clock = clock
        self.on_saved = on_saved
        self.guard = guard or CrashGuard(running=True)
        self.base_generation = previous.generation if previous is not None else 0
        """The claimed snapshot's generation; this run's saves count on from it."""
        self.notes = previous.notes if previous is not None else ()
        self.frontier: dict[str, int] = dict(self.guard.frontier)
        """End of the last batch read per partition; the source loop keeps it current."""
        self.reads = 0
        """Records read by this run (see :meth:`note_read`)."""
        self._durable_reads = 0
        self._bound_retry_at = 0
        self.seq = 0
        self.saved = 0
        self.skipped = 0
        self.failures = 0
        self.last_saved_at: float | None = None
        self.last_duration: float | None = None
        self.last_error: BaseException | None = None
        self.last_interval: float | None = None
        """Seconds between the last two periodic checkpoints, measured (``None`` before two)."""
        self.late = 0
        """Periodic checkpoints that came :data:`LATE_FACTOR` intervals or more after the last."""
        self._ticked_at: float | None = None
        self._late_logged: tuple[float, int] | None = None
        self._last: tuple[Any, ...] | None = None
        self._lock = anyio.Lock()

    def snapshot(self) -> Checkpoint:
        """A consistent cut of the run, taken synchronously, numbered as the next save."""
        return self._numbered(self._cut())

    def _cut(self) -> Checkpoint:
        """The cut without a number yet: operator state is built once per save (it may be large)."""
        positions = self.tracker.positions()
        return Checkpoint(
            pipeline=self.pipeline,
            epoch=self.epoch,
            owner=self.owner,
            seq=0,
            positions=positions,
            state=dict(self.state()),
            crash_counts=dict(self.crash_counts),
            created_at=self.clock.time(),
            guard=self._current_guard(),
            generation=0,
            notes=self.notes,
            identities={} if self.identities is None else self.identities(positions),
        )

    def _numbered(self, cut: Checkpoint) -> Checkpoint:
        self.seq += 1
        return replace(cut, seq=self.seq, generation=self.base_generation + self.seq)

    def _current_guard(self) -> CrashGuard:
        guard = self.guard
        if guard.frontier != self.frontier:
            guard = self.guard = replace(guard, frontier=dict(self.frontier))
        return guard

    def note_read(self, partition: str, end: int, records: int) -> bool:
        """A batch of ``records`` was read up to ``end``: whether a save must come before it moves.

        True when the run would otherwise have more than the guard's
        ``read_bound`` records read past its last saved frontier (see
        :meth:`save_bound`).
        """
        self.frontier[partition] = end
        self.reads += records
        bound = self.guard.read_bound
        return (
            bound is not None
            and self.reads - self._durable_reads > bound
            and self.reads >= self._bound_retry_at
        )

    async def save_bound(self) -> None:
        """Save so that the frontier a crash leaves behind is at most ``read_bound`` records old.

        Nothing waits for the store: while another save is still running this
        does nothing (the next batch asks again), and a save that fails is
        logged and counted like a periodic one and tried again ``read_bound``
        records later. A slow or failing store slows no record down; a crash
        meanwhile may need one more unclean end to be counted.

        Raises:
            FencedError: Another owner has claimed the pipeline.
        """
        if self._lock.locked():
            return
        try:
            await self.save(force=True)
        except FencedError:
            raise
        except Exception as exc:
            self._bound_retry_at = self.reads + (self.guard.read_bound or 0)
            self._failed(exc)

    async def save(self, *, force: bool = False) -> bool:
        """Save a snapshot now (waiting for a running save first); return whether one was written.

        Raises:
            FencedError: Another owner has claimed the pipeline since this run started.
        """
        async with self._lock:
            return await self._save_locked(force)

    async def tick(self) -> None:
        """A periodic checkpoint: skipped if a save is still running (never piles up)."""
        if self._lock.locked():
            self.skipped += 1
            return
        try:
            await self.save()
        except FencedError:
            raise
        except Exception as exc:
            # Not fatal: the next tick retries; the age metric and the log show it.
            self._failed(exc)

    def _failed(self, exc: Exception) -> None:
        """Count and log a save that failed and will be tried again."""
        self.failures += 1
        self.last_error = exc
        log.warning(
            "checkpoint of pipeline %s failed (%s: %s); will retry",
            self.pipeline,
            type(exc).__name__,
            self.redact(str(exc)),
            extra={"pipeline": self.pipeline},
        )

    async def run_periodic(self, interval: float) -> None:
        """Checkpoint every ``interval`` seconds of the clock until cancelled."""
        while True:
            await self.clock.sleep(interval)
            self._measure_interval(interval)
            await self.tick()

    def _measure_interval(self, interval: float) -> None:
        """Record the real interval since the last periodic checkpoint; count and log a late one."""
        now = self.clock.monotonic()
        before, self._ticked_at = self._ticked_at, now
        if before is None:
            return
        self.last_interval = real = now - before
        if real < interval * LATE_FACTOR:
            return
        self.late += 1
        logged = self._late_logged
        if logged is not None and now - logged[0] < LATE_LOG_EVERY:
            return
        since = self.late - (logged[1] if logged is not None else 0)
        self._late_logged = (now, self.late)
        log.warning(
            "pipeline %s: checkpoints come %.1f s apart, not every %g s (checkpoint_interval):"
            " the last save took %.1f s; %d late since the last warning. A save that takes"
            " longer than the interval, or code holding the event loop, delays them",
            self.pipeline,
            real,
            interval,
            self.last_duration or 0.0,
            since,
            extra={"pipeline": self.pipeline},
        )

    def _prune_crash_counts(self, positions: Mapping[str, int]) -> None:
        """Forget crash counts of records the position has moved past (they are done)."""
        for key in list(self.crash_counts):
            partition, _, offset = key.rpartition("@")
            position = positions.get(partition)
            if position is not None and offset.isdigit() and int(offset) < position:
                del self.crash_counts[key]
        self.guard = self.guard.pruned(positions)

    async def _save_locked(self, force: bool) -> bool:
        self._prune_crash_counts(self.tracker.positions())
        reads = self.reads
        cut = self._cut()
        if not force and self._last == (
            cut.positions,
            cut.state,
            cut.crash_counts,
            cut.guard,
            cut.identities,
        ):
            return False
        checkpoint = self._numbered(cut)
        started = self.clock.monotonic()
        async with fail_after(SAVE_TIMEOUT, clock=self.clock, kind="checkpoint"):
            if self.before_save is not None:
                await self.before_save(checkpoint.positions)
            await self.backend.save(checkpoint)
        self.last_duration = self.clock.monotonic() - started
        self.last_saved_at = self.clock.monotonic()
        self._durable_reads = max(self._durable_reads, reads)
        self.saved += 1
        self._last = (
            checkpoint.positions,
            checkpoint.state,
            checkpoint.crash_counts,
            checkpoint.guard,
            checkpoint.identities,
        )
        if self.on_saved is not None:
            # Only after the checkpoint is durable may a source acknowledge upstream.
            await self.on_saved(checkpoint.positions)
        return True

    def age(self) -> float | None:
        """Seconds since the last successful save (``None`` before the first)."""
        if self.last_saved_at is None:
            return None
        return self.clock.monotonic() - self.last_saved_at
