"""``.map(step_id, fn, state=...)``: running counts, dead letters, options, the cut (I3)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, final

import anyio
import pytest

import riprap
from riprap.checkpoints import MemoryCheckpoints
from riprap.connectors.memory import IterableSource, MemorySink
from riprap.deadletters import JsonLinesDeadLetters, read_dead_letters
from riprap.state import MemoryStore, SqliteStore, State, StateStore
from riprap.testing import VirtualClock, run_pipeline, wait_until

pytestmark = pytest.mark.anyio

KEYS = 7


def key_of(value: int) -> str:
    """Keys spread unevenly over the records."""
    return f"k{value * value % KEYS}"


def expected_counts(values: list[int]) -> list[tuple[str, int]]:
    """Each record's running count of its key, as a run that never stopped computes it."""
    seen: Counter[str] = Counter()
    out = []
    for value in values:
        seen[key_of(value)] += 1
        out.append((key_of(value), seen[key_of(value)]))
    return out


def count(value: int, state: State) -> tuple[str, int]:
    """The keyed running count: one more for the record's key."""
    n: int = state.get(0) + 1
    state.set(n)
    return (state.key, n)


def counting(values: list[int], store: StateStore, sink: Any, **options: Any) -> riprap.Pipeline:
    """A running count over ``values``, in small batches so that runs checkpoint often."""
    return (
        riprap.Pipeline("counts", batch_size=10, max_in_flight=40, **options)
        .source(IterableSource("numbers", values, keys=key_of))
        .map("count", count, state=store)
        .sink(sink)
    )


def stores(tmp_path: Path) -> dict[str, StateStore]:
    return {"memory": MemoryStore(), "sqlite": SqliteStore(tmp_path / "state")}


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_running_count_per_key(tmp_path: Path, kind: str) -> None:
    """Each record gets its key's count so far."""
    values = list(range(300))
    sink = MemorySink()
    checkpoints = MemoryCheckpoints()
    pipeline = counting(values, stores(tmp_path)[kind], sink, checkpoint=checkpoints)
    report = await run_pipeline(pipeline, clock=VirtualClock())
    assert ("completed", expected_counts(values)) == (report.outcome, sink.values)


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_second_run_goes_on_from_the_checkpoint(tmp_path: Path, kind: str) -> None:
    """Run again over a longer input, the counts continue where the checkpoint left them."""
    values = list(range(100))
    checkpoints = MemoryCheckpoints()
    store = stores(tmp_path)[kind]
    await run_pipeline(counting(values, store, MemorySink(), checkpoint=checkpoints))
    values.extend(range(100, 250))
    sink = MemorySink()
    await run_pipeline(counting(values, store, sink, checkpoint=checkpoints))
    assert expected_counts(values)[100:] == sink.values


async def test_a_data_error_dead_letters_the_record_and_drops_its_change(tmp_path: Path) -> None:
    """A function raising DataError leaves the state as it was; the record is dead-lettered."""

    def count_but_13(value: int, state: State) -> int:
        n: int = state.get(0) + 1
        state.set(n)
        if value == 13:
            raise riprap.DataError("13 is unlucky")
        return n

    letters = tmp_path / "dlq.jsonl"
    sink = MemorySink()
    pipeline = (
        riprap.Pipeline(
            "counts", checkpoint=MemoryCheckpoints(), dead_letter=JsonLinesDeadLetters(letters)
        )
        .source(IterableSource("numbers", list(range(20)), keys=lambda v: "one key"))
        .map("count", count_but_13, state=True)
        .sink(sink)
    )
    await run_pipeline(pipeline, clock=VirtualClock())
    assert [*range(1, 14), *range(14, 20)] == sink.values
    assert [(13, "data_error")] == [(d.offset, d.reason) for d in read_dead_letters(letters)]


