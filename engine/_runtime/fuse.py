"""Fusion of consecutive sync map/filter/flat_map steps into one runner per batch.

A chain is compiled (once, when the pipeline starts) into a single Python
function with one ``for`` loop over the batch, so a record costs one call per
user function and nothing else: no task, no queue hop, no await, and each
record's intermediate values die while they are still in the CPU's caches.
A chain of maps and filters notes only where a record was dropped (a chain
with a flat_map, where each input's outputs start), and on an exception it
finds the failing step from the traceback's line number, so the happy path
pays nothing for either.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal, final

from riprap._core.errors import ConfigError

OpKind = Literal["map", "filter", "flat_map"]

ErrorHandler = Callable[[Any, int, int, Exception], None]
"""``(input value, input index, step index, error)``; may raise to stop the run."""

ChainFn = Callable[[list[Any], ErrorHandler], tuple[list[Any], list[int], list[int]]]
"""Runs a chain over a batch: ``(outputs, marks, counts)``; see :class:`CompiledChain`."""

Part = tuple[list[Any], list[int], int, "list[int] | None"]
"""One part of an expanding chain's outputs: ``(outputs, starts, first input, counts)``."""

PartsFn = Callable[[list[Any], ErrorHandler, int], Iterator[Part]]
"""Runs an expanding chain over a batch, a part of at most ``cap`` outputs at a time."""


@dataclass(frozen=True, slots=True)
class Op:
    """One sync step of a fusable chain."""

    kind: OpKind
    step_id: str
    fn: Callable[[Any], Any]


@final
@dataclass(frozen=True, slots=True)
class CompiledChain:
    """A compiled chain and how to read its marks.

    ``marks`` are output lengths at each dropped input when ``expands`` is
    false (see :class:`~riprap._core.records.DropsOrigin`), or the output length at
    the start of every input when it is true (``StartsOrigin``).

    ``counts`` has one entry per op, for the per-step metrics: a filter's
    drops; the outputs of a flat_map followed by another flat_map (its
    outputs cannot be derived from the batch's lengths); 0 otherwise. Each
    costs an add only when it happens, so plain map chains pay nothing.

    ``parts`` (expanding chains only) is the same loop as a generator that
    hands over its outputs every ``cap`` of them, also in the middle of one
    input's: each part comes with the output length at the start of each
    input it holds (the first may have begun in the part before), the index
    of that first input, and, with the last part only, the counts.
    """

    ops: tuple[Op, ...]
    run: ChainFn
    expands: bool
    source: str
    parts: PartsFn | None = None


def compile_chain(ops: Sequence[Op]) -> CompiledChain:
    """The chain of ``ops`` (at least one) as one generated loop, record by record."""
    if not ops:
        raise ValueError("a chain needs at least one step")
    expands = any(op.kind == "flat_map" for op in ops)
    lines, line_to_op = (_expanding if expands else _dropping)(ops)
    if expands:  # the generator that hands over parts, in the same namespace
        part_lines, part_ops = _expanding(ops, parts=True)
        line_to_op.update({line + len(lines): op for line, op in part_ops.items()})
        lines = [*lines, *part_lines]
    source = "\n".join(lines) + "\n"
    namespace: dict[str, Any] = {}
    for i, op in enumerate(ops):
        namespace[f"f{i}"] = _first_call_checked(op, partial(namespace.__setitem__, f"f{i}", op.fn))
    namespace["LINES"] = line_to_op
    code = compile(source, f"<riprap chain {'+'.join(op.step_id for op in ops)}>", "exec")
    exec(code, namespace)
    return CompiledChain(
        ops=tuple(ops),
        run=namespace["chain"],
        expands=expands,
        source=source,
        parts=namespace.get("parts"),
    )


_HEAD = (
    "def chain(items, on_error):",
    "    out = []",
    "    ap = out.append",
    "    marks = []",
    "    mark = marks.append",
)
"""The first lines of every generated chain: its outputs and marks, and their appends."""


def _dropping(ops: Sequence[Op]) -> tuple[list[str], dict[int, int]]:
    """Source of a map/filter chain: a mark (the output length) per input that is left out.

    An input's index is the number of inputs before it, each either in the
    output or marked, so the loop keeps no counter.
    """
    lines = [
        *_HEAD,
        *(f"    c{i} = 0" for i, op in enumerate(ops) if op.kind == "filter"),
        "    for x in items:",
        "        try:",
    ]
    line_to_op: dict[int, int] = {}
    var = "x"
    for index, op in enumerate(ops):
        line_to_op[len(lines) + 1] = index
        if op.kind == "map":
            lines.append(f"            v = f{index}({var})")
            var = "v"
        else:
            lines.append(f"            if not f{index}({var}):")
            lines.append(f"                c{index} += 1")
            lines.append("                mark(len(out))")
            lines.append("                continue")
    lines.append("        except Exception as e:")
    lines.append("            mark(len(out))")
    lines.append("            op = LINES.get(e.__traceback__.tb_lineno, 0)")
    lines.append("            on_error(x, len(out) + len(marks) - 1, op, e)")
    lines.append("            continue")
    lines.append(f"        ap({var})")
    counts = ", ".join(f"c{i}" if op.kind == "filter" else "0" for i, op in enumerate(ops))
    lines.append(f"    return out, marks, [{counts}]")
    return lines, line_to_op


