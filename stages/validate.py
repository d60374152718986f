"""Validation: per-record expectations and per-window quality gates.

Two stages, both pure (no I/O of their own):

* :class:`Validate` checks every record against :class:`Expect` rules
  (required fields, types, numeric ranges, patterns, allowed values, or a
  dataclass / ``TypedDict`` schema). A failing record is dead-lettered with
  reason ``validation`` and a message naming each failed field and rule; the
  others go on. A :class:`Validate` is also a plain function for ``.map``: it
  returns the value or raises :class:`ValidationError`.
* :class:`QualityGate` holds a window of records, measures it with checks
  (:class:`RowCount`, :class:`NullRate`, :class:`DistinctCount`,
  :class:`Mean`, :class:`References`, or your own :class:`Check`) and only
  then lets it through. A breached check either halts the run with
  :class:`QualityGateError` before any record of the window reaches the sink,
  or quarantines the window to the dead-letter queue (reason ``quality_gate``).

Field access works on mappings (``value[field]``) and on objects
(``getattr``). A field that is absent or ``None`` is *missing*: only
``Expect.required`` fails on it; every other rule skips it.

.. versionadded:: 0.1
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
import types
import typing
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, final, runtime_checkable

from riprap import ConfigError, DataError, EngineError
from riprap._records import Batch, DropsOrigin

if TYPE_CHECKING:
    from riprap import StageContext
    from riprap._protocols import Emit

__all__ = (
    "Check",
    "CheckResult",
    "DistinctCount",
    "Expect",
    "Failure",
    "GateStatistics",
    "GateWindow",
    "InRange",
    "InstanceOf",
    "Matches",
    "Mean",
    "NullRate",
    "OneOf",
    "Predicate",
    "QualityGate",
    "QualityGateError",
    "References",
    "Required",
    "RowCount",
    "Rule",
    "Schema",
    "Validate",
    "ValidateStatistics",
    "ValidationError",
    "WindowResult",
)

_MISSING: Any = object()


def _get(value: Any, name: str) -> Any:
    """``value[name]`` for mappings, ``value.name`` otherwise; ``_MISSING`` when absent."""
    if isinstance(value, dict):
        return value.get(name, _MISSING)
    if isinstance(value, Mapping):
        return value.get(name, _MISSING)
    return getattr(value, name, _MISSING)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_field(option: str, name: object) -> str:
    if not isinstance(name, str) or not name:
        raise ConfigError(option, f"a field name must be a non-empty string, got {name!r}")
    return name


# -- per-record rules ----------------------------------------------------------


@final
@dataclass(frozen=True, slots=True)
class Failure:
    """One failed rule: the field and the rule, never the value (values are not logged)."""

    field: str
    rule: str
    detail: str = ""

    def __str__(self) -> str:
        tail = f" ({self.detail})" if self.detail else ""
        return f"field {self.field!r} failed rule {self.rule}{tail}"


@runtime_checkable
class Rule(Protocol):
    """A per-record expectation: ``check`` returns ``None`` or the :class:`Failure`."""

    def check(self, value: Any) -> Failure | None: ...


@final
@dataclass(frozen=True, slots=True)
class Required:
    """Every field in ``fields`` is present and not ``None``."""

    fields: tuple[str, ...]

    def check(self, value: Any) -> Failure | None:
        for name in self.fields:
            found = _get(value, name)
            if found is _MISSING or found is None:
                return Failure(name, "required", "missing" if found is _MISSING else "None")
        return None


@final
@dataclass(frozen=True, slots=True)
class InstanceOf:
    """The field is an instance of one of ``types`` (``bool`` never passes for numbers)."""

    field: str
    types: tuple[type, ...]

    @property
    def rule(self) -> str:
        return f"instance_of({' | '.join(t.__name__ for t in self.types)})"

    def check(self, value: Any) -> Failure | None:
        found = _get(value, self.field)
        if found is _MISSING or found is None or _instance_of(found, self.types):
            return None
        return Failure(self.field, self.rule, f"got {type(found).__name__}")


def _instance_of(found: Any, kinds: tuple[type, ...]) -> bool:
    if isinstance(found, bool) and bool not in kinds:
        return False
    return isinstance(found, kinds)


@final
@dataclass(frozen=True, slots=True)
class InRange:
    """The field is a number within ``[min, max]`` (either bound may be ``None``)."""

    field: str
    min: float | None = None
    max: float | None = None

    @property
    def rule(self) -> str:
        return f"in_range(min={self.min!r}, max={self.max!r})"

    def check(self, value: Any) -> Failure | None:
        found = _get(value, self.field)
        if found is _MISSING or found is None:
            return None
        if not _is_number(found) or math.isnan(found):
            return Failure(self.field, self.rule, f"not a number: {type(found).__name__}")
        if self.min is not None and found < self.min:
            return Failure(self.field, self.rule, "below min")
        if self.max is not None and found > self.max:
            return Failure(self.field, self.rule, "above max")
        return None


@final
@dataclass(frozen=True, slots=True)
class Matches:
    """The field is a string that matches ``pattern`` as a whole (``re.fullmatch``)."""

    field: str
    pattern: re.Pattern[str]

    @property
    def rule(self) -> str:
        return f"matches({self.pattern.pattern!r})"

    def check(self, value: Any) -> Failure | None:
        found = _get(value, self.field)
        if found is _MISSING or found is None:
            return None
        if not isinstance(found, str):
            return Failure(self.field, self.rule, f"not a string: {type(found).__name__}")
        return None if self.pattern.fullmatch(found) else Failure(self.field, self.rule)


@final
@dataclass(frozen=True, slots=True)
class OneOf:
    """The field's value is one of ``allowed``."""

    field: str
    allowed: frozenset[Hashable]

    @property
    def rule(self) -> str:
        shown = sorted(map(repr, self.allowed))
        more = f", ... {len(shown) - 5} more" if len(shown) > 5 else ""
        return f"one_of({', '.join(shown[:5])}{more})"

    def check(self, value: Any) -> Failure | None:
        found = _get(value, self.field)
        if found is _MISSING or found is None:
            return None
        try:
            ok = found in self.allowed
        except TypeError:  # unhashable
            ok = False
        return None if ok else Failure(self.field, self.rule, "not an allowed value")


