"""The report of a failed run: the failing step, the record, the user's line of code."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import anyio
import orjson
import pytest

import riprap
import riprap.checkpoints
from riprap.connectors.memory import IterableSource, MemorySink
from riprap.testing import wait_until
from tests._sinks import GatedSink

if TYPE_CHECKING:
    from collections.abc import Callable


def parse_amount(value: int) -> int:
    """A step whose bug is one call down, in a helper, and in the standard library below it."""
    return checked(value)


def checked(value: int) -> int:
    """Fails on 3 inside ``json.loads``: the user's frame is this line, not the library's."""
    if value == 3:
        return int(json.loads("{not json"))
    return value


def failing_pipeline(step: object = parse_amount) -> riprap.Pipeline:
    """Ten records through ``step`` into memory."""
    return (
        riprap.Pipeline("amounts", checkpoint=riprap.checkpoints.MemoryCheckpoints())
        .source(IterableSource("in", list(range(10))))
        .map("parse", step)  # type: ignore[arg-type]
        .sink(MemorySink())
    )


def test_a_failed_run_returns_its_report_when_not_checked() -> None:
    """With check=False, riprap.run returns the failed run's report naming step and record."""
    report = riprap.run(failing_pipeline(), handle_signals=False, check=False)
    failure = report.failure
    assert failure is not None
    assert ("failed", "parse", "memory@3", "JSONDecodeError") == (
        report.outcome,
        failure.step,
        failure.position,
        failure.error_type,
    )


def test_the_users_frame_is_the_innermost_line_of_user_code() -> None:
    """The frame is the helper's line that called into the standard library, with its source."""
    report = riprap.run(failing_pipeline(), handle_signals=False, check=False)
    assert report.failure is not None
    frame = report.failure.frame
    assert frame is not None
    assert (__file__, "checked", 'return int(json.loads("{not json"))') == (
        frame.file,
        frame.function,
        frame.code,
    )


def test_every_count_of_the_text_report_ends_in_one_column() -> None:
    """Counts under long dead-letter reasons, steps and outcomes line up with the totals."""
    report = riprap.RunReport(
        pipeline="p",
        outcome="failed",
        records_in=1_000,
        records_out=900,
        dropped=0,
        duration=1.0,
        checkpoints=1,
        positions={},
        steps=(),
        dead_lettered={"data_error": 60, "not_json_serializable": 40},
        source_outcomes={"left_in_flight": 7},
    )
    counted = [line for line in report.format().splitlines() if line[-1:].isdigit()]
    assert len(counted) >= 8
    assert {len("  records in      ") + 12} == {len(line) for line in counted}


def test_the_text_report_shows_the_frame_and_verbose_the_chain() -> None:
    """format() shows step, record and frame; format(verbose=True) adds the whole traceback."""
    report = riprap.run(failing_pipeline(), handle_signals=False, check=False)
    short, long = report.format(), report.format(verbose=True)
    frame_line = f'File "{__file__}", line'
    assert (True, True, True, False) == (
        "  failed step     parse" in short and "  failed record   memory@3" in short,
        frame_line in short and "in checked" in short,
        "json.decoder.JSONDecodeError" in long and "Traceback (most recent call last)" in long,
        "Traceback" in short,
    )


def test_the_report_as_json_carries_the_failure() -> None:
    """to_dict() is JSON-ready and carries the failure; the traceback only when verbose."""
    report = riprap.run(failing_pipeline(), handle_signals=False, check=False)
    short = orjson.loads(orjson.dumps(report.to_dict()))
    long = report.to_dict(verbose=True)
    assert ("failed", "parse", 3, "checked", False, True) == (
        short["outcome"],
        short["failure"]["step"],
        short["failure"]["offset"],
        short["failure"]["frame"]["function"],
        "traceback" in short["failure"],
        "JSONDecodeError" in long["failure"]["traceback"],
    )


def test_the_frame_and_traceback_are_redacted() -> None:
    """A secret in the failing line of code and in the message never reaches the report."""

    def leaky(value: int) -> int:
        raise RuntimeError("login password=hunter2hunter2 Bearer abcdefabcdefabcdef")

    report = riprap.run(failing_pipeline(leaky), handle_signals=False, check=False)
    text = report.format(verbose=True) + orjson.dumps(report.to_dict(verbose=True)).decode()
    assert ("hunter2hunter2" in text, "abcdefabcdefabcdef" in text) == (False, False)


