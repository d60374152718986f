"""Keys and values of keyed state, and the errors keyed state raises.

A key becomes a *token* (text, the same in memory, in a checkpoint and in an
SQLite store); a value is encoded to JSON text when it is set, so that what is
stored can never change afterwards (a dict the step keeps mutating) and a value
JSON cannot hold fails at once, naming the step and the key, instead of at the
next checkpoint.
"""

from __future__ import annotations

import base64
import math
from typing import Any, TypeAlias

import orjson

from riprap._core.errors import CheckpointError, DataError

Entry: TypeAlias = "tuple[str, float | None] | None"
"""A stored value: ``(JSON text, expiry in wall seconds or None)``; ``None`` marks a delete."""

_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
"""Refuse what JSON would hold only as another type (a datetime back as a string)."""

_INT_LIMIT = 2**63
"""Integers in ``-2**63 <= n < 2**63`` are written as their digits, as orjson does."""

KEY_SHOWN = 60
"""Characters of a key an error message shows."""


class MissingKeyError(DataError):
    """A record reached a keyed-state step without a key: its state has no home.

    A data error (dead-lettered with reason ``missing_key``): other records of
    the partition may well have keys.
    """

    reason = "missing_key"

    def __init__(self, step_id: str, partition: str | None, offset: int | None) -> None:
        self.step_id = step_id
        where = f" (partition {partition!r}, offset {offset})" if partition is not None else ""
        super().__init__(
            f"step {step_id!r} keeps keyed state, but the record{where} has no key; "
            "keyed state needs records with keys (set them in the source, or give the "
            "step key=fn to take the key from the value)"
        )


class StateValueError(DataError):
    """A state key or value JSON cannot hold exactly: named with the step and the key.

    A data error (dead-lettered with reason ``bad_state_value``): the record
    that led to it does not change the state.
    """

    reason = "bad_state_value"

    def __init__(self, step_id: str, key: object, problem: str) -> None:
        self.step_id = step_id
        shown = repr(key)
        shown = shown if len(shown) <= KEY_SHOWN else shown[:KEY_SHOWN] + "..."
        super().__init__(f"step {step_id!r}, key {shown}: {problem}")


class PartitionGivenUp(Exception):
    """The record's partition was given up while the record was in flight.

    The record belongs to the partition's next owner, which reads it again from
    the committed position (even when that owner is this process again, under
    a new assignment): a keyed stage skips it (counted as ``handed_over``)
    instead of changing state that is no longer its to change.

    Attributes:
        partition: The partition given up.
    """

    def __init__(self, partition: str) -> None:
        self.partition = partition
        super().__init__(f"partition {partition!r} was given to another member")


class StateStoreError(CheckpointError):
    """A keyed-state store disagrees with the checkpoint, so the run refuses to start.

    The store is missing, behind the checkpoint (deleted, rolled back or
    replaced by an older copy), ahead of it by more than it can undo, or it
    belongs to another pipeline, step or partition. Resuming would silently
    lose or repeat state changes.

    Attributes:
        where: The store (a file path, or the step for a store in the checkpoint).
        problem: What is wrong, in words, with what to do.
    """

    def __init__(self, where: str, problem: str) -> None:
        self.where = where
        self.problem = problem
        super().__init__(f"keyed state store {where}: {problem}")


def restored_partitions(kind: str, where: str, restored: Any) -> dict[str, Any]:
    """The per-partition part of a checkpoint's keyed state, checked to be of store ``kind``.

    Raises:
        StateStoreError: The checkpoint holds something else under the step:
            keyed state of another store, or another kind of step's state.
    """
    if restored is None:
        return {}
    if not isinstance(restored, dict) or not isinstance(restored.get("partitions"), dict):
        raise StateStoreError(
            where,
            "the checkpoint holds other state under this step id (was it another kind "
            "of step?); give the step a new id, or drop its state with "
            "riprap checkpoint reset --stage",
        )
    if restored.get("store") != kind:
        raise StateStoreError(
            where,
            f"the checkpoint holds this step's state in a {restored.get('store')!r} store, "
            f"but the pipeline now uses a {kind!r} store; keep the store it was written with",
        )
    return dict(restored["partitions"])


def key_token(step_id: str, key: object) -> str:
    """The text a key is stored under: ``s:`` text, ``b:`` base64 bytes or ``i:`` an integer.

    Raises:
        StateValueError: The key is of another type (a float or a tuple has no
            exact, stable text form here).
    """
    if isinstance(key, str):
        return "s:" + key
    if isinstance(key, bytes):
        return "b:" + base64.b64encode(key).decode()
    if isinstance(key, int) and not isinstance(key, bool):
        return "i:" + str(key)
    raise StateValueError(
        step_id, key, f"a state key must be str, bytes or int, not {type(key).__name__}"
    )


def token_key(token: str) -> str | bytes | int:
    """The key ``token`` stands for (the inverse of :func:`key_token`)."""
    kind, text = token[:2], token[2:]
    if kind == "s:":
        return text
    if kind == "b:":
        return base64.b64decode(text)
    return int(text)


def encode_value(step_id: str, key: object, value: Any) -> str:
    """``value`` as JSON text.

    Raises:
        StateValueError: JSON cannot hold it: an unsupported type, an integer
            beyond 64 bits, a dict key that is not a string, NaN or infinity.
    """
    if value.__class__ is int and -_INT_LIMIT <= value < _INT_LIMIT:
        return str(value)  # what orjson writes, without its call (counters are most values)
    try:
        encoded = orjson.dumps(value, option=_OPTIONS)
    except TypeError as error:  # orjson.JSONEncodeError is a TypeError
        raise StateValueError(
            step_id, key, f"the value cannot be stored as JSON: {error}"
        ) from None
    if b"null" in encoded and _non_finite(value):  # orjson writes NaN as null: refuse it
        raise StateValueError(step_id, key, "the value holds NaN or infinity, which JSON cannot")
    return encoded.decode()


def decode_value(text: str) -> Any:
    """A stored value back from its JSON text."""
    return orjson.loads(text)


def _non_finite(value: Any) -> bool:
    """Whether a NaN or an infinity hides anywhere in ``value``."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_non_finite(item) for item in value.values())
    if isinstance(value, list | tuple):
        return any(_non_finite(item) for item in value)
    return False