@final
@dataclass(frozen=True, slots=True)
class Predicate:
    """``predicate(field value)`` is truthy; ``name`` labels the rule in messages."""

    field: str
    predicate: Callable[[Any], object]
    name: str

    def check(self, value: Any) -> Failure | None:
        found = _get(value, self.field)
        if found is _MISSING or found is None or self.predicate(found):
            return None
        return Failure(self.field, f"that({self.name})")


@final
@dataclass(frozen=True, slots=True)
class Schema:
    """The fields of a dataclass or ``TypedDict``: required ones present, each of its type.

    Types are checked shallowly: ``X | None``, ``Optional``, ``Literal``,
    ``Any`` and the outer class of a generic (``list[int]`` checks ``list``);
    ``float`` accepts ``int``. A nested dataclass or ``TypedDict`` field must be
    a mapping or an instance of the class.
    """

    name: str
    required: tuple[str, ...]
    fields: tuple[tuple[str, Any], ...]

    @classmethod
    def of(cls, schema: type) -> Schema:
        """Build the rule from a dataclass or ``TypedDict`` class.

        Raises:
            ConfigError: ``schema`` is neither, or its annotations cannot be resolved.
        """
        try:
            hints = typing.get_type_hints(schema)
        except Exception as error:
            raise ConfigError(
                "schema", f"cannot resolve the annotations of {schema!r}: {error}"
            ) from None
        if dataclasses.is_dataclass(schema):
            required = tuple(
                f.name
                for f in dataclasses.fields(schema)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            )
            names = [f.name for f in dataclasses.fields(schema)]
        elif typing.is_typeddict(schema):
            required = tuple(sorted(getattr(schema, "__required_keys__", ())))
            names = list(hints)
        else:
            raise ConfigError("schema", f"expected a dataclass or TypedDict class, got {schema!r}")
        return cls(schema.__name__, required, tuple((n, hints[n]) for n in names))

    def check(self, value: Any) -> Failure | None:
        for name, hint in self.fields:
            found = _get(value, name)
            if found is _MISSING:
                if name in self.required:
                    return Failure(name, f"schema({self.name}): required", "missing")
                continue
            if not _matches_hint(found, hint):
                rule = f"schema({self.name}): type {_hint_name(hint)}"
                return Failure(name, rule, f"got {type(found).__name__}")
        return None


