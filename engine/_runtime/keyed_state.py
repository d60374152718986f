"""Keyed state of one step: per-key values, partitioned like the input, cut with the positions.

Why a checkpoint's state matches its positions exactly (I3): a record changes
the state when a step processes it, but its source position is done only
once its sink is done, and positions advance over a done *prefix*; a sync
step runs well ahead of the sink. So every change is kept in a per-partition
log tagged with the offset of the source record behind it, and reads see the
newest change. At a checkpoint cut (no await in between, see
:meth:`KeyedState.snapshot`) the changes of records *below* the cut's position
are applied to the store and saved with the checkpoint, and the others stay in
the log: a change of a record the checkpoint does not cover is never in it.
After a crash the source replays from the positions, and the replayed records
make their changes again on top of exactly the state the positions imply: a
keyed running count ends as in a run that never crashed.

This needs records of one partition to reach the step in offset order, which
steps keep unless told ``ordered=False``.
"""

from __future__ import annotations

from bisect import bisect_left
from pathlib import Path
from typing import TYPE_CHECKING, Any, final

import anyio

from riprap._core.errors import ConfigError
from riprap._core.state_values import (
    MissingKeyError,
    PartitionGivenUp,
    StateStoreError,
    decode_value,
    encode_value,
    key_token,
    token_key,
)
from riprap._runtime.state_memory import MemoryPartitions, MemoryStore
from riprap._runtime.state_sqlite import SqlitePartitions, SqliteStore

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from riprap._core.clock import Clock
    from riprap._core.protocols import StageContext
    from riprap._core.records import Batch, SourceBatch, Where
    from riprap._core.state_stores import Backing, Partitions, StateLog, StateStore
    from riprap._core.state_values import Entry

_UNSET: Any = object()
"""No change pending in a :class:`State` (``None`` is a change: a delete)."""

_new_state = object.__new__
"""Makes a :class:`State` without its refusing ``__init__``."""

_FOLD_AT = 4_096
"""Changes a partition's log holds before it first folds those of done records."""

_CUTS_KEPT = 64
"""Cuts remembered while waiting to learn that a checkpoint covering them was saved."""


def _given_up(source: SourceBatch) -> bool:
    """Whether ``source`` was read under an assignment since revoked."""
    return source.assignment is not None and source.assignment.revoked


def keeps_keyed_state(stage: object) -> bool:
    """Whether ``stage`` keeps all its state in a :class:`KeyedState` (its ``keyed_state``).

    Such a stage's state is partitioned like the input, so it can live in a
    changelog and follow its partitions among workers and group members.
    """
    return isinstance(getattr(stage, "keyed_state", None), KeyedState)


