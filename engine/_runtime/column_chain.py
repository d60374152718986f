"""A chain of sync map/filter steps run step by step over chunks of a batch, in C-level loops.

Each step is one ``list.extend(map(fn, values))``: the interpreter runs no
bytecode of its own between two calls of the user's function, which makes a
chain cheaper than a Python ``for`` loop around the same calls (and than the
plain loop a user would write for W1). Records that a filter drops or a
function fails on are rare, so only they cost Python-level work: the chain
keeps the input indices of removed records (sorted), not an index per record.

A step that raises stops ``extend`` with the outputs so far already in the list,
so the failing position is the list's length; the step resumes after it.
Failures are reported once the whole chain has run, in input order.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from itertools import compress, islice
from typing import TYPE_CHECKING, Any, final

if TYPE_CHECKING:
    from collections.abc import Sequence

ErrorHandler = Callable[[Any, int, int, Exception], None]
"""``(input value, input index, step index, error)``; may raise to stop the run."""

CHUNK = 256
"""Records taken through all steps at a time: their intermediate values stay in
the CPU's caches, and fewer than the garbage collector's first threshold (700
new containers) are alive at once, so parsing a batch does not set it off."""

Failure = tuple[int, int, Exception]
"""``(input index, step index, error)``."""


def apply(
    fn: Callable[[Any], Any], values: list[Any]
) -> tuple[list[Any], list[tuple[int, Exception]]]:
    """``fn`` over ``values``: the results that returned, ``(position, error)`` of the others."""
    out: list[Any] = []
    failures: list[tuple[int, Exception]] = []
    start = 0
    while True:
        before = len(out)
        try:
            out.extend(map(fn, islice(values, start, None)) if start else map(fn, values))
        except Exception as error:
            position = start + len(out) - before
            failures.append((position, error))
            start = position + 1
        else:
            return out, failures


def originals(positions: Sequence[int], removed: Sequence[int]) -> list[int]:
    """Input indices of ascending ``positions`` among the inputs left after ``removed`` (sorted)."""
    found: list[int] = []
    skipped = 0
    for position in positions:
        while skipped < len(removed) and removed[skipped] <= position + skipped:
            skipped += 1
        found.append(position + skipped)
    return found


def merged(removed: list[int], more: list[int]) -> list[int]:
    """Both ascending lists as one (a two-run merge for ``sort``)."""
    removed.extend(more)
    removed.sort()
    return removed


def keep_mask(flags: list[Any]) -> tuple[bytes | list[bool], list[tuple[int, Exception]]]:
    """``flags`` as bytes (booleans and small ints, in one C call) or as booleans.

    A flag whose truth cannot be told (its ``__bool__`` raises, as a NumPy
    array's does) counts as false and comes back as ``(position, error)``.
    """
    try:
        return bytes(flags), []
    except (TypeError, ValueError):  # not all ints in 0..255
        pass
    try:
        return list(map(operator.truth, flags)), []
    except Exception:  # some flag has no truth value: find which, one by one
        pass
    mask: list[bool] = []
    failures: list[tuple[int, Exception]] = []
    for position, flag in enumerate(flags):
        try:
            mask.append(bool(flag))
        except Exception as error:
            mask.append(False)
            failures.append((position, error))
    return mask, failures


def all_true(flags: list[Any]) -> bool:
    """Whether every flag is true (``False`` when some flag's truth cannot be told)."""
    try:
        return all(flags)
    except Exception:
        return False


def zero_positions(mask: bytes | list[bool]) -> list[int]:
    """Positions of the zeros in ``mask``, each found by a C-level scan."""
    positions: list[int] = []
    at = -1
    while True:
        try:
            at = mask.index(False, at + 1)
        except ValueError:
            return positions
        positions.append(at)


@final
class ColumnChain:
    """Runs maps and filters over a batch one step at a time; see the module docstring.

    Args:
        filters: For each step, whether it is a filter (else a map).
        fns: Each step's function.
        chunk: Records taken through all steps at a time.
    """

    __slots__ = ("_chunk", "_fns", "_kinds")

    def __init__(
        self,
        filters: Sequence[bool],
        fns: Sequence[Callable[[Any], Any]],
        *,
        chunk: int = CHUNK,
    ) -> None:
        self._kinds = tuple(filters)
        self._fns = list(fns)
        self._chunk = chunk

    def set_fn(self, index: int, fn: Callable[[Any], Any]) -> None:
        """Call ``fn`` for step ``index`` from now on (after its first result was checked)."""
        self._fns[index] = fn

    def run(
        self, items: list[Any], on_error: ErrorHandler
    ) -> tuple[list[Any], list[int], list[int]]:
        """``(outputs, marks, counts)``, as ``CompiledChain`` describes them."""
        counts = [0] * len(self._kinds)
        failed: list[Failure] = []
        chunk = self._chunk
        if len(items) <= chunk:
            out, removed = self._run(items, 0, counts, failed)
        else:
            out = []
            removed = []
            for start in range(0, len(items), chunk):
                part, gone = self._run(items[start : start + chunk], start, counts, failed)
                out += part
                removed += gone
        if failed:
            failed.sort(key=operator.itemgetter(0))
            for index, step, error in failed:
                on_error(items[index], index, step, error)
        return out, [index - rank for rank, index in enumerate(removed)], counts

    def _run(
        self, values: list[Any], offset: int, counts: list[int], failed: list[Failure]
    ) -> tuple[list[Any], list[int]]:
        """The chain over ``values`` (inputs ``offset`` on): outputs and removed input indices."""
        removed: list[int] = []  # indices in ``values`` of those no longer there, ascending
        for step, is_filter in enumerate(self._kinds):
            if not values:
                break
            results, failures = apply(self._fns[step], values)
            if failures:
                removed = self._fail(failures, removed, offset, step, failed)
                if is_filter:
                    gone = {position for position, _ in failures}
                    values = [value for i, value in enumerate(values) if i not in gone]
            if not is_filter:
                values = results
            elif not all_true(results):
                # The mask decides both which values go and where they were.
                mask, unknown = keep_mask(results)
                drops = zero_positions(mask)
                if unknown:
                    undecided = {position for position, _ in unknown}
                    drops = [position for position in drops if position not in undecided]
                counts[step] += len(drops)
                lost = originals(drops, removed)
                values = list(compress(values, mask))
                if unknown:
                    removed = self._fail(unknown, removed, offset, step, failed)
                removed = merged(removed, lost)
        if offset and removed:
            removed = [offset + index for index in removed]
        return values, removed

    @staticmethod
    def _fail(
        failures: list[tuple[int, Exception]],
        removed: list[int],
        offset: int,
        step: int,
        failed: list[Failure],
    ) -> list[int]:
        """Note ``failures`` (positions among the values left) of ``step``; the removed, merged."""
        lost = originals([position for position, _ in failures], removed)
        failed.extend(
            (offset + index, step, error) for index, (_, error) in zip(lost, failures, strict=True)
        )
        return merged(removed, lost)
