"""Fan-out and routing: records to branches, positions done only when every branch is done."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import pytest

import riprap
import riprap.checkpoints
from riprap import Batch, Branch, ConfigError, DataError, PipelineError
from riprap.connectors.memory import IterableSource, MemorySink
from riprap.deadletters import JsonLinesDeadLetters, read_dead_letters
from riprap.stages.dedupe import Dedupe
from riprap.testing import wait_until
from tests._sinks import GatedSink

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.anyio


def pipeline(name: str = "p", **options: Any) -> riprap.Pipeline:
    """A pipeline over 0..49 with in-memory checkpoints."""
    options.setdefault("checkpoint", riprap.checkpoints.MemoryCheckpoints())
    return riprap.Pipeline(name, **options).source(
        IterableSource("nums", list(range(50)), partition="nums")
    )


class RejectingSink:
    """Refuses the values ``reject`` picks with a ``DataError``, all-or-nothing per write."""

    idempotent = True

    def __init__(self, name: str, reject: set[int]) -> None:
        self.name = name
        self.reject = reject
        self.values: list[Any] = []

    async def open(self) -> None:
        await anyio.lowlevel.checkpoint()

    async def write(self, batch: Batch) -> None:
        await anyio.lowlevel.checkpoint()
        if any(value in self.reject for value in batch.items):
            raise DataError("value refused by the sink")
        self.values.extend(batch.items)

    async def flush(self) -> None:
        await anyio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await anyio.lowlevel.checkpoint()


async def test_every_sink_gets_every_record_with_its_own_counts() -> None:
    """Two branches each write all 50 records; the report counts each sink on its own line."""
    first, second = MemorySink("first"), MemorySink("second")
    report = await (
        pipeline(batch_size=7)
        .map("double", lambda v: v * 2)
        .fan_out(a=Branch().sink(first), b=Branch().sink(second))
        .run()
    )
    expected = [v * 2 for v in range(50)]
    assert (expected, expected) == (first.values, second.values)
    assert {"nums": 50} == report.positions
    by_step = {step.step_id: (step.records_in, step.records_out) for step in report.steps}
    assert {"double": (50, 50), "first": (50, 50), "second": (50, 50)} == by_step
    assert (50, 100) == (report.records_in, report.records_out)
    lines = report.format().splitlines()
    assert "    first" in lines[3]
    assert "    second" in lines[4]


async def test_branches_run_their_own_steps() -> None:
    """A branch's filter drops only in that branch; its map changes only its own values."""
    evens, squares = MemorySink("evens"), MemorySink("squares")
    report = await (
        pipeline(batch_size=8)
        .fan_out(
            evens=Branch().filter("even", lambda v: v % 2 == 0).sink(evens),
            squares=Branch().map("square", lambda v: v * v, concurrency=1).sink(squares),
        )
        .run()
    )
    assert list(range(0, 50, 2)) == evens.values
    assert [v * v for v in range(50)] == squares.values
    assert 25 == report.dropped
    assert {"nums": 50} == report.positions


async def test_an_async_branch_step_keeps_order() -> None:
    """Branch steps may be async with concurrency, like the pipeline's own steps."""

    async def slow(v: int) -> int:
        await anyio.sleep(0.001 * (v % 3))
        return -v

    fast, slowed = MemorySink("fast"), MemorySink("slow")
    await (
        pipeline(batch_size=5)
        .fan_out(
            fast=Branch().sink(fast),
            slow=Branch().map("negate", slow, concurrency=8).sink(slowed),
        )
        .run()
    )
    assert (list(range(50)), [-v for v in range(50)]) == (fast.values, slowed.values)


async def test_the_position_waits_for_the_slowest_sink() -> None:
    """While one sink is held up, the checkpoint stays before its records though the other has all.

    Without the per-branch share of the ack the fast branch would complete
    the batches and the checkpoint would pass records the slow sink lacks.
    """
    fast, slow = MemorySink("fast"), GatedSink("slow")
    checkpoints = riprap.checkpoints.MemoryCheckpoints()
    p = pipeline(batch_size=10, max_in_flight=100, checkpoint=checkpoints).fan_out(
        fast=Branch().sink(fast), slow=Branch().sink(slow)
    )
    async with p.open() as running:
        await wait_until(lambda: len(fast.values) == 50)
        await running.checkpoint()
        stored = await checkpoints.load("p")
        assert stored is not None
        assert {"nums": 0} == stored.positions
        assert {"nums": 0} == running.statistics().positions
        slow.gate.set()
        report = await running.wait()
    assert list(range(50)) == slow.values
    assert {"nums": 50} == report.positions


