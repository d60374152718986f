"""Quality gates: hold a window of records, measure it, and only then let it through.

:class:`QualityGate` measures each window with checks (:class:`RowCount`,
:class:`NullRate`, :class:`DistinctCount`, :class:`Mean`, :class:`References`,
or your own :class:`Check`). A breached check either halts the run with
:class:`QualityGateError` before any record of the window reaches the sink, or
quarantines the window to the dead-letter queue (reason ``quality_gate``).

.. versionadded:: 0.1
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, final, runtime_checkable

from riprap import Batch, ConfigError, DataError, EngineError
from riprap.lowlevel import DropsOrigin

from ._fields import MISSING as _MISSING
from ._fields import get as _get
from ._fields import is_number as _is_number
from ._gate_state import Decision, Decisions, subset

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable, Sequence

    from riprap import StageContext
    from riprap.lowlevel import Emit

__all__ = (
    "Check",
    "CheckResult",
    "DistinctCount",
    "GateStatistics",
    "GateWindow",
    "Mean",
    "NullRate",
    "QualityGate",
    "QualityGateError",
    "References",
    "RowCount",
    "WindowResult",
)

_log = logging.getLogger("riprap.stages.quality")


# -- per-window quality gates --------------------------------------------------


@final
@dataclass(frozen=True, slots=True)
class GateWindow:
    """What a :class:`Check` measures.

    Attributes:
        index: 0-based window number within the run.
        items: The window's values, in order.
        records_in: Source records behind the window (see :class:`RowCount`);
            ``None`` when the batches carry no origin.
    """

    index: int
    items: Sequence[Any]
    records_in: int | None


@final
@dataclass(frozen=True, slots=True)
class CheckResult:
    """The outcome of one check on one window: what was measured against which bound."""

    check: str
    measured: float
    bound: str
    passed: bool

    def __str__(self) -> str:
        verdict = "passed" if self.passed else "breached"
        return f"{self.check} = {self.measured:.6g} {verdict} (bound {self.bound})"


@runtime_checkable
class Check(Protocol):
    """A window-level measurement with a bound; ``evaluate`` must not block."""

    def evaluate(self, window: GateWindow) -> CheckResult: ...


def _interval(low: float | None, high: float | None) -> str:
    left = "-inf" if low is None else f"{low:g}"
    right = "inf" if high is None else f"{high:g}"
    return f"[{left}, {right}]"


def _within(measured: float, low: float | None, high: float | None) -> bool:
    if math.isnan(measured):
        return False
    return (low is None or measured >= low) and (high is None or measured <= high)


def _present(items: Sequence[Any], field: str) -> list[Any]:
    return [v for v in (_get(item, field) for item in items) if v is not _MISSING and v is not None]


@final
@dataclass(frozen=True, slots=True)
class RowCount:
    """Records in the window over the source records behind it, within ``1 ± tolerance``.

    The source records behind a window are counted as the span of source
    positions its records cover (per partition, from the end of the previous
    window), so records dropped upstream count as input. That is exact for
    sources whose positions count records (memory, file lines, Kafka offsets
    without compaction). A flat_map that expands records needs a tolerance
    above its expansion. The gate must see batches with an origin (not after
    ``.batch``); without one the check fails.
    """

    tolerance: float = 0.0

    def __post_init__(self) -> None:
        if not _is_number(self.tolerance) or self.tolerance < 0:
            raise ConfigError("RowCount.tolerance", f"must be >= 0, got {self.tolerance!r}")

    def evaluate(self, window: GateWindow) -> CheckResult:
        low, high = 1.0 - self.tolerance, 1.0 + self.tolerance
        bound = _interval(low, high)
        if window.records_in is None:
            return CheckResult("row_count", math.nan, bound + " (input unknown)", False)
        ratio = len(window.items) / window.records_in if window.records_in else 1.0
        return CheckResult("row_count", ratio, bound, _within(ratio, low, high))


@final
@dataclass(frozen=True, slots=True)
class NullRate:
    """The share of records whose ``field`` is absent or ``None`` is at most ``max_rate``."""

    field: str
    max_rate: float

    def evaluate(self, window: GateWindow) -> CheckResult:
        total = len(window.items)
        nulls = total - len(_present(window.items, self.field))
        rate = nulls / total if total else 0.0
        passed = _within(rate, None, self.max_rate)
        return CheckResult(f"null_rate({self.field})", rate, _interval(0, self.max_rate), passed)


@final
@dataclass(frozen=True, slots=True)
class DistinctCount:
    """The number of distinct non-null values of ``field`` is within ``[min, max]``."""

    field: str
    min: int | None = None
    max: int | None = None

    def evaluate(self, window: GateWindow) -> CheckResult:
        distinct: set[Any] = set()
        for value in _present(window.items, self.field):
            try:
                distinct.add(value)
            except TypeError:  # unhashable: compare by representation
                distinct.add(repr(value))
        count = float(len(distinct))
        return CheckResult(
            f"distinct_count({self.field})",
            count,
            _interval(self.min, self.max),
            _within(count, self.min, self.max),
        )


@final
@dataclass(frozen=True, slots=True)
class Mean:
    """The mean of the numeric values of ``field`` is within ``[min, max]``.

    Non-numeric and null values are ignored; a window with no numeric value
    measures ``nan`` and fails.
    """

    field: str
    min: float | None = None
    max: float | None = None

    def evaluate(self, window: GateWindow) -> CheckResult:
        numbers = [v for v in _present(window.items, self.field) if _is_number(v)]
        mean = math.fsum(numbers) / len(numbers) if numbers else math.nan
        return CheckResult(
            f"mean({self.field})",
            mean,
            _interval(self.min, self.max),
            _within(mean, self.min, self.max),
        )


@final
@dataclass(frozen=True, slots=True)
class References:
    """Referential check: the share of non-null ``field`` values not in ``known``.

    At most ``max_missing_rate`` of them (default none) may be unknown, e.g.
    customer ids that are not in the customer table loaded at start.
    """

    field: str
    known: frozenset[Hashable]
    max_missing_rate: float = 0.0

    def evaluate(self, window: GateWindow) -> CheckResult:
        present = _present(window.items, self.field)
        missing = 0
        for value in present:
            try:
                missing += value not in self.known
            except TypeError:
                missing += 1
        rate = missing / len(present) if present else 0.0
        return CheckResult(
            f"references({self.field})",
            rate,
            _interval(0, self.max_missing_rate),
            _within(rate, None, self.max_missing_rate),
        )


@final
@dataclass(frozen=True, slots=True)
class WindowResult:
    """The checks of one window and what the gate did with it."""

    step_id: str
    index: int
    records: int
    records_in: int | None
    results: tuple[CheckResult, ...]
    action: Literal["passed", "halted", "quarantined", "released"]

    @property
    def failed(self) -> tuple[CheckResult, ...]:
        """The breached checks."""
        return tuple(r for r in self.results if not r.passed)


@final
@dataclass(frozen=True, slots=True)
class GateStatistics:
    """Counters of a :class:`QualityGate`; ``last`` is the latest window's result.

    ``windows_released`` counts breached windows an operator let through
    (``riprap gate release``); they also count as failed.
    """

    windows: int
    windows_passed: int
    windows_failed: int
    checks_passed: int
    checks_failed: int
    records_passed: int
    records_quarantined: int
    last: WindowResult | None
    windows_released: int = 0


class QualityGateError(EngineError):
    """A quality gate in ``halt`` mode found a breached check; the run stops.

    No record of the window has reached the sink and none of them is done, so
    the checkpoint stays before them and a restart checks them again.

    Attributes:
        step_id: The gate.
        window: The window's index within the run.
        check: The first breached check; ``measured`` and ``bound`` are its.
        results: Every check of the window.
    """

    def __init__(self, result: WindowResult, *, since_restart: bool = False) -> None:
        failed = result.failed
        first = failed[0]
        self.step_id = result.step_id
        self.window = result.index
        self.check = first.check
        self.measured = first.measured
        self.bound = first.bound
        self.results = result.results
        more = f" (and {len(failed) - 1} more: {', '.join(f.check for f in failed[1:])})"
        super().__init__(
            f"quality gate {self.step_id!r} halted the run: window {self.window} "
            f"({result.records} records) breached check {first.check}: measured "
            f"{first.measured:.6g}, bound {first.bound}"
            + (more if len(failed) > 1 else "")
            + (_STILL_HALTED.format(step=self.step_id, window=self.window) if since_restart else "")
        )


_STILL_HALTED = (
    "; the gate halted a previous run and stays halted: fix the cause and reset the"
    " stage's state, or let the window through with"
    " `riprap gate release STORE {step} --window {window}`"
)
_STATE_VERSION = 1
"""Version of the gate's snapshot format."""
_Action = Literal["passed", "halted", "quarantined", "released"]