def _expanding(ops: Sequence[Op], *, parts: bool = False) -> tuple[list[str], dict[int, int]]:
    """Source of a chain with a flat_map: the output length at the start of every input.

    With ``parts``, the generator ``parts(items, on_error, cap)`` (see
    :class:`CompiledChain`): it counts inputs in ``i`` and, after an output
    that fills ``cap``, hands the part over and goes on in a new one.
    """
    head = ["def parts(items, on_error, cap):", *_HEAD[1:]] if parts else list(_HEAD)
    lines = [*head, *(f"    c{i} = 0" for i in range(len(ops)))]
    if parts:
        lines += ["    first = 0", "    i = -1"]
    lines += ["    for x in items:"]
    if parts:
        lines += ["        i += 1"]
    lines += ["        mark(len(out))", "        try:"]
    line_to_op: dict[int, int] = {}
    indent = " " * 12
    var = "x"
    last_flat_map = max(i for i, op in enumerate(ops) if op.kind == "flat_map")
    for index, op in enumerate(ops):
        fn = f"f{index}"
        line_to_op[len(lines) + 1] = index
        if op.kind == "map":
            lines.append(f"{indent}v = {fn}({var})")
            var = "v"
        elif op.kind == "filter":
            lines.append(f"{indent}if not {fn}({var}):")
            lines.append(f"{indent}    c{index} += 1")
            # At the top level this skips the input; inside a flat_map, one child.
            lines.append(f"{indent}    continue")
        else:
            lines.append(f"{indent}for v in {fn}({var}):")
            var = "v"
            indent += "    "
            if index < last_flat_map:
                lines.append(f"{indent}c{index} += 1")
    lines.append(f"{indent}ap({var})")
    if parts:
        lines.append(f"{indent}if len(out) >= cap:")
        lines.append(f"{indent}    yield out, marks, first, None")
        lines.append(f"{indent}    out = []")
        lines.append(f"{indent}    ap = out.append")
        lines.append(f"{indent}    marks = [0]")
        lines.append(f"{indent}    mark = marks.append")
        lines.append(f"{indent}    first = i")
    lines.append("        except Exception as e:")
    lines.append("            op = LINES.get(e.__traceback__.tb_lineno, 0)")
    lines.append(f"            on_error(x, {'i' if parts else 'len(marks) - 1'}, op, e)")
    counts = f"[{', '.join(f'c{i}' for i in range(len(ops)))}]"
    if parts:
        lines.append(f"    yield out, marks, first, {counts}")
    else:
        lines.append(f"    return out, marks, {counts}")
    return lines, line_to_op


def refuse_awaitable(result: Any, kind: str, step_id: str) -> None:
    """Stop a sync step whose function returned an awaitable (a lambda around an async function).

    Its result would otherwise be written as a coroutine object, or a filter
    would keep every record (a coroutine is truthy), with nothing awaited.

    Raises:
        ConfigError: Naming the step; the coroutine is closed first (never awaited).
    """
    if not inspect.isawaitable(result):
        return
    if inspect.iscoroutine(result):
        result.close()
    raise ConfigError(
        f"{kind}({step_id!r})",
        f"the function is sync but returned {type(result).__name__} object; pass an "
        "async function (async def) so that riprap awaits it",
    )


def refusing_awaitables(fn: Callable[..., Any], kind: str, step_id: str) -> Callable[..., Any]:
    """``fn`` with every result checked by :func:`refuse_awaitable` (unfused sync steps)."""

    def checked(*args: Any) -> Any:
        result = fn(*args)
        refuse_awaitable(result, kind, step_id)
        return result

    return checked


def _first_call_checked(op: Op, put_back: Callable[[], object]) -> Callable[[Any], Any]:
    """``op.fn`` whose first result is checked; ``put_back`` then has the chain call ``op.fn``.

    The generated loop looks its functions up on every call, so the check
    costs nothing afterwards.
    """
    fn = op.fn

    def first_call(value: Any) -> Any:
        result = fn(value)
        refuse_awaitable(result, op.kind, op.step_id)
        put_back()
        return result

    return first_call