async def test_a_sink_rejecting_a_record_dead_letters_it_in_that_branch_only(
    tmp_path: Path,
) -> None:
    """A DataError of one sink dead-letters the record there; the other sink still writes it."""
    picky, plain = RejectingSink("picky", {7, 31}), MemorySink("plain")
    report = await (
        pipeline(batch_size=10, dead_letter=JsonLinesDeadLetters(tmp_path / "dlq.jsonl"))
        .fan_out(picky=Branch().sink(picky), plain=Branch().sink(plain))
        .run()
    )
    assert [v for v in range(50) if v not in {7, 31}] == picky.values
    assert list(range(50)) == plain.values
    letters = list(read_dead_letters(tmp_path / "dlq.jsonl"))
    assert [("picky", 7), ("picky", 31)] == [(letter.stage, letter.offset) for letter in letters]
    assert {"nums": 50} == report.positions


async def test_a_failing_sink_stops_the_run_naming_it_and_keeps_its_records() -> None:
    """A bug in one branch's sink stops the run; the final checkpoint passes nothing it lacks."""

    class BrokenSink(RejectingSink):
        async def write(self, batch: Batch) -> None:
            await anyio.lowlevel.checkpoint()
            if 20 in batch.items:
                raise ValueError("bug in the sink")
            self.values.extend(batch.items)

    broken, plain = BrokenSink("broken", set()), MemorySink("plain")
    checkpoints = riprap.checkpoints.MemoryCheckpoints()
    p = pipeline(batch_size=10, checkpoint=checkpoints).fan_out(
        broken=Branch().sink(broken, retry=None), plain=Branch().sink(plain)
    )
    with pytest.raises(PipelineError, match="broken") as caught:
        await p.run()
    assert ("broken", "nums", 20) == (
        caught.value.stage,
        caught.value.partition,
        caught.value.offset,
    )
    stored = await checkpoints.load("p")
    assert stored is not None
    assert stored.positions["nums"] <= 20
    assert set(range(stored.positions["nums"])) <= set(broken.values) & set(plain.values)


async def test_one_sink_reports_as_before() -> None:
    """A pipeline with one sink has no per-branch statistics and counts its sink once."""
    sink = MemorySink()
    p = pipeline().sink(sink)
    async with p.open() as running:
        report = await running.wait()
        assert () == running.statistics().sinks
    assert (50, 50) == (report.records_in, report.records_out)


def region(value: int) -> str:
    """The branch of a value: even values to ``eu``, odd ones to ``us``."""
    return "eu" if value % 2 == 0 else "us"


async def test_a_route_sends_each_record_to_the_branch_it_picks() -> None:
    """By a function returning a name: each branch gets its records, in order, with counts."""
    eu, us = MemorySink("eu"), MemorySink("us")
    report = await (
        pipeline(batch_size=8)
        .route(
            "by_region",
            region,
            eu=Branch().map("mark", lambda v: ("eu", v)).sink(eu),
            us=Branch().sink(us),
        )
        .run()
    )
    assert [("eu", v) for v in range(0, 50, 2)] == eu.values
    assert list(range(1, 50, 2)) == us.values
    assert {"nums": 50} == report.positions
    by_step = {step.step_id: (step.records_in, step.records_out) for step in report.steps}
    assert {"by_region": (50, 50), "mark": (25, 25), "eu": (25, 25), "us": (25, 25)} == by_step


async def test_predicates_may_pick_several_branches_or_none() -> None:
    """By predicates: a record may go to two branches, or to none (dropped, and counted)."""
    small, even = MemorySink("small"), MemorySink("even")
    report = await (
        pipeline(batch_size=6)
        .route(
            "split",
            {"small": lambda v: v < 10, "even": lambda v: v % 2 == 0},
            on_unmatched="drop",
            small=Branch().sink(small),
            even=Branch().sink(even),
        )
        .run()
    )
    assert (list(range(10)), list(range(0, 50, 2))) == (small.values, even.values)
    assert 20 == report.dropped  # the odd values from 11 on
    assert {"nums": 50} == report.positions


