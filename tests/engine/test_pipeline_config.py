"""Every configuration error is raised before running and names the bad option."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

import riprap
import riprap.checkpoints
from riprap.connectors.memory import IterableSource, MemorySink
from riprap.policies import Retry


async def async_identity(value: Any) -> Any:
    """An async step function."""
    return value


def pipeline(**options: Any) -> riprap.Pipeline:
    """A pipeline with in-memory checkpoints and the given options."""
    return riprap.Pipeline("p", **{"checkpoint": riprap.checkpoints.MemoryCheckpoints(), **options})


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"batchsize": 10}, "batchsize: unknown pipeline option (did you mean 'batch_size'?)"),
        ({"colour": 1}, "colour: unknown pipeline option"),
        ({"batch_size": 0}, "batch_size: must be a positive integer, got 0"),
        ({"batch_size": 2.5}, "batch_size: must be a positive integer, got 2.5"),
        ({"max_in_flight": -1}, "max_in_flight: must be a positive integer, got -1"),
        (
            {"batch_size": 100, "max_in_flight": 10},
            "max_in_flight: must be at least batch_size (100), got 10",
        ),
        ({"queue_size": 0}, "queue_size: must be a positive integer, got 0"),
        (
            {"checkpoint_interval": 0},
            "checkpoint_interval: must be a positive number of seconds, got 0",
        ),
        ({"drain_timeout": -1}, "drain_timeout: must be >= 0 seconds, got -1"),
        ({"checkpoint": object()}, "checkpoint: <object object at"),
        ({"clock": "now"}, "clock: 'now' does not implement Clock"),
        (
            {"sink_outage_timeout": 0},
            "sink_outage_timeout: must be a positive number of seconds, got 0",
        ),
        ({"offload_threads": 0}, "offload_threads: must be a positive integer, got 0"),
        (
            {"loop_lag_threshold": -1},
            "loop_lag_threshold: must be a positive number of seconds, got -1",
        ),
    ],
)
def test_bad_option_is_named(options: dict[str, Any], message: str) -> None:
    """A bad pipeline option raises ConfigError whose message names it."""
    with pytest.raises(riprap.ConfigError) as info:
        pipeline(**options)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize("name", ["", "has space", "-dash-first", 7])
def test_bad_pipeline_name(name: Any) -> None:
    """A pipeline name that cannot key checkpoints is refused."""
    with pytest.raises(riprap.ConfigError, match=r"^name: must start with a letter or digit"):
        riprap.Pipeline(name)


def test_missing_source_and_sink_are_named() -> None:
    """validate() names the missing source first, then the missing sink."""
    p = pipeline()
    with pytest.raises(riprap.ConfigError, match=r"^source: pipeline 'p' has no source"):
        p.validate()
    with pytest.raises(riprap.ConfigError, match=r"^sink: pipeline 'p' has no sink"):
        p.source(IterableSource("s", [1])).validate()


def test_run_validates_before_starting() -> None:
    """run() refuses an incomplete pipeline before touching anything."""
    with pytest.raises(riprap.ConfigError, match=r"^sink: "):
        riprap.run(pipeline().source(IterableSource("s", [1])), handle_signals=False)


def test_source_and_sink_must_implement_protocols() -> None:
    """Objects that are not sources or sinks are refused with the missing methods listed."""
    with pytest.raises(riprap.ConfigError, match=r"^source: .* does not implement Source"):
        pipeline().source(object())  # type: ignore[arg-type]
    with pytest.raises(riprap.ConfigError, match=r"^sink: .* does not implement Sink"):
        pipeline().sink([])  # type: ignore[arg-type]


def test_step_errors_are_named() -> None:
    """Step ids, functions and concurrency are checked as steps are added."""
    p = pipeline()
    with pytest.raises(riprap.ConfigError, match=r"^map\('m'\)\.fn: must be callable, got 3"):
        p.map("m", 3)  # type: ignore[arg-type]
    with pytest.raises(
        riprap.ConfigError, match=r"^map\('m'\)\.concurency: unknown option \(did you mean"
    ):
        p.map("m", str, concurency=2)  # type: ignore[call-arg]
    with pytest.raises(riprap.ConfigError, match=r"^step_id: 'm' is used by two steps"):
        p.map("m", str).filter("m", bool)
    with pytest.raises(riprap.ConfigError, match=r"^step_id: must start with a letter"):
        p.map("", str)
    with pytest.raises(
        riprap.ConfigError, match=r"^map\('m'\)\.concurrency: must be a positive integer, got 0"
    ):
        p.map("m", async_identity, concurrency=0)
    with pytest.raises(
        riprap.ConfigError, match=r"^map\('m'\)\.concurrency: concurrency > 1 needs an async"
    ):
        p.map("m", str, concurrency=4)
    with pytest.raises(
        riprap.ConfigError, match=r"^batch\('b'\)\.size: must be a positive integer, got 0"
    ):
        p.batch("b", 0)
    with pytest.raises(
        riprap.ConfigError, match=r"^batch\('b'\)\.timeout: must be a positive number"
    ):
        p.batch("b", 10, timeout=-1)
    with pytest.raises(riprap.ConfigError, match=r"^stage: .* does not implement Stage"):
        p.stage(object())  # type: ignore[arg-type]


def test_builder_returns_new_pipelines() -> None:
    """Adding a step never changes the pipeline it was called on."""
    base = pipeline().source(IterableSource("s", [1])).sink(MemorySink())
    longer = base.map("m", str)
    assert () == base.steps
    assert ("m",) == tuple(step.step_id for step in longer.steps)


def test_with_options_checks_and_keeps_steps() -> None:
    """with_options changes options, keeps steps and checks the new values."""
    base = pipeline().map("m", str)
    changed = base.with_options(batch_size=10)
    assert 10 == changed.options.batch_size
    assert base.steps == changed.steps
    with pytest.raises(riprap.ConfigError, match=r"^batch_size: "):
        base.with_options(batch_size=-3)


def test_timeouts_on_a_sync_step_on_the_loop_are_refused() -> None:
    """A sync step cannot be interrupted on the loop: its timeouts are refused, naming the step."""
    p = pipeline()
    with pytest.raises(riprap.ConfigError) as total:
        p.map("lookup", str, timeout=2.0)
    with pytest.raises(riprap.ConfigError) as attempt:
        p.filter("lookup", str, attempt_timeout=2.0, record=True)
    problem = (
        ": a sync step runs on the event loop and cannot be interrupted, so this timeout "
        "could never fire; pass offload='thread' to run it in worker threads (or make the "
        "function async)"
    )
    assert [
        "map('lookup').timeout" + problem,
        "filter('lookup').attempt_timeout" + problem,
    ] == [str(total.value), str(attempt.value)]


def test_offload_is_checked() -> None:
    """offload takes 'thread', for sync functions; then timeouts and concurrency are allowed."""
    p = pipeline()
    with pytest.raises(riprap.ConfigError, match=r"^filter\('f'\)\.offload: must be 'thread'"):
        p.filter("f", bool, offload="process")  # type: ignore[arg-type]
    with pytest.raises(riprap.ConfigError, match=r"^map\('m'\)\.offload: is for sync functions"):
        p.map("m", async_identity, offload="thread")
    offloaded = p.flat_map("f", list, offload="thread", attempt_timeout=1.0, concurrency=4)
    assert ("f",) == tuple(step.step_id for step in offloaded.steps)


def test_sink_outage_timeout_sets_the_default_sink_retry_deadline() -> None:
    """The default sink retry waits sink_outage_timeout; an explicit retry is left alone."""
    base = pipeline().source(IterableSource("s", [1]))
    default = base.sink(MemorySink()).with_options(sink_outage_timeout=1200.0)
    explicit = base.with_options(sink_outage_timeout=1200.0).sink(
        MemorySink(), retry=Retry(attempts=3)
    )
    deadlines = [p.plan().sink_policies for p in (default, explicit)]
    assert [(None, 1200.0), (3, 45.0)] == [
        (policies.retry.attempts, policies.retry.timeout)
        for policies in deadlines
        if policies is not None and policies.retry is not None
    ]


def test_with_source_replaces_the_source_on_purpose() -> None:
    """.source() twice is refused, .with_source() replaces the source and keeps the rest."""
    first, second = IterableSource("first", [1]), IterableSource("second", [2])
    p = pipeline().source(first).sink(MemorySink())
    with pytest.raises(riprap.ConfigError, match=r"^source: pipeline 'p' already has a source"):
        p.source(second)
    replaced = p.with_source(second)
    assert (second, p.sink_, first) == (replaced.source_, replaced.sink_, p.source_)


@pytest.mark.parametrize(
    ("options", "batches"),
    [
        ({}, 4),
        ({"batch_size": 300}, 4),
        ({"batch_size": 100}, 10),
        ({"batch_size": 10}, 100),
        ({"batch_size": 1}, 1_000),
        ({"batch_size": 10, "queue_size": 2}, 2),
    ],
)
def test_queues_hold_four_batches_or_a_thousand_records(
    options: dict[str, Any], batches: int
) -> None:
    """By default a queue holds 4 batches, more when that is under 1,000 records; or as told."""
    assert batches == pipeline(**options).options.queue_batches


@pytest.mark.anyio
@pytest.mark.parametrize("size", [8, 9_000])
async def test_a_batch_step_after_a_rare_filter_never_waits_forever(size: int) -> None:
    """A filter keeps one record of each source batch, a batch step without timeout groups them.

    Each kept record holds its whole source batch in flight, so the source
    runs out of room long before a group is full: the partial group goes out
    then, instead of the run waiting for records that cannot be read.
    """
    sink = MemorySink()
    p = (
        pipeline(batch_size=3, max_in_flight=10)
        .source(IterableSource("nums", list(range(300))))
        .filter("rare", lambda n: n % 3 == 1)
        .batch("groups", size)
        .sink(sink)
    )
    with anyio.fail_after(30):  # a stall fails here instead of hanging the suite
        report = await p.run()
    assert list(range(1, 300, 3)) == [n for group in sink.values for n in group]
    assert max(len(group) for group in sink.values) <= size
    assert {"memory": 300} == report.positions


@pytest.mark.anyio
async def test_full_groups_while_the_source_can_read() -> None:
    """Without pressure on the in-flight bound, every group but the last is full."""
    sink = MemorySink()
    p = (
        pipeline(batch_size=10, max_in_flight=100)
        .source(IterableSource("nums", list(range(95))))
        .batch("groups", 20)
        .sink(sink)
    )
    with anyio.fail_after(30):
        await p.run()
    assert [20, 20, 20, 20, 15] == [len(group) for group in sink.values]
