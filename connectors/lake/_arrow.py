"""Records to Arrow tables: a schema declared or inferred, checked so nothing changes silently.

A record is a dict of column values. Values are converted by Arrow's own type
inference, then cast to the sink's schema with overflow and truncation checks;
a value of another kind than its column (a number for a string column, a float
for an integer column, a string for a number) is refused rather than converted.
What does not fit is a :class:`~riprap.DataError`, which the engine routes to
the dead-letter store one record at a time.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any, Literal, final

import pyarrow as pa

from riprap import ConfigError, DataError

if TYPE_CHECKING:
    from collections.abc import Callable

NewColumns = Literal["add", "refuse"]
"""What a record with a field the schema lacks does: add a nullable column, or fail."""

_ARROW_ERRORS = (
    pa.ArrowInvalid,
    pa.ArrowTypeError,
    pa.ArrowNotImplementedError,
    OverflowError,
    TypeError,  # a field name that is not a string
)


def _kind(type_: pa.DataType) -> str:
    """The family a type belongs to; a cast only goes within one (or int to float)."""
    checks: tuple[tuple[str, Callable[[pa.DataType], bool]], ...] = (
        ("null", pa.types.is_null),
        ("bool", pa.types.is_boolean),
        ("int", pa.types.is_integer),
        ("float", pa.types.is_floating),
        ("string", lambda t: pa.types.is_string(t) or pa.types.is_large_string(t)),
        ("binary", lambda t: pa.types.is_binary(t) or pa.types.is_large_binary(t)),
    )
    return next((kind for kind, check in checks if check(type_)), "other")


def _castable(source: pa.DataType, target: pa.DataType) -> bool:
    """Whether values inferred as ``source`` may be cast (checked) to ``target``.

    A cast stays within a kind (or goes from int to float); a struct may only
    gain fields (a cast to fewer fields would drop values), lists cast by their
    items, and other types (temporal, decimal) only to a type of the same kind.
    """
    if pa.types.is_null(source) or source == target:
        return True
    if pa.types.is_struct(source) or pa.types.is_struct(target):
        return _struct_castable(source, target)
    if _is_list(source) or _is_list(target):
        return (
            _is_list(source)
            and _is_list(target)
            and _castable(source.value_type, target.value_type)
        )
    have, want = _kind(source), _kind(target)
    if "other" in (have, want):
        kinds = (pa.types.is_temporal, pa.types.is_decimal)
        return any(check(source) and check(target) for check in kinds)
    return have == want or (have, want) == ("int", "float")


def _struct_castable(source: pa.DataType, target: pa.DataType) -> bool:
    if not (pa.types.is_struct(source) and pa.types.is_struct(target)):
        return False
    fields = {field.name: field.type for field in target}
    return all(
        field.name in fields and _castable(field.type, fields[field.name]) for field in source
    )


def _is_list(type_: pa.DataType) -> bool:
    return bool(pa.types.is_list(type_) or pa.types.is_large_list(type_))


def check_schema(option: str, schema: pa.Schema | None) -> pa.Schema | None:
    """A declared schema, checked.

    Raises:
        ConfigError: Not a ``pyarrow.Schema``, or a column name repeats.
    """
    if schema is None:
        return None
    if not isinstance(schema, pa.Schema):
        raise ConfigError(option, f"expected a pyarrow.Schema, got {type(schema).__name__}")
    if len(set(schema.names)) != len(schema.names):
        raise ConfigError(option, f"a column name repeats in {schema.names}")
    return schema


@final
class TableEncoder:
    """Turns lists of dict records into Arrow tables of one schema (which may grow).

    Args:
        schema: The declared schema (``None``: inferred from the first records).
        new_columns: ``"add"`` widens the schema by a nullable column for a new
            field (typed from its first values); ``"refuse"`` makes such a
            record a ``DataError``. A new field whose value is null is ignored.
    """

    def __init__(self, schema: pa.Schema | None, *, new_columns: NewColumns) -> None:
        self.schema = schema
        self.new_columns = new_columns

    def encode(self, items: list[Any], describe: Callable[[int], str]) -> pa.Table:
        """The items as a table of the schema; ``describe(i)`` names item ``i`` in errors.

        Raises:
            DataError: A record is not a dict, has a field the schema refuses,
                or a value that does not fit its column. The schema is unchanged.
        """
        if not all(issubclass(kind, dict) for kind in set(map(type, items))):
            index, item = next((i, x) for i, x in enumerate(items) if not isinstance(x, dict))
            problem = f"expected a dict, got {type(item).__name__}"
            raise DataError(f"cannot write {describe(index)}: {problem}", reason="schema")
        exact = self._exact(items)
        if exact is not None:
            return exact
        # Every record's fields count, not only the first record's (as from_pylist would).
        names = dict.fromkeys(itertools.chain.from_iterable(items))
        try:
            inferred = pa.Table.from_pydict(
                {name: list(map(dict.get, items, itertools.repeat(name))) for name in names}
            )
        except _ARROW_ERRORS:
            # Arrow's message quotes the value: it stays out of the error (I10).
            raise self._error(items, describe, "a column holds values of mixed types") from None
        schema = self._widened(inferred, items, describe)
        table = self._conformed(inferred, schema, items, describe)
        self.schema = schema
        return table

    def _exact(self, items: list[Any]) -> pa.Table | None:
        """The items as a table if each has exactly the schema's fields, of their types, not null.

        The common case, checked in one conversion and no per-column work: a
        column with no nulls means every record has that field, and a field
        count of ``len(items) * len(schema)`` then leaves no room for another.
        Anything else (``None``) takes the general path, which names the problem.
        """
        schema = self.schema
        if schema is None or not items:
            return None
        try:
            inferred = pa.Table.from_pylist(items)
        except _ARROW_ERRORS:
            return None
        width = len(schema)
        if inferred.num_columns != width or sum(map(len, items)) != len(items) * width:
            return None
        types = dict(zip(inferred.column_names, inferred.schema.types, strict=True))
        if any(types.get(f.name) != f.type for f in schema) or any(
            column.null_count for column in inferred.columns
        ):
            return None
        return pa.Table.from_arrays([inferred.column(name) for name in schema.names], schema=schema)

    def _widened(
        self, inferred: pa.Table, items: list[Any], describe: Callable[[int], str]
    ) -> pa.Schema:
        """The schema with the batch's new fields added (or the inferred one, at first)."""
        if self.schema is None:
            return pa.schema(f for f in inferred.schema if not pa.types.is_null(f.type))
        names = set(self.schema.names)
        new = [f for f in inferred.schema if f.name not in names and not pa.types.is_null(f.type)]
        if not new:
            return self.schema
        if self.new_columns == "refuse":
            field = new[0].name
            index = next(i for i, item in enumerate(items) if item.get(field) is not None)
            problem = f"field {field!r} is not in the schema and new columns are refused"
            raise DataError(f"cannot write {describe(index)}: {problem}", reason="schema")
        return pa.schema([*self.schema, *(f.with_nullable(True) for f in new)])

    def _conformed(
        self,
        inferred: pa.Table,
        schema: pa.Schema,
        items: list[Any],
        describe: Callable[[int], str],
    ) -> pa.Table:
        """``inferred`` cast column by column to ``schema`` (absent columns as nulls)."""
        columns = []
        for field in schema:
            if field.name not in inferred.column_names:
                column: pa.ChunkedArray | pa.Array = pa.nulls(inferred.num_rows, field.type)
            else:
                column = self._cast(inferred.column(field.name), field, items, describe)
            if not field.nullable and column.null_count:
                problem = f"column {field.name!r} may not be null"
                raise self._error(items, describe, problem)
            columns.append(column)
        return pa.Table.from_arrays(columns, schema=schema)

    def _cast(
        self,
        column: pa.ChunkedArray,
        field: pa.Field,
        items: list[Any],
        describe: Callable[[int], str],
    ) -> pa.ChunkedArray:
        if column.type == field.type:
            return column
        problem = f"column {field.name!r} is {field.type}, the value is {column.type}"
        if not _castable(column.type, field.type):
            raise self._error(items, describe, problem)
        try:
            return column.cast(field.type, safe=True)
        except _ARROW_ERRORS:
            raise self._error(items, describe, f"{problem} and does not fit") from None

    @staticmethod
    def _error(items: list[Any], describe: Callable[[int], str], problem: str) -> DataError:
        """A ``DataError`` naming the record if there is one, else the batch (then split)."""
        where = describe(0) if len(items) == 1 else f"a batch of {len(items)} records"
        return DataError(f"cannot write {where}: {problem}", reason="schema")