async def test_a_record_without_key_is_dead_lettered(tmp_path: Path) -> None:
    """Records with no key go to the dead letters with reason missing_key; the rest count."""
    letters = tmp_path / "dlq.jsonl"
    sink = MemorySink()
    pipeline = (
        riprap.Pipeline(
            "counts", checkpoint=MemoryCheckpoints(), dead_letter=JsonLinesDeadLetters(letters)
        )
        .source(IterableSource("numbers", list(range(6)), keys=[None, "a", "a", None, "a", "b"]))
        .map("count", count, state=True)
        .sink(sink)
    )
    await run_pipeline(pipeline, clock=VirtualClock())
    assert [("a", 1), ("a", 2), ("a", 3), ("b", 1)] == sink.values
    found = [(d.offset, d.reason) for d in read_dead_letters(letters)]
    assert [(0, "missing_key"), (3, "missing_key")] == found


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_key_takes_the_state_key_from_the_value(tmp_path: Path, kind: str) -> None:
    """Records without keys count by a field of their value; a record without one is a letter."""
    letters = tmp_path / "dlq.jsonl"
    sink = MemorySink()
    orders = [{"user": "ann"}, {"user": "bob"}, {}, {"user": "ann"}, {"user": 7}, {"user": "ann"}]
    pipeline = (
        riprap.Pipeline(
            "counts", checkpoint=MemoryCheckpoints(), dead_letter=JsonLinesDeadLetters(letters)
        )
        .source(IterableSource("orders", orders))
        .map("count", count, state=stores(tmp_path)[kind], key=lambda order: order.get("user"))
        .sink(sink)
    )
    await run_pipeline(pipeline, clock=VirtualClock())
    assert [("ann", 1), ("bob", 1), ("ann", 2), (7, 1), ("ann", 3)] == sink.values
    [letter] = read_dead_letters(letters)
    assert (2, "missing_key") == (letter.offset, letter.reason)
    assert "key=fn" in letter.message


def test_key_must_be_a_function() -> None:
    """A key that is not callable is refused when the pipeline is built, naming the option."""
    with pytest.raises(riprap.ConfigError, match="must be a function of the value") as caught:
        riprap.Pipeline("counts").source(IterableSource("n", [1])).map(
            "count",
            count,
            state=True,
            key="user",  # type: ignore[arg-type]
        )
    assert "map('count').key" == caught.value.option


async def test_a_filter_with_state_keeps_the_first_record_of_each_key() -> None:
    """A keyed dedupe: repeats of a key are dropped on purpose, and the report says so."""

    def first(value: int, state: State) -> bool:
        if state.get(False):
            return False
        state.set(True)
        return True

    sink = MemorySink()
    pipeline = (
        riprap.Pipeline("unique", checkpoint=MemoryCheckpoints())
        .source(IterableSource("numbers", list(range(10)), keys=lambda v: f"id-{v % 4}"))
        .filter("first", first, state=True)
        .sink(sink)
    )
    report = await run_pipeline(pipeline, clock=VirtualClock())
    assert ([0, 1, 2, 3], 6) == (sink.values, report.dropped)


def tumbling(reading: tuple[int, float], state: State) -> list[tuple[Any, int, float]]:
    """Per key, sum readings in windows of 10 time units; emit a window once a later one starts."""
    at, amount = reading
    window = at // 10
    current = state.get()
    if current is not None and current[0] == window:
        state.set([window, current[1] + amount])
        return []
    state.set([window, amount])
    return [] if current is None else [(state.key, current[0], current[1])]


async def test_a_flat_map_with_state_emits_each_keys_windows_as_they_close() -> None:
    """Windows per key: each closes when that key's next window starts (no timers)."""
    readings = [(1, 1.0), (3, 2.0), (12, 4.0), (5, 8.0), (25, 16.0), (14, 32.0), (31, 64.0)]
    keys = ["a", "a", "a", "b", "a", "b", "b"]
    sink = MemorySink()
    pipeline = (
        riprap.Pipeline("windows", checkpoint=MemoryCheckpoints())
        .source(IterableSource("readings", readings, keys=keys))
        .flat_map("tumbling", tumbling, state=True)
        .sink(sink)
    )
    await run_pipeline(pipeline, clock=VirtualClock())
    assert [("a", 0, 3.0), ("a", 1, 4.0), ("b", 0, 8.0), ("b", 1, 32.0)] == sorted(sink.values)