async def test_a_function_may_return_several_names_or_none() -> None:
    """An iterable of names sends the record to each; ``None`` leaves it to on_unmatched."""
    low, high = MemorySink("low"), MemorySink("high")

    def pick(v: int) -> list[str] | None:
        if v % 10 == 0:
            return None
        return ["low", "high"] if v == 25 else ["low" if v < 25 else "high"]

    report = await (
        pipeline(batch_size=7)
        .route("pick", pick, on_unmatched="drop", low=Branch().sink(low), high=Branch().sink(high))
        .run()
    )
    assert [v for v in range(26) if v % 10] == low.values
    assert [v for v in range(25, 50) if v % 10] == high.values
    assert (5, {"nums": 50}) == (report.dropped, report.positions)


async def test_unmatched_records_are_dead_lettered_by_default(tmp_path: Path) -> None:
    """With a dead-letter store, a record no branch takes is dead-lettered as ``unrouted``."""
    eu = MemorySink("eu")
    report = await (
        pipeline(batch_size=10, dead_letter=JsonLinesDeadLetters(tmp_path / "dlq.jsonl"))
        .route("eu_only", {"eu": lambda v: v != 13}, eu=Branch().sink(eu))
        .run()
    )
    assert [v for v in range(50) if v != 13] == eu.values
    letters = list(read_dead_letters(tmp_path / "dlq.jsonl"))
    assert [("eu_only", "unrouted", 13)] == [(x.stage, x.reason, x.offset) for x in letters]
    assert {"unrouted": 1} == dict(report.dead_lettered)
    assert {"nums": 50} == report.positions


async def test_an_unmatched_record_without_a_dead_letter_store_stops_the_run() -> None:
    """Nothing is dropped silently: with no store to hold it, the run stops naming the record."""
    p = pipeline().route("eu_only", {"eu": lambda v: v != 13}, eu=Branch().sink(MemorySink("eu")))
    with pytest.raises(PipelineError, match="no branch takes the record") as caught:
        await p.run()
    assert ("eu_only", 13) == (caught.value.stage, caught.value.offset)


async def test_a_name_that_is_no_branch_leaves_the_record_unmatched(tmp_path: Path) -> None:
    """``by`` naming no branch is an unmatched record: dead-lettered, the name in the message."""
    eu, us = MemorySink("eu"), MemorySink("us")
    report = await (
        pipeline(batch_size=10, dead_letter=JsonLinesDeadLetters(tmp_path / "dlq.jsonl"))
        .route(
            "by_region",
            lambda v: "asia" if v % 20 == 3 else region(v),
            eu=Branch().sink(eu),
            us=Branch().sink(us),
        )
        .run()
    )
    assert [v for v in range(1, 50, 2) if v % 20 != 3] == us.values
    letters = list(read_dead_letters(tmp_path / "dlq.jsonl"))
    assert [3, 23, 43] == [letter.offset for letter in letters]
    expected = "route 'by_region': 'asia' names no branch (branches: eu, us)"
    assert {expected} == {letter.message for letter in letters}
    assert {"nums": 50} == report.positions


async def test_a_whole_batch_for_one_branch_or_none(tmp_path: Path) -> None:
    """Batches that go wholly to one branch, or wholly nowhere, are done like the others."""
    low = MemorySink("low")
    report = await (
        pipeline(batch_size=10, dead_letter=JsonLinesDeadLetters(tmp_path / "dlq.jsonl"))
        .route("low", lambda v: "low" if v < 20 else "nowhere", low=Branch().sink(low))
        .run()
    )
    assert list(range(20)) == low.values
    assert 30 == len(list(read_dead_letters(tmp_path / "dlq.jsonl")))
    assert {"nums": 50} == report.positions


