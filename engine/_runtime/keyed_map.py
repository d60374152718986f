"""The stage behind ``.map``, ``.filter`` and ``.flat_map`` with ``state=``: ``fn(value, state)``.

It is a :class:`~riprap.Stage`, so its state reaches the checkpoint the way
every stage's does (``snapshot``/``restore``, cut with the positions, I3).
Records are processed one at a time, in order (an async ``fn`` is awaited
before the next record starts), because the state a record sees must be the
one its predecessors of the partition left.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, final

from riprap._core.errors import ConfigError, DataError
from riprap._core.records import Batch, DropsOrigin, IndexOrigin
from riprap._core.state_values import PartitionGivenUp
from riprap._core.steps import STEP_OPTIONS, OpStep, check_known, check_name, is_async
from riprap._runtime.fuse import OpKind, refuse_awaitable
from riprap._runtime.keyed_state import KeyedState
from riprap._runtime.state_memory import MemoryStore

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from riprap._core.protocols import Emit, StageContext
    from riprap._core.state_stores import StateStore
    from riprap._core.steps import Step

STATE_OPTIONS = ("state", "key")
"""What a step accepts next to ``state=`` (``key``: the state's key from the value);
records go one at a time, in order, unretried."""


@final
class KeyedMapStage:
    """Calls ``fn(value, state)``, ``state`` being its key's :class:`State`, as its kind says.

    ``map`` replaces the value with the result, ``filter`` keeps the value when
    the result is truthy, ``flat_map`` replaces it with the result's items.
    """

    def __init__(
        self,
        step_id: str,
        fn: Callable[..., Any],
        store: StateStore,
        key: Callable[[Any], Any] | None = None,
        kind: OpKind = "map",
    ) -> None:
        self.step_id = step_id
        self.kind = kind
        self.fn = fn
        self.key = key
        """``key(value)``: the state's key, instead of the record's."""
        self.is_async = is_async(fn)
        self.keyed_state = KeyedState(store)
        self._context: StageContext | None = None
        self._checked = False

    async def open(self, context: StageContext) -> None:
        """Open the state store, reconciled with the restored checkpoint."""
        self._context = context
        self.keyed_state.open(context, self.step_id)

    async def process(self, batch: Batch, emit: Emit) -> None:
        """Call ``fn`` per record; a ``DataError`` dead-letters the record and drops its changes."""
        context = self._context
        if context is None:
            raise RuntimeError(f"stage {self.step_id!r} was not opened")
        kind = self.kind
        out: list[Any] = []
        drops: list[int] = []
        """Map: the output length at each record dead-lettered."""
        indices: list[int] = []
        """Filter, flat_map: the input index of each output."""
        dropped = given_up = 0
        for index, (value, where) in enumerate(zip(batch.items, batch.sources(), strict=True)):
            try:
                if self.key is None:
                    state = self.keyed_state._bind(where, deferred=True)
                else:
                    state = self.keyed_state._bind(where, deferred=True, key=self.key(value))
                result = self.fn(value, state)
                if self.is_async:
                    result = await result
                elif not self._checked:  # one look is enough: fn is sync or it is not
                    refuse_awaitable(result, kind, self.step_id)
                    self._checked = True
                if kind == "flat_map":
                    result = list(result)
            except DataError as error:
                drops.append(len(out))
                context.dead_letter(batch, index, error, None)
                continue
            except PartitionGivenUp:  # its new owner processes it again
                drops.append(len(out))
                given_up += 1
                continue
            state._commit()
            if kind == "map":
                out.append(result)
            elif kind == "filter":
                if result:
                    out.append(value)
                    indices.append(index)
                else:
                    dropped += 1
            else:
                out.extend(result)
                indices.extend([index] * len(result))
        if dropped:
            context.dropped(dropped)
        if given_up:
            context.count("handed_over", given_up)
        if not out:
            batch.ack.release()  # dropped, or held by its dead-letter write
        elif kind != "map":
            await emit(Batch(out, batch.ack, IndexOrigin(batch.origin, indices)))
        elif drops:
            await emit(Batch(out, batch.ack, DropsOrigin(batch.origin, drops)))
        else:
            await emit(Batch(out, batch.ack, batch.origin))

    async def finish(self, emit: Emit) -> None:
        """Nothing is held back: every result went out with its record."""

    def snapshot(self) -> Any:
        return self.keyed_state.snapshot()

    def restore(self, state: Any) -> None:
        self.keyed_state.restore(state)


def keyed_step(
    kind: OpKind,
    step_id: str,
    fn: Callable[..., Any],
    options: Mapping[str, Any],
    before: Sequence[Step],
) -> KeyedMapStage:
    """The stage of ``.map(step_id, fn, state=...)`` (or filter, flat_map) after ``before``.

    Raises:
        ConfigError: Naming the step and the option: ``fn`` not callable, a
            ``state`` that is not ``True`` or a store, an option keyed state
            does not take (records go one at a time, in order, unretried), or
            an earlier step that does not keep the order of records.
    """
    where = f"{kind}({step_id!r})"
    check_name("step_id", step_id)
    check_known(where, options, STEP_OPTIONS)
    for name in options:
        if name not in STATE_OPTIONS:
            raise ConfigError(
                f"{where}.{name}",
                "is not available with state=: a keyed-state step calls its function "
                "once per record, in order, without retries",
            )
    if not callable(fn):
        raise ConfigError(f"{where}.fn", f"must be callable, got {fn!r}")
    unordered = [s.step_id for s in before if isinstance(s, OpStep) and not s.ordered]
    if unordered:
        raise ConfigError(
            f"{where}.state",
            f"step {unordered[0]!r} runs with ordered=False, but keyed state needs the "
            "records of a partition in order (so that a replay repeats the same changes)",
        )
    store = options["state"]
    if store is True:
        store = MemoryStore()
    if not (hasattr(store, "open") and isinstance(getattr(store, "kind", None), str)):
        raise ConfigError(
            f"{where}.state",
            f"must be True, MemoryStore() or SqliteStore(directory), got {store!r}",
        )
    key = options.get("key")
    if key is not None and not callable(key):
        raise ConfigError(f"{where}.key", f"must be a function of the value, got {key!r}")
    return KeyedMapStage(step_id, fn, store, key, kind)
