"""The dead-letter seed scenario, end to end in virtual time.

20,000 JSON records go through parse -> enrich -> SQLite upsert with a JSON
Lines dead-letter queue. One record in 1,000 is malformed (bad JSON, non-UTF-8
bytes, JSON without a usable id); one in 100 needs a dependency that is down
for it on every attempt, while the same dependency also fails a seeded 20% of
the other calls, which retries absorb. The sink must hold exactly the good
records and the DLQ exactly the bad ones, with their bytes as consumed. Then
the stages are "fixed" and the DLQ is replayed the way ``riprap dlq replay``
does it: afterwards the table holds every id exactly once, and replaying again
sends nothing.
"""

from __future__ import annotations

import base64
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
import pytest

import riprap
import riprap.checkpoints
import riprap.deadletters
from riprap.cli._main import replay_pipeline
from riprap.connectors.memory import IterableSource
from riprap.connectors.sqlite import SqliteSink
from riprap.policies import Retry
from riprap.testing import VirtualClock

from ._subprocesses import count, query

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.anyio

RECORDS = 20_000
MALFORMED = RECORDS // 1_000
DOWN = RECORDS // 100
SEED = 4242
ATTEMPTS = 4
FLAKY_RATE = 0.2
"""Share of calls to the dependency that fail transiently (for records it can serve)."""
PARTITION = "events"
TABLE = "events"

RETRY = Retry(attempts=ATTEMPTS, timeout=None, wait_initial=0.05, wait_max=0.5)
"""No overall deadline: a letter's attempt count must be exactly ``ATTEMPTS``."""

# Malformed payloads (``%d`` is the record's id) and the reason parse gives each.
BAD_PAYLOADS: tuple[tuple[bytes, str], ...] = (
    (b'{"id": %d, "user": ', "decode_error"),  # truncated
    (b'\xff\xfe{"id": %d}', "decode_error"),  # a UTF-16 byte-order mark: not UTF-8
    (b'{"id": %d, "user": "\xc3\x28"}', "decode_error"),  # invalid UTF-8 inside a string
    (b"\x80\x81\x82\xfe\xff %d", "decode_error"),  # binary garbage
    (b"id=%d&user=x", "decode_error"),  # not JSON at all
    (b'{"id": %d,}', "decode_error"),  # trailing comma
    (b"", "decode_error"),  # empty payload
    (b"[%d, 1, 2]", "validation"),  # JSON, but not an object
    (b'{"id": "%d"}', "validation"),  # the id is not an integer
    (b"null", "validation"),
)


@dataclass(frozen=True, slots=True)
class Scenario:
    """The input stream and what must become of every record."""

    values: list[bytes]
    malformed: dict[int, str]
    """Offset -> the reason parse dead-letters it with."""
    down: frozenset[int]
    """Ids the dependency is down for: they run out of retries."""
    flaky_failures: dict[int, int]
    """Good id -> how many first attempts fail transiently (at most ``ATTEMPTS - 1``)."""

    @property
    def good(self) -> list[int]:
        """Ids that reach the sink on the first run."""
        return [i for i in range(RECORDS) if i not in self.malformed and i not in self.down]


def event(i: int) -> dict[str, Any]:
    """The well-formed record with id ``i``."""
    return {"id": i, "user": f"u{i}", "amount_cents": (i * 7919) % 100_000}


def score(i: int) -> int:
    """What the dependency answers for id ``i``."""
    return (i * 31) % 997


def make_scenario() -> Scenario:
    """A seeded stream: malformed and dependency-down offsets are disjoint random samples."""
    rng = random.Random(SEED)
    picked = rng.sample(range(RECORDS), MALFORMED + DOWN)
    malformed_offsets, down = picked[:MALFORMED], frozenset(picked[MALFORMED:])
    values = [orjson.dumps(event(i)) for i in range(RECORDS)]
    malformed: dict[int, str] = {}
    for n, offset in enumerate(sorted(malformed_offsets)):
        template, reason = BAD_PAYLOADS[n % len(BAD_PAYLOADS)]
        values[offset] = template.replace(b"%d", str(offset).encode())
        malformed[offset] = reason
    # The flaky failures are decided per record up front, so the outcome does
    # not depend on the order in which concurrent calls happen to run.
    flaky: dict[int, int] = {}
    for i in range(RECORDS):
        if i in malformed or i in down:
            continue  # parse drops the first; the second fail every attempt anyway
        failures = 0
        while failures < ATTEMPTS - 1 and rng.random() < FLAKY_RATE:
            failures += 1
        if failures:
            flaky[i] = failures
    return Scenario(values, malformed, down, flaky)