def _matches_hint(found: Any, hint: Any) -> bool:
    """Whether ``found`` fits the annotation ``hint`` (shallow)."""
    if hint is Any or hint is object:
        return True
    if hint is None or hint is type(None):
        return found is None
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        return any(_matches_hint(found, arg) for arg in typing.get_args(hint))
    if origin is Literal:
        return found in typing.get_args(hint)
    if origin is typing.Annotated:
        return _matches_hint(found, typing.get_args(hint)[0])
    if origin is not None:
        return isinstance(origin, type) and isinstance(found, origin)
    if not isinstance(hint, type):
        return True  # a TypeVar, NewType or forward construct: not checked
    if dataclasses.is_dataclass(hint) or typing.is_typeddict(hint):
        return isinstance(found, Mapping) or (
            not typing.is_typeddict(hint) and isinstance(found, hint)
        )
    if hint is float:
        return _is_number(found)
    return _instance_of(found, (hint,))


def _hint_name(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else repr(hint).replace("typing.", "")


@final
class Expect:
    """Factories of per-record rules for :class:`Validate`.

    Example::

        Validate(
            "check_order",
            Expect.required("id", "amount"),
            Expect.instance_of("amount", int, float),
            Expect.in_range("amount", min=0),
            Expect.matches("email", r"[^@\\s]+@[^@\\s]+"),
            Expect.one_of("currency", {"EUR", "USD"}),
        )

    .. versionadded:: 0.1
    """

    __slots__ = ()

    @staticmethod
    def required(*fields: str) -> Required:
        """Each of ``fields`` is present and not ``None``."""
        if not fields:
            raise ConfigError("Expect.required", "name at least one field")
        return Required(tuple(_check_field("Expect.required", f) for f in fields))

    @staticmethod
    def instance_of(field: str, *kinds: type) -> InstanceOf:
        """``field`` is an instance of one of ``kinds`` when present."""
        if not kinds or not all(isinstance(k, type) for k in kinds):
            raise ConfigError("Expect.instance_of", f"expected one or more classes, got {kinds!r}")
        return InstanceOf(_check_field("Expect.instance_of", field), kinds)

    @staticmethod
    def in_range(field: str, *, min: float | None = None, max: float | None = None) -> InRange:
        """``field`` is a number in ``[min, max]`` when present."""
        if min is None and max is None:
            raise ConfigError("Expect.in_range", "give min, max or both")
        if min is not None and max is not None and min > max:
            raise ConfigError("Expect.in_range", f"min {min!r} is above max {max!r}")
        return InRange(_check_field("Expect.in_range", field), min, max)

    @staticmethod
    def matches(field: str, pattern: str | re.Pattern[str]) -> Matches:
        """``field`` is a string matching ``pattern`` as a whole when present."""
        try:
            compiled = re.compile(pattern)
        except re.error as error:
            raise ConfigError("Expect.matches", f"invalid pattern {pattern!r}: {error}") from None
        return Matches(_check_field("Expect.matches", field), compiled)

    @staticmethod
    def one_of(field: str, allowed: Iterable[Hashable]) -> OneOf:
        """``field`` holds one of ``allowed`` when present."""
        values = frozenset(allowed)
        if not values:
            raise ConfigError("Expect.one_of", "allowed values must not be empty")
        return OneOf(_check_field("Expect.one_of", field), values)

    @staticmethod
    def that(field: str, predicate: Callable[[Any], object], *, rule: str) -> Predicate:
        """``predicate(value of field)`` is truthy when present; ``rule`` names it."""
        if not callable(predicate):
            raise ConfigError("Expect.that", f"predicate must be callable, got {predicate!r}")
        return Predicate(_check_field("Expect.that", field), predicate, rule)

    @staticmethod
    def schema(schema: type) -> Schema:
        """The fields of a dataclass or ``TypedDict``; see :class:`Schema`."""
        return Schema.of(schema)


class ValidationError(DataError):
    """A record broke one or more rules; dead-lettered with reason ``validation``.

    Attributes:
        failures: Every failed rule, in rule order.
        field: The first failure's field.
        rule: The first failure's rule.
    """

    reason = "validation"

    def __init__(self, failures: Sequence[Failure]) -> None:
        if not failures:
            raise ValueError("ValidationError needs at least one failure")
        self.failures = tuple(failures)
        self.field = failures[0].field
        self.rule = failures[0].rule
        super().__init__("; ".join(map(str, failures)))


@final
@dataclass(frozen=True, slots=True)
class ValidateStatistics:
    """Counters of a :class:`Validate` stage; ``failures`` counts ``"field: rule"``."""

    records_in: int
    passed: int
    failed: int
    failures: Mapping[str, int]


@final
class Validate:
    """Checks each record against rules; failing records are dead-lettered.

    As a stage (``pipeline.stage(Validate(...))``) a failing record goes to the
    dead-letter queue with reason ``validation`` and the rest of the batch goes
    on. As a function (``pipeline.map("check", Validate(...))``) it returns the
    value or raises :class:`ValidationError`, which the step dead-letters.

    Args:
        step_id: The step's name.
        *rules: :class:`Rule` objects, usually from :class:`Expect`.

    Raises:
        ConfigError: No rule, or an argument that is not a rule.

    .. versionadded:: 0.1
    """

    __slots__ = ("_context", "_failed", "_failures", "_records_in", "rules", "step_id")

    def __init__(self, step_id: str, *rules: Rule) -> None:
        if not rules:
            raise ConfigError(f"Validate({step_id!r}).rules", "give at least one rule")
        for rule in rules:
            if not isinstance(rule, Rule):
                raise ConfigError(f"Validate({step_id!r}).rules", f"{rule!r} is not a Rule")
        self.step_id = step_id
        self.rules = rules
        self._context: StageContext | None = None
        self._records_in = 0
        self._failed = 0
        self._failures: dict[str, int] = {}

    def failures(self, value: Any) -> list[Failure]:
        """Every rule ``value`` breaks (empty when it is valid); counts nothing."""
        return [f for f in (rule.check(value) for rule in self.rules) if f is not None]

    def _checked(self, value: Any) -> list[Failure]:
        """:meth:`failures`, counted in :meth:`statistics`."""
        self._records_in += 1
        found = self.failures(value)
        if found:
            self._failed += 1
            for failure in found:
                label = f"{failure.field}: {failure.rule}"
                self._failures[label] = self._failures.get(label, 0) + 1
        return found

    def __call__(self, value: Any) -> Any:
        """Return ``value`` unchanged when it is valid.

        Raises:
            ValidationError: ``value`` breaks a rule.
        """
        found = self._checked(value)
        if found:
            raise ValidationError(found)
        return value

    async def open(self, context: StageContext) -> None:
        """Keep the context: its ``dead_letter`` takes the failing records."""
        self._context = context

    async def process(self, batch: Batch, emit: Emit) -> None:
        """Emit the valid records; dead-letter the others (reason ``validation``)."""
        context = self._context
        if context is None:
            raise RuntimeError(f"stage {self.step_id!r} was not opened")
        kept: list[Any] = []
        drops: list[int] = []
        for index, value in enumerate(batch.items):
            found = self._checked(value)
            if not found:
                kept.append(value)
                continue
            drops.append(len(kept))
            context.dead_letter(batch, index, ValidationError(found), "validation")
        if not drops:
            await emit(batch)
        elif kept:
            await emit(Batch(kept, batch.ack, DropsOrigin(batch.origin, drops)))
        else:
            batch.ack.release()  # every record is held by its dead-letter write

    async def finish(self, emit: Emit) -> None:
        """Nothing is held."""

    def snapshot(self) -> None:
        """Validation keeps no state."""
        return None

    def restore(self, state: Any) -> None:
        """Validation keeps no state."""

    def statistics(self) -> ValidateStatistics:
        """Records checked, passed and failed, and failures by field and rule."""
        return ValidateStatistics(
            records_in=self._records_in,
            passed=self._records_in - self._failed,
            failed=self._failed,
            failures=dict(self._failures),
        )


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
    action: Literal["passed", "halted", "quarantined"]

    @property
    def failed(self) -> tuple[CheckResult, ...]:
        """The breached checks."""
        return tuple(r for r in self.results if not r.passed)


@final
@dataclass(frozen=True, slots=True)
class GateStatistics:
    """Counters of a :class:`QualityGate`; ``last`` is the latest window's result."""

    windows: int
    windows_passed: int
    windows_failed: int
    checks_passed: int
    checks_failed: int
    records_passed: int
    records_quarantined: int
    last: WindowResult | None


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

    def __init__(self, result: WindowResult) -> None:
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
            f"{first.measured:.6g}, bound {first.bound}" + (more if len(failed) > 1 else "")
        )


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

    A held window keeps its records in flight, so ``window`` plus the
    pipeline's ``batch_size`` must stay below ``max_in_flight`` (counted in
    source records: a filter upstream that drops most records multiplies the
    source records a window holds); otherwise the source waits for room that
    never comes. Windows close by count only: on a quiet stream, up to
    ``window - 1`` records wait for more input or the end of the run.

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
        self._index = 0
        self._stats = dict.fromkeys(
            ("windows_passed", "windows_failed", "checks_passed", "checks_failed"), 0
        )
        self._records_passed = 0
        self._quarantined = 0
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
        """Add the batch to the window; check and release every window it completes."""
        parts = self._split(batch)
        for part in parts:
            self._hold(part)
            if self._count >= self.window:
                await self._close(emit)

    async def finish(self, emit: Emit) -> None:
        """Check and release the last, partial window."""
        if self._held:
            await self._close(emit)

    def snapshot(self) -> None:
        """Held records are not done, so a restart replays them: no state to save."""
        return None

    def restore(self, state: Any) -> None:
        """Nothing to restore (see :meth:`snapshot`)."""

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
        )

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
        self._count += len(part.items)
        if self._records_in is not None:
            span = self._source_span(part)
            self._records_in = None if span is None else self._records_in + span

    def _source_span(self, part: Batch) -> int | None:
        """Source records the part covers since the previous part of the same partition."""
        ends: dict[str, tuple[int, int]] = {}
        indexes = (0, len(part.items) - 1)
        for index in indexes if self._one_partition(part) else range(len(part.items)):
            where = part.locate(index)
            if where is None:
                return None
            source, i = where
            offset = source.offset_of(i)
            low, high = ends.get(source.partition, (source.offset_of(0) - 1, offset))
            ends[source.partition] = (low, max(high, offset))
        span = 0
        for partition, (first_low, high) in ends.items():
            low = self._last_offsets.get(partition, first_low)
            if high > low:
                span += high - low
                self._last_offsets[partition] = high
        return span

    @staticmethod
    def _one_partition(part: Batch) -> bool:
        first, last = part.locate(0), part.locate(len(part.items) - 1)
        return first is None or last is None or first[0].partition == last[0].partition

    async def _close(self, emit: Emit) -> None:
        held, records_in = self._held, self._records_in
        self._held, self._count, self._records_in = [], 0, 0
        items = [item for part in held for item in part.items]
        window = GateWindow(self._index, items, records_in)
        self._index += 1
        results = tuple(check.evaluate(window) for check in self.checks)
        failed = sum(not r.passed for r in results)
        action: Literal["passed", "halted", "quarantined"] = "passed"
        if failed:
            action = "halted" if self.on_breach == "halt" else "quarantined"
        result = WindowResult(self.step_id, window.index, len(items), records_in, results, action)
        self._count_result(result, failed)
        if self.on_window is not None:
            self.on_window(result)
        if action == "halted":
            raise QualityGateError(result)
        if action == "quarantined":
            self._quarantine(held, result)
            return
        self._records_passed += len(items)
        for part in held:
            await emit(part)

    def _count_result(self, result: WindowResult, failed: int) -> None:
        s = self._stats
        s["windows_failed" if failed else "windows_passed"] += 1
        s["checks_failed"] += failed
        s["checks_passed"] += len(result.results) - failed
        self._last = result

    def _quarantine(self, held: list[Batch], result: WindowResult) -> None:
        context = self._context
        if context is None:
            raise RuntimeError(f"stage {self.step_id!r} was not opened")
        failed = "; ".join(map(str, result.failed))
        message = f"quality gate {self.step_id!r} quarantined window {result.index}: {failed}"
        for part in held:
            for index in range(len(part.items)):
                error = DataError(message, reason="quality_gate")
                context.dead_letter(part, index, error, "quality_gate")
            self._quarantined += len(part.items)
            part.ack.release()  # each record is now held by its dead-letter write
