"""The fused sync loop: same results as step-by-step evaluation, errors located exactly."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from riprap import SourceBatch
from riprap._core.records import StartsOrigin
from riprap._runtime.fuse import Op, compile_chain
from riprap.lowlevel import DropsOrigin, SourceOrigin


def reference(ops: list[Op], items: list[Any]) -> list[tuple[int, Any]]:
    """Evaluate ops one at a time; return (input index, output) pairs."""
    rows: list[tuple[int, Any]] = [(i, x) for i, x in enumerate(items)]
    for op in ops:
        nxt: list[tuple[int, Any]] = []
        for i, v in rows:
            if op.kind == "map":
                nxt.append((i, op.fn(v)))
            elif op.kind == "filter":
                if op.fn(v):
                    nxt.append((i, v))
            else:
                nxt.extend((i, child) for child in op.fn(v))
        rows = nxt
    return rows


OPS = {
    "map": Op("map", "inc", lambda v: v + 1),
    "filter": Op("filter", "even", lambda v: v % 2 == 0),
    "flat_map": Op("flat_map", "dup", lambda v: [v] * (v % 3)),
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