async def test_records_of_a_route_branch_know_their_source_position(tmp_path: Path) -> None:
    """A branch's records map back to their offsets: in its sink and in its dead letters."""
    kept, picky = MemorySink("kept", keep_records=True), RejectingSink("picky", {21, 33})
    await (
        pipeline(batch_size=10, dead_letter=JsonLinesDeadLetters(tmp_path / "dlq.jsonl"))
        .route("by_region", region, eu=Branch().sink(kept), us=Branch().sink(picky))
        .run()
    )
    assert list(range(0, 50, 2)) == [record.offset for record in kept.records]
    letters = list(read_dead_letters(tmp_path / "dlq.jsonl"))
    assert [("picky", 21), ("picky", 33)] == [(x.stage, x.offset) for x in letters]


async def test_a_data_error_in_by_dead_letters_the_record(tmp_path: Path) -> None:
    """An exception from ``by`` is handled like a step's: a DataError is dead-lettered."""

    def pick(v: int) -> str:
        if v == 7:
            raise DataError("no region")
        return region(v)

    eu, us = MemorySink("eu"), MemorySink("us")
    report = await (
        pipeline(dead_letter=JsonLinesDeadLetters(tmp_path / "dlq.jsonl"))
        .route("by_region", pick, eu=Branch().sink(eu), us=Branch().sink(us))
        .run()
    )
    assert [v for v in range(1, 50, 2) if v != 7] == us.values
    letters = list(read_dead_letters(tmp_path / "dlq.jsonl"))
    assert [("by_region", 7)] == [(letter.stage, letter.offset) for letter in letters]
    assert {"nums": 50} == report.positions


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda p: p.sink(MemorySink("a")).sink(MemorySink("b")),
            "already has a sink",
        ),
        (
            lambda p: p.sink(MemorySink("a")).fan_out(b=Branch().sink(MemorySink("b"))),
            "already ends in sink 'a'; put that sink in a Branch",
        ),
        (
            lambda p: p.fan_out(a=Branch().sink(MemorySink("a"))).sink(MemorySink("b")),
            "already fans out to branches a; .sink\\(\\) cannot follow",
        ),
        (
            lambda p: p.fan_out(a=Branch().sink(MemorySink("a"))).map("late", abs),
            "already fans out to branches a; step 'late' cannot follow",
        ),
        (
            lambda p: p.fan_out(a=Branch().sink(MemorySink("x")), b=Branch().sink(MemorySink("x"))),
            "fan_out.b: branches 'a' and 'b' both end in a sink named 'x'",
        ),
        (
            lambda p: p.map("m", abs).fan_out(a=Branch().map("m", abs).sink(MemorySink())),
            "'m' is used in the pipeline and in branch 'a'",
        ),
        (
            lambda p: p.fan_out(
                a=Branch().map("m", abs).sink(MemorySink("a")),
                b=Branch().map("m", abs).sink(MemorySink("b")),
            ),
            "'m' is used in branch 'a' and in branch 'b'",
        ),
        (lambda p: p.fan_out(a=Branch().map("m", abs)), "fan_out.a: branch 'a' has no sink"),
        (lambda p: p.fan_out(), "fan_out\\(\\) needs at least one branch"),
        (lambda p: p.fan_out(a=MemorySink()), "fan_out.a: must be a riprap.Branch"),
        (
            lambda p: p.fan_out(a=Branch().sink(MemorySink()).map("m", abs)),
            "step 'm': comes after the branch's sink 'memory'",
        ),
        (
            lambda p: p.fan_out(a=Branch().sink(MemorySink()).sink(MemorySink("b"))),
            "this branch already ends in sink 'memory'",
        ),
        (
            lambda p: p.fan_out(a=Branch().map("m", abs, concurrency=0).sink(MemorySink())),
            "map\\('m'\\).concurrency",
        ),
        (
            lambda p: p.route("r", {"a": bool}, a=Branch().sink(MemorySink("a")), b=Branch()),
            "route\\('r'\\).b: branch 'b' has no predicate in by=, so no record could reach it",
        ),
        (
            lambda p: p.route("r", {"c": bool}, a=Branch().sink(MemorySink("a"))),
            "route\\('r'\\).by: has a predicate for 'c', which is not a branch \\(a\\)",
        ),
        (
            lambda p: p.route("r", "a", a=Branch().sink(MemorySink("a"))),
            "route\\('r'\\).by: must be a function returning branch names",
        ),
        (
            lambda p: p.route("r", bool, on_unmatched="skip", a=Branch().sink(MemorySink("a"))),
            "route\\('r'\\).on_unmatched: must be 'drop' or 'dlq'",
        ),
        (
            lambda p: p.route("r", bool, a=Branch().map("r", abs).sink(MemorySink("a"))),
            "'r' is used in the pipeline and in branch 'a'",
        ),
        (
            lambda p: p.route("r", bool, a=Branch().sink(MemorySink("a"))).map("m", abs),
            "already routes to branches a; step 'm' cannot follow",
        ),
        (
            lambda p: p.sink(MemorySink("a")).route("r", bool, b=Branch().sink(MemorySink("b"))),
            "route: pipeline 'p' already ends in sink 'a'",
        ),
        (lambda p: p.route("r", bool), "route\\(\\) needs at least one branch"),
    ],
)
def test_topology_mistakes_are_config_errors_naming_the_parts(build: Any, message: str) -> None:
    """Each wrong fan-out or route is refused when it is built, naming the branch, step or sink."""
    with pytest.raises(ConfigError, match=message):
        build(riprap.Pipeline("p").source(IterableSource("nums", [1])))


