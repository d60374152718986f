"""A pipeline's topology as text or as a Mermaid flowchart (:meth:`riprap.Pipeline.describe`).

Only names and kinds are shown (steps, sinks, branches, the source), never a
value or an option that could hold a secret, so the output may go to logs and
documentation as it is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from riprap._core.errors import ConfigError
from riprap._core.steps import BatchStep, OpStep, RouteStep, StageStep
from riprap._runtime.merged_source import MergedSource

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
    *,
    side_outputs: Sequence[tuple[str, Branch]] = (),
) -> str:
    """The topology in ``form``; missing parts (no source or sink yet) are shown as missing."""
    if form == "text":
        return _text(name, source, steps, sink, branches, route) + _side_text(side_outputs)
    if form == "mermaid":
        return _mermaid(source, steps, sink, branches, route, side_outputs)
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


def _source_labels(source: Source | None) -> list[str]:
    """One label per source: the source, or each source of a merge under its name."""
    if source is None:
        return ["source (missing: call .source())"]
    if isinstance(source, MergedSource):
        return [
            f"source {m.name}: {m.source.name} ({type(m.source).__name__})" for m in source.members
        ]
    return [f"source {source.name} ({type(source).__name__})"]


def _text(
    name: str,
    source: Source | None,
    steps: Sequence[Step],
    sink: Sink | None,
    branches: Sequence[tuple[str, Branch]],
    route: RouteStep | None,
) -> str:
    lines = [f"pipeline {name}", *(f"  {label}" for label in _source_labels(source))]
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


def _side_text(side_outputs: Sequence[tuple[str, Branch]]) -> str:
    """Each side output with its steps and sink, after the main topology."""
    lines = []
    for output, branch in side_outputs:
        lines.append(f"  side output {output}")
        lines += [f"    {step_label(step)}" for step in branch.steps]
        lines.append(f"    {sink_label(branch.sink_)}")
    return "".join(f"\n{line}" for line in lines)


def _mermaid(
    source: Source | None,
    steps: Sequence[Step],
    sink: Sink | None,
    branches: Sequence[tuple[str, Branch]],
    route: RouteStep | None,
    side_outputs: Sequence[tuple[str, Branch]] = (),
) -> str:
    chart = _Chart()
    sources = [chart.node(label) for label in _source_labels(source)]
    ends = chart.steps(sources, steps)
    if not branches:
        chart.edges(ends, chart.node(sink_label(sink)))
    else:
        fork = chart.node(step_label(route) if route is not None else "fan_out", shape="rhombus")
        chart.edges(ends, fork)
        for branch_name, branch in branches:
            chart.branch(fork, branch_name, branch)
    for output, branch in side_outputs:
        emitters = [
            chart.step_nodes[step.step_id]
            for step in (*steps, *(s for _, b in branches for s in b.steps))
            if isinstance(step, StageStep) and output in getattr(step.stage, "side_outputs", ())
        ]
        for emitter in emitters:
            chart.branch(emitter, output, branch, dotted=True)
    return chart.render()


class _Chart:
    """Mermaid nodes ``n0``, ``n1``... with quoted labels, and the edges between them."""

    def __init__(self) -> None:
        self.lines = ["flowchart LR"]
        self.count = 0
        self.step_nodes: dict[str, str] = {}

    def node(self, label: str, *, shape: Literal["box", "rhombus"] = "box") -> str:
        node = f"n{self.count}"
        self.count += 1
        text = label.replace('"', "#quot;")
        self.lines.append(f'  {node}{{"{text}"}}' if shape == "rhombus" else f'  {node}["{text}"]')
        return node

    def edge(self, start: str, end: str, *, label: str | None = None, dotted: bool = False) -> None:
        line = "-.->" if dotted else "-->"
        arrow = line if label is None else f'{line}|"{label}"|'
        self.lines.append(f"  {start} {arrow} {end}")

    def edges(self, starts: Sequence[str], end: str) -> None:
        for start in starts:
            self.edge(start, end)

    def steps(self, starts: Sequence[str], steps: Sequence[Step]) -> list[str]:
        """Nodes for ``steps``, each after the one before, the first after every start; the ends."""
        ends = list(starts)
        for step in steps:
            node = self.node(step_label(step))
            self.step_nodes[step.step_id] = node
            self.edges(ends, node)
            ends = [node]
        return ends

    def branch(self, start: str, name: str, branch: Branch, *, dotted: bool = False) -> None:
        """A branch's steps and sink after ``start``, the first edge labelled ``name``."""
        nodes = [self.node(step_label(s)) for s in branch.steps[:1]] or [
            self.node(sink_label(branch.sink_))
        ]
        self.edge(start, nodes[0], label=name, dotted=dotted)
        if branch.steps:
            self.step_nodes[branch.steps[0].step_id] = nodes[0]
            ends = self.steps(nodes, branch.steps[1:])
            self.edges(ends, self.node(sink_label(branch.sink_)))

    def render(self) -> str:
        return "\n".join(self.lines)
