"""The run's log lines: what happened, where, rate-limited where it can flood, never a secret."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

import orjson
import pytest

import riprap
import riprap.checkpoints
import riprap.deadletters
from riprap.connectors.memory import IterableSource, MemorySink
from riprap.deadletters import DeadLetter
from riprap.observability import JsonFormatter, Redactor
from riprap.observability._runlog import LineBudget, RunLog
from riprap.policies import CircuitBreaker, Retry
from riprap.testing import VirtualClock

if TYPE_CHECKING:
    from pathlib import Path

EMAIL = "alice.cooper@example.com"
TOKEN = "sk_live_4eC39HqLyjWDarjtT1zdp7dc"
SECRET_TEXT = f"user {EMAIL} refused with Authorization: Bearer {TOKEN}"


def events(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The lines of the ``riprap.events`` logger."""
    return [r for r in caplog.records if r.name == "riprap.events"]


def pipeline(
    tmp_path: Path, values: list[Any], *, dlq: bool = True, batch_size: int = 100
) -> riprap.Pipeline:
    """A pipeline ``logged`` over ``values`` with in-memory checkpoints and a JSON Lines DLQ."""
    return riprap.Pipeline(
        "logged",
        checkpoint=riprap.checkpoints.MemoryCheckpoints(),
        dead_letter=(
            riprap.deadletters.JsonLinesDeadLetters(tmp_path / "dlq.jsonl") if dlq else None
        ),
        dlq_guard=None,
        batch_size=batch_size,
    ).source(IterableSource("nums", values))