def test_a_fan_out_is_a_complete_pipeline() -> None:
    """A fan-out ends the pipeline: it validates without .sink(), and is immutable."""
    base = riprap.Pipeline("p").source(IterableSource("nums", [1]))
    fanned = base.fan_out(a=Branch().sink(MemorySink("a")), b=Branch().sink(MemorySink("b")))
    fanned.validate()
    plan = fanned.plan()
    assert (None, ("a", "b")) == (plan.sink, tuple(branch.name for branch in plan.branches))
    assert () == base.branches
    with pytest.raises(ConfigError, match=r"has no sink; call .sink\(\) or .fan_out\(\)"):
        base.validate()


def routed() -> riprap.Pipeline:
    """A pipeline that routes, for the description tests."""

    async def enrich(value: int) -> int:
        await anyio.lowlevel.checkpoint()
        return value

    return (
        riprap.Pipeline("orders")
        .source(IterableSource("nums", [1]))
        .map("parse", abs)
        .route(
            "by_region",
            region,
            eu=Branch().map("enrich", enrich, concurrency=4).sink(RejectingSink("eu_db", set())),
            us=Branch().sink(MemorySink("us")),
        )
    )


def test_describe_prints_the_topology_as_text() -> None:
    """An outline: source, steps, the route, each branch's steps and sink, by kind and name."""
    expected = """\
pipeline orders
  source nums (IterableSource)
  map parse
  route by_region (by function, unmatched: dlq)
    branch eu
      map enrich (async, concurrency 4)
      sink eu_db (RejectingSink, idempotent)
    branch us
      sink us (MemorySink)"""
    assert expected == routed().describe()


def test_describe_prints_the_topology_as_mermaid() -> None:
    """A flowchart: one node per part, the branches as labelled edges from the fork."""
    expected = """\
flowchart LR
  n0["source nums (IterableSource)"]
  n1["map parse"]
  n0 --> n1
  n2{"route by_region (by function, unmatched: dlq)"}
  n1 --> n2
  n3["map enrich (async, concurrency 4)"]
  n2 -->|"eu"| n3
  n4["sink eu_db (RejectingSink, idempotent)"]
  n3 --> n4
  n5["sink us (MemorySink)"]
  n2 -->|"us"| n5"""
    assert expected == routed().describe("mermaid")


def test_describe_shows_what_is_missing() -> None:
    """An unfinished pipeline describes what it has and names what it lacks."""
    fanned = riprap.Pipeline("p").fan_out(a=Branch().sink(MemorySink("a")))
    expected = "pipeline p\n  source (missing: call .source())\n  fan_out\n    branch a\n"
    assert expected + "      sink a (MemorySink)" == fanned.describe()
    assert "sink (missing: call .sink())" in riprap.Pipeline("p").describe()
    with pytest.raises(ConfigError, match=r"describe\.form: must be 'text' or 'mermaid'"):
        fanned.describe("dot")  # type: ignore[arg-type]


