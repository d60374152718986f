"""Side outputs: stages emit to named outputs wired to sinks; positions wait for those sinks too."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import riprap
import riprap.checkpoints
from riprap import Batch, Branch, ConfigError, StageContext
from riprap.connectors.memory import IterableSource, MemorySink
from riprap.lowlevel import DropsOrigin
from riprap.testing import wait_all_tasks_blocked, wait_until
from tests._sinks import GatedSink

if TYPE_CHECKING:
    from riprap.lowlevel import Emit

pytestmark = pytest.mark.anyio


class SplitOdd:
    """Passes even values on and emits odd ones to its side output ``odd``."""

    def __init__(self, step_id: str = "split", outputs: tuple[str, ...] = ("odd",)) -> None:
        self.step_id = step_id
        self.side_outputs = outputs
        self._odd: Emit | None = None

    async def open(self, context: StageContext) -> None:
        self._odd = context.side_output("odd")

    async def process(self, batch: Batch, emit: Emit) -> None:
        assert self._odd is not None
        odd = [i for i, v in enumerate(batch.items) if v % 2]
        if odd:
            batch.ack.retain()  # the side output's share, taken before the rest goes on
            await self._odd(_subset(batch, odd))
        even = [i for i, v in enumerate(batch.items) if not v % 2]
        if even:
            await emit(_subset(batch, even))
        else:
            batch.ack.release()

    async def finish(self, emit: Emit) -> None:
        await anyio.lowlevel.checkpoint()

    def snapshot(self) -> None:
        return None

    def restore(self, state: Any) -> None:
        """Nothing kept."""


def _subset(batch: Batch, chosen: list[int]) -> Batch:
    """The items at ``chosen`` under the batch's ack, each still traceable to its source record."""
    keep = set(chosen)
    items: list[Any] = []
    drops: list[int] = []
    for i, value in enumerate(batch.items):
        if i in keep:
            items.append(value)
        else:
            drops.append(len(items))
    return Batch(items, batch.ack, DropsOrigin(batch.origin, drops))


def pipeline(values: int = 50, **options: Any) -> riprap.Pipeline:
    """A pipeline over 0..values-1 with in-memory checkpoints."""
    options.setdefault("checkpoint", riprap.checkpoints.MemoryCheckpoints())
    return riprap.Pipeline("side", **options).source(
        IterableSource("nums", list(range(values)), partition="nums")
    )


async def test_records_emitted_to_a_side_output_reach_its_sink() -> None:
    """Odd values go to the side sink, even ones to the main sink; each sink has its line."""
    main, odd = MemorySink("main"), MemorySink("odds")
    report = await pipeline(batch_size=8).stage(SplitOdd()).sink(main).side_output("odd", odd).run()
    assert (list(range(0, 50, 2)), list(range(1, 50, 2))) == (main.values, odd.values)
    assert {"nums": 50} == dict(report.positions)
    assert {"main": 25, "odds": 25} == {s.step_id: s.records_out for s in report.sinks}


async def test_a_position_waits_for_the_side_sink() -> None:
    """The main sink has written everything; the checkpoint stays before the unwritten odd ones."""
    main, odd = MemorySink("main"), GatedSink("odds")
    p = pipeline(batch_size=10).stage(SplitOdd()).sink(main).side_output("odd", odd)
    async with p.open() as running:
        await wait_until(lambda: len(main.values) == 25)
        await wait_all_tasks_blocked()
        await running.checkpoint()
        assert {"nums": 0} == running.statistics().positions
        odd.gate.set()
        report = await running.wait()
    assert {"nums": 50} == dict(report.positions)
    assert list(range(1, 50, 2)) == odd.values


async def test_a_side_output_branch_runs_its_own_steps() -> None:
    """A side output wired to a branch maps its records before its sink."""
    odd = MemorySink("odds")
    branch = Branch().map("negate", lambda v: -v).sink(odd)
    await pipeline(10).stage(SplitOdd()).sink(MemorySink()).side_output("odd", branch).run()
    assert [-1, -3, -5, -7, -9] == odd.values


async def test_side_outputs_work_after_a_fan_out() -> None:
    """A stage inside a fan-out branch emits to a side output wired at the pipeline."""
    a, b, odd = MemorySink("a"), MemorySink("b"), MemorySink("odds")
    report = await (
        pipeline(10)
        .fan_out(a=Branch().stage(SplitOdd()).sink(a), b=Branch().sink(b))
        .side_output("odd", odd)
        .run()
    )
    assert ([0, 2, 4, 6, 8], list(range(10)), [1, 3, 5, 7, 9]) == (a.values, b.values, odd.values)
    assert {"nums": 10} == dict(report.positions)