def parse(raw: bytes) -> dict[str, Any]:
    """Decode one record; undecodable bytes and records without an integer id are data errors."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise riprap.DecodeError(f"invalid JSON: {error.msg}") from None
    if not isinstance(value, dict) or not isinstance(value.get("id"), int):
        raise riprap.DataError("not an object with an integer id", reason="validation")
    return value


def parse_tolerant(record: riprap.Record) -> dict[str, Any]:
    """The fixed parse: a malformed payload becomes a placeholder keyed by the record's key."""
    try:
        return parse(record.value)
    except riprap.DataError:
        raw = base64.b64encode(record.value).decode("ascii")
        return {"id": record.key, "malformed": True, "raw": raw}


class Dependency:
    """An enrichment service: down for some ids, and flaky (seeded) for the others."""

    def __init__(self, clock: VirtualClock, scenario: Scenario, *, fixed: bool = False) -> None:
        self.clock = clock
        self.down = frozenset() if fixed else scenario.down
        self.flaky = {} if fixed else dict(scenario.flaky_failures)
        self.calls = 0

    async def enrich(self, value: dict[str, Any]) -> dict[str, Any]:
        """Add the score; transient failures as configured."""
        self.calls += 1
        await self.clock.sleep(0.005)
        i = value["id"]
        if i in self.down:
            raise riprap.TransientError(f"scoring service unavailable for {i}")
        if self.flaky.get(i):
            self.flaky[i] -= 1
            raise riprap.TransientError("scoring service: 503")
        return {**value, "score": score(i)}


def build(
    tmp_path: Path,
    clock: VirtualClock,
    scenario: Scenario,
    checkpoint: riprap.checkpoints.CheckpointBackend,
    dependency: Dependency,
    *,
    fixed: bool = False,
) -> riprap.Pipeline:
    """The pipeline under test; ``fixed`` is the version deployed after the incident."""
    pipeline = riprap.Pipeline(
        "seed",
        checkpoint=checkpoint,
        dead_letter=riprap.deadletters.JsonLinesDeadLetters(tmp_path / "dlq.jsonl"),
        clock=clock,
    ).source(
        # Each record carries its id as its key (like a message key), so the fixed
        # parse can still say which id a malformed payload was meant to be.
        IterableSource("events", scenario.values, partition=PARTITION, keys=list(range(RECORDS)))
    )
    if fixed:
        pipeline = pipeline.map("parse", parse_tolerant, record=True)
    else:
        pipeline = pipeline.map("parse", parse)
    # No attempt timeout on the sink: its writes run in a worker thread, and while
    # every task waits for one the virtual clock jumps from deadline to deadline,
    # so a timeout on that clock would measure nothing real.
    return pipeline.map("enrich", dependency.enrich, concurrency=32, retry=RETRY).sink(
        SqliteSink(tmp_path / "out.db", table=TABLE, key="id"), attempt_timeout=None
    )


def table(tmp_path: Path) -> dict[int, dict[str, Any]]:
    """The sink's rows by id."""
    return {
        key: orjson.loads(value)
        for key, value in query(tmp_path / "out.db", f"SELECT id, value FROM {TABLE}")
    }


