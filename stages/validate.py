"""Validation: per-record expectations (quality gates per window live in ``quality``).

* :class:`Validate` checks every record against :class:`Expect` rules
  (required fields, types, numeric ranges, patterns, allowed values, or a
  dataclass / ``TypedDict`` schema). A failing record is dead-lettered with
  reason ``validation`` and a message naming each failed field and rule; the
  others go on. A :class:`Validate` is also a plain function for ``.map``: it
  returns the value or raises :class:`ValidationError`.

Field access works on mappings (``value[field]``) and on objects
(``getattr``). A field that is absent or ``None`` is *missing*: only
``Expect.required`` fails on it; every other rule skips it.

.. versionadded:: 0.1
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, final, runtime_checkable

from riprap import Batch, ConfigError, DataError
from riprap.lowlevel import DropsOrigin

if TYPE_CHECKING:
    from riprap import StageContext
    from riprap.lowlevel import Emit

__all__ = (
    "Expect",
    "Failure",
    "InRange",
    "InstanceOf",
    "Matches",
    "OneOf",
    "Predicate",
    "Required",
    "Rule",
    "Schema",
    "Validate",
    "ValidateStatistics",
    "ValidationError",
)

from ._fields import MISSING as _MISSING
from ._fields import check_field as _check_field
from ._fields import get as _get
from ._fields import is_number as _is_number

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
    on; with ``rejects=`` it goes to that side output instead (its value as it
    came), which the pipeline wires to a sink with ``Pipeline.side_output``.
    As a function (``pipeline.map("check", Validate(...))``) it returns the
    value or raises :class:`ValidationError`, which the step dead-letters.

    Args:
        step_id: The step's name.
        *rules: :class:`Rule` objects, usually from :class:`Expect`.
        rejects: The side output failing records go to, instead of the
            dead-letter queue (as a stage only).

    Raises:
        ConfigError: No rule, or an argument that is not a rule.

    .. versionadded:: 0.1
    """

    __slots__ = (
        "_context",
        "_failed",
        "_failures",
        "_records_in",
        "_rejects",
        "rules",
        "side_outputs",
        "step_id",
    )

    def __init__(self, step_id: str, *rules: Rule, rejects: str | None = None) -> None:
        if not rules:
            raise ConfigError(f"Validate({step_id!r}).rules", "give at least one rule")
        for rule in rules:
            if not isinstance(rule, Rule):
                raise ConfigError(f"Validate({step_id!r}).rules", f"{rule!r} is not a Rule")
        self.step_id = step_id
        self.rules = rules
        self.side_outputs: tuple[str, ...] = () if rejects is None else (rejects,)
        """The side output of the failing records, when ``rejects`` names one."""
        self._rejects: Emit | None = None
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
            ConfigError: ``rejects`` is set: only the stage form has side outputs.
        """
        if self.side_outputs:
            raise ConfigError(
                f"Validate({self.step_id!r}).rejects",
                "sends failing records to a side output only as a stage: use .stage(...)",
            )
        found = self._checked(value)
        if found:
            raise ValidationError(found)
        return value

    async def open(self, context: StageContext) -> None:
        """Keep the context: its ``dead_letter`` or the ``rejects`` output takes failing records."""
        self._context = context
        if self.side_outputs:
            self._rejects = context.side_output(self.side_outputs[0])

    async def process(self, batch: Batch, emit: Emit) -> None:
        """Emit the valid records; dead-letter the others (reason ``validation``) or reject them."""
        context = self._context
        if context is None:
            raise RuntimeError(f"stage {self.step_id!r} was not opened")
        kept: list[Any] = []
        drops: list[int] = []
        failed: list[Any] = []
        passes: list[int] = []
        for index, value in enumerate(batch.items):
            found = self._checked(value)
            if not found:
                passes.append(len(failed))
                kept.append(value)
                continue
            drops.append(len(kept))
            if self._rejects is None:
                context.dead_letter(batch, index, ValidationError(found), "validation")
            else:
                failed.append(value)
        if failed:  # the rejects' share of the ack, taken before the valid records go on
            batch.ack.retain()
            rejected = Batch(failed, batch.ack, DropsOrigin(batch.origin, passes))
        if not drops:
            await emit(batch)
        elif kept:
            await emit(Batch(kept, batch.ack, DropsOrigin(batch.origin, drops)))
        else:
            batch.ack.release()  # every record is held by its dead-letter write or the rejects
        if failed:
            assert self._rejects is not None
            await self._rejects(rejected)

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
