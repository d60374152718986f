"""A pipeline's topology as text or as a Mermaid flowchart (:meth:`riprap.Pipeline.describe`).

Only names and kinds are shown (steps, sinks, branches, the source), never a
value or an option that could hold a secret, so the output may go to logs and
documentation as it is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from riprap._core.errors import ConfigError
from riprap._core.steps import BatchStep, OpStep, RouteStep, StageStep

if TYPE_CHECKING:
    from collections.abc import Sequence

    from riprap._core.protocols import Sink, Source
    from riprap._core.steps import Step
    from riprap._core.topology import Branch

DescribeFormat = Literal["text", "mermaid"]


def describe(
    name: str,
    source: Source | None,
    steps: Sequence[Step],
    sink: Sink | None,
    branches: Sequence[tuple[str, Branch]],
    route: RouteStep | None,
    form: DescribeFormat = "text",
) -> str:
    """The topology in ``form``; missing parts (no source or sink yet) are shown as missing."""
    if form == "text":
        return _text(name, source, steps, sink, branches, route)
    if form == "mermaid":
        return _mermaid(source, steps, sink, branches, route)
    raise ConfigError("describe.form", f"must be 'text' or 'mermaid', got {form!r}")


def step_label(step: Step | RouteStep) -> str:
    """What a step is, by kind and id: ``map parse (async, concurrency 8)``."""
    if isinstance(step, RouteStep):
        how = "by function" if step.pick is not None else "by predicates"
        return f"route {step.step_id} ({how}, unmatched: {step.on_unmatched})"
    if isinstance(step, BatchStep):
        return f"batch {step.step_id} (size {step.size})"
    if isinstance(step, StageStep):
        return f"stage {step.step_id} ({type(step.stage).__name__})"
    notes = [note for note in _op_notes(step) if note]
    return f"{step.kind} {step.step_id}" + (f" ({', '.join(notes)})" if notes else "")


def _op_notes(step: OpStep) -> tuple[str, ...]:
    return (
        "async" if step.is_async else "",
        f"concurrency {step.concurrency}" if step.concurrency > 1 else "",
        "in threads" if step.offload is not None else "",
        "policies" if step.policies is not None else "",
    )


def sink_label(sink: Sink | None) -> str:
    """``sink name (Type, idempotent)``, or a note that the sink is missing."""
    if sink is None:
        return "sink (missing: call .sink())"
    idempotent = ", idempotent" if sink.idempotent else ""
    return f"sink {sink.name} ({type(sink).__name__}{idempotent})"


def _source_label(source: Source | None) -> str:
    if source is None:
        return "source (missing: call .source())"
    return f"source {source.name} ({type(source).__name__})"


def _text(
    name: str,
    source: Source | None,
    steps: Sequence[Step],
    sink: Sink | None,
    branches: Sequence[tuple[str, Branch]],
    route: RouteStep | None,
) -> str:
    lines = [f"pipeline {name}", f"  {_source_label(source)}"]
    lines += [f"  {step_label(step)}" for step in steps]
    if not branches:
        lines.append(f"  {sink_label(sink)}")
        return "\n".join(lines)
    lines.append(f"  {step_label(route)}" if route is not None else "  fan_out")
    for branch_name, branch in branches:
        lines.append(f"    branch {branch_name}")
        lines += [f"      {step_label(step)}" for step in branch.steps]
        lines.append(f"      {sink_label(branch.sink_)}")
    return "\n".join(lines)


def _mermaid(
    source: Source | None,
    steps: Sequence[Step],
    sink: Sink | None,
    branches: Sequence[tuple[str, Branch]],
    route: RouteStep | None,
) -> str:
    chart = _Chart()
    last = chart.chain(chart.node(_source_label(source)), [step_label(s) for s in steps])
    if not branches:
        chart.edge(last, chart.node(sink_label(sink)))
        return chart.render()
    fork = chart.node(step_label(route) if route is not None else "fan_out", shape="rhombus")
    chart.edge(last, fork)
    for branch_name, branch in branches:
        first = chart.node(step_label(branch.steps[0])) if branch.steps else None
        entry = first if first is not None else chart.node(sink_label(branch.sink_))
        chart.edge(fork, entry, label=branch_name)
        if first is not None:
            end = chart.chain(first, [step_label(s) for s in branch.steps[1:]])
            chart.edge(end, chart.node(sink_label(branch.sink_)))
    return chart.render()


class _Chart:
    """Mermaid nodes ``n0``, ``n1``... with quoted labels, and the edges between them."""

    def __init__(self) -> None:
        self.lines = ["flowchart LR"]
        self.count = 0

    def node(self, label: str, *, shape: Literal["box", "rhombus"] = "box") -> str:
        node = f"n{self.count}"
        self.count += 1
        text = label.replace('"', "#quot;")
        self.lines.append(f'  {node}{{"{text}"}}' if shape == "rhombus" else f'  {node}["{text}"]')
        return node

    def edge(self, start: str, end: str, *, label: str | None = None) -> None:
        arrow = "-->" if label is None else f'-->|"{label}"|'
        self.lines.append(f"  {start} {arrow} {end}")

    def chain(self, start: str, labels: Sequence[str]) -> str:
        """Nodes for ``labels``, each after the one before; the last node."""
        for label in labels:
            node = self.node(label)
            self.edge(start, node)
            start = node
        return start

    def render(self) -> str:
        return "\n".join(self.lines)