async def test_a_flat_map_that_fails_changes_nothing(tmp_path: Path) -> None:
    """A DataError dead-letters the record; its change is dropped, the outputs of others go on."""

    def repeat(value: int, state: State) -> list[int]:
        n: int = state.get(0) + 1
        state.set(n)
        if value == 2:
            raise riprap.DataError("no twos")
        return [n] * value

    letters = tmp_path / "dlq.jsonl"
    sink = MemorySink()
    pipeline = (
        riprap.Pipeline(
            "repeat", checkpoint=MemoryCheckpoints(), dead_letter=JsonLinesDeadLetters(letters)
        )
        .source(IterableSource("numbers", [1, 2, 3, 0, 1], keys="kkkkk"))
        .flat_map("repeat", repeat, state=True)
        .sink(sink)
    )
    await run_pipeline(pipeline, clock=VirtualClock())
    assert [1, 2, 2, 2, 4] == sink.values  # the 2 counted nothing; the 0 gave no output
    assert [1] == [letter.offset for letter in read_dead_letters(letters)]


async def test_an_async_function_keeps_state_too() -> None:
    """An async function is awaited record by record and sees its predecessors' changes."""

    async def slow_count(value: int, state: State) -> int:
        await anyio.lowlevel.checkpoint()
        n: int = state.get(0) + 1
        state.set(n)
        return n

    sink = MemorySink()
    pipeline = (
        riprap.Pipeline("counts", checkpoint=MemoryCheckpoints())
        .source(IterableSource("numbers", list(range(5)), keys=lambda v: "k"))
        .map("count", slow_count, state=True)
        .sink(sink)
    )
    await run_pipeline(pipeline, clock=VirtualClock())
    assert [1, 2, 3, 4, 5] == sink.values


@pytest.mark.parametrize(
    ("build", "option"),
    [
        (lambda p: p.map("m", count, state=True, concurrency=2), "map('m').concurrency"),
        (lambda p: p.map("m", count, state=True, retry=None), "map('m').retry"),
        (lambda p: p.map("m", count, state=True, staet=1), "map('m').staet"),
        (lambda p: p.map("m", count, state="memory"), "map('m').state"),
        (lambda p: riprap.Branch().filter("m", bool, state=True), "filter('m').state"),
        (lambda p: p.flat_map("m", list, state=True, ordered=False), "flat_map('m').ordered"),
        (
            lambda p: p.map("u", abs, concurrency=2, ordered=False, offload="thread").map(
                "m", count, state=True
            ),
            "map('m').state",
        ),
    ],
)
def test_options_keyed_state_does_not_take_are_refused(build: Any, option: str) -> None:
    """Options that would reorder or retry records, a bad store, state on a filter: ConfigError."""
    with pytest.raises(riprap.ConfigError) as caught:
        build(riprap.Pipeline("p"))
    assert option == caught.value.option