async def test_seed_scenario_dead_letters_exactly_the_bad_records(tmp_path: Path) -> None:
    """The sink gets exactly the good records and the DLQ exactly the bad ones, with their bytes."""
    scenario = make_scenario()
    clock = VirtualClock()
    dependency = Dependency(clock, scenario)
    pipeline = build(tmp_path, clock, scenario, riprap.checkpoints.MemoryCheckpoints(), dependency)
    assert (
        riprap.deadletters.DeadLetterGuard() == pipeline.options.dlq_guard
    )  # the defaults must not trip
    async with clock.autojump():
        report = await pipeline.run()

    assert {i: {**event(i), "score": score(i)} for i in scenario.good} == table(tmp_path)

    letters = list(riprap.deadletters.read_dead_letters(tmp_path / "dlq.jsonl"))
    expected_letters = {
        **{o: ("parse", reason, 1) for o, reason in scenario.malformed.items()},
        **dict.fromkeys(scenario.down, ("enrich", "retries_exhausted", ATTEMPTS)),
    }
    assert expected_letters == {
        d.offset: (d.stage, d.reason, d.attempts) for d in letters if d.offset is not None
    }
    assert len(expected_letters) == len(letters)  # no letter twice, none without an offset
    assert {PARTITION} == {d.partition for d in letters}
    assert {o: scenario.values[o] for o in expected_letters} == {
        d.offset: d.original_value() for d in letters
    }
    assert {"utf-8", "base64"} == {d.value_encoding for d in letters}  # non-UTF-8 kept as bytes
    assert {"riprap.TransientError"} == {
        d.error_type for d in letters if d.reason == "retries_exhausted"
    }

    reasons: dict[str, int] = {"retries_exhausted": DOWN}
    for reason in scenario.malformed.values():
        reasons[reason] = reasons.get(reason, 0) + 1
    assert reasons == dict(report.dead_lettered)
    assert "completed" == report.outcome
    assert (RECORDS, len(scenario.good)) == (report.records_in, report.records_out)
    assert {PARTITION: RECORDS} == dict(report.positions)
    flaky_retries = sum(scenario.flaky_failures.values())
    assert flaky_retries > 0
    # Every failed call but the last of a record that ran out was retried.
    assert flaky_retries + DOWN * (ATTEMPTS - 1) == report.retries
    parsed = RECORDS - MALFORMED
    assert parsed + flaky_retries + DOWN * (ATTEMPTS - 1) == dependency.calls


async def test_replay_after_the_fix_completes_the_table_once(tmp_path: Path) -> None:
    """A replay through the fixed pipeline fills in every id once; a second replay adds nothing."""
    scenario = make_scenario()
    clock = VirtualClock()
    original = build(
        tmp_path,
        clock,
        scenario,
        riprap.checkpoints.MemoryCheckpoints(),
        Dependency(clock, scenario),
    )
    async with clock.autojump():
        await original.run()
    assert len(scenario.good) == count(tmp_path / "out.db", f"SELECT count(*) FROM {TABLE}")

    replays = riprap.checkpoints.MemoryCheckpoints()
    failed = tmp_path / "dlq.jsonl.replay-failed.jsonl"

    async def replay() -> riprap.RunReport:
        fixed = build(
            tmp_path, clock, scenario, replays, Dependency(clock, scenario, fixed=True), fixed=True
        )
        pipeline = replay_pipeline(
            fixed,
            riprap.deadletters.DeadLetterSource(tmp_path / "dlq.jsonl"),
            riprap.deadletters.JsonLinesDeadLetters(failed),
        )
        assert "seed.replay" == pipeline.name
        async with clock.autojump():
            return await pipeline.run()

    first = await replay()
    letters = MALFORMED + DOWN
    assert ("completed", letters, letters) == (first.outcome, first.records_in, first.records_out)
    assert {} == dict(first.dead_lettered)
    assert [] == list(riprap.deadletters.read_dead_letters(failed))

    expected = {
        i: {**event(i), "score": score(i)} for i in range(RECORDS) if i not in scenario.malformed
    }
    for offset in scenario.malformed:
        raw = base64.b64encode(scenario.values[offset]).decode("ascii")
        expected[offset] = {"id": offset, "malformed": True, "raw": raw, "score": score(offset)}
    database = tmp_path / "out.db"
    assert (RECORDS, RECORDS) == (
        count(database, f"SELECT count(*) FROM {TABLE}"),
        count(database, f"SELECT count(DISTINCT id) FROM {TABLE}"),
    )
    assert expected == table(tmp_path)

    second = await replay()
    assert (0, 0) == (second.records_in, second.records_out)
    assert RECORDS == count(database, f"SELECT count(*) FROM {TABLE}")
    assert [] == list(riprap.deadletters.read_dead_letters(failed))
    # Replays never write to the store they read.
    assert letters == len(list(riprap.deadletters.read_dead_letters(tmp_path / "dlq.jsonl")))
