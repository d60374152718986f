"""Dead-letter reasons become metric labels only when bounded: never data, never unbounded (I10)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

import riprap
import riprap.checkpoints
import riprap.deadletters
import riprap.observability
from riprap.connectors.memory import IterableSource, MemorySink

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.anyio

EMAIL = "alice.smith@example.com"


def _pipeline(tmp_path: Path, reasons: list[str]) -> riprap.Pipeline:
    """A pipeline that dead-letters record ``i`` with ``reasons[i]`` as the DataError's reason."""

    def fail(i: int) -> int:
        raise riprap.DataError(f"record {i} is bad", reason=reasons[i])

    return (
        riprap.Pipeline(
            "labels",
            checkpoint=riprap.checkpoints.MemoryCheckpoints(),
            dead_letter=riprap.deadletters.JsonLinesDeadLetters(tmp_path / "dlq.jsonl"),
            dlq_guard=None,
        )
        .source(IterableSource("in", list(range(len(reasons)))))
        .map("fail", fail)
        .sink(MemorySink())
    )


def _dead_letter_labels(text: str) -> dict[str, float]:
    """``riprap_dead_letters_total`` in exposition ``text``, by reason label."""
    return {
        sample.labels["reason"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "riprap_dead_letters_total"
    }


async def test_reason_made_of_data_is_counted_as_other(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An email as the reason is counted as ``other``; /metrics and the report show no email."""
    reasons = ["bad_value", f"bad_customer_{EMAIL}", f"bad_customer_{EMAIL}"]
    caplog.set_level(logging.WARNING, logger="riprap.dlq")
    pipeline = _pipeline(tmp_path, reasons)
    async with pipeline.open() as running, riprap.observability.serve_health(running) as server:
        report = await running.wait()
        url = f"http://127.0.0.1:{server.port}/metrics"
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            body = (await response.read()).decode()
    letters = list(riprap.deadletters.read_dead_letters(tmp_path / "dlq.jsonl"))
    warnings = [r for r in caplog.records if r.name == "riprap.dlq" and "other" in r.getMessage()]
    text = body + report.format() + "".join(r.getMessage() for r in caplog.records)
    assert {"bad_value": 1.0, "other": 2.0} == _dead_letter_labels(body)
    assert {"bad_value": 1, "other": 2} == dict(report.dead_lettered)
    assert (False, False, 1) == ("example.com" in text, "alice" in text, len(warnings))
    assert ["bad_value", "other", "other"] == [letter.reason for letter in letters]
    assert [False, True, True] == ["[REDACTED:email]" in letter.message for letter in letters]
    assert [] == [letter.id for letter in letters if EMAIL in letter.message + letter.traceback]


async def test_reasons_beyond_the_cap_are_counted_as_other(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A run counts 50 distinct reasons; later new ones (valid or not) count as ``other``."""
    reasons = [f"reason_{i}" for i in range(60)] + ["reason_3", "Not-An-Identifier"]
    caplog.set_level(logging.WARNING, logger="riprap.dlq")
    report = await _pipeline(tmp_path, reasons).run()
    expected = {f"reason_{i}": 1 for i in range(50)} | {"reason_3": 2, "other": 11}
    warnings = [r for r in caplog.records if r.name == "riprap.dlq" and "other" in r.getMessage()]
    assert (expected, 1) == (dict(report.dead_lettered), len(warnings))
