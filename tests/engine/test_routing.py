"""Error routing in a running pipeline: DLQ, per-step stop, sink errors, crash loops, I6."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import orjson
import pytest

import riprap
import riprap.checkpoints
import riprap.deadletters
from riprap.connectors.memory import IterableSource, MemorySink
from riprap.deadletters import DeadLetterWriteError, JsonLinesDeadLetters, read_dead_letters
from riprap.testing import VirtualClock

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from riprap.deadletters import DeadLetter

pytestmark = pytest.mark.anyio


class RecordingClock:
    """A virtual clock (time jumps when every task waits) that records each sleep."""

    def __init__(self) -> None:
        self.inner = VirtualClock()
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.inner.monotonic()

    def time(self) -> float:
        return self.inner.time()

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        await self.inner.sleep(seconds)


def parse(raw: bytes) -> dict[str, Any]:
    """Decode JSON; bad input is a data error."""
    try:
        value: dict[str, Any] = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise riprap.DataError(str(error), reason="decode_error") from None
    if "id" not in value:
        raise riprap.DataError("no id", reason="validation")
    return value


def records(n: int, bad: dict[int, bytes]) -> list[bytes]:
    """``n`` JSON records, with the given positions replaced by bad bytes."""
    return [bad.get(i, orjson.dumps({"id": i, "email": f"u{i}@x.io"})) for i in range(n)]


async def test_data_errors_go_to_dlq_with_original_bytes(tmp_path: Path) -> None:
    """Malformed records land in the DLQ with reason and bytes as consumed; the rest pass."""
    bad = {3: b"{not json", 7: b'{"no_id": 1}', 8: b"\xff\xfe binary"}
    dlq = JsonLinesDeadLetters(tmp_path / "dlq.jsonl")
    sink = MemorySink()
    p = (
        riprap.Pipeline(
            "orders", checkpoint=riprap.checkpoints.MemoryCheckpoints(), dead_letter=dlq
        )
        .source(IterableSource("in", records(20, bad)))
        .map("parse", parse)
        .sink(sink)
    )
    report = await p.run()
    letters = list(read_dead_letters(tmp_path / "dlq.jsonl"))
    expected = [
        (3, "decode_error", b"{not json"),
        (7, "validation", b'{"no_id": 1}'),
        (8, "decode_error", b"\xff\xfe binary"),
    ]
    assert expected == [(d.offset, d.reason, d.original_value()) for d in letters]
    assert {"parse"} == {d.stage for d in letters}
    assert [i for i in range(20) if i not in bad] == [v["id"] for v in sink.values]
    assert {"decode_error": 2, "validation": 1} == report.dead_lettered
    assert {"memory": 20} == report.positions


async def test_on_error_stop_overrides_the_dlq(tmp_path: Path) -> None:
    """A step with on_error='stop' stops the run on a DataError even with a DLQ."""
    p = (
        riprap.Pipeline(
            "orders",
            checkpoint=riprap.checkpoints.MemoryCheckpoints(),
            dead_letter=JsonLinesDeadLetters(tmp_path / "dlq.jsonl"),
        )
        .source(IterableSource("in", records(10, {4: b"{"})))
        .map("parse", parse, on_error="stop")
        .sink(MemorySink())
    )
    with pytest.raises(riprap.PipelineError, match=r"stage 'parse' failed at memory@4: DataError"):
        await p.run()


async def test_bug_is_never_dead_lettered(tmp_path: Path) -> None:
    """An unexpected exception stops the run even when a DLQ is configured."""
    p = (
        riprap.Pipeline(
            "orders",
            checkpoint=riprap.checkpoints.MemoryCheckpoints(),
            dead_letter=JsonLinesDeadLetters(tmp_path / "dlq.jsonl"),
        )
        .source(IterableSource("in", list(range(10))))
        .map("bug", lambda v: [][v])
        .sink(MemorySink())
    )
    with pytest.raises(riprap.PipelineError, match="IndexError"):
        await p.run()
    assert [] == list(read_dead_letters(tmp_path / "dlq.jsonl"))


class PickySink:
    """An all-or-nothing sink that refuses values without an id."""

    name = "picky"
    idempotent = True

    def __init__(self) -> None:
        self.rows: dict[int, Any] = {}

    async def open(self) -> None: ...

    async def write(self, batch: riprap.Batch) -> None:
        for value in batch.items:
            if "id" not in value:
                raise riprap.DataError("value has no id", reason="sink_rejected")
        self.rows.update((v["id"], v) for v in batch.items)

    async def flush(self) -> None: ...

    async def aclose(self) -> None: ...


async def test_sink_data_error_dead_letters_only_the_bad_record(tmp_path: Path) -> None:
    """When the sink rejects a batch, records are retried one by one and only bad ones DLQ."""
    values = [{"id": i} if i != 5 else {"name": "x"} for i in range(12)]
    sink = PickySink()
    p = (
        riprap.Pipeline(
            "orders",
            checkpoint=riprap.checkpoints.MemoryCheckpoints(),
            dead_letter=JsonLinesDeadLetters(tmp_path / "dlq.jsonl"),
            batch_size=4,
        )
        .source(IterableSource("in", values))
        .sink(sink)
    )
    report = await p.run()
    letters = list(read_dead_letters(tmp_path / "dlq.jsonl"))
    assert [(5, "picky", "sink_rejected")] == [(d.offset, d.stage, d.reason) for d in letters]
    assert sorted(set(range(12)) - {5}) == sorted(sink.rows)
    assert 11 == report.records_out


class BrokenDeadLetters:
    """A dead-letter sink whose writes always fail."""

    name = "broken-dlq"

    def __init__(self) -> None:
        self.attempts = 0

    async def open(self) -> None: ...

    async def write(self, letters: Sequence[DeadLetter]) -> None:
        self.attempts += 1
        raise OSError("disk full")

    async def aclose(self) -> None: ...


async def test_unwritable_dlq_stops_without_moving_the_position() -> None:
    """If the DLQ cannot be written, the run retries, then stops; the bad record is not passed."""
    backend = riprap.checkpoints.MemoryCheckpoints()
    dlq = BrokenDeadLetters()
    clock = RecordingClock()
    p = (
        riprap.Pipeline("orders", checkpoint=backend, dead_letter=dlq, clock=clock, batch_size=5)
        .source(IterableSource("in", records(20, {12: b"{"})))
        .map("parse", parse)
        .sink(MemorySink())
    )
    async with clock.inner.autojump():
        with pytest.raises(DeadLetterWriteError, match="failed 5 times"):
            await p.run()
    saved = await backend.load("orders")
    assert saved is not None
    assert {"memory": 10} == dict(saved.positions)
    assert 5 == dlq.attempts
    backoff = [t for t in clock.slept if t not in (5.0, 30.0, 60.0)]  # not ticks or timeouts
    assert [0.2, 0.4, 0.8, 1.6] == backoff


async def test_crash_loop_is_quarantined_after_max_crashes(tmp_path: Path) -> None:
    """A record that crashed the run max_crashes times is dead-lettered as crash_loop next start."""
    backend = riprap.checkpoints.MemoryCheckpoints()

    def explode_on_13(v: int) -> int:
        if v == 13:
            raise RuntimeError("bug on 13")
        return v

    def build(sink: MemorySink) -> riprap.Pipeline:
        return (
            riprap.Pipeline(
                "loop",
                checkpoint=backend,
                dead_letter=JsonLinesDeadLetters(tmp_path / "dlq.jsonl"),
                max_crashes=2,
                batch_size=4,
            )
            .source(IterableSource("in", list(range(30))))
            .map("explode", explode_on_13)
            .sink(sink)
        )

    for _ in range(2):
        with pytest.raises(riprap.PipelineError, match="memory@13"):
            await build(MemorySink()).run()
    crashed = await backend.load("loop")
    start = 0 if crashed is None else dict(crashed.positions).get("memory", 0)
    assert start <= 12  # what was written before the crashes, at most the batches before 13's
    sink = MemorySink()
    report = await build(sink).run()
    letters = list(read_dead_letters(tmp_path / "dlq.jsonl"))
    assert [(13, "crash_loop", 2)] == [(d.offset, d.reason, d.attempts) for d in letters]
    assert [v for v in range(start, 30) if v != 13] == sink.values
    assert {"crash_loop": 1} == report.dead_lettered
    saved = await backend.load("loop")
    assert saved is not None
    assert {} == dict(saved.crash_counts)


async def test_dlq_guard_stops_a_bug_that_fails_every_record(tmp_path: Path) -> None:
    """A deployed bug that rejects everything trips the guard; the DLQ holds at most a window."""

    def reject_all(v: int) -> int:
        raise riprap.DataError("every record is bad now")

    p = (
        riprap.Pipeline(
            "bugged",
            checkpoint=riprap.checkpoints.MemoryCheckpoints(),
            dead_letter=JsonLinesDeadLetters(tmp_path / "dlq.jsonl"),
            dlq_guard=riprap.deadletters.DeadLetterGuard(
                window=200, max_ratio=0.5, max_in_a_row=1_000
            ),
            batch_size=50,
        )
        .source(IterableSource("in", list(range(10_000))))
        .map("reject", reject_all)
        .sink(MemorySink())
    )
    with pytest.raises(
        riprap.deadletters.DeadLetterRateError, match=r"101 of a window of 200 records"
    ):
        await p.run()
    stored = len(list(read_dead_letters(tmp_path / "dlq.jsonl")))
    assert stored <= 200


async def test_dlq_guard_counts_dead_letters_in_a_row(tmp_path: Path) -> None:
    """A run of dead letters with nothing written between trips the in-a-row limit."""
    values = list(range(100)) + [-1] * 30 + list(range(100))

    def positive(v: int) -> int:
        if v < 0:
            raise riprap.DataError("negative")
        return v

    p = (
        riprap.Pipeline(
            "streak",
            checkpoint=riprap.checkpoints.MemoryCheckpoints(),
            dead_letter=JsonLinesDeadLetters(tmp_path / "dlq.jsonl"),
            dlq_guard=riprap.deadletters.DeadLetterGuard(max_in_a_row=20),
            batch_size=10,
            max_in_flight=10,  # one batch at a time: "in a row" is exact
        )
        .source(IterableSource("in", values))
        .map("positive", positive)
        .sink(MemorySink())
    )
    with pytest.raises(riprap.deadletters.DeadLetterRateError, match=r"21 in a row \(limit 20\)"):
        await p.run()


async def test_dlq_guard_pause_waits_for_resume(tmp_path: Path) -> None:
    """In pause mode the source stops reading until resume() is called; nothing is lost."""
    values = [-1] * 30 + list(range(50))

    def positive(v: int) -> int:
        if v < 0:
            raise riprap.DataError("negative")
        return v

    sink = MemorySink()
    p = (
        riprap.Pipeline(
            "pausing",
            checkpoint=riprap.checkpoints.MemoryCheckpoints(),
            dead_letter=JsonLinesDeadLetters(tmp_path / "dlq.jsonl"),
            dlq_guard=riprap.deadletters.DeadLetterGuard(max_in_a_row=10, action="pause"),
            batch_size=10,
            max_in_flight=10,
        )
        .source(IterableSource("in", values))
        .map("positive", positive)
        .sink(sink)
    )
    async with p.open() as running:
        for _ in range(20):
            await anyio.wait_all_tasks_blocked()
        paused_at = running.statistics().records_in
        assert paused_at < len(values)
        running.resume()
        report = await running.wait()
    assert list(range(50)) == sink.values
    assert {"data_error": 30} == report.dead_lettered


async def test_sync_steps_after_an_async_step_dead_letter_in_input_order(tmp_path: Path) -> None:
    """Sync steps that run in an async step's task route failures as their own runner would.

    Failures of a batch reach the DLQ in input order (a later step's before an
    earlier step's later record), as consumed; nothing else is lost, and no
    queue waits in front of the inlined steps.
    """

    async def fetch(value: dict[str, Any]) -> dict[str, Any]:
        await anyio.lowlevel.checkpoint()
        return value

    def check(value: dict[str, Any]) -> dict[str, Any]:
        if value["id"] % 5 == 3:
            raise riprap.DataError("id ends in 3 or 8", reason="validation")
        return value

    def positive(value: dict[str, Any]) -> bool:
        if value["id"] == 6:
            raise riprap.DataError("six", reason="six")
        return True

    dlq = JsonLinesDeadLetters(tmp_path / "dlq.jsonl")
    sink = MemorySink()
    p = (
        riprap.Pipeline(
            "orders",
            checkpoint=riprap.checkpoints.MemoryCheckpoints(),
            dead_letter=dlq,
            batch_size=10,
        )
        .source(IterableSource("in", records(20, {})))
        .map("parse", parse)
        .map("fetch", fetch, concurrency=4)
        .filter("positive", positive)
        .map("check", check)
        .sink(sink)
    )
    depths: list[set[str]] = []
    async with p.open() as run:
        report = await run.wait()
        depths.append(set(run.statistics().queue_depths))
    letters = list(read_dead_letters(tmp_path / "dlq.jsonl"))
    assert [(3, "check"), (6, "positive"), (8, "check"), (13, "check"), (18, "check")] == [
        (d.offset, d.stage) for d in letters
    ]
    assert [orjson.dumps({"id": 6, "email": "u6@x.io"})] == [
        d.original_value() for d in letters if d.offset == 6
    ]
    assert [i for i in range(20) if i % 5 != 3 and i != 6] == [v["id"] for v in sink.values]
    assert {"validation": 4, "six": 1} == report.dead_lettered
    assert [{"fetch", "memory"}] == depths