def test_checked_runs_still_raise() -> None:
    """By default the failed run raises its PipelineError, as before."""
    with pytest.raises(riprap.PipelineError, match="memory@3"):
        riprap.run(failing_pipeline(), handle_signals=False)


def test_a_completed_run_has_no_failure() -> None:
    """A run that completes reports no failure and no error."""
    report = riprap.run(failing_pipeline(lambda v: v), handle_signals=False, check=False)
    assert ("completed", None, None) == (report.outcome, report.failure, report.error)


class BrokenSource:
    """Gives two batches, then loses its connection."""

    name = "broken"

    async def open(self, context: riprap.SourceContext) -> None:
        self.reads = 0

    async def read(self, max_records: int) -> riprap.SourceBatch | None:
        self.reads += 1
        if self.reads > 2:
            raise ConnectionError("broker gone")
        return riprap.SourceBatch("p", [1, 2], start=(self.reads - 1) * 2)

    async def aclose(self) -> None:
        pass


def test_a_failing_source_is_reported_with_its_exception_and_frame() -> None:
    """A source error has no step or record, but the report names the exception and the line."""
    pipeline = (
        riprap.Pipeline("broken", checkpoint=riprap.checkpoints.MemoryCheckpoints())
        .source(BrokenSource())
        .sink(MemorySink())
    )
    report = riprap.run(pipeline, handle_signals=False, check=False)
    failure = report.failure
    assert failure is not None
    assert failure.frame is not None
    assert ("failed", None, None, "ConnectionError", "read") == (
        report.outcome,
        failure.step,
        failure.position,
        failure.error_type,
        failure.frame.function,
    )
    assert "  exception       ConnectionError" in report.format()


@pytest.mark.anyio
async def test_an_embedded_failed_run_keeps_its_report() -> None:
    """After a failed embedded run raised, running.report holds the report with the failure."""
    running = None
    with pytest.raises(riprap.PipelineError):
        async with failing_pipeline().open() as running:
            await running.wait()
    assert running is not None
    report = running.report
    assert report is not None
    assert ("failed", "parse") == (report.outcome, report.failure and report.failure.step)


def test_a_failed_run_says_how_many_records_it_leaves_to_the_next() -> None:
    """Every record read is in the report: those of batches not done when a step failed are
    ``left_in_flight``, exactly what lies past the checkpoint, and the next run reads them.
    """
    backend = riprap.checkpoints.MemoryCheckpoints()

    def numbers(step: Callable[[int], int]) -> riprap.Pipeline:
        return (
            riprap.Pipeline("numbers", checkpoint=backend, batch_size=100)
            .source(IterableSource("in", range(2_000)))
            .map("check", step)
            .sink(MemorySink())
        )

    def fails_at_500(n: int) -> int:
        if n == 500:
            raise RuntimeError("a bug")
        return n

    failed = riprap.run(numbers(fails_at_500), handle_signals=False, check=False)
    left = failed.source_outcomes.get("left_in_flight", 0)
    assert ("failed", failed.records_in - failed.positions["memory"]) == (failed.outcome, left)
    assert left >= 100  # at least the failing record's batch
    assert "left_in_flight" in failed.format()
    rerun = riprap.run(numbers(lambda n: n), handle_signals=False)
    assert (2_000 - failed.positions["memory"], {}) == (rerun.records_in, rerun.source_outcomes)


@pytest.mark.anyio
async def test_an_aborted_run_says_how_many_records_it_leaves_to_the_next() -> None:
    """Behind a sink that writes nothing, an abort leaves every record read not done: all of
    them are ``left_in_flight``, and the checkpoint has not moved.
    """
    sink = GatedSink()
    pipeline = (
        riprap.Pipeline(
            "stuck",
            checkpoint=riprap.checkpoints.MemoryCheckpoints(),
            batch_size=10,
            max_in_flight=50,
        )
        .source(IterableSource("in", range(1_000)))
        .sink(sink)
    )
    with anyio.fail_after(10):
        async with pipeline.open() as running:
            await wait_until(lambda: running.statistics().records_in == 50, what="a full bound")
            running.abort()
            report = await running.wait()
    expected = ("aborted", 50, {"left_in_flight": 50}, {"memory": 0})
    assert expected == (
        report.outcome,
        report.records_in,
        dict(report.source_outcomes),
        dict(report.positions),
    )
    assert [] == sink.values