@final
class PartitionLog:
    """One partition's changes since the last cut, in offset order, and the newest per key.

    Three parallel lists (offsets, tokens, entries): a cut finds its split with
    one bisection and keeps each key's last change below it with one
    ``dict(zip(...))``, both in C, so a checkpoint costs little loop time
    however many changes a checkpoint interval holds.

    Memory is bounded by the keys changed and the records in flight, not by
    the records of a checkpoint interval: once the lists have doubled, the
    changes of records below the partition's position now (done, so below
    every later cut too) are folded to each key's last one.
    """

    __slots__ = (
        "assignment",
        "backing",
        "entries",
        "limit",
        "newest",
        "offsets",
        "partition",
        "position",
        "step_id",
        "tokens",
    )

    def __init__(
        self,
        step_id: str,
        partition: str,
        backing: Backing,
        position: Callable[[], int | None] = lambda: None,
    ) -> None:
        self.step_id = step_id
        self.partition = partition
        self.backing = backing
        self.assignment: object = None
        """The assignment of the partition its records were read under (group sources)."""
        self.position = position
        """The partition's committable position now (``None``: not tracked)."""
        self.offsets: list[int] = []
        self.tokens: list[str] = []
        self.entries: list[Entry] = []
        self.newest: dict[str, Entry] = {}
        self.limit = _FOLD_AT
        """Changes held when the next fold is tried."""

    def write(self, offset: int, token: str, entry: Entry) -> None:
        """Log a change of the record at ``offset``.

        Raises:
            ConfigError: ``offset`` is below the last change's: records of the
                partition came out of order, so a cut could not tell which
                changes its positions cover.
        """
        offsets = self.offsets
        if offsets and offset < offsets[-1]:
            raise ConfigError(
                f"state({self.step_id!r})",
                f"partition {self.partition!r} reached the step out of order (offset "
                f"{offset} after {offsets[-1]}): keyed state needs the records of a "
                "partition in order; a stage before it reorders them",
            )
        offsets.append(offset)
        self.tokens.append(token)
        self.entries.append(entry)
        self.newest[token] = entry
        if len(offsets) >= self.limit:
            self.fold()

    def fold(self) -> None:
        """Keep one change per key of the records below the position now (they are done)."""
        offsets = self.offsets
        position = self.position()
        split = 0 if position is None else bisect_left(offsets, position)
        if split > 1:
            done = dict(zip(self.tokens[:split], self.entries[:split], strict=True))
            below = offsets[split - 1]  # below every later cut's position, in order
            self.offsets = [below] * len(done) + offsets[split:]
            self.tokens = [*done, *self.tokens[split:]]
            self.entries = [*done.values(), *self.entries[split:]]
        self.limit = max(_FOLD_AT, 2 * len(self.offsets))

    def cut(self, position: int, now: float) -> dict[str, Entry] | None:
        """Apply each key's last change of the records below ``position``; those changes."""
        split = bisect_left(self.offsets, position)
        if not split:
            return None
        changes = dict(zip(self.tokens[:split], self.entries[:split], strict=True))
        self.backing.apply(changes, position, now)
        del self.offsets[:split], self.tokens[:split], self.entries[:split]
        self.newest = dict(zip(self.tokens, self.entries, strict=True))
        return changes


@final
class State:
    """The state of one key, bound to the record being processed.

    Handed to a step's function (``.map(step_id, fn, state=True)`` calls
    ``fn(value, state)``) or taken by a stage from
    :meth:`KeyedState.state`. Values are stored as JSON (str, int, float,
    bool, None, lists, dicts with str keys); a tuple comes back as a list.
    Valid while its record is processed; do not keep it.

    .. versionadded:: 0.1
    """

    __slots__ = ("_clock", "_deferred", "_log", "_offset", "_pending", "_step_id", "_token", "key")

    key: Any
    """The record's key, which this state belongs to."""
    _step_id: str
    _token: str
    _log: PartitionLog
    _offset: int
    _clock: Clock
    _deferred: bool
    _pending: Any

    def __init__(self) -> None:
        raise TypeError("riprap hands a State to the step's function; it is not made directly")

    def get(self, default: Any = None) -> Any:
        """The key's value, or ``default`` when it has none (or it has expired)."""
        entry = self._pending
        if entry is _UNSET:
            newest = self._log.newest
            token = self._token
            entry = newest[token] if token in newest else self._log.backing.read(token)
        if entry is None or (entry[1] is not None and entry[1] <= self._clock.time()):
            return default
        return decode_value(entry[0])

    def set(self, value: Any, *, ttl: float | None = None) -> None:
        """Store ``value`` for the key; with ``ttl``, it expires after that many seconds.

        Expiry runs on the pipeline's clock (wall time, so it holds across restarts).

        Raises:
            StateValueError: JSON cannot hold ``value`` exactly (a data error
                naming the step and the key).
            ConfigError: ``ttl`` is not a positive number.
        """
        if ttl is not None and (isinstance(ttl, bool) or not ttl > 0):
            raise ConfigError(f"state({self._step_id!r}).ttl", f"must be > 0, got {ttl!r}")
        expires = None if ttl is None else self._clock.time() + ttl
        entry = (encode_value(self._step_id, self.key, value), expires)
        if self._deferred:
            self._pending = entry
        else:
            self._log.write(self._offset, self._token, entry)

    def delete(self) -> None:
        """Remove the key's value."""
        self._change(None)

    def _change(self, entry: Entry) -> None:
        if self._deferred:
            self._pending = entry
        else:
            self._log.write(self._offset, self._token, entry)

    def _commit(self) -> None:
        """Make a deferred change (the function returned): it is kept from now on."""
        if self._pending is not _UNSET:
            self._log.write(self._offset, self._token, self._pending)
            self._pending = _UNSET


