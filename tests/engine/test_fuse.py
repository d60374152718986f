"""Fused sync steps: same results as step-by-step evaluation, errors located exactly.

Every chain is one generated loop, record by record: map/filter chains mark
the records they leave out, chains with a flat_map where each input's outputs
start; both are held to the same reference.
"""

from __future__ import annotations

import gc
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from riprap import ConfigError, SourceBatch
from riprap._core.records import StartsOrigin
from riprap._runtime.fuse import Op, compile_chain
from riprap.lowlevel import DropsOrigin, SourceOrigin


def reference(
    ops: list[Op], items: list[Any], failures: list[tuple[int, int]] | None = None
) -> list[tuple[int, Any]]:
    """Evaluate ops one record at a time; return (input index, output) pairs.

    A record whose step raises is left out and noted in ``failures`` as
    ``(input index, step index)``.
    """
    rows: list[tuple[int, Any]] = []
    for i, x in enumerate(items):
        values = [x]
        step = 0
        try:
            for op in ops:
                nxt: list[Any] = []
                for v in values:
                    if op.kind == "map":
                        nxt.append(op.fn(v))
                    elif op.kind == "filter":
                        if op.fn(v):
                            nxt.append(v)
                    else:
                        nxt.extend(op.fn(v))
                values = nxt
                step += 1
        except ZeroDivisionError:
            if failures is not None:
                failures.append((i, step))
            continue
        rows.extend((i, v) for v in values)
    return rows


OPS = {
    "map": Op("map", "inc", lambda v: v + 1),
    "filter": Op("filter", "even", lambda v: v % 2 == 0),
    "flat_map": Op("flat_map", "dup", lambda v: [v] * (v % 3)),
}


def _raise_on(v: int, bad: int) -> int:
    if v % 13 == bad:
        raise ZeroDivisionError(f"value {v}")
    return v