async def test_sinks_that_hold_records_back_share_the_in_flight_bound() -> None:
    """Each of two binding sinks is told half of max_in_flight, so together they leave room."""

    contexts: list[riprap.SinkContext] = []

    class HoldingSink(RejectingSink):
        def bind(self, context: riprap.SinkContext) -> None:
            contexts.append(context)

    sinks = [HoldingSink("a", set()), HoldingSink("b", set())]
    await (
        pipeline(batch_size=10, max_in_flight=100)
        .fan_out(a=Branch().sink(sinks[0]), b=Branch().sink(sinks[1]))
        .run()
    )
    assert [(50, 10), (50, 10)] == [(c.max_in_flight, c.batch_size) for c in contexts]


def test_backfill_refuses_a_branch_sink_that_is_not_idempotent(tmp_path: Path) -> None:
    """``riprap backfill`` checks every sink of a fan-out, not only a pipeline's one sink."""
    (tmp_path / "p.py").write_text(
        textwrap.dedent(
            """\
            import riprap
            from riprap import Branch
            from riprap.connectors.memory import IterableSource, MemorySink

            class Windowed:
                name = "windowed"
                def __init__(self): self._inner = IterableSource("windowed", [1])
                async def open(self, context): await self._inner.open(context)
                async def read(self, n): return await self._inner.read(n)
                async def aclose(self): await self._inner.aclose()
                def backfill(self, start, stop): return Windowed()

            safe = MemorySink("safe")
            safe.idempotent = True
            fanned = riprap.Pipeline("fanned").source(Windowed()).fan_out(
                safe=Branch().sink(safe), log=Branch().sink(MemorySink("log"))
            )
            """
        )
    )
    window = ("--from", "2026-01-01T00:00:00Z", "--to", "2026-01-02T00:00:00Z")
    done = subprocess.run(
        [sys.executable, "-m", "riprap.cli", "backfill", "-q", "p.py:fanned", *window],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    refused = "sink 'log' is not idempotent" in done.stderr
    assert (2, True) == (done.returncode, refused), done.stderr


async def test_each_sink_has_its_own_metrics() -> None:
    """Write latency and records per stage are exported for every sink of a fan-out."""
    first, second = MemorySink("first"), MemorySink("second")
    p = pipeline(batch_size=10).fan_out(a=Branch().sink(first), b=Branch().sink(second))
    async with p.open() as running:
        await running.wait()
        registry = running.metrics_registry
        for stage in ("first", "second"):
            labels = {"pipeline": "p", "stage": stage}
            assert 5 == registry.get_sample_value("riprap_sink_write_seconds_count", labels)


async def test_a_stop_drains_every_branch_and_abandons_nothing_done() -> None:
    """A graceful stop while one sink is held up ends when the drain times out, position kept."""
    fast, slow = MemorySink("fast"), GatedSink("slow")
    p = pipeline(batch_size=10, max_in_flight=100, drain_timeout=0.2).fan_out(
        fast=Branch().sink(fast), slow=Branch().sink(slow)
    )
    async with p.open() as running:
        await wait_until(lambda: len(fast.values) == 50)
        running.stop()
        report = await running.wait()
    assert ("stopped", {"nums": 0}) == (report.outcome, report.positions)
    assert [] == slow.values


async def test_a_branch_may_hold_a_stateful_stage_saved_with_the_checkpoint() -> None:
    """A Dedupe in one branch drops repeats there only; its state is in the checkpoint."""
    unique, every = MemorySink("unique"), MemorySink("every")
    checkpoints = riprap.checkpoints.MemoryCheckpoints()
    report = await (
        riprap.Pipeline("p", checkpoint=checkpoints)
        .source(IterableSource("nums", [v % 10 for v in range(50)], partition="nums"))
        .fan_out(
            unique=Branch().stage(Dedupe("dedupe", key=str, max_keys=100)).sink(unique),
            every=Branch().sink(every),
        )
        .run()
    )
    assert (list(range(10)), 50) == (unique.values, len(every.values))
    stored = await checkpoints.load("p")
    assert stored is not None
    assert "dedupe" in stored.state
    assert {"nums": 50} == report.positions
