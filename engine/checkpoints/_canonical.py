"""Canonical JSON of a snapshot, built in pieces so that a worker thread shares the GIL.

orjson holds the GIL for the whole of one ``dumps`` call: a 40 MB operator
state encoded in one call from a worker thread would still freeze the event
loop for as long. :func:`canonical_parts` gives the same bytes as one
``orjson.dumps(value, option=OPT_SORT_KEYS)`` call, as a list of pieces: mappings
are walked key by key and long lists are encoded a slice at a time, so no
single call runs for more than about a millisecond, and between two calls the
interpreter hands the GIL to the loop when it asks for it. Hashing
(``hashlib``) and joining (``bytes.join``) release the GIL on large buffers.

A :class:`DeferredState` is operator state whose plain form is only built
here, when the checkpoint is encoded: a stage with a large state hands one
over in O(1) from ``snapshot()`` instead of copying its state on the loop.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import TYPE_CHECKING, Any, Protocol, TypeGuard, runtime_checkable

import orjson

if TYPE_CHECKING:
    from collections.abc import Iterable

SLICE = 2_000
"""Items of a list encoded per ``orjson.dumps`` call (small items: well under a millisecond)."""

_OPTION = orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATACLASS
_SMALL = 64
"""A container up to this size is encoded inside its parent's call."""


@runtime_checkable
class DeferredState(Protocol):
    """Operator state handed over by reference; its JSON form is built when it is encoded.

    A stage whose state is too large to copy on the event loop returns one from
    ``snapshot()``. It must be an immutable view of the state at the cut: the
    stage never changes what it refers to afterwards (copy-on-write), so that
    :meth:`materialize` gives the same answer whenever, and in whichever thread,
    it runs (I3). Backends encode checkpoints in a worker thread, so
    :meth:`materialize` runs there and must not touch the event loop.

    .. versionadded:: 0.1
    """

    def materialize(self) -> Any:
        """The state as JSON-serialisable data, as it was at the cut."""
        ...


def plain(value: object) -> object:
    """orjson's ``default``: a dataclass as a dict (keys sorted like every mapping's), a deferred
    state as its data.

    Raises:
        TypeError: ``value`` is not JSON-serialisable.
    """
    if isinstance(value, DeferredState):  # first: a deferred state may well be a dataclass
        return value.materialize()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")


def canonical_parts(value: object) -> list[bytes]:
    """``value`` as canonical JSON (keys sorted, no whitespace), in pieces of bounded cost.

    ``b"".join(canonical_parts(v))`` equals ``orjson.dumps(v, default=plain,
    option=OPT_SORT_KEYS | OPT_PASSTHROUGH_DATACLASS)``.

    Raises:
        TypeError: A value is not JSON-serialisable, or a mapping key is not a string.
    """
    parts: list[bytes] = []
    _encode(value, parts)
    return parts


def sha256_of(parts: Iterable[bytes]) -> str:
    """The hex sha256 of the concatenated ``parts`` (hashlib releases the GIL on each)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return digest.hexdigest()


_STR = frozenset({str})
_SCALARS = frozenset({str, int, float, bool, type(None)})
"""Types of the values most of a snapshot is made of (positions, identities, counts)."""
_NATIVE = _SCALARS | {dict, list, tuple}
"""Types that are never a :class:`DeferredState`: checked first, as a protocol check is slow."""


def _deferred(value: object) -> TypeGuard[DeferredState]:
    """Whether ``value`` is a :class:`DeferredState` (about 10 us for a protocol check, 50 ns here
    for the plain values a snapshot is made of: 100,000 positions are checked twice a save)."""
    return type(value) not in _NATIVE and isinstance(value, DeferredState)


def _big(value: object) -> bool:
    """Whether ``value`` is worth encoding piece by piece rather than inside its container."""
    if _deferred(value):
        return True
    return _container(value) and len(value) > _SMALL  # type: ignore[arg-type]


def _container(value: object) -> bool:
    """A mapping or array orjson encodes natively (subclasses of dict and list included)."""
    return isinstance(value, dict | list) or type(value) is tuple


def _encode(value: object, parts: list[bytes]) -> None:
    if _deferred(value):
        value = value.materialize()
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = plain(value)
    if isinstance(value, dict):
        _encode_dict(value, parts)
    elif isinstance(value, list) or type(value) is tuple:
        _encode_list(value, parts)
    else:
        parts.append(orjson.dumps(value, default=plain, option=_OPTION))


def _encode_dict(value: dict[Any, Any], parts: list[bytes]) -> None:
    if not _STR.issuperset(map(type, value)):
        raise TypeError("Dict key must be str")  # orjson's message for such a mapping
    keys = sorted(value)
    separator = b"{"
    for start in range(0, len(keys), SLICE):
        chunk = keys[start : start + SLICE]
        values = [value[key] for key in chunk]
        # A small mapping is walked key by key: it may hold a large deferred state.
        if len(keys) <= _SMALL or (
            not _SCALARS.issuperset(map(type, values)) and any(_big(v) for v in values)
        ):
            for key in chunk:
                parts.append(separator + orjson.dumps(key) + b":")
                _encode(value[key], parts)
                separator = b","
        else:
            encoded = orjson.dumps(
                dict(zip(chunk, values, strict=True)), default=plain, option=_OPTION
            )
            parts.append(separator + encoded[1:-1])
            separator = b","
    parts.append(b"}" if keys else b"{}")


def _encode_list(value: list[Any] | tuple[Any, ...], parts: list[bytes]) -> None:
    """Slices of ``value``; a slice whose first item is big is encoded item by item.

    Only the first item is looked at, so a long list of small items costs one
    check per slice; a big item elsewhere in a slice is encoded correctly, in
    one longer call.
    """
    separator = b"["
    for start in range(0, len(value), SLICE):
        chunk = value[start : start + SLICE]
        if _big(chunk[0]):
            for item in chunk:
                parts.append(separator)
                _encode(item, parts)
                separator = b","
        else:
            encoded = orjson.dumps(list(chunk), default=plain, option=_OPTION)
            parts.append(separator + encoded[1:-1])
            separator = b","
    parts.append(b"]" if value else b"[]")
