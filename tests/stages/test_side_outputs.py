"""Built-in stages on side outputs: a window's late records, validation's rejects."""

from __future__ import annotations

from typing import Any

import pytest

import riprap
import riprap.checkpoints
from riprap import ConfigError
from riprap.connectors.memory import IterableSource, MemorySink
from riprap.stages.validate import Expect, Validate
from riprap.stages.window import Window, tumbling
from riprap.testing import wait_all_tasks_blocked, wait_until
from tests._sinks import GatedSink

pytestmark = pytest.mark.anyio


def rec(t: float, n: int = 1) -> dict[str, Any]:
    """One input value of key ``a``."""
    return {"k": "a", "t": t, "n": n}


def windowed(values: list[Any], **options: Any) -> riprap.Pipeline:
    """Tumbling 10 s sums over ``values``; no dead-letter store, so a dead letter stops the run."""
    window = Window(
        "win",
        window=tumbling(10),
        key=lambda v: v["k"],
        time=lambda v: v["t"],
        reduce=lambda acc, v: acc + v["n"],
        initial=0,
        **options,
    )
    return (
        riprap.Pipeline("late", checkpoint=riprap.checkpoints.MemoryCheckpoints(), batch_size=1)
        .source(IterableSource("events", values, partition="p"))
        .stage(window)
        .sink(MemorySink("results"))
    )


async def test_late_records_go_to_the_wired_side_output_not_to_dead_letters() -> None:
    """A record behind the closed window reaches the ``late`` sink; the run needs no DLQ."""
    late = MemorySink("late-events")
    values = [rec(1), rec(15), rec(2, n=7), rec(16)]
    report = await windowed(values, on_late="output").side_output("late", late).run()
    assert [rec(2, n=7)] == late.values
    assert ("completed", {}) == (report.outcome, dict(report.dead_lettered))
    assert {"p": 4} == dict(report.positions)


async def test_a_late_record_is_done_only_once_the_side_sink_has_it() -> None:
    """The checkpoint stays before the late record until its side sink writes it."""
    late = GatedSink("late-events")
    values = [rec(1), rec(15), rec(2), rec(16)]
    p = windowed(values, on_late="output", late_output="too-late").side_output("too-late", late)
    async with p.open() as running:
        await wait_until(lambda: running.statistics().records_in == 4)
        await wait_all_tasks_blocked()
        await running.checkpoint()
        assert {"p": 2} == running.statistics().positions
        late.gate.set()
        report = await running.wait()
    assert ([rec(2)], {"p": 4}) == (late.values, dict(report.positions))


def test_a_window_with_an_unwired_late_output_is_refused() -> None:
    """``on_late="output"`` without a sink for it is refused before anything runs."""
    with pytest.raises(ConfigError) as caught:
        windowed([], on_late="output").plan()
    assert "stage 'win'" == caught.value.option
    assert "'late'" in str(caught.value)


def test_dead_letters_stay_the_default_for_late_records() -> None:
    """A window names no side output unless asked to."""
    assert () == Window("w", window=tumbling(1), reduce=max, initial=0).side_outputs


async def test_validation_rejects_go_to_their_side_output() -> None:
    """Failing records reach the ``invalid`` sink as they came; valid ones go on."""
    values = [{"id": 1}, {"name": "x"}, {"id": 3}, {}]
    valid, invalid = MemorySink("valid"), MemorySink("invalid")
    report = await (
        riprap.Pipeline("check", checkpoint=riprap.checkpoints.MemoryCheckpoints(), batch_size=2)
        .source(IterableSource("in", values, partition="p"))
        .stage(Validate("check", Expect.required("id"), rejects="invalid"))
        .sink(valid)
        .side_output("invalid", invalid)
        .run()
    )
    assert ([{"id": 1}, {"id": 3}], [{"name": "x"}, {}]) == (valid.values, invalid.values)
    assert ("completed", {}, {"p": 4}) == (
        report.outcome,
        dict(report.dead_lettered),
        dict(report.positions),
    )


def test_validate_with_rejects_refuses_to_run_as_a_function() -> None:
    """``rejects=`` needs the stage form; as a map function it would be ignored, so it refuses."""
    check = Validate("check", Expect.required("id"), rejects="invalid")
    with pytest.raises(ConfigError, match=r"only as a stage"):
        check({"id": 1})
