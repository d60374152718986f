"""The bad config zoo: wrong pipelines, each refused with a ConfigError naming what is wrong.

Every case builds (and, where the mistake can only show then, starts) a
pipeline that is wrong in one way, and checks three things: the error is a
:class:`~riprap.ConfigError`, its ``option`` names the option or step, and
nothing ran: the source was never opened or read and no file appeared (the
default SQLite checkpoint store, a sink's file, a dead-letter store).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

import riprap
import riprap.checkpoints
import riprap.deadletters
import riprap.observability
from riprap.connectors.files import CsvSink, CsvSource, JsonLinesSink, JsonLinesSource
from riprap.connectors.http import HttpEnricher, HttpSink, WebhookSource
from riprap.connectors.memory import MemorySink
from riprap.connectors.s3 import S3Checkpoints, S3DeadLetters, S3Sink, S3Source
from riprap.connectors.sqlite import SqliteSink
from riprap.policies import Retry

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

NAN = float("nan")
INF = float("inf")


class CountingSource:
    """A source of three numbers that counts how often it was opened and read."""

    name = "counting"

    def __init__(self) -> None:
        self.opens = 0
        self.reads = 0

    async def open(self, context: riprap.SourceContext) -> None:
        """Count the open."""
        self.opens += 1

    async def read(self, max_records: int) -> riprap.SourceBatch | None:
        """Count the read; hand over 0, 1, 2 once, then end."""
        self.reads += 1
        if self.reads > 1:
            return None
        return riprap.SourceBatch("numbers", [0, 1, 2], start=0)

    async def aclose(self) -> None:
        """Nothing to close."""


async def twice(value: int) -> int:
    """An async step function."""
    return 2 * value


def wrong(value: object) -> Any:
    """``value``, typed as anything: the zoo passes what the type checker would refuse."""
    return value


@dataclass
class Kit:
    """What a case builds from: a directory, a counting source and a port in use."""

    tmp: Path
    source: CountingSource
    busy_port: int

    def pipeline(self, **options: Any) -> riprap.Pipeline:
        """A pipeline whose default SQLite checkpoint store would be created in ``tmp``."""
        return riprap.Pipeline("zoo", checkpoint_path=str(self.tmp / "ckpt" / "zoo.db"), **options)

    def complete(self, **options: Any) -> riprap.Pipeline:
        """A pipeline with the counting source and a memory sink."""
        return self.pipeline(**options).source(self.source).sink(MemorySink())

    def run(self, pipeline: riprap.Pipeline, **options: Any) -> None:
        """Run ``pipeline`` to the end in a new event loop."""
        riprap.run(pipeline, handle_signals=False, **options)

    def file(self, name: str) -> str:
        """A path in ``tmp`` (nothing is created)."""
        return str(self.tmp / "out" / name)


@dataclass(frozen=True)
class Case:
    """One wrong pipeline: what to try and the option or step the error must name."""

    id: str
    attempt: Callable[[Kit], object]
    option: str


def with_memory_checkpoints(kit: Kit, source: riprap.Source) -> riprap.Pipeline:
    """A complete pipeline on memory checkpoints reading ``source``."""
    return (
        riprap.Pipeline("zoo", checkpoint=riprap.checkpoints.MemoryCheckpoints())
        .source(source)
        .sink(MemorySink())
    )


ZOO = [
    # Pipeline options.
    Case("unknown option", lambda k: k.pipeline(batchsize=10), "batchsize"),
    Case("batch size zero", lambda k: k.pipeline(batch_size=0), "batch_size"),
    Case("max_in_flight below batch_size", lambda k: k.pipeline(max_in_flight=5), "max_in_flight"),
    Case("queue size zero", lambda k: k.pipeline(queue_size=0), "queue_size"),
    Case(
        "NaN checkpoint interval",
        lambda k: k.pipeline(checkpoint_interval=NAN),
        "checkpoint_interval",
    ),
    Case(
        "infinite checkpoint interval",
        lambda k: k.pipeline(checkpoint_interval=INF),
        "checkpoint_interval",
    ),
    Case("NaN drain timeout", lambda k: k.pipeline(drain_timeout=NAN), "drain_timeout"),
    Case("infinite drain timeout", lambda k: k.pipeline(drain_timeout=INF), "drain_timeout"),
    Case("infinite alert interval", lambda k: k.pipeline(alert_interval=INF), "alert_interval"),
    Case("max_crashes zero", lambda k: k.pipeline(max_crashes=0), "max_crashes"),
    Case(
        "record sink as dead letter store",
        lambda k: k.pipeline(dead_letter=MemorySink()),
        "dead_letter",
    ),
    Case("object as dead letter store", lambda k: k.pipeline(dead_letter=object()), "dead_letter"),
    Case("clock that is not a clock", lambda k: k.pipeline(clock="now"), "clock"),
    Case(
        "checkpoint that is not a backend", lambda k: k.pipeline(checkpoint=object()), "checkpoint"
    ),
    Case("redactor that is not a redactor", lambda k: k.pipeline(redactor="***"), "redactor"),
    Case("pipeline name with a space", lambda k: riprap.Pipeline("my pipeline"), "name"),
    # Source, sink and steps.
    Case("second source", lambda k: k.complete().source(CountingSource()), "source"),
    Case("second sink", lambda k: k.complete().sink(MemorySink()), "sink"),
    Case("source that is not a source", lambda k: k.pipeline().source(wrong(object())), "source"),
    Case("sink that is not a sink", lambda k: k.pipeline().sink(wrong([])), "sink"),
    Case("no sink", lambda k: k.run(k.pipeline().source(k.source)), "sink"),
    Case("no source", lambda k: k.run(k.pipeline().sink(MemorySink())), "source"),
    Case("no sink, embedded", lambda k: k.pipeline().source(k.source).open(), "sink"),
    Case("two steps with one id", lambda k: k.complete().map("m", abs).map("m", abs), "step_id"),
    Case("step function not callable", lambda k: k.complete().map("m", wrong(3)), "map('m').fn"),
    Case(
        "unknown step option",
        lambda k: k.complete().map("m", twice, **wrong({"retries": 3})),
        "map('m').retries",
    ),
    Case(
        "NaN step timeout", lambda k: k.complete().map("m", twice, timeout=NAN), "map('m').timeout"
    ),
    Case(
        "infinite attempt timeout",
        lambda k: k.complete().filter("f", twice, attempt_timeout=INF),
        "filter('f').attempt_timeout",
    ),
    Case(
        "concurrency zero",
        lambda k: k.complete().map("m", twice, concurrency=0),
        "map('m').concurrency",
    ),
    Case(
        "unknown on_error",
        lambda k: k.complete().map("m", abs, on_error=wrong("skip")),
        "map('m').on_error",
    ),
    Case("batch of zero", lambda k: k.complete().batch("b", 0), "batch('b').size"),
    Case(
        "infinite batch timeout",
        lambda k: k.complete().batch("b", 10, timeout=INF),
        "batch('b').timeout",
    ),
    Case(
        "more calls at once than records in flight",
        lambda k: k.run(k.complete().map("m", twice, concurrency=10_001)),
        "map('m').concurrency",
    ),
    Case(
        "NaN sink timeout", lambda k: k.pipeline().sink(MemorySink(), timeout=NAN), "sink.timeout"
    ),
    Case(
        "infinite sink attempt timeout",
        lambda k: k.pipeline().sink(MemorySink(), attempt_timeout=INF),
        "sink.attempt_timeout",
    ),
    Case(
        "sink retry that is not a Retry",
        lambda k: k.pipeline().sink(MemorySink(), retry=wrong(3)),
        "sink.retry",
    ),
    Case(
        "step retry that is not a Retry",
        lambda k: k.complete().map("m", twice, retry=wrong(Retry)),
        "map('m').retry",
    ),
    # File and SQLite connectors.
    Case(
        "unknown decode mode",
        lambda k: JsonLinesSource(k.file("a.jsonl"), decode=wrong("yaml")),
        "decode",
    ),
    Case(
        "CSV source in UTF-16",
        lambda k: CsvSource(k.file("a.csv"), encoding="utf-16"),
        "CsvSource.encoding",
    ),
    Case(
        "unknown CSV encoding",
        lambda k: CsvSource(k.file("a.csv"), encoding="utf9"),
        "CsvSource.encoding",
    ),
    Case(
        "two-letter delimiter",
        lambda k: CsvSource(k.file("a.csv"), delimiter=";;"),
        "CsvSource.delimiter",
    ),
    Case(
        "quote as delimiter",
        lambda k: CsvSink(k.file("a.csv"), ["a"], delimiter='"'),
        "CsvSink.delimiter",
    ),
    Case("CSV sink without columns", lambda k: CsvSink(k.file("a.csv"), []), "fieldnames"),
    Case(
        "CSV sink column named twice", lambda k: CsvSink(k.file("a.csv"), ["a", "a"]), "fieldnames"
    ),
    Case("JSON Lines sink on a directory", lambda k: JsonLinesSink(k.tmp), "JsonLinesSink.path"),
    Case("SQLite sink on a directory", lambda k: SqliteSink(k.tmp, "t"), "SqliteSink.path"),
    Case("SQL table name with a space", lambda k: SqliteSink(k.file("a.db"), "my table"), "table"),
    Case(
        "NaN SQLite timeout",
        lambda k: SqliteSink(k.file("a.db"), "t", timeout=NAN),
        "SqliteSink.timeout",
    ),
    # HTTP connectors and the health server.
    Case(
        "FTP URL for an enricher", lambda k: HttpEnricher("ftp://example.com/x"), "HttpEnricher.url"
    ),
    Case("URL without a host", lambda k: HttpSink("http:///ingest"), "HttpSink.url"),
    Case(
        "infinite HTTP timeout",
        lambda k: HttpEnricher("http://x", timeout=INF),
        "HttpEnricher.timeout",
    ),
    Case(
        "NaN webhook ack timeout",
        lambda k: WebhookSource(ack_timeout=NAN),
        "WebhookSource.ack_timeout",
    ),
    Case(
        "webhook port in use",
        lambda k: k.run(with_memory_checkpoints(k, WebhookSource(port=k.busy_port))),
        "WebhookSource.port",
    ),
    Case(
        "health port out of range",
        lambda k: riprap.observability.HealthConfig(port=70_000),
        "health.port",
    ),
    Case(
        "health port in use",
        lambda k: k.run(k.complete(), health=riprap.observability.HealthConfig(port=k.busy_port)),
        "health.port",
    ),
    # S3 bucket names, checked when the connector is built.
    Case("bucket with capitals", lambda k: S3Sink("My_Bucket"), "S3Sink.bucket"),
    Case("bucket too short", lambda k: S3Source("ab"), "S3Source.bucket"),
    Case("bucket with two dots", lambda k: S3DeadLetters("logs..dlq"), "S3DeadLetters.bucket"),
    Case("bucket like an IP address", lambda k: S3Checkpoints("10.0.0.1"), "S3Checkpoints.bucket"),
]


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A TCP port on 127.0.0.1 that another socket listens on for the test."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield int(listener.getsockname()[1])


def listing(directory: Path) -> list[str]:
    """Every path under ``directory``, relative to it, sorted."""
    return sorted(str(path.relative_to(directory)) for path in directory.rglob("*"))


def test_the_zoo_is_big_enough() -> None:
    """At least 40 wrong pipelines, each with its own name."""
    assert (True, len(ZOO)) == (len(ZOO) >= 40, len({case.id for case in ZOO}))


@pytest.mark.parametrize("case", ZOO, ids=lambda case: case.id)
def test_wrong_pipeline_is_refused_before_anything_runs(
    case: Case, tmp_path: Path, busy_port: int
) -> None:
    """The mistake is a ConfigError naming the option or step, and nothing was read or created."""
    kit = Kit(tmp_path, CountingSource(), busy_port)
    with pytest.raises(riprap.ConfigError) as info:
        case.attempt(kit)
    error = info.value
    assert (riprap.ConfigError, case.option) == (type(error), error.option)
    assert f"{case.option}: {error.problem}" == str(error)
    assert (0, 0, []) == (kit.source.opens, kit.source.reads, listing(tmp_path))


def test_second_sink_points_to_fan_out(tmp_path: Path) -> None:
    """Refusing a second sink says how to write to several: fan_out or route."""
    first = MemorySink(name="first")
    with pytest.raises(riprap.ConfigError) as info:
        riprap.Pipeline("p").sink(first).sink(MemorySink(name="second"))
    expected = (
        "sink: pipeline 'p' already has a sink ('first'); to write to several sinks, "
        "end it with .fan_out() or .route() instead"
    )
    assert expected == str(info.value)


def test_second_source_says_how_to_read_several(tmp_path: Path) -> None:
    """Refusing a second source says how to read several instead."""
    with pytest.raises(riprap.ConfigError) as info:
        riprap.Pipeline("p").source(CountingSource()).source(CountingSource())
    assert "to read several sources, name each in one .sources(a=..., b=...)" in str(info.value)


def test_health_port_in_use_is_one_line(busy_port: int) -> None:
    """A health port in use reads 'health.port: HOST:PORT is in use'."""
    with pytest.raises(riprap.ConfigError) as info:
        riprap.run(
            riprap.Pipeline("p", checkpoint=riprap.checkpoints.MemoryCheckpoints())
            .source(CountingSource())
            .sink(MemorySink()),
            handle_signals=False,
            health=riprap.observability.HealthConfig(port=busy_port),
        )
    assert f"health.port: 127.0.0.1:{busy_port} is in use" == str(info.value)


@pytest.mark.parametrize("kind", ["map", "filter", "flat_map"])
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.anyio
async def test_sync_step_returning_a_coroutine_stops_the_run(kind: str, fused: bool) -> None:
    """A sync step that returns a coroutine stops at the first record, naming the step."""
    sink = MemorySink()
    steps = {"record": True} if not fused else {}  # record=True runs the step on its own
    pipeline = riprap.Pipeline("p", checkpoint=riprap.checkpoints.MemoryCheckpoints()).source(
        CountingSource()
    )
    step = getattr(pipeline, kind)
    pipeline = step("wrapped", lambda value: twice(value), **steps).sink(sink)
    with pytest.raises(riprap.PipelineError) as info:
        await pipeline.run()
    cause = info.value.error
    expected: tuple[type, str, str, list[Any]] = (
        riprap.ConfigError,
        f"{kind}('wrapped')",
        "the function is sync but returned coroutine object; pass an async function "
        "(async def) so that riprap awaits it",
        [],
    )
    named = (getattr(cause, "option", None), getattr(cause, "problem", None))
    assert expected == (type(cause), *named, sink.values)