@final
class KeyedState:
    """The keyed state of one step, for custom stages (the ``state=`` of ``.map`` uses it too).

    A stage creates it in ``__init__``, opens it in ``open``, and hands it to
    the checkpoint through its own ``snapshot``/``restore``::

        class RunningCount:
            step_id = "count"

            def __init__(self) -> None:
                self.counts = KeyedState(MemoryStore())

            async def open(self, context: StageContext) -> None:
                self.counts.open(context, self.step_id)

            async def process(self, batch: Batch, emit: Emit) -> None:
                for index in range(len(batch.items)):
                    state = self.counts.state(batch, index)
                    state.set(state.get(0) + 1)
                await emit(batch)

            async def finish(self, emit: Emit) -> None: ...

            def snapshot(self) -> Any:
                return self.counts.snapshot()

            def restore(self, state: Any) -> None:
                self.counts.restore(state)

    Args:
        store: Where the state lives: ``MemoryStore()`` or ``SqliteStore(directory)``.
        on_load: Called with a partition's name when its state was loaded anew
            from the changelog, or released: what the stage derived from it
            (an index of its keys, say) must be built again.
        in_flight: Changes are cut when made, not when their record is done,
            for state a replay must find (a saga's log of calls already made);
            the stage deletes it itself once its record is done.

    .. versionadded:: 0.1
    """

    __slots__ = (
        "_context",
        "_cuts",
        "_hub",
        "_logs",
        "_on_load",
        "_partitions",
        "_restored",
        "_snapshot",
        "_step_id",
        "in_flight",
        "store",
    )

    def __init__(
        self,
        store: StateStore,
        *,
        on_load: Callable[[str], None] | None = None,
        in_flight: bool = False,
    ) -> None:
        self.store = store
        self.in_flight = in_flight
        """Cut every change, done or not: state a replay must find (a saga's log), which the
        stage removes itself once it is no longer needed."""
        self._on_load = on_load
        """Told a partition's name when its state was loaded anew or released (changelog)."""
        self._restored: Any = None
        self._context: StageContext | None = None
        self._partitions: Partitions | None = None
        self._step_id = ""
        self._logs: dict[str, PartitionLog] = {}
        self._cuts: list[tuple[int, dict[str, int]]] = []
        self._snapshot: Any = None
        """The last snapshot, handed out again while nothing changes."""
        self._hub: StateLog | None = None
        """The run's changelog, when it has one: the state lives there, not in checkpoints."""

    def restore(self, state: Any) -> None:
        """Take the state the checkpoint saved (before :meth:`open`)."""
        self._restored = state

    def open(self, context: StageContext, step_id: str) -> None:
        """Open the store, reconciled with the restored checkpoint.

        Raises:
            StateStoreError: The store disagrees with the checkpoint (see
                :class:`~riprap.state.SqliteStore`).
        """
        self._context = context
        self._step_id = step_id
        # A pipeline run again starts from its checkpoint.
        self._logs, self._cuts, self._snapshot = {}, [], None
        self._hub = hub = context.state_log
        if hub is not None:
            self._open_logged(hub)
            return
        self._partitions = self.store.open(
            pipeline=context.pipeline, step_id=step_id, restored=self._restored
        )
        self._restored = None

    def _open_logged(self, hub: StateLog) -> None:
        """Open for a run with a changelog: partitions arrive with :meth:`load`."""
        step_id = self._step_id
        restored = self._restored
        if isinstance(restored, dict) and restored.get("partitions"):
            raise StateStoreError(
                f"of step {step_id!r}",
                "the checkpoint holds this step's state, but the run keeps keyed state in a "
                "changelog: the state would be lost. Run without the changelog, or reset the "
                f"step's state (riprap checkpoint reset --stage {step_id} --yes)",
            )
        self._restored = None
        store = self.store
        if isinstance(store, MemoryStore):
            self._partitions = MemoryPartitions()
        elif isinstance(store, SqliteStore):
            assert self._context is not None
            root = Path(store.directory) / self._context.pipeline / step_id
            self._partitions = SqlitePartitions(root, self._context.pipeline, step_id, logged=True)
        else:
            raise ConfigError(
                f"state({step_id!r})",
                f"with a changelog, keyed state is kept in a MemoryStore or a SqliteStore "
                f"(its local copy), not in a {type(store).__name__}",
            )
        hub.attach(step_id, self)

    # -- the changelog's side ---------------------------------------------------------

    def local(self, partition: str) -> tuple[int, int] | None:
        """The changelog offset and position of ``partition``'s local copy, if usable."""
        partitions = self._partitions
        return partitions.local(partition) if isinstance(partitions, SqlitePartitions) else None

    def load(
        self,
        partition: str,
        values: Mapping[str, Entry],
        *,
        complete: bool,
        offset: int | None,
        position: int | None,
    ) -> None:
        """Take ``partition``'s state as the changelog restored it: whole, or changes since.

        The log of changes starts afresh; a local copy records ``offset`` and ``position``.
        """
        self._logs.pop(partition, None)
        if self._on_load is not None:
            self._on_load(partition)
        partitions = self._partitions
        if isinstance(partitions, SqlitePartitions):
            backing = partitions.partition(partition)
            backing.restore(values, complete=complete, offset=offset, position=position)
            return
        assert isinstance(partitions, MemoryPartitions)
        memory = partitions.partition(partition)
        if complete:
            memory.load({t: e for t, e in values.items() if e is not None})
        else:
            memory.apply(values, 0, 0.0)

    async def logged(self, partition: str, offset: int | None, position: int) -> None:
        """The changelog holds ``partition``'s commit up to ``offset``: a local copy writes it.

        In a worker thread, on a connection of its own: the loop goes on meanwhile,
        reading the changes from memory until the transaction is committed.
        """
        partitions = self._partitions
        if isinstance(partitions, SqlitePartitions) and partition in partitions.partitions:
            backing = partitions.partitions[partition]
            await anyio.to_thread.run_sync(backing.write_pending, offset, position)

    def release(self, partition: str) -> None:
        """Drop ``partition``'s state: it was given up, its next owner restores it."""
        self._logs.pop(partition, None)
        if self._on_load is not None:
            self._on_load(partition)
        partitions = self._partitions
        if isinstance(partitions, MemoryPartitions):
            partitions.partitions.pop(partition, None)
        elif isinstance(partitions, SqlitePartitions):
            partitions.release(partition)

    def state(self, batch: Batch, index: int, key: Any = _UNSET) -> State:
        """The state of the key of the record behind ``batch.items[index]``.

        ``key`` gives the key instead (one taken from the value): the state is
        still that of the record's source partition.

        Raises:
            MissingKeyError: The record has no key (a data error).
            StateValueError: Its key is not str, bytes or int (a data error).
            ConfigError: The item has no source record behind it (it was built
                by a batch step or a stage that emits without origins).
            PartitionGivenUp: The record's partition was given to another
                member while the record was in flight: skip it, its new owner
                processes it again.
        """
        return self._bind(batch.locate(index), key=key)

    def keys(self, batch: Batch, index: int) -> list[Any]:
        """Every key with a value (not expired) in the partition of the record behind
        ``batch.items[index]``, changes not yet cut included: O(keys of the partition).

        For a stage that must find keys without their records (a window closed by
        the partition's time); ``on_load`` tells it when a partition was loaded anew.
        """
        where = batch.locate(index)
        if where is None or self._context is None or _given_up(where[0]):
            self._bind(where)  # raises, naming the problem
        assert where is not None
        assert self._context is not None
        log = self._log(where[0].partition, where[0].assignment)
        now = self._context.clock.time()
        found = set(log.backing.tokens(now))
        for token, entry in log.newest.items():
            if entry is None or (entry[1] is not None and entry[1] <= now):
                found.discard(token)
            else:
                found.add(token)
        return [token_key(token) for token in sorted(found)]

    def _bind(self, where: Where, *, deferred: bool = False, key: Any = _UNSET) -> State:
        """:meth:`state` for a located item; ``deferred`` changes wait for ``_commit``."""
        context = self._context
        if context is None:
            raise RuntimeError(f"keyed state of step {self._step_id!r} is used before open()")
        if where is None:
            raise ConfigError(
                f"state({self._step_id!r})",
                "an item reached the step with no source record behind it (after a batch "
                "step or a stage that emits new records): keyed state needs the record's key",
            )
        source, index = where
        assignment = source.assignment  # inline: once per record
        if assignment is not None and assignment.revoked:
            raise PartitionGivenUp(source.partition)
        keys, offsets = source.keys, source.offsets
        if key is _UNSET:
            key = keys[index] if keys is not None else None
        offset = offsets[index] if offsets is not None else source.start + index
        step_id = self._step_id
        if key is None:
            raise MissingKeyError(step_id, source.partition, offset)
        # Per record, so without a call that is not needed: the common str key inline.
        token = "s:" + key if key.__class__ is str else key_token(step_id, key)
        state = _new_state(State)
        state.key = key
        state._step_id = step_id
        state._token = token
        log = self._logs.get(source.partition)
        if log is None or log.assignment is not source.assignment:
            log = self._log(source.partition, source.assignment)
        state._log = log
        # In flight: every change is below every position, so every cut takes it.
        state._offset = -1 if self.in_flight else offset
        state._clock = context.clock
        state._deferred = deferred
        state._pending = _UNSET
        return state

    def _log(self, partition: str, assignment: object = None) -> PartitionLog:
        """The partition's log, a new one when the partition was assigned anew.

        The changes not yet cut are those of records the committed position does not
        cover: under a new assignment the source reads them again, so they go.
        """
        log = self._logs.get(partition)
        if log is None or log.assignment is not assignment:
            assert self._partitions is not None
            if self._hub is not None:
                self._hub.require(self._step_id, partition)
            backing = self._partitions.partition(partition)
            context = self._context
            assert context is not None
            log = self._logs[partition] = PartitionLog(
                self._step_id, partition, backing, lambda: context.positions().get(partition)
            )
            log.assignment = assignment
        return log

    def snapshot(self) -> Any:
        """The state at the positions of the checkpoint being cut (call it only from ``snapshot``).

        Applies the changes of records below each partition's position to the
        store and returns what the checkpoint must hold: the whole state (memory)
        or each partition's commit (SQLite).
        """
        context, partitions = self._context, self._partitions
        if context is None or partitions is None:  # not opened: what was restored, unchanged
            empty = {"store": self.store.kind, "partitions": {}}
            return self._restored if self._restored is not None else empty
        positions = context.positions()
        now = context.clock.time()
        if self._hub is not None:
            self._cut_logged(self._hub, positions, now)
            return None
        changed = self._snapshot is None
        for name, log in self._logs.items():
            position = positions.get(name)
            if position is not None and log.cut(position, now):
                changed = True
        self._remember_cut(context.checkpoints_saved(), partitions)
        if changed:  # else the same object: the checkpointer sees "unchanged" at a glance
            self._snapshot = partitions.snapshot(now)
        return self._snapshot

    def _cut_logged(self, hub: StateLog, positions: Mapping[str, int], now: float) -> None:
        """The cut with a changelog: each partition's changes below its position go to it."""
        assert isinstance(self._partitions, (MemoryPartitions, SqlitePartitions))
        step_id = self._step_id
        for name, log in self._logs.items():
            position = positions.get(name)
            changes = None if position is None else log.cut(position, now)
            expired = self._partitions.partition(name).expire(now)
            if expired:
                changes = {**(changes or {}), **dict.fromkeys(expired)}
            if changes:
                hub.stage(step_id, name, changes)

    def _remember_cut(self, saved: int, partitions: Partitions) -> None:
        """Tell the store which commits a saved checkpoint covers.

        Two saves completed after a cut prove that a checkpoint cut after it
        was saved (saves never overlap, so at most one was under way at the cut).
        """
        while self._cuts and self._cuts[0][0] + 2 <= saved:
            partitions.confirmed(self._cuts.pop(0)[1])
        commits = partitions.commits()
        if commits and (not self._cuts or self._cuts[-1][1] != commits):
            self._cuts.append((saved, commits))
            del self._cuts[:-_CUTS_KEPT]