@final
class GateSink:
    """Writes the first batch at once and holds every later one until the run is aborted."""

    def __init__(self) -> None:
        self.name = "gate"
        self.idempotent = True
        self.values: list[Any] = []
        self.holding = False

    async def open(self) -> None:
        await anyio.lowlevel.checkpoint()

    async def write(self, batch: riprap.Batch) -> None:
        if self.values:
            self.holding = True
            await anyio.sleep_forever()
        self.values.extend(batch.items)

    async def flush(self) -> None:
        await anyio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await anyio.lowlevel.checkpoint()


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_changes_of_records_not_done_stay_out_of_the_checkpoint(
    tmp_path: Path, kind: str
) -> None:
    """Records counted but not yet written are not in the cut; a rerun counts them once (I3)."""
    values = list(range(200))
    checkpoints = MemoryCheckpoints()
    store = stores(tmp_path)[kind]
    gate = GateSink()
    with anyio.fail_after(30):
        async with counting(values, store, gate, checkpoint=checkpoints).open() as running:
            await wait_until(lambda: gate.holding)
            await wait_until(lambda: running.statistics().steps[0].records_out >= 30)
            await running.checkpoint()
            running.abort()
    saved = await checkpoints.load("counts")
    assert saved is not None
    assert {"memory": 10} == dict(saved.positions)
    if kind == "memory":
        stored = saved.state["count"]["partitions"]["memory"]
        assert Counter(key_of(v) for v in range(10)) == {
            k[2:]: int(v[0]) for k, v in stored.items()
        }
    sink = MemorySink()
    await run_pipeline(counting(values, store, sink, checkpoint=checkpoints))
    assert expected_counts(values)[10:] == sink.values


def keyed_pipeline() -> riprap.Pipeline:
    """A keyed running count, for ``riprap.run_workers`` to load."""
    return counting(list(range(10)), MemoryStore(), MemorySink(), checkpoint=MemoryCheckpoints())


def test_workers_refuse_a_keyed_state_pipeline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A source that splits one partition among workers would split a key's state: refused."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(riprap.ConfigError, match=r"'count'.*splits partitions among workers"):
        riprap.run_workers(f"{Path(__file__)}:keyed_pipeline", workers=2)


async def test_a_sync_function_returning_a_coroutine_stops_the_run() -> None:
    """A lambda around an async function would store nothing awaited: refused, naming the step."""

    async def later(value: int) -> int:
        await anyio.lowlevel.checkpoint()
        return value

    pipeline = (
        riprap.Pipeline("counts", checkpoint=MemoryCheckpoints())
        .source(IterableSource("numbers", [1, 2], keys=lambda v: "k"))
        .map("count", lambda value, state: later(value), state=True)
        .sink(MemorySink())
    )
    with pytest.raises(riprap.ConfigError, match="async def") as caught:
        await pipeline.run()
    assert "map('count')" == caught.value.option


@final
class TwoPartitions:
    """Reads ``count`` records of key "k" from partition "a", then from "b", in batches of 5."""

    def __init__(self, count: int) -> None:
        self.name = "two"
        self.count = count
        self.next = {"a": 0, "b": 0}

    async def open(self, context: riprap.SourceContext) -> None:
        self.next.update(context.positions)
        await anyio.lowlevel.checkpoint()

    async def read(self, max_records: int) -> riprap.SourceBatch | None:
        await anyio.lowlevel.checkpoint()
        for partition, start in self.next.items():
            if start < self.count:
                size = min(5, self.count - start)
                self.next[partition] = start + size
                values = list(range(start, start + size))
                return riprap.SourceBatch(partition, values, start=start, keys=["k"] * size)
        return None

    async def aclose(self) -> None:
        await anyio.lowlevel.checkpoint()


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_state_is_kept_per_source_partition(tmp_path: Path, kind: str) -> None:
    """The same key read from two partitions has a state in each, saved under each."""
    checkpoints = MemoryCheckpoints()
    sink = MemorySink()
    pipeline = (
        riprap.Pipeline("counts", checkpoint=checkpoints)
        .source(TwoPartitions(10))
        .map("count", count, state=stores(tmp_path)[kind])
        .sink(sink)
    )
    await run_pipeline(pipeline, clock=VirtualClock())
    assert [("k", n) for n in range(1, 11)] * 2 == sink.values
    saved = await checkpoints.load("counts")
    assert saved is not None
    assert {"a", "b"} == set(saved.state["count"]["partitions"])