@pytest.mark.anyio
async def test_a_failing_run_logs_its_failure_with_pipeline_step_and_position(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug in a step ends the run with one error line naming pipeline, step and offset."""
    caplog.set_level(logging.INFO, logger="riprap")

    def boom(n: int) -> int:
        if n == 7:
            raise RuntimeError(SECRET_TEXT)
        return n

    p = pipeline(tmp_path, list(range(20)), dlq=False).map("boom", boom).sink(MemorySink())
    with pytest.raises(riprap.PipelineError):
        await p.run()
    lines = events(caplog)
    assert ["started", "failed"] == [r.getMessage().split()[2].rstrip(":") for r in lines]
    failed = lines[-1]
    assert logging.ERROR == failed.levelno
    fields = {k: getattr(failed, k) for k in ("pipeline", "stage", "partition", "offset")}
    assert {"pipeline": "logged", "stage": "boom", "partition": "memory", "offset": 7} == fields
    assert "RuntimeError" in failed.getMessage()
    assert EMAIL not in caplog.text
    assert TOKEN not in caplog.text


@pytest.mark.anyio
async def test_a_completed_run_logs_start_and_end(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A run logs one line as it starts and one, with its counts, as it ends."""
    caplog.set_level(logging.INFO, logger="riprap")
    await pipeline(tmp_path, list(range(10))).sink(MemorySink()).run()
    messages = [r.getMessage() for r in events(caplog)]
    assert 2 == len(messages)
    assert messages[0].startswith("pipeline logged started (start #1)")
    assert messages[1].startswith("pipeline logged completed: 10 read, 10 written")


@pytest.mark.anyio
async def test_breaker_state_changes_are_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A breaker opening and closing again makes one line each, naming its dependency."""
    caplog.set_level(logging.INFO, logger="riprap")
    breaker = CircuitBreaker("scores")

    async def score(n: int) -> int:
        if n == 5:
            breaker.force_open()
            breaker.reset()
        return n

    p = pipeline(tmp_path, list(range(10))).map("score", score, breaker=breaker)
    await p.sink(MemorySink()).run()
    changes = [r for r in events(caplog) if r.getMessage().startswith("breaker ")]
    assert [
        "breaker scores closed -> forced_open (forced_open)",
        "breaker scores forced_open -> closed (reset)",
    ] == [r.getMessage() for r in changes]
    assert [logging.WARNING, logging.INFO] == [r.levelno for r in changes]


@pytest.mark.anyio
async def test_dead_letters_of_a_run_are_logged_up_to_the_budget(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A run's dead letters are logged up to the budget, the rest counted in one summary line."""
    caplog.set_level(logging.INFO, logger="riprap")

    def reject(n: int) -> int:
        raise riprap.DataError(f"bad record from {EMAIL}", reason="validation")

    p = pipeline(tmp_path, list(range(1_000)), batch_size=500).map("reject", reject)
    report = await p.sink(MemorySink()).run()
    assert {"validation": 1_000} == report.dead_lettered
    lines = events(caplog)
    letters = [r for r in lines if r.getMessage().startswith("dead-lettered")]
    assert 10 == len(letters)
    assert [0, 1, 2] == [getattr(r, "offset", None) for r in letters[:3]]
    where = {
        tuple(getattr(r, k, None) for k in ("pipeline", "stage", "partition")) for r in letters
    }
    assert {("logged", "reject", "memory")} == where
    summaries = [r.getMessage() for r in lines if "not logged" in r.getMessage()]
    assert ["990 more dead letters not logged (rate limit)"] == summaries
    assert 13 == len(lines)  # started, 10 letters, the summary, completed
    assert EMAIL not in caplog.text


def test_ten_thousand_dead_letters_make_a_bounded_number_of_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """10,000 letters over ten virtual minutes: at most 10 lines and one summary a minute."""
    caplog.set_level(logging.INFO, logger="riprap")
    clock = VirtualClock()
    run_log = RunLog("logged", Redactor(), clock)
    letter = DeadLetter.create(
        pipeline="logged",
        stage="reject",
        error=riprap.DataError(SECRET_TEXT, reason="validation"),
        record=riprap.Record(b"value", partition="p0", offset=1),
        source="nums",
        attempts=1,
        first_failure_at=0.0,
        last_failure_at=0.0,
        config_hash="",
        redactor=Redactor(),
    )
    for _ in range(10):
        run_log.dead_lettered([letter] * 1_000)
        clock.advance(60.0)
    lines = events(caplog)
    assert 10 * 10 + 9 == len(lines)
    summaries = [r.getMessage() for r in lines if "not logged" in r.getMessage()]
    assert ["990 more dead letters not logged (rate limit)"] * 9 == summaries
    assert EMAIL not in caplog.text
    assert TOKEN not in caplog.text


@pytest.mark.anyio
async def test_json_lines_carry_the_context_and_no_secret(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Through the JSON formatter a dead-letter line is one object with its position, redacted."""
    caplog.set_level(logging.INFO, logger="riprap")

    def reject(n: int) -> int:
        if n == 3:
            raise riprap.DataError(SECRET_TEXT, reason="validation")
        return n

    await pipeline(tmp_path, list(range(5))).map("reject", reject).sink(MemorySink()).run()
    [letter] = [r for r in events(caplog) if r.getMessage().startswith("dead-lettered")]
    line = JsonFormatter().format(letter)
    event = orjson.loads(line)
    assert {"pipeline": "logged", "stage": "reject", "partition": "memory", "offset": 3} == {
        k: event[k] for k in ("pipeline", "stage", "partition", "offset")
    }
    assert EMAIL not in line
    assert TOKEN not in line


def test_a_json_line_with_a_lone_surrogate_is_still_written() -> None:
    """A message or context quoting undecodable text (a lone surrogate) is one JSON line with
    it escaped, not a logging error in place of the line.
    """
    record = logging.LogRecord(
        "riprap", logging.WARNING, __file__, 1, "quarantined %s", ("caf\udce9",), None
    )
    record.partition = "caf\udce9.jsonl"
    line = JsonFormatter().format(record)
    line.encode()  # valid UTF-8: any stream takes it
    event = json.loads(line)
    assert ("quarantined caf\udce9", "caf\udce9.jsonl") == (event["message"], event["partition"])


def test_line_budget_counts_what_it_holds_back_per_interval() -> None:
    """The first lines of an interval pass; the next interval's first line reports the rest."""
    clock = VirtualClock()
    budget = LineBudget(clock, burst=3, interval=60.0)
    first = [budget.take() for _ in range(10)]
    assert [(True, 0)] * 3 + [(False, 0)] * 7 == first
    clock.advance(59.0)
    assert (False, 0) == budget.take()
    clock.advance(1.0)
    assert (True, 8) == budget.take()
    assert 0 == budget.drain()
    budget.take()
    budget.take()
    budget.take()
    assert 1 == budget.drain()


class ListHandler(logging.Handler):
    """Keeps the records it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_dead_letter_lines_carry_the_trace_id_of_the_record() -> None:
    """A record consumed with a W3C traceparent header has its trace id on its line."""
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    parent = f"00-{trace}-00f067aa0ba902b7-01".encode()
    record = riprap.Record(b"v", partition="p0", offset=9, headers=[("traceparent", parent)])
    letter = DeadLetter.create(
        pipeline="logged",
        stage="reject",
        error=riprap.DataError("bad", reason="validation"),
        record=record,
        source="nums",
        attempts=1,
        first_failure_at=0.0,
        last_failure_at=0.0,
        config_hash="",
        redactor=Redactor(),
    )
    handler = ListHandler()
    logger = logging.getLogger("riprap.events")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        RunLog("logged", Redactor(), VirtualClock()).dead_lettered([letter])
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    event = orjson.loads(JsonFormatter().format(handler.records[0]))
    assert ("p0", 9, trace) == (event["partition"], event["offset"], event["trace_id"])


@pytest.mark.anyio
async def test_retries_are_logged_with_their_stage(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Each retry of a step makes a line naming the step and the attempt that failed."""
    caplog.set_level(logging.INFO, logger="riprap")
    calls: dict[int, int] = {}

    async def flaky(n: int) -> int:
        calls[n] = calls.get(n, 0) + 1
        if n == 2 and calls[n] < 3:
            raise riprap.TransientError(f"blip for {EMAIL}")
        return n

    retry = Retry(attempts=3, wait_initial=0.001)
    await (
        pipeline(tmp_path, list(range(5))).map("flaky", flaky, retry=retry).sink(MemorySink()).run()
    )
    retries = [r for r in events(caplog) if r.getMessage().startswith("retry of flaky")]
    assert ["flaky", "flaky"] == [getattr(r, "stage", None) for r in retries]
    assert "after attempt 2 " in retries[1].getMessage()
    assert EMAIL not in caplog.text


def test_every_quarantine_is_logged_outside_the_budget() -> None:
    """Crash-loop quarantines are rare and serious: each has its error line, never held back."""
    handler = ListHandler()
    logger = logging.getLogger("riprap.events")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    letters = [
        DeadLetter.create(
            pipeline="logged",
            stage="parse",
            error=riprap.DataError(f"stopped the run: {EMAIL}", reason="crash_loop"),
            record=riprap.Record(b"v", partition="p0", offset=offset),
            source="nums",
            attempts=3,
            first_failure_at=0.0,
            last_failure_at=0.0,
            config_hash="",
            redactor=Redactor(),
        )
        for offset in range(20)
    ]
    try:
        RunLog("logged", Redactor(), VirtualClock(), burst=2).dead_lettered(letters)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    assert list(range(20)) == [getattr(r, "offset", None) for r in handler.records]
    assert {logging.ERROR} == {r.levelno for r in handler.records}
    assert (
        handler.records[0]
        .getMessage()
        .startswith("quarantined a record that stopped the pipeline 3 times")
    )
    assert all(EMAIL not in r.getMessage() for r in handler.records)