@final
class QualityGate:
    """Holds each window of records until its checks pass, then lets it through.

    A window is ``window`` consecutive records as they reach the gate (a batch
    is split at a window's end). The gate keeps the window's batches, and with
    them their acks, until the window is complete (or the input ends), runs
    every check, and then:

    * all checks pass: emits the batches unchanged;
    * ``on_breach="halt"``: raises :class:`QualityGateError` naming the check,
      the measured value and the bound; nothing of the window has been emitted;
    * ``on_breach="quarantine"``: dead-letters every record of the window with
      reason ``quality_gate`` (the run goes on; mind the pipeline's
      ``dlq_guard``, which by default stops a run after 100 letters in a row).

    Restarts: where windows start (per partition, as source offsets), the next
    window number, the verdicts on closed windows whose records are not yet
    done and a halt are saved in the checkpoint. A restart replays the records
    of the open window and gives replayed records of closed windows their
    verdict again, so windows are the same with or without a restart; a halted
    gate halts again on every start until ``riprap gate release`` lets the
    window through (action ``"released"``, counted in the run report as
    ``quality_gate_released``) or the stage's state is reset. A graceful stop
    leaves a partial window open for the next run; only the end of the input
    checks it as it is.

    A held window keeps its records in flight, so ``window`` plus the
    pipeline's ``batch_size`` must stay below ``max_in_flight`` (counted in
    source records: a filter upstream that drops most records multiplies the
    source records a window holds). A run whose open window holds every record
    in flight, so that the source can read no more, stops with
    :class:`~riprap.StalledError` naming the gate. Windows close by count only:
    on a quiet stream, up to ``window - 1`` records wait for more input or the
    end of the run.

    Args:
        step_id: The step's name.
        window: Records per window.
        checks: The :class:`Check` objects run on every window.
        on_breach: ``"halt"`` or ``"quarantine"``.
        on_window: Called with each :class:`WindowResult` (events), before the
            gate acts on it.

    Raises:
        ConfigError: An invalid window, check or ``on_breach``.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        step_id: str,
        *,
        window: int,
        checks: Sequence[Check],
        on_breach: Literal["halt", "quarantine"],
        on_window: Callable[[WindowResult], None] | None = None,
    ) -> None:
        where = f"QualityGate({step_id!r})"
        if not isinstance(window, int) or isinstance(window, bool) or window < 1:
            raise ConfigError(f"{where}.window", f"must be a positive integer, got {window!r}")
        if not checks or not all(isinstance(c, Check) for c in checks):
            raise ConfigError(f"{where}.checks", f"give one or more Check objects, got {checks!r}")
        if on_breach not in ("halt", "quarantine"):
            raise ConfigError(
                f"{where}.on_breach", f"must be 'halt' or 'quarantine', got {on_breach!r}"
            )
        self.step_id = step_id
        self.window = window
        self.checks = tuple(checks)
        self.on_breach = on_breach
        self.on_window = on_window
        self._context: StageContext | None = None
        self._held: list[Batch] = []
        self._count = 0
        self._records_in: int | None = 0
        self._last_offsets: dict[str, int] = {}
        self._boundary: dict[str, int] = {}
        self._ranges: dict[str, list[int]] = {}
        self._decisions = Decisions()
        self._released: set[int] = set()
        self._halted: WindowResult | None = None
        self._index = 0
        self._stats = dict.fromkeys(
            ("windows_passed", "windows_failed", "checks_passed", "checks_failed"), 0
        )
        self._records_passed = 0
        self._quarantined = 0
        self._windows_released = 0
        self._last: WindowResult | None = None

    async def open(self, context: StageContext) -> None:
        """Keep the context and check the window against the in-flight bound when known.

        Raises:
            ConfigError: The window cannot fit in the pipeline's ``max_in_flight``.
        """
        self._context = context
        # StageContext does not carry the pipeline's options yet; use them when it does.
        limit: object = context.max_in_flight
        batch_size: object = context.batch_size
        if not isinstance(limit, int) or not isinstance(batch_size, int):
            return
        if self.window + batch_size - 1 > limit:
            raise ConfigError(
                f"QualityGate({self.step_id!r}).window",
                f"a window of {self.window} records plus a batch of {batch_size} "
                f"exceeds max_in_flight ({limit}); the pipeline would wait forever",
            )

    async def process(self, batch: Batch, emit: Emit) -> None:
        """Add the batch to the window; check and release every window it completes.

        Raises:
            QualityGateError: A window breached a check in ``halt`` mode, or
                the gate was halted when the run started.
        """
        if self._halted is not None:
            raise QualityGateError(self._halted, since_restart=True)
        if self._decisions:
            remaining = await self._replayed(batch, emit)
            if remaining is None:
                return
            batch = remaining
        for part in self._split(batch):
            self._hold(part)
            if self._count >= self.window:
                await self._close(emit)

    async def finish(self, emit: Emit) -> None:
        """At the end of the input, check and release the last, partial window.

        After a graceful stop the partial window stays open: its records are
        not done, so the next run replays them into the same window.
        """
        context = self._context
        if self._held and (context is None or context.source_exhausted()):
            await self._close(emit)

    def snapshot(self) -> dict[str, Any]:
        """Window starts, the next window number, live verdicts and a halt, as JSON data.

        The open window's records are not done, so a restart replays them:
        they are not part of the state.
        """
        halted = self._halted
        return {
            "version": _STATE_VERSION,
            "index": self._index,
            "boundary": dict(self._boundary),
            "decided": self._decisions.to_json(),
            "released": sorted(self._released),
            "halted": None if halted is None else _result_to_json(halted),
        }

    def restore(self, state: Any) -> None:
        """Load a snapshot (``None``, from a gate that kept no state, is a fresh start).

        Raises:
            ValueError: The snapshot has an unknown format version.
        """
        if state is None:
            return
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"gate {self.step_id!r}: unknown state {state.get('version')!r}")
        self._index = int(state["index"])
        self._boundary = {p: int(o) for p, o in state["boundary"].items()}
        self._last_offsets = dict(self._boundary)
        self._decisions = Decisions.from_json(state["decided"])
        self._released = {int(w) for w in state["released"]}
        halted = state["halted"]
        self._halted = None
        if halted is not None and int(halted["index"]) not in self._released:
            self._halted = _result_from_json(self.step_id, halted)

    @staticmethod
    def release(state: Any, window: int) -> Any:
        """``state`` (a gate's snapshot) with ``window`` let through on the next run.

        A breached window that is released passes once, with action
        ``"released"``; what the operator did is recorded where this is called
        from (``riprap gate release`` leaves a note in the checkpoint).

        Raises:
            ValueError: ``state`` is not a gate's state, or ``window`` is
                already closed (it can no longer be released).
        """
        if not isinstance(state, dict) or state.get("version") != _STATE_VERSION:
            raise ValueError("not the state of a quality gate (or of an unknown version)")
        if window < int(state["index"]):
            raise ValueError(
                f"window {window} is already closed (the gate is at window {state['index']})"
            )
        return {**state, "released": sorted({*state["released"], window})}

    def statistics(self) -> GateStatistics:
        """Windows and checks passed and failed so far."""
        s = self._stats
        return GateStatistics(
            windows=s["windows_passed"] + s["windows_failed"],
            windows_passed=s["windows_passed"],
            windows_failed=s["windows_failed"],
            checks_passed=s["checks_passed"],
            checks_failed=s["checks_failed"],
            records_passed=self._records_passed,
            records_quarantined=self._quarantined,
            last=self._last,
            windows_released=self._windows_released,
        )

    # -- replayed records of closed windows ---------------------------------------

    async def _replayed(self, batch: Batch, emit: Emit) -> Batch | None:
        """Give replayed records of closed windows their verdict; the rest, if any, is new."""
        if self._all_new(batch):
            return batch
        groups: dict[int, tuple[Decision, list[int]]] = {}
        new: list[int] = []
        past: set[str] = set()
        for i, where in enumerate(batch.sources()):
            decision = None
            if where is not None:
                partition, offset = where[0].partition, where[0].offset_of(where[1])
                if offset > self._boundary.get(partition, offset - 1):
                    past.add(partition)
                else:
                    decision = self._decisions.find(partition, offset)
            if decision is None:
                new.append(i)
            else:
                groups.setdefault(decision.index, (decision, []))[1].append(i)
        if groups:
            # Retain before anything is emitted: an emitted part may complete the ack.
            batch.ack.retain(len(groups) - (0 if new else 1))
            for decision, indexes in groups.values():
                await self._apply(decision, subset(batch, indexes), emit)
        for partition in past:  # only now: a decision must outlive its replays' tracking
            self._decisions.beyond(partition)
        if not groups:
            return batch
        return subset(batch, new) if new else None

    def _all_new(self, batch: Batch) -> bool:
        """Whether every item is past the closed windows (the cheap check for one partition)."""
        if not batch.items or not self._one_partition(batch):
            return not batch.items
        first = batch.locate(0)
        if first is None:
            return True
        partition = first[0].partition
        boundary = self._boundary.get(partition)
        if boundary is not None and first[0].offset_of(first[1]) <= boundary:
            return False
        self._decisions.beyond(partition)
        return True

    async def _apply(self, decision: Decision, part: Batch, emit: Emit) -> None:
        """Pass or dead-letter replayed records again, as their window's verdict says."""
        tracked = self._decisions.track(decision, part)
        if decision.action == "quarantined":
            message = f"quality gate {self.step_id!r} quarantined window {decision.index}"
            self._dead_letter_all(tracked, message)
            return
        await emit(tracked)

    # -- windows ------------------------------------------------------------------

    def _split(self, batch: Batch) -> list[Batch]:
        """The batch cut at window ends; the ack is retained once per extra part up front."""
        room = self.window - self._count
        items = batch.items
        if len(items) <= room:
            return [batch]
        bounds = [*range(room, len(items), self.window), len(items)]
        # Retain before anything is emitted: an emitted part may complete the ack.
        batch.ack.retain(len(bounds) - 1)
        parts = [Batch(items[:room], batch.ack, batch.origin)]
        for start, end in itertools.pairwise(bounds):
            # Item j of the part is item start + j of the batch: "start drops before it".
            parts.append(Batch(items[start:end], batch.ack, DropsOrigin(batch.origin, [0] * start)))
        return parts

    def _hold(self, part: Batch) -> None:
        self._held.append(part)
        if self._context is not None:
            self._context.park(part)  # an open window waits for more input
        self._count += len(part.items)
        if self._records_in is not None:
            span = self._source_span(part)
            self._records_in = None if span is None else self._records_in + span

    def _source_span(self, part: Batch) -> int | None:
        """Source records the part covers since the previous part of the same partition."""
        ends: dict[str, tuple[int, int, int]] = {}
        indexes = (0, len(part.items) - 1)
        for index in indexes if self._one_partition(part) else range(len(part.items)):
            where = part.locate(index)
            if where is None:
                return None
            source, i = where
            offset = source.offset_of(i)
            low, first, high = ends.get(source.partition, (source.offset_of(0) - 1, offset, offset))
            ends[source.partition] = (low, min(first, offset), max(high, offset))
        span = 0
        for partition, (first_low, first, high) in ends.items():
            low = self._last_offsets.get(partition, first_low)
            bounds = self._ranges.setdefault(partition, [first, high])
            bounds[1] = max(bounds[1], high)
            if high > low:
                span += high - low
                self._last_offsets[partition] = high
        return span

    @staticmethod
    def _one_partition(part: Batch) -> bool:
        first, last = part.locate(0), part.locate(len(part.items) - 1)
        return first is None or last is None or first[0].partition == last[0].partition

    async def _close(self, emit: Emit) -> None:
        held, records_in, ranges = self._held, self._records_in, self._ranges
        self._held, self._count, self._records_in, self._ranges = [], 0, 0, {}
        if self._context is not None:
            for part in held:
                self._context.unpark(part)
        items = [item for part in held for item in part.items]
        window = GateWindow(self._index, items, records_in)
        results = tuple(check.evaluate(window) for check in self.checks)
        failed = sum(not r.passed for r in results)
        action = self._action(window.index, failed)
        result = WindowResult(self.step_id, window.index, len(items), records_in, results, action)
        self._count_result(result, failed)
        if self.on_window is not None:
            self.on_window(result)
        if action == "halted":
            self._halted = result  # saved by the final checkpoint: the next start halts too
            self._last_offsets = dict(self._boundary)
            raise QualityGateError(result)
        # Decided, before anything is emitted: a checkpoint taken meanwhile already has it.
        decision = Decision(window.index, action, ranges)
        self._decisions.add(decision)
        self._boundary.update((p, bounds[1]) for p, bounds in ranges.items())
        self._index += 1
        if action == "quarantined":
            self._quarantine(held, result, decision)
            return
        if action == "released":
            self._count_release(result)
        self._records_passed += len(items)
        for part in held:
            await emit(self._decisions.track(decision, part))

    def _action(
        self, index: int, failed: int
    ) -> Literal["passed", "halted", "quarantined", "released"]:
        if not failed:
            return "passed"
        if index in self._released:
            self._released.discard(index)
            return "released"
        return "halted" if self.on_breach == "halt" else "quarantined"

    def _count_result(self, result: WindowResult, failed: int) -> None:
        s = self._stats
        s["windows_failed" if failed else "windows_passed"] += 1
        s["checks_failed"] += failed
        s["checks_passed"] += len(result.results) - failed
        self._last = result

    def _count_release(self, result: WindowResult) -> None:
        """A breached window let through by an operator: logged and in the run report."""
        self._windows_released += 1
        _log.warning(
            "quality gate %r: window %d breached (%s) and was let through: released by an operator",
            self.step_id,
            result.index,
            "; ".join(map(str, result.failed)),
        )
        if self._context is not None:
            self._context.count("quality_gate_released", result.records)

    def _quarantine(self, held: list[Batch], result: WindowResult, decision: Decision) -> None:
        failed = "; ".join(map(str, result.failed))
        message = f"quality gate {self.step_id!r} quarantined window {result.index}: {failed}"
        for part in held:
            self._dead_letter_all(self._decisions.track(decision, part), message)
            self._quarantined += len(part.items)

    def _dead_letter_all(self, part: Batch, message: str) -> None:
        context = self._context
        if context is None:
            raise RuntimeError(f"stage {self.step_id!r} was not opened")
        for index in range(len(part.items)):
            error = DataError(message, reason="quality_gate")
            context.dead_letter(part, index, error, "quality_gate")
        part.ack.release()  # each record is now held by its dead-letter write


def _result_to_json(result: WindowResult) -> dict[str, Any]:
    return {
        "index": result.index,
        "records": result.records,
        "records_in": result.records_in,
        # NaN is not JSON: an unmeasurable check is saved as null.
        "results": [
            [r.check, None if math.isnan(r.measured) else r.measured, r.bound, r.passed]
            for r in result.results
        ],
    }


def _result_from_json(step_id: str, data: dict[str, Any]) -> WindowResult:
    results = tuple(
        CheckResult(
            str(check), math.nan if measured is None else float(measured), str(bound), bool(passed)
        )
        for check, measured, bound, passed in data["results"]
    )
    records_in = data["records_in"]
    return WindowResult(
        step_id,
        int(data["index"]),
        int(data["records"]),
        None if records_in is None else int(records_in),
        results,
        "halted",
    )
