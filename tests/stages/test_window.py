"""Event-time windows: window kinds, watermark and lateness, acks, state and a SIGKILL.

Most tests drive the stage directly through :class:`Harness`, which plays the
runtime's part: it hands over batches with source origins, holds the acks of
dead-lettered records until it "writes" them, and collects what is emitted.
"""

from __future__ import annotations

import math
import random
import signal
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pytest

import riprap
import riprap.checkpoints
import riprap.deadletters
import riprap.lowlevel
from riprap.cli import main
from riprap.connectors.memory import IterableSource, MemorySink
from riprap.connectors.sqlite import read_table_sync
from riprap.lowlevel import SourceOrigin
from riprap.stages.window import (
    Aggregate,
    Window,
    WindowStatistics,
    session,
    sliding,
    tumbling,
)
from tests._examples import load_example

from ..engine._subprocesses import DEADLINE, load_checkpoint, query, spawn, wait_for_child
from ._window_worker import LATENESS, OUT_OF_ORDERNESS, PIPELINE, SIZE, TABLE

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence


def count_sum() -> Aggregate[dict[str, Any], dict[str, int], dict[str, int]]:
    """Count records and sum their ``n``; mergeable, so it suits sessions too."""

    def add(acc: dict[str, int], value: dict[str, Any]) -> dict[str, int]:
        acc["count"] += 1
        acc["sum"] += value["n"]
        return acc

    def merge(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
        return {"count": a["count"] + b["count"], "sum": a["sum"] + b["sum"]}

    return Aggregate(init=lambda: {"count": 0, "sum": 0}, add=add, merge=merge)


def summing(window: Any, **options: Any) -> Window:
    """A window stage over ``{"k", "t", "n"}`` values that sums ``n``."""
    return Window(
        "win",
        window=window,
        key=lambda v: v["k"],
        time=lambda v: v["t"],
        reduce=lambda acc, v: acc + v["n"],
        initial=0,
        **options,
    )


def rec(k: str, t: float, n: int = 1) -> dict[str, Any]:
    """One input value."""
    return {"k": k, "t": t, "n": n}


class Harness:
    """Feeds one partition's batches to a stage like the runtime would, and records the rest."""

    def __init__(self, stage: Window, partition: str = "p") -> None:
        self.stage = stage
        self.partition = partition
        self.offset = 0
        self.letters: list[tuple[int | None, str | None, BaseException]] = []
        self.held: list[riprap.lowlevel.Ack] = []
        self.emitted: list[riprap.Batch] = []

    async def open(self) -> Harness:
        """Open the stage with a context whose dead-letter hook this harness serves."""
        context = riprap.StageContext(
            pipeline="test", clock=riprap.SystemClock(), dead_letter=self._dead_letter
        )
        await self.stage.open(context)
        return self

    def _dead_letter(
        self, batch: riprap.Batch, index: int, error: BaseException, reason: str | None
    ) -> None:
        batch.ack.retain()  # as the router does: released once the letter is durable
        self.held.append(batch.ack)
        self.letters.append((batch.position(index)[1], reason, error))

    def write_letters(self) -> None:
        """Make the queued dead letters "durable": release the acks they hold."""
        held, self.held = self.held, []
        for ack in held:
            ack.release()

    async def feed(
        self,
        values: list[Any],
        *,
        start: int | None = None,
        keys: list[Any] | None = None,
        timestamps: list[float | None] | None = None,
        write_letters: bool = True,
    ) -> list[bool]:
        """Process one source batch; return a list that holds ``True`` once its ack is done."""
        start = self.offset if start is None else start
        source = riprap.SourceBatch(
            self.partition, values, start=start, keys=keys, timestamps=timestamps
        )
        done: list[bool] = []
        batch = riprap.Batch(
            list(values), riprap.lowlevel.Ack(lambda: done.append(True)), SourceOrigin(source)
        )
        await self.stage.process(batch, self._emit)
        if write_letters:
            self.write_letters()
        self.offset = source.end
        return done

    async def finish(self) -> None:
        """End of input."""
        await self.stage.finish(self._emit)

    async def _emit(self, batch: riprap.Batch) -> None:
        self.emitted.append(batch)

    def results(self) -> list[Any]:
        """Every value emitted so far, in order."""
        return [item for batch in self.emitted for item in batch.items]

    def take(self) -> list[Any]:
        """The values emitted since the last call, with their batches completed (written)."""
        out = self.results()
        for batch in self.emitted:
            batch.ack.release()
        self.emitted = []
        return out

    def table(self) -> dict[tuple[Any, Any], Any]:
        """What an upserting sink would hold: the last value per (key, start)."""
        return {(r["key"], r["start"]): r["value"] for r in self.results()}


def result(key: Any, start: float, end: float, value: Any) -> dict[str, Any]:
    """An expected window result."""
    return {"key": key, "start": start, "end": end, "value": value}


# -- window kinds ---------------------------------------------------------------


@pytest.mark.anyio
async def test_tumbling_windows_sum_per_key_once_the_watermark_passes_their_end() -> None:
    """Each key's tumbling window is emitted once the watermark reaches its end."""
    h = await Harness(summing(tumbling(10))).open()
    await h.feed([rec("a", 1, 1), rec("b", 5, 5), rec("a", 2, 2)])
    assert [] == h.take()
    await h.feed([rec("a", 12, 7)])
    assert [result("a", 0, 10, 3), result("b", 0, 10, 5)] == h.take()
    await h.finish()
    assert [result("a", 10, 20, 7)] == h.take()


@pytest.mark.anyio
async def test_sliding_windows_count_a_record_in_every_window_that_covers_it() -> None:
    """With size 10 and slide 5 a record lands in the two windows that contain it."""
    h = await Harness(summing(sliding(10, 5))).open()
    await h.feed([rec("a", 7, 1), rec("a", 12, 10)])
    await h.finish()
    expected = {("a", 0): 1, ("a", 5): 11, ("a", 10): 10}
    assert expected == h.table()


@pytest.mark.anyio
async def test_session_windows_split_on_gaps_and_merge_when_a_record_bridges_them() -> None:
    """Records closer than the gap share a session; a record between two sessions merges them."""
    stage = Window(
        "win",
        window=session(5),
        key=lambda v: v["k"],
        time=lambda v: v["t"],
        aggregate=count_sum(),
        out_of_orderness=100,
    )
    h = await Harness(stage).open()
    await h.feed([rec("a", 0, 1), rec("a", 8, 2), rec("b", 1, 4), rec("b", 30, 8)])
    assert 4 == stage.statistics().open_windows
    await h.feed([rec("a", 4, 16)])  # overlaps [0, 5) and [8, 13)
    await h.finish()
    expected = {
        ("a", 0): result("a", 0, 13, {"count": 3, "sum": 19}),
        ("b", 1): result("b", 1, 6, {"count": 1, "sum": 4}),
        ("b", 30): result("b", 30, 35, {"count": 1, "sum": 8}),
    }
    assert expected == {(r["key"], r["start"]): r for r in h.take()}


@pytest.mark.anyio
async def test_record_aware_window_uses_record_keys_and_timestamps() -> None:
    """Without key= and time= the record key and timestamp are used; no timestamp is a DataError."""
    stage = Window("win", window=tumbling(10), reduce=lambda acc, v: acc + v, initial=0)
    h = await Harness(stage).open()
    await h.feed([1, 2, 4, 8], keys=["x", "y", "x", "x"], timestamps=[1.0, 2.0, None, 25.0])
    expected = [result("x", 0, 10, 1), result("y", 0, 10, 2)]
    assert expected == h.take()
    offset, reason, error = h.letters[0]
    assert (2, "no_event_time", riprap.DataError) == (offset, reason, type(error))


# -- watermark and lateness -----------------------------------------------------


@pytest.mark.anyio
async def test_watermark_trails_the_greatest_event_time_by_the_out_of_orderness() -> None:
    """A window waits until the greatest event time minus out_of_orderness reaches its end."""
    stage = summing(tumbling(10), out_of_orderness=5)
    h = await Harness(stage).open()
    await h.feed([rec("a", 3), rec("a", 12)])
    assert (7, []) == (stage.watermark, h.take())
    await h.feed([rec("a", 9)])  # out of order but within the bound: still counted
    await h.feed([rec("a", 15)])
    assert (10, [result("a", 0, 10, 2)]) == (stage.watermark, h.take())


@pytest.mark.anyio
async def test_late_update_within_allowed_lateness_re_emits_the_window() -> None:
    """A record behind the watermark but within allowed lateness updates and re-emits its window."""
    stage = summing(tumbling(10), allowed_lateness=5)
    h = await Harness(stage).open()
    await h.feed([rec("a", 1, 1), rec("a", 11, 100)])
    assert [result("a", 0, 10, 1)] == h.take()
    await h.feed([rec("a", 2, 10)])  # watermark 11 <= end 10 + lateness 5
    assert [result("a", 0, 10, 11)] == h.take()
    expected = WindowStatistics(
        absorbed=3, late=0, skipped=0, open_windows=2, pending=0, watermark=11
    )
    assert expected == stage.statistics()


@pytest.mark.anyio
async def test_record_behind_allowed_lateness_is_dead_lettered_as_late() -> None:
    """Past end + allowed lateness a window is purged and its records are late."""
    stage = summing(tumbling(10), allowed_lateness=5)
    h = await Harness(stage).open()
    await h.feed([rec("a", 1), rec("a", 16)])  # watermark 16 > 10 + 5: [0, 10) purged
    done = await h.feed([rec("a", 30), rec("a", 3), rec("a", 31)], write_letters=False)
    assert ([], 1) == (done, stage.statistics().late)  # the letter holds the ack
    offset, reason, error = h.letters[0]
    assert (3, "late", "late") == (offset, reason, getattr(error, "reason", None))
    h.write_letters()
    assert [True] == done
    assert [("a", 30)] == [(w[0], w[1]) for w in stage.snapshot()["windows"]]  # 31 > 20 + 5


@pytest.mark.anyio
async def test_late_records_go_to_the_side_output_when_configured() -> None:
    """With on_late=callable, late records are handed over as records instead of dead-lettered."""
    late: list[riprap.Record] = []
    h = await Harness(summing(tumbling(10), on_late=late.append)).open()
    await h.feed([rec("a", 21), rec("a", 2, 5)])  # watermark 21: [0, 10) is closed
    assert ([1], [rec("a", 2, 5)]) == ([r.offset for r in late], [r.value for r in late])
    assert [] == h.letters


@pytest.mark.anyio
async def test_a_far_future_timestamp_is_out_of_range_and_never_moves_the_watermark() -> None:
    """With max_skew, a record far ahead of the watermark is dead-lettered as
    timestamp_out_of_range; the watermark stays, so later records are not late."""
    stage = summing(tumbling(10), out_of_orderness=2, max_skew=60)
    h = await Harness(stage).open()
    await h.feed([rec("a", 1), rec("a", 5), rec("a", 1e9), rec("a", 8), rec("a", 12)])
    assert [(2, "timestamp_out_of_range")] == [(offset, reason) for offset, reason, _ in h.letters]
    assert (10.0, 1, 0) == (
        stage.watermark,
        stage.statistics().out_of_range,
        stage.statistics().late,
    )
    assert [result("a", 0, 10, 3)] == h.take()


@pytest.mark.anyio
async def test_max_skew_from_wall_time_refuses_times_ahead_of_the_clock() -> None:
    """With skew_from="wall", the reference is the pipeline clock, even for the first record."""
    stage = summing(tumbling(10), max_skew=60, skew_from="wall")
    h = await Harness(stage).open()
    now = riprap.SystemClock().time()
    await h.feed([rec("a", now + 3600), rec("a", now)])
    assert [0] == [offset for offset, _, _ in h.letters]
    assert now == stage.watermark


# -- acks and state -------------------------------------------------------------


@pytest.mark.anyio
async def test_input_ack_is_done_once_absorbed_and_results_stay_pending_until_done() -> None:
    """Absorbing completes the input; an emitted result is in the state until its batch is done."""
    stage = summing(tumbling(10))
    h = await Harness(stage).open()
    done = await h.feed([rec("a", 1), rec("a", 10)])
    assert [True] == done
    assert [result("a", 0, 10, 1)] == stage.snapshot()["pending"]
    h.take()  # the sink wrote the batch: its ack is released
    assert [] == stage.snapshot()["pending"]


@pytest.mark.anyio
async def test_restored_pending_results_are_emitted_again_first() -> None:
    """After a restore the results emitted but never done go out before anything new."""
    first = await Harness(summing(tumbling(10))).open()
    await first.feed([rec("a", 1, 2), rec("b", 10, 3)])
    state = orjson.loads(orjson.dumps(first.stage.snapshot()))  # as a checkpoint stores it

    second = await Harness(summing(tumbling(10))).open()
    second.stage.restore(state)
    await second.feed([rec("b", 21, 4)], start=2)
    expected = [result("a", 0, 10, 2), result("b", 10, 20, 3)]
    assert expected == second.take()
    assert [] == second.stage.snapshot()["pending"]


@pytest.mark.anyio
async def test_replayed_batch_skips_absorbed_records_and_dead_letters_late_ones_again() -> None:
    """A checkpoint taken while a late letter was pending replays the batch: no double count."""
    first = await Harness(summing(tumbling(10))).open()
    await first.feed([rec("a", 100, 1)])
    # The late record holds the batch's ack, so a checkpoint now keeps position 1.
    batch = [rec("a", 101, 10), rec("a", 5, 1000), rec("a", 102, 100)]
    done = await first.feed(batch, write_letters=False)
    state = orjson.loads(orjson.dumps(first.stage.snapshot()))
    assert ([], {"p": [[1, 2], [3, 4]]}) == (done, state["absorbed"])

    second = await Harness(summing(tumbling(10))).open()
    second.stage.restore(state)
    await second.feed([*batch, rec("a", 103, 10_000)], start=1)
    await second.finish()
    assert {("a", 100): 10_111} == second.table()
    assert [(2, "late")] == [(offset, reason) for offset, reason, _ in second.letters]
    assert 2 == second.stage.statistics().skipped


@pytest.mark.anyio
async def test_snapshot_is_json_and_keeps_tuple_keys_and_only_open_windows() -> None:
    """State survives a JSON round trip (tuple keys included) and closed windows are purged."""
    stage = Window(
        "win",
        window=tumbling(10),
        key=lambda v: (v["k"], v["n"] % 2),
        time=lambda v: v["t"],
        aggregate=count_sum(),
    )
    h = await Harness(stage).open()
    await h.feed([rec("a", 1, 1), rec("a", 2, 2), rec("a", 15, 3)])
    h.take()
    state = orjson.loads(orjson.dumps(stage.snapshot()))
    assert [[["a", 1], 10, 20, {"count": 1, "sum": 3}, True]] == state["windows"]

    restored = Window(
        "win",
        window=tumbling(10),
        key=lambda v: (v["k"], v["n"] % 2),
        time=lambda v: v["t"],
        aggregate=count_sum(),
    )
    restored.restore(state)
    again = await Harness(restored).open()
    await again.feed([rec("a", 16, 5)], start=3)
    await again.finish()
    assert {(("a", 1), 10): {"count": 2, "sum": 8}} == again.table()


@pytest.mark.anyio
async def test_finish_emits_open_windows_but_keeps_them_for_a_resumed_run() -> None:
    """finish() flushes every changed window; the windows stay until the watermark closes them."""
    stage = summing(tumbling(10))
    h = await Harness(stage).open()
    await h.feed([rec("a", 1), rec("b", 4)])
    await h.finish()
    assert [result("a", 0, 10, 1), result("b", 0, 10, 1)] == h.take()
    await h.feed([rec("a", 3, 5)])  # the run went on (a graceful stop, then a resume)
    await h.feed([rec("c", 10)])
    assert [result("a", 0, 10, 6)] == h.take()  # b did not change: not emitted again
    await h.finish()
    assert [result("c", 10, 20, 1)] == h.take()


@pytest.mark.parametrize(
    ("build", "option"),
    [
        (lambda: sliding(5, 10), "window.slide"),
        (lambda: tumbling(0), "window.size"),
        (lambda: session(-1), "window.gap"),
        (lambda: summing(tumbling(10), allowed_lateness=-1), "allowed_lateness"),
        (lambda: summing(tumbling(10), out_of_orderness=math.inf), "out_of_orderness"),
        (lambda: summing(session(10)), "aggregate"),
        (lambda: Window("w", window=tumbling(1), reduce=max, aggregate=count_sum()), "aggregate"),
        (lambda: summing(tumbling(10), on_late="drop"), "on_late"),
    ],
)
def test_impossible_configuration_is_a_config_error_naming_the_option(
    build: Callable[[], object], option: str
) -> None:
    """Bad sizes, negative lateness, a session without merge or two aggregations are refused."""
    with pytest.raises(riprap.ConfigError) as caught:
        build()
    assert option == caught.value.option


@pytest.mark.anyio
async def test_window_stage_runs_in_a_pipeline_and_checkpoints_its_state() -> None:
    """In a pipeline the stage emits per-window sums, and the final checkpoint holds its state."""
    values = [rec(k, t, t) for t in range(0, 40, 3) for k in ("a", "b")]
    backend = riprap.checkpoints.MemoryCheckpoints()
    sink = MemorySink()
    pipeline = (
        riprap.Pipeline("windows", checkpoint=backend, batch_size=4)
        .source(IterableSource("nums", values))
        .stage(summing(tumbling(10)))
        .sink(sink)
    )
    report = await pipeline.run()
    expected: dict[tuple[str, int], int] = defaultdict(int)
    for v in values:
        expected[(v["k"], v["t"] // 10 * 10)] += v["n"]
    assert (dict(expected), "completed") == (
        {(r["key"], r["start"]): r["value"] for r in sink.values},
        report.outcome,
    )
    saved = await backend.load("windows")
    assert saved is not None
    assert ([], 2) == (saved.state["win"]["pending"], len(saved.state["win"]["windows"]))


def late_burst(tmp_path: Path, guard: riprap.deadletters.DeadLetterGuard) -> riprap.Pipeline:
    """300 records far behind the watermark after a few on time: a burst of late records."""
    values = [rec("a", 1000 + t) for t in range(5)] + [rec("a", t % 50) for t in range(300)]
    return (
        riprap.Pipeline(
            "late",
            checkpoint=riprap.checkpoints.MemoryCheckpoints(),
            dead_letter=riprap.deadletters.JsonLinesDeadLetters(tmp_path / "dlq.jsonl"),
            dlq_guard=guard,
            batch_size=10,
        )
        .source(IterableSource("nums", values))
        .stage(summing(tumbling(10)))
        .sink(MemorySink())
    )


@pytest.mark.anyio
async def test_a_late_burst_does_not_trip_the_dead_letter_guard_by_default(
    tmp_path: Path,
) -> None:
    """Late records are counted apart from errors: 300 in a row do not stop the run."""
    report = await late_burst(tmp_path, riprap.deadletters.DeadLetterGuard()).run()
    assert ("completed", {"late": 300}) == (report.outcome, dict(report.dead_lettered))


@pytest.mark.anyio
async def test_late_records_trip_the_guard_above_their_own_threshold(tmp_path: Path) -> None:
    """With late_max_ratio set, too many late records in a window stop the run, saying why."""
    guard = riprap.deadletters.DeadLetterGuard(window=100, late_max_ratio=0.5)
    with pytest.raises(riprap.deadletters.DeadLetterRateError, match="late of a window"):
        await late_burst(tmp_path, guard).run()


def test_checkpoint_cli_shows_and_resets_one_stages_state(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A watermark poisoned by a far-future record is visible with `checkpoint show --stage`
    and dropped with `checkpoint reset --stage`, keeping the positions."""
    store = tmp_path / "ckpt.db"
    pipeline = (
        riprap.Pipeline("windows", checkpoint=riprap.checkpoints.SqliteCheckpoints(store))
        .source(IterableSource("nums", [rec("a", 1), rec("a", 1e9)]))
        .stage(summing(tumbling(10)))
        .sink(MemorySink())
    )
    riprap.run(pipeline)
    capsys.readouterr()
    assert 0 == main(["checkpoint", "show", str(store), "--stage", "win"])
    assert 1e9 == orjson.loads(capsys.readouterr().out)["max_time"]
    assert 2 == main(["checkpoint", "reset", str(store), "--stage", "win"])  # without --yes
    assert 0 == main(["checkpoint", "reset", str(store), "--stage", "win", "--yes"])
    saved = load_checkpoint(store, "windows")
    assert saved is not None
    assert ({}, {"memory": 2}) == (dict(saved.state), dict(saved.positions))
    assert "reset --stage win" in saved.notes[-1]
    assert 2 == main(["checkpoint", "show", str(store), "--stage", "win"])


def test_windows_example_counts_every_on_time_view_and_resumes_without_rereading(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The windows example counts every view not dead-lettered as late; a rerun reads nothing."""
    example = load_example("windows.py")
    data = ["--data-dir", str(tmp_path)]
    first = example.main(data)
    table = read_table_sync(tmp_path / "views.db", "per_minute", key_column="key")
    second = example.main(data)
    capsys.readouterr()
    late = first.dead_lettered.get("late", 0)
    views = sum(row["value"]["views"] for row in table.values())
    assert (example.VIEWS, example.VIEWS - late) == (first.records_in, views)
    again = read_table_sync(tmp_path / "views.db", "per_minute", key_column="key")
    assert (0, table) == (second.records_in, again)


# -- the required test: a shuffled stream across a SIGKILL --------------------------------

WORKER = Path(__file__).with_name("_window_worker.py")
RECORDS = 6_000
KEYS = ("u1", "u2", "u3", "u4", "u5")
SEED = 20_240_607


def write_stream(path: Path, rng: random.Random) -> tuple[dict[tuple[str, float], int], set[int]]:
    """Write a shuffled stream with late records; return the batch aggregates and late lines.

    Event times advance 0.5 s per record and are shuffled by up to
    ``OUT_OF_ORDERNESS`` (sorting by time plus a bounded jitter), so shuffling
    alone never makes a record late. About 2% of the lines are then made late
    on purpose (behind every window that is still open) and about 2% slightly
    late (behind the watermark, within the allowed lateness: still counted).
    """
    times = [i * 0.5 for i in range(RECORDS)]
    order = sorted(times, key=lambda t: t + rng.uniform(0, OUT_OF_ORDERNESS * 0.99))
    expected: Counter[tuple[str, float]] = Counter()
    late: set[int] = set()
    newest = -math.inf
    with path.open("wb") as file:
        for line, t in enumerate(order):
            key, n = rng.choice(KEYS), rng.randint(1, 100)
            watermark = newest - OUT_OF_ORDERNESS
            roll = rng.random()
            if roll < 0.02 and newest > 100:
                t = watermark - LATENESS - SIZE - rng.uniform(1, 50)  # behind every open window
                late.add(line)
            elif roll < 0.04 and newest > 100:
                t = watermark - rng.uniform(0.1, LATENESS)  # late, but its window is still open
            newest = max(newest, t)
            file.write(orjson.dumps({"id": line, "key": key, "t": t, "n": n}) + b"\n")
            if line not in late:
                expected[(key, math.floor(t / SIZE) * SIZE)] += n
    return dict(expected), late


def sink_rows(database: Path) -> dict[tuple[str, float], int]:
    """The window sums in the sink, by (key, start)."""
    rows = query(database, f"SELECT value FROM {TABLE}")
    values = [orjson.loads(value) for (value,) in rows]
    return {(v["key"], v["start"]): v["value"] for v in values}


def checkpointed(path: Path) -> int:
    """The checkpointed position in the input (0 before the first checkpoint)."""
    checkpoint = load_checkpoint(path, PIPELINE)
    return 0 if checkpoint is None else next(iter(checkpoint.positions.values()), 0)


def worker(tmp_path: Path, run: int, store: str) -> Any:
    """Start run number ``run`` of the worker in ``tmp_path``."""
    args: Sequence[str] = [
        sys.executable,
        str(WORKER),
        "in.jsonl",
        "ckpt.db",
        "out.db",
        "dlq.jsonl",
        store,
    ]
    return spawn(args, tmp_path, f"run-{run}")


@pytest.mark.slow
@pytest.mark.parametrize("store", ["", "sqlite"])
def test_shuffled_stream_across_sigkill_matches_batch_aggregates_and_dlq_holds_the_late(
    tmp_path: Path, store: str
) -> None:
    """Killed with SIGKILL twice and restarted, the sink equals a batch computation over the
    on-time records, and the late records are exactly the DLQ's "late" letters; the same with
    the windows as keyed state in an SQLite store.
    """
    rng = random.Random(SEED)
    expected, late = write_stream(tmp_path / "in.jsonl", rng)
    checkpoints = tmp_path / "ckpt.db"
    for run, target in enumerate((RECORDS // 4, RECORDS // 2)):
        with worker(tmp_path, run, store) as proc:
            wait_for_child(
                lambda: checkpointed(checkpoints) >= target,  # noqa: B023
                proc,
                f"checkpoint {target}",
            )
            proc.kill()
            proc.wait(timeout=DEADLINE)
        assert -signal.SIGKILL == proc.returncode, f"run {run} ended before it could be killed"
    with worker(tmp_path, 2, store) as proc:
        returncode = proc.wait(timeout=DEADLINE)
    assert 0 == returncode, (tmp_path / "run-2.err").read_text()

    assert expected == sink_rows(tmp_path / "out.db")
    letters = list(riprap.deadletters.read_dead_letters(tmp_path / "dlq.jsonl"))
    assert late == {letter.offset for letter in letters}
    assert {"late"} == {letter.reason for letter in letters}


@pytest.mark.anyio
async def test_run_report_accounts_for_absorbed_records() -> None:
    """Records folded into windows are reported as absorbed, so every record is accounted for."""
    from riprap.stages.window import Window, tumbling

    values = [{"k": i % 3, "t": float(i)} for i in range(100)]
    sink = MemorySink()
    p = (
        riprap.Pipeline(
            "accounted", checkpoint=riprap.checkpoints.MemoryCheckpoints(), batch_size=10
        )
        .source(IterableSource("events", values))
        .stage(
            Window(
                "per10",
                window=tumbling(10),
                key=lambda v: v["k"],
                time=lambda v: v["t"],
                reduce=lambda n, v: n + 1,
                initial=0,
            )
        )
        .sink(sink)
    )
    report = await p.run()
    assert 100 == report.absorbed
    assert 100 == sum(result["value"] for result in sink.values)
