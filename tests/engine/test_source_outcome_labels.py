"""Source outcome names become metric labels only when bounded, like dead-letter reasons (I10)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import aiohttp
import anyio.lowlevel
import pytest
from prometheus_client.parser import text_string_to_metric_families

import riprap
import riprap.checkpoints
import riprap.observability
from riprap.connectors.memory import MemorySink

if TYPE_CHECKING:
    from riprap import SourceBatch, SourceContext

pytestmark = pytest.mark.anyio

EMAIL = "alice.smith@example.com"


class CountingSource:
    """A source that reports ``outcomes`` (one each) when it opens, then ends without records."""

    name = "counting"

    def __init__(self, outcomes: list[str]) -> None:
        self.outcomes = outcomes

    async def open(self, context: SourceContext) -> None:
        """Report every outcome."""
        await anyio.lowlevel.checkpoint()
        for outcome in self.outcomes:
            context.count(outcome, 1)

    async def read(self, max_records: int) -> SourceBatch | None:
        """No records."""
        await anyio.lowlevel.checkpoint()
        return None

    async def aclose(self) -> None:
        """Nothing to close."""
        await anyio.lowlevel.checkpoint()


async def _run(outcomes: list[str]) -> tuple[riprap.RunReport, dict[str, float]]:
    """Run a pipeline whose source reports ``outcomes``; its report and /metrics outcome labels."""
    pipeline = (
        riprap.Pipeline("outcomes", checkpoint=riprap.checkpoints.MemoryCheckpoints())
        .source(CountingSource(outcomes))
        .sink(MemorySink())
    )
    async with pipeline.open() as running, riprap.observability.serve_health(running) as server:
        report = await running.wait()
        url = f"http://127.0.0.1:{server.port}/metrics"
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            body = (await response.read()).decode()
    labels = {
        sample.labels["outcome"]: sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
        if sample.name == "riprap_source_outcomes_total"
    }
    return report, labels


async def test_an_outcome_made_of_data_is_counted_as_other(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An email in an outcome name is counted as ``other`` with one warning, never shown."""
    caplog.set_level(logging.WARNING, logger="riprap.runtime")
    outcomes = ["objects_quarantined", f"skipped_{EMAIL}", "Bad Name", f"skipped_{EMAIL}"]
    report, labels = await _run(outcomes)
    warnings = [r for r in caplog.records if "'other'" in r.getMessage()]
    shown = report.format() + "".join(r.getMessage() for r in caplog.records) + str(labels)
    assert {"objects_quarantined": 1, "other": 3} == dict(report.source_outcomes)
    assert {"objects_quarantined": 1.0, "other": 3.0} == labels
    assert (1, False) == (len(warnings), "alice" in shown)


async def test_outcomes_beyond_the_cap_are_counted_as_other() -> None:
    """Only the first 50 distinct outcome names of a run are labels; later ones are ``other``."""
    outcomes = [f"outcome_{i}" for i in range(60)] + ["outcome_0"]
    report, labels = await _run(outcomes)
    expected = {f"outcome_{i}": 1 for i in range(1, 50)} | {"outcome_0": 2, "other": 10}
    assert expected == dict(report.source_outcomes)
    assert len(labels) == 51