def test_an_unwired_output_is_refused_at_build_time_naming_stage_and_output() -> None:
    """Nothing emitted to an output without a sink may be lost: the pipeline is refused."""
    with pytest.raises(ConfigError) as caught:
        pipeline().stage(SplitOdd("split")).sink(MemorySink()).plan()
    assert "stage 'split'" == caught.value.option
    assert "side output 'odd', which is not wired" in str(caught.value)


def test_an_output_no_stage_emits_to_is_refused() -> None:
    """A side output nothing feeds is a mistake (a typo in a name), not a silent no-op."""
    p = pipeline().stage(SplitOdd()).sink(MemorySink()).side_output("odd", MemorySink("o"))
    with pytest.raises(ConfigError) as caught:
        p.side_output("late", MemorySink("l")).plan()
    assert "side_output.late" == caught.value.option


@pytest.mark.parametrize(
    ("build", "option", "message"),
    [
        (
            lambda p: p.side_output("odd", MemorySink()).side_output("odd", MemorySink("x")),
            "side_output.odd",
            "wired twice",
        ),
        (lambda p: p.side_output("a/b", MemorySink()), "side_output", "must start"),
        (
            lambda p: p.side_output("odd", Branch().sink(MemorySink()), retry=None),
            "side_output.odd",
            "policies for a branch",
        ),
        (
            lambda p: p.sink(MemorySink("s")).side_output("odd", MemorySink("s")).plan(),
            "side_output.odd",
            "sink named 's'",
        ),
        (
            lambda p: p.sink(MemorySink()).side_output("odd", Branch().stage(SplitOdd("x"))).plan(),
            "side_output.odd",
            "has no sink",
        ),
        (
            lambda p: (
                p.sink(MemorySink())
                .side_output("odd", Branch().stage(SplitOdd("inner")).sink(MemorySink("o")))
                .plan()
            ),
            "stage 'inner'",
            "side outputs do not feed each other",
        ),
    ],
)
def test_wiring_mistakes_are_refused_naming_the_part(build: Any, option: str, message: str) -> None:
    """Each mistake in wiring side outputs is a ConfigError naming the output or stage."""
    with pytest.raises(ConfigError) as caught:
        build(pipeline().stage(SplitOdd()))
    assert option == caught.value.option
    assert message in str(caught.value)


async def test_a_stage_asking_for_an_output_it_does_not_name_is_refused() -> None:
    """``context.side_output`` gives only the outputs the stage declares."""
    stage = SplitOdd(outputs=())  # asks for "odd" in open() without naming it
    with pytest.raises(ConfigError, match="does not name in side_outputs"):
        await pipeline().stage(stage).sink(MemorySink()).run()


def test_describe_shows_side_outputs() -> None:
    """The outline lists each side output; the flowchart draws it from the stage, dotted."""
    p = pipeline().stage(SplitOdd()).sink(MemorySink()).side_output("odd", MemorySink("odds"))
    assert "  side output odd\n    sink odds (MemorySink)" in p.describe()
    chart = p.describe("mermaid")
    assert 'n1 -.->|"odd"| n3' in chart
    assert 'n3["sink odds (MemorySink)"]' in chart


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 1_000), max_size=60), st.integers(1, 8), st.integers(0, 16))
def test_any_split_completes_every_position_with_each_record_in_one_sink(
    values: list[int], batch_size: int, room: int
) -> None:
    """Whatever the values and bounds: odd ones to the side sink, even to the main, in order."""
    main, odd = MemorySink("main"), MemorySink("odds")
    p = (
        riprap.Pipeline(
            "side",
            checkpoint=riprap.checkpoints.MemoryCheckpoints(),
            batch_size=batch_size,
            max_in_flight=batch_size + room,
            queue_size=1,
        )
        .source(IterableSource("nums", values, partition="nums"))
        .stage(SplitOdd())
        .sink(main)
        .side_output("odd", odd)
    )
    report = anyio.run(p.run)
    assert [v for v in values if not v % 2] == main.values
    assert [v for v in values if v % 2] == odd.values
    assert ({"nums": len(values)} if values else {}) == dict(report.positions)
