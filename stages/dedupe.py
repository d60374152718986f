"""Deduplication: drop records whose key was already let through.

:class:`Dedupe` remembers the keys it has let through, with the time each was
let through, bounded by a time to live (``ttl``), a number of keys
(``max_keys``) or both. A record whose key is remembered (and not expired) is
a duplicate: it is not emitted and counts as done (deliberately dropped).

The remembered keys are operator state: they are saved in the same
checkpoint as the source positions (I3) and restored on the next start, so a
replay after a crash, a source that starts over, or a duplicated upstream
delivery does not reach the sink twice. A key is saved only once the record
that brought it in is itself done (written or dead-lettered): a record that
was let through but not yet written when the checkpoint was taken is replayed
and let through again, never lost.

Taking the keys for a checkpoint costs the event loop O(1) whatever their
number: they are kept copy-on-write (``riprap.stages._timed_keys``) and
:meth:`Dedupe.snapshot` hands over a frozen :class:`DedupeSnapshot`, which the
checkpoint backend turns into JSON in a worker thread.

Keys are compared, and saved, as strings: ``str(key)``. ``1`` and ``"1"`` are
therefore the same key; use a key function that returns a string when that
matters. A key longer than 64 characters is remembered by its BLAKE2b digest
(65 characters), so ``max_keys`` bounds the bytes the keys hold too, whatever
the records carry.

With ``store=`` (a :class:`~riprap.state.MemoryStore` or
:class:`~riprap.state.SqliteStore`) the keys are keyed state instead: kept
per source partition, cut with the positions like every keyed state, on disk
with the SQLite store, and in the pipeline's changelog when it has one, so a
dedupe scales out with its partitions (consumer-group members, ``--workers``).

.. versionadded:: 0.1
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal, final

from riprap import Batch, ConfigError, DataError
from riprap.lowlevel import Ack, DropsOrigin
from riprap.state import KeyedState, PartitionGivenUp

from ._timed_keys import TimedKeys

if TYPE_CHECKING:
    from riprap import StageContext
    from riprap.lowlevel import Emit
    from riprap.state import StateStore

    from ._timed_keys import FrozenKeys

__all__ = ("Dedupe", "DedupeSnapshot", "DedupeStatistics", "TimeSource")

_STATE_VERSION = 3
"""3: keys (long ones as digests) and their times in two parallel lists.