class Verdict:
    """A filter result whose truth cannot be told for some values (as a NumPy array's)."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __bool__(self) -> bool:
        if self.value % 11 == 4:
            raise ZeroDivisionError(f"no truth for {self.value}")
        return self.value % 2 == 0


MAP_FILTER_OPS = {
    "map": OPS["map"],
    "filter": OPS["filter"],
    "failing map": Op("map", "fails", lambda v: _raise_on(v, 5) * 3),
    "failing filter": Op("filter", "fails", lambda v: _raise_on(v, 7) % 3 != 0),
    # Filters whose results are not booleans: small ints, large ints, strings.
    "int filter": Op("filter", "ints", lambda v: v % 4),
    "large int filter": Op("filter", "large", lambda v: (v % 5) * 1_000),
    "str filter": Op("filter", "str", lambda v: "x" * (v % 2)),
    "undecidable filter": Op("filter", "verdict", Verdict),
}


def resolve(expands: bool, marks: list[int], n: int, out_len: int) -> list[int]:
    """Map every output index back to its input index through the origin classes."""
    source = SourceBatch("p", list(range(n)), start=0)
    origin = SourceOrigin(source)
    mapped = StartsOrigin(origin, marks) if expands else DropsOrigin(origin, marks)
    located = [mapped.locate(j) if marks else origin.locate(j) for j in range(out_len)]
    return [where[1] for where in located if where is not None]


@given(
    st.lists(st.sampled_from(sorted(OPS)), min_size=1, max_size=5),
    st.lists(st.integers(min_value=0, max_value=50), max_size=40),
)
def test_fused_chain_matches_reference(kinds: list[str], items: list[int]) -> None:
    """Any chain of map/filter/flat_map gives the reference outputs and maps them back."""
    ops = [OPS[k] for k in kinds]
    chain = compile_chain(ops)
    out, marks, _ = chain.run(items, lambda *a: None)
    expected = reference(ops, items)
    assert [v for _, v in expected] == out
    assert [i for i, _ in expected] == resolve(chain.expands, marks, len(items), len(out))


EXPANDING_OPS = {
    **OPS,
    "failing flat_map": Op("flat_map", "fails", lambda v: [_raise_on(v, 3)] * (v % 4)),
}


@given(
    st.lists(st.sampled_from(sorted(EXPANDING_OPS)), min_size=1, max_size=5),
    st.lists(st.integers(min_value=0, max_value=50), max_size=40),
    st.integers(min_value=1, max_value=7),
)
def test_parts_match_the_whole_chain(kinds: list[str], items: list[int], cap: int) -> None:
    """An expanding chain in parts of ``cap``: the same outputs, inputs, failures and counts."""
    ops = [EXPANDING_OPS[k] for k in [*kinds, "flat_map"]]
    chain = compile_chain(ops)
    whole_errors: list[tuple[int, int]] = []
    out, marks, counts = chain.run(items, lambda x, i, op, e: whole_errors.append((i, op)))
    assert chain.parts is not None
    part_errors: list[tuple[int, int]] = []
    parts = list(chain.parts(items, lambda x, i, op, e: part_errors.append((i, op)), cap))
    outputs: list[Any] = []
    inputs: list[int] = []
    for values, starts, first, _ in parts:
        assert len(values) <= cap
        outputs.extend(values)
        located = resolve(True, starts, len(starts), len(values))
        inputs.extend(first + i for i in located)
    assert out == outputs
    assert resolve(True, marks, len(items), len(out)) == inputs
    assert whole_errors == part_errors
    assert [p[3] for p in parts] == [None] * (len(parts) - 1) + [counts]


@given(
    st.lists(st.sampled_from(sorted(MAP_FILTER_OPS)), min_size=1, max_size=5),
    st.lists(st.integers(min_value=0, max_value=200), max_size=60),
)
def test_map_filter_chain_matches_record_by_record(kinds: list[str], items: list[int]) -> None:
    """Maps and filters with failing steps give what the reference gives.

    Failures are reported once each, in input order, with the failing step
    and the input's index; every output maps back to its input; each
    filter counts its drops.
    """
    ops = [MAP_FILTER_OPS[k] for k in kinds]
    chain = compile_chain(ops)
    assert not chain.expands
    reported: list[tuple[int, int, Any]] = []
    out, marks, counts = chain.run(items, lambda x, i, op, e: reported.append((i, op, x)))
    failures: list[tuple[int, int]] = []
    expected = reference(ops, items, failures)
    assert [v for _, v in expected] == out
    assert [i for i, _ in expected] == resolve(False, marks, len(items), len(out))
    assert [(i, op, items[i]) for i, op in failures] == reported
    dropped = len(items) - len(failures) - len(out)
    assert dropped == sum(counts[i] for i, op in enumerate(ops) if op.kind == "filter")


def test_map_filter_chain_reports_every_failure_of_a_step() -> None:
    """A step that fails on many records goes on after each one, marking where each was."""
    chain = compile_chain([Op("map", "inv", lambda v: 12 // (v % 4))])
    errors: list[int] = []
    out, marks, counts = chain.run(list(range(12)), lambda x, i, op, e: errors.append(i))
    assert [0, 4, 8] == errors
    assert [12 // (v % 4) for v in range(12) if v % 4] == out
    assert [0, 3, 6] == marks
    assert [0] == counts


@pytest.mark.parametrize("then", [[], [Op("flat_map", "one", lambda v: [v])]])
def test_first_results_are_checked_for_awaitables(then: list[Op]) -> None:
    """A sync map returning a coroutine is refused on its first record, column or loop."""

    async def later(v: int) -> int:
        return v

    chain = compile_chain([Op("map", "lazy", later), *then])
    errors: list[tuple[int, Exception]] = []
    chain.run([1, 2], lambda x, i, op, e: errors.append((i, e)))
    assert 0 == errors[0][0]
    assert isinstance(errors[0][1], ConfigError)
    assert "returned coroutine" in str(errors[0][1])


def test_error_names_failing_step_and_input() -> None:
    """An exception is reported with the input value, its index and the failing step."""
    ops = [
        Op("map", "inc", lambda v: v + 1),
        Op("filter", "odd", lambda v: v % 2 == 1),
        Op("map", "inv", lambda v: 10 // (v - 5)),
    ]
    chain = compile_chain(ops)
    errors: list[tuple[Any, int, int, str]] = []
    out, marks, _ = chain.run(
        [0, 2, 4, 6], lambda x, i, op, e: errors.append((x, i, op, type(e).__name__))
    )
    assert [(4, 2, 2, "ZeroDivisionError")] == errors
    assert [-3, -5, 5] == out
    assert [0, 1, 3] == resolve(chain.expands, marks, 4, len(out))


def test_error_inside_flat_map_keeps_earlier_children() -> None:
    """A failing child stops only its own input; earlier children and later inputs survive."""
    ops = [
        Op("flat_map", "split", lambda v: [v, v + 100]),
        Op("map", "check", lambda v: 1 // (v - 101)),
    ]
    chain = compile_chain(ops)
    errors: list[tuple[int, int]] = []
    out, marks, _ = chain.run([0, 1, 2], lambda x, i, op, e: errors.append((i, op)))
    assert [(1, 1)] == errors
    assert [-1, -1, -1, -1, 1] == out
    assert [0, 0, 1, 2, 2] == resolve(True, marks, 3, len(out))


def test_raising_handler_stops_the_loop() -> None:
    """When the handler raises, the chain stops and the exception propagates."""
    chain = compile_chain([Op("map", "boom", lambda v: 1 // v)])

    def handler(x: Any, i: int, op: int, e: Exception) -> None:
        raise RuntimeError(f"stop at {i}")

    with pytest.raises(RuntimeError, match="stop at 1"):
        chain.run([1, 0, 1], handler)


def test_chain_does_not_set_off_the_garbage_collector() -> None:
    """Parsing records into dicts keeps no more than one new container alive at a time.

    Step by step over a whole batch, 20,000 parsed records would set off
    about thirty collections; record by record, each dict is freed before
    the next record is parsed.
    """
    chain = compile_chain([Op("map", "parse", lambda v: {"v": v}), Op("map", "read", len)])
    items = list(range(20_000))
    gc.collect()
    before = gc.get_stats()[0]["collections"]
    out, _, _ = chain.run(items, lambda *a: None)
    assert [1] * 20_000 == out
    assert gc.get_stats()[0]["collections"] - before <= 1