2: the same with long keys whole; 1: a list of ``[key, time]`` pairs.
"""
_MISSING: Any = object()
_LONG_KEY = 64
"""Characters beyond which a key is remembered by its digest."""

TimeSource = Literal["clock", "event"] | Callable[[Any], float]
"""Where a record's time comes from: the pipeline clock, the record's event time, or a function."""


@final
@dataclass(frozen=True, slots=True)
class DedupeStatistics:
    """Counters of a :class:`Dedupe` stage.

    Attributes:
        records_in: Records seen.
        passed: Records let through.
        duplicates: Records dropped as duplicates.
        keys: Keys remembered now (``None`` with a store: it holds them per partition).
        pending: Keys let through whose records are not done yet (not saved;
            ``None`` with a store).
        evicted: Keys forgotten because they expired or the bound was reached
            (``None`` with a store: they expire there).
    """

    records_in: int
    passed: int
    duplicates: int
    keys: int | None
    pending: int | None
    evicted: int | None


@final
class DedupeSnapshot:
    """A :class:`Dedupe` state at a checkpoint cut, handed over without copying the keys.

    A :class:`~riprap.checkpoints.DeferredState`: the checkpoint backend calls
    :meth:`materialize` in a worker thread when it encodes the checkpoint.

    .. versionadded:: 0.1
    """

    __slots__ = ("_keys", "_pending", "watermark")

    _keys: FrozenKeys
    _pending: frozenset[str]
    watermark: float | None
    """The latest time seen at the cut (``None`` before any)."""

    @classmethod
    def _taken(
        cls, keys: FrozenKeys, pending: frozenset[str], watermark: float | None
    ) -> DedupeSnapshot:
        """The snapshot :meth:`Dedupe.snapshot` hands out (not built by users)."""
        snapshot = cls.__new__(cls)
        snapshot._keys, snapshot._pending, snapshot.watermark = keys, pending, watermark
        return snapshot

    def materialize(self) -> dict[str, Any]:
        """The state as saved: the keys whose records were done at the cut, oldest first, their
        times in a parallel list, and the latest time seen.

        Built in slices by C code into two flat lists (no object per key for
        the garbage collector to scan), so the thread building it shares the
        GIL often; when due, the stage's key levels are merged here too.
        """
        view = self._keys
        if view.compact:
            view.merged()  # the stage puts it in place of the levels at its next snapshot
        keys, times = view.visible(self._pending)
        view.dispose()  # frees replaced key tables here, off the loop
        return {
            "version": _STATE_VERSION,
            "keys": keys,
            "times": times,
            "watermark": self.watermark,
        }


def _key_text(key: Any) -> str:
    """The string a key is compared and saved as: ``str(key)``, or its digest when long.

    A digest is ``#`` and 64 hex digits, 65 characters, a length no key kept
    whole has, so the two never meet.
    """
    text = str(key)
    if len(text) <= _LONG_KEY:
        return text
    whole = text.encode("utf-8", "surrogatepass")
    return "#" + hashlib.blake2b(whole, digest_size=32).hexdigest()


def _key_function(key: str | Callable[[Any], Any]) -> Callable[[Any], Any]:
    if callable(key):
        return key
    if not isinstance(key, str) or not key:
        raise ConfigError("Dedupe.key", f"must be a field name or a function, got {key!r}")

    def field(value: Any) -> Any:
        if isinstance(value, Mapping):
            found = value.get(key, _MISSING)
        else:
            found = getattr(value, key, _MISSING)
        if found is _MISSING or found is None:
            raise DataError(f"dedupe key field {key!r} is missing", reason="missing_key")
        return found

    return field


def _seconds(option: str, value: float | timedelta | None) -> float | None:
    if value is None:
        return None
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds > 0:
        raise ConfigError(option, f"must be a positive number of seconds, got {value!r}")
    return float(seconds)


@final
class Dedupe:
    """Lets the first record of each key through and drops the repeats.

    Args:
        step_id: The step's name; it keys the state in the checkpoint.
        key: A field name (mapping key or attribute) or a function of the
            value. Keys are compared as ``str(key)`` (a long one by its
            digest, see the module's docs). A missing or ``None``
            field, or a function raising :class:`~riprap.DataError`,
            dead-letters the record (reason ``missing_key``, or the error's).
        ttl: Seconds (or a ``timedelta``) a key is remembered after the record
            that brought it in: a repeat at least ``ttl`` later goes through
            again and starts a new period. Repeats do not extend the period.
        max_keys: At most this many keys are remembered; the oldest is
            forgotten first. At least one of ``ttl`` and ``max_keys`` is
            required, so the state stays bounded.
        time: Where a record's time comes from for ``ttl``: ``"clock"`` (the
            pipeline clock's wall time when the batch arrives), ``"event"``
            (the source record's timestamp; a record without one is
            dead-lettered with reason ``missing_timestamp``), or a function of
            the value returning seconds. With event time, keys expire as the
            latest time seen moves on.
        max_skew: With event time (or a function): seconds a record's time
            may be ahead of the latest time seen. Beyond it the record is
            dead-lettered with reason ``timestamp_out_of_range`` and its time
            is not used, so one far-future timestamp cannot expire every key
            at once. ``None`` (the default) accepts any time; the first record
            of a stage without state is never refused.
        store: Keep the keys as keyed state in this store, per source
            partition (see the module's docs): a repeat is found within its
            partition, so give the records of one key the same partition (a
            Kafka key). Needs ``ttl`` and the clock; ``max_keys`` is not
            available (a bound per partition would forget keys by an order
            the store does not keep).

    Raises:
        ConfigError: An invalid option.

    .. versionadded:: 0.1
    """

    __slots__ = (
        "_changes",
        "_context",
        "_duplicates",
        "_evicted",
        "_key",
        "_last",
        "_pending",
        "_records_in",
        "_seen",
        "_watermark",
        "keyed_state",
        "max_keys",
        "max_skew",
        "step_id",
        "time",
        "ttl",
    )

    def __init__(
        self,
        step_id: str,
        *,
        key: str | Callable[[Any], Any],
        ttl: float | timedelta | None = None,
        max_keys: int | None = None,
        time: TimeSource = "clock",
        max_skew: float | None = None,
        store: StateStore | None = None,
    ) -> None:
        self.step_id = step_id
        self.max_skew = _seconds("Dedupe.max_skew", max_skew)
        self._key = _key_function(key)
        self.ttl = _seconds("Dedupe.ttl", ttl)
        if max_keys is not None and (
            not isinstance(max_keys, int) or isinstance(max_keys, bool) or max_keys < 1
        ):
            raise ConfigError("Dedupe.max_keys", f"must be a positive integer, got {max_keys!r}")
        if self.ttl is None and max_keys is None:
            raise ConfigError("Dedupe", "give ttl, max_keys or both, so the state stays bounded")
        if time not in ("clock", "event") and not callable(time):
            raise ConfigError(
                "Dedupe.time", f"must be 'clock', 'event' or a function, got {time!r}"
            )
        self.max_keys = max_keys
        self.time = time
        self.keyed_state = None if store is None else self._keyed(store)
        """The keys as keyed state, when a store keeps them (``store=``)."""
        self._context: StageContext | None = None
        self._seen = TimedKeys()
        self._pending: dict[str, int] = {}
        self._changes = 0
        """Bumped by every change of what a snapshot would hold."""
        self._last: tuple[int, DedupeSnapshot] | None = None
        """The last snapshot and the change count it saw: handed out again while unchanged."""
        self._watermark = float("-inf")
        self._records_in = 0
        self._duplicates = 0
        self._evicted = 0

    def _keyed(self, store: StateStore) -> KeyedState:
        """The keyed state ``store=`` asks for, once its options are checked."""
        if not isinstance(getattr(store, "kind", None), str):
            raise ConfigError(
                "Dedupe.store", f"must be MemoryStore() or SqliteStore(directory), got {store!r}"
            )
        if self.max_keys is not None:
            raise ConfigError(
                "Dedupe.max_keys",
                "is not available with store=: the store keeps keys per partition, bounded by ttl",
            )
        if self.ttl is None:
            raise ConfigError("Dedupe.ttl", "is required with store=, so the state stays bounded")
        if self.time != "clock":
            raise ConfigError(
                "Dedupe.time",
                f"must be 'clock' with store= (keyed state expires on the pipeline clock), "
                f"got {self.time!r}",
            )
        return KeyedState(store)

    async def open(self, context: StageContext) -> None:
        """Keep the context (its clock and dead-letter hook) and start a new run.

        Keys let through by an earlier run of this object whose records never
        became done are forgotten, so their replays go through again.
        """
        self._context = context
        if self.keyed_state is not None:
            self.keyed_state.open(context, self.step_id)
            return
        for key in self._pending:
            self._seen.discard(key)
        self._pending = {}
        self._changes += 1

    async def process(self, batch: Batch, emit: Emit) -> None:
        """Emit the records whose key is new (or expired); drop the others."""
        context = self._context
        if context is None:
            raise RuntimeError(f"stage {self.step_id!r} was not opened")
        if self.keyed_state is not None:
            await self._process_keyed(self.keyed_state, batch, emit, context)
            return
        times = self._times(batch, context)
        kept: list[Any] = []
        drops: list[int] = []
        keys: list[str] = []
        seen, ttl = self._seen, self.ttl
        remembered, remember = seen.get, seen.add
        limit = self.max_keys if self.max_keys is not None else float("inf")
        duplicates = self._duplicates
        for index, value in enumerate(batch.items):
            try:
                key = _key_text(self._key(value))
                now = times(index, value)
            except DataError as error:
                drops.append(len(kept))
                context.dead_letter(batch, index, error, None)
                continue
            before = remembered(key)
            if before is not None and (ttl is None or now - before < ttl):
                drops.append(len(kept))
                self._duplicates += 1
                continue
            if before is not None:
                seen.discard(key)  # expired: re-enter at the back with the new time
            if remember(key, now) > limit:
                seen.pop_oldest()
                self._evicted += 1
            kept.append(value)
            keys.append(key)
        self._records_in += len(batch.items)
        self._changes += 1
        context.dropped(self._duplicates - duplicates)  # the run report counts them (I7)
        self._evict()
        if not kept:
            batch.ack.release()  # all dropped (done) or held by their dead-letter writes
            return
        await emit(self._output(batch, kept, drops, keys))

    async def _process_keyed(
        self, keyed: KeyedState, batch: Batch, emit: Emit, context: StageContext
    ) -> None:
        """:meth:`process` with a store: each key's state says whether it was let through."""
        kept: list[Any] = []
        drops: list[int] = []
        ttl = self.ttl
        duplicates = given_up = 0
        for index, value in enumerate(batch.items):
            try:
                state = keyed.state(batch, index, _key_text(self._key(value)))
            except DataError as error:
                drops.append(len(kept))
                context.dead_letter(batch, index, error, None)
                continue
            except PartitionGivenUp:  # its new owner processes it again
                drops.append(len(kept))
                given_up += 1
                continue
            if state.get(False):
                drops.append(len(kept))
                duplicates += 1
                continue
            state.set(True, ttl=ttl)
            kept.append(value)
        self._records_in += len(batch.items)
        self._duplicates += duplicates
        context.dropped(duplicates)
        if given_up:
            context.count("handed_over", given_up)
        if not kept:
            batch.ack.release()
            return
        # The keys' changes are cut with the positions: no ack of its own is needed.
        await emit(
            Batch(kept, batch.ack, DropsOrigin(batch.origin, drops) if drops else batch.origin)
        )

    async def finish(self, emit: Emit) -> None:
        """Nothing is held back."""

    def snapshot(self) -> Any:
        """The remembered keys whose records are done, as a frozen :class:`DedupeSnapshot`.

        O(1) in the number of keys (O(keys not done yet)): the same object while
        nothing changed, so an unchanged state is recognised without a comparison.
        With a store, what its keyed state hands the checkpoint.
        """
        if self.keyed_state is not None:
            return self.keyed_state.snapshot()
        last = self._last
        if last is not None and last[0] == self._changes:
            return last[1]
        watermark = self._watermark if self._watermark != float("-inf") else None
        snapshot = DedupeSnapshot._taken(self._seen.freeze(), frozenset(self._pending), watermark)
        self._last = (self._changes, snapshot)
        return snapshot

    def restore(self, state: Any) -> None:
        """Take back what :meth:`snapshot` saved.

        Raises:
            ValueError: ``state`` is not a dedupe snapshot of a known version.
        """
        if self.keyed_state is not None:
            self.keyed_state.restore(state)
            return
        version = state.get("version") if isinstance(state, dict) else None
        if version not in (1, 2, _STATE_VERSION):
            raise ValueError(f"stage {self.step_id!r}: not a dedupe snapshot: {state!r:.80}")
        pairs: Iterable[tuple[str, float]]
        if version == 1:
            pairs = ((_key_text(key), float(at)) for key, at in state["keys"])
        else:  # version 2 kept long keys whole: they are digested as they come back
            keys = map(str if version == _STATE_VERSION else _key_text, state["keys"])
            pairs = zip(keys, map(float, state["times"]), strict=True)
        self._seen = TimedKeys(pairs)
        self._pending = {}
        self._changes += 1
        watermark = state.get("watermark")
        self._watermark = float("-inf") if watermark is None else float(watermark)
        self._evict()

    def statistics(self) -> DedupeStatistics:
        """What the stage has seen, let through and dropped, and what it remembers."""
        if self.keyed_state is not None:
            return DedupeStatistics(
                records_in=self._records_in,
                passed=self._records_in - self._duplicates,
                duplicates=self._duplicates,
                keys=None,
                pending=None,
                evicted=None,
            )
        return DedupeStatistics(
            records_in=self._records_in,
            passed=self._records_in - self._duplicates,
            duplicates=self._duplicates,
            keys=len(self._seen),
            pending=len(self._pending),
            evicted=self._evicted,
        )

    def _times(self, batch: Batch, context: StageContext) -> Callable[[int, Any], float]:
        """The time of item ``index`` (``value``) of ``batch``, from the configured source."""
        if self.time == "clock":
            now = context.clock.time()
            self._watermark = max(self._watermark, now)
            return lambda _index, _value: now
        if self.time == "event":
            return functools.partial(self._event_time, batch)
        time_of = self.time
        assert callable(time_of)

        def from_value(_index: int, value: Any) -> float:
            return self._advance(float(time_of(value)))

        return from_value

    def _event_time(self, batch: Batch, index: int, _value: Any) -> float:
        where = batch.locate(index)
        at: float | None = None
        if where is not None:
            source, i = where
            at = source.timestamps[i] if source.timestamps is not None else None
        if at is None:
            raise DataError("record has no event timestamp", reason="missing_timestamp")
        return self._advance(at)

    def _advance(self, at: float) -> float:
        """``at``, which moves the latest time seen, unless it is too far ahead of it.

        Raises:
            DataError: ``at`` is more than ``max_skew`` ahead (``timestamp_out_of_range``).
        """
        watermark, skew = self._watermark, self.max_skew
        if skew is not None and watermark != float("-inf") and at > watermark + skew:
            raise DataError(
                f"event time {at!r} is more than max_skew {skew!r} s ahead of the latest"
                f" time seen ({watermark!r})",
                reason="timestamp_out_of_range",
            )
        self._watermark = max(watermark, at)
        return at

    def _evict(self) -> None:
        """Forget expired keys (by the latest time seen) and keys over ``max_keys``."""
        seen = self._seen
        before = len(seen)
        if self.ttl is not None and seen:
            horizon = self._watermark - self.ttl
            # Keys enter in time order, except out-of-order event times: those
            # stay a little longer, which costs memory, never correctness.
            while (oldest := seen.oldest()) is not None and oldest[1] <= horizon:
                seen.pop_oldest()
        if self.max_keys is not None:
            while len(seen) > self.max_keys:
                seen.pop_oldest()
        self._evicted += before - len(seen)

    def _output(self, batch: Batch, kept: list[Any], drops: list[int], keys: list[str]) -> Batch:
        """The kept records under an ack of their own that confirms their keys when done."""
        pending = self._pending
        for key in keys:
            pending[key] = pending.get(key, 0) + 1
        ack = Ack(functools.partial(self._confirm, keys, batch.ack))
        origin = DropsOrigin(batch.origin, drops) if drops else batch.origin
        return Batch(kept, ack, origin)

    def _confirm(self, keys: list[str], upstream: Ack) -> None:
        """The emitted records are done: their keys may now be saved; release the input."""
        pending = self._pending
        for key in keys:
            left = pending.get(key, 0) - 1
            if left > 0:
                pending[key] = left
            else:
                pending.pop(key, None)
        self._changes += 1
        upstream.release()
