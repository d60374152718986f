"""``Pipeline.through``: a stream re-keyed through a Kafka topic, in one run."""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from prometheus_client import generate_latest

pytest.importorskip("aiokafka")

import riprap
from riprap.checkpoints import MemoryCheckpoints
from riprap.connectors.kafka import (
    KafkaChangelog,
    KafkaCheckpoints,
    KafkaSink,
    KafkaSource,
    json_value,
)
from riprap.connectors.memory import IterableSource, MemorySink

from .conftest import FAST_GROUP

if TYPE_CHECKING:
    from riprap.state import State

    from .conftest import KafkaHelper

pytestmark = [pytest.mark.anyio, pytest.mark.kafka]

DEADLINE = 60.0
ORDERS = 300
WORKER = Path(__file__).with_name("_changelog_worker.py")


def orders(count: int) -> list[dict[str, Any]]:
    """Orders of 7 customers in random order, keyed (by the source) by order id."""
    rng = random.Random(3)
    return [{"id": i, "customer": f"c{rng.randrange(7)}"} for i in range(count)]


def count(order: dict[str, Any], state: State) -> tuple[str, int]:
    """One more order for the record's key: its customer after the re-keying."""
    seen: int = state.get(0) + 1
    state.set(seen)
    return order["customer"], seen


def rekeyed(
    kafka: KafkaHelper,
    topic: str,
    sink: MemorySink,
    upstream_checkpoints: MemoryCheckpoints,
    values: list[dict[str, Any]],
    fail_at: int | None = None,
) -> riprap.Pipeline:
    """Orders keyed by id -> through a topic keyed by customer -> a count per customer."""

    def check(order: dict[str, Any]) -> dict[str, Any]:
        if order["id"] == fail_at:
            raise RuntimeError(f"a bug at order {fail_at}")
        return order

    by_customer = KafkaSource(
        topic,
        bootstrap_servers=kafka.bootstrap,
        group_id=f"g-{topic}",
        consumer_options=FAST_GROUP,
    )
    return (
        riprap.Pipeline("counts", checkpoint=upstream_checkpoints, checkpoint_interval=0.1)
        .source(IterableSource("orders", values, keys=[v["id"] for v in values]))
        .map("check", check)
        .through(
            "by_customer",
            KafkaSink(topic, bootstrap_servers=kafka.bootstrap, key=lambda o: o["customer"]),
            by_customer,
            checkpoint=KafkaCheckpoints(by_customer),
        )
        .map("decode", json_value)
        .map("count", count, state=True)
        .sink(sink)
        .with_options(changelog=KafkaChangelog(kafka.bootstrap, topic=f"{topic}-changelog"))
    )


async def test_a_stream_rekeyed_through_a_topic_counts_per_customer_in_one_run(
    kafka: KafkaHelper,
) -> None:
    """Both halves run in one run; every customer's count is exact; both halves checkpoint."""
    topic = await kafka.create_topic(3)
    values = orders(ORDERS)
    sink, upstream = MemorySink(), MemoryCheckpoints()
    async with rekeyed(kafka, topic, sink, upstream, values).open() as running:
        deadline = time.monotonic() + DEADLINE
        for _ in range(10_000):
            if len(sink.values) >= ORDERS or time.monotonic() > deadline:
                break
            await anyio.sleep(0.02)
        scraped = generate_latest(running.metrics_registry).decode()
        running.stop()
    report = await running.wait()
    # Both halves in one scrape: one family each, the first half under its own label.
    assert 1 == scraped.count("# TYPE riprap_records_total counter")
    first_half = 'riprap_records_total{outcome="in",pipeline="counts.by_customer",stage="orders"}'
    assert f"{first_half} {ORDERS}.0" in scraped
    placed = Counter(order["customer"] for order in values)
    finals: dict[str, int] = {}
    for customer, seen in sink.values:
        finals[customer] = max(finals.get(customer, 0), seen)
    assert dict(placed) == finals
    assert (ORDERS, "stopped") == (report.records_in, report.outcome)
    half = report.upstream  # the first half's own figures, in the run's report
    assert half is not None
    assert ("counts.by_customer", ORDERS, ORDERS) == (
        half.pipeline,
        half.records_in,
        half.records_out,
    )
    assert half.outcome in ("completed", "stopped")
    assert "  first half:\n  pipeline counts.by_customer:" in report.format()
    assert ORDERS == report.to_dict()["upstream"]["records_in"]
    first = await upstream.load("counts.by_customer")  # the first half's own checkpoint
    assert first is not None
    assert {"memory": ORDERS} == dict(first.positions)  # IterableSource's one partition


async def test_a_failure_before_the_topic_fails_the_run(kafka: KafkaHelper) -> None:
    """An error in the first half stops the whole run with that error, naming the half."""
    topic = await kafka.create_topic(1)
    pipeline = rekeyed(kafka, topic, MemorySink(), MemoryCheckpoints(), orders(100), fail_at=50)
    with pytest.raises(riprap.PipelineError, match=r"'counts\.by_customer'.*a bug at order 50"):
        with anyio.fail_after(DEADLINE):
            await pipeline.run()


def test_through_needs_a_source_and_no_end_yet(kafka: KafkaHelper) -> None:
    """A through() without a source, after a sink, or after keyed steps it would cut off."""
    sink = KafkaSink("t", bootstrap_servers=kafka.bootstrap)
    source = KafkaSource("t", bootstrap_servers=kafka.bootstrap, group_id="g")
    with pytest.raises(riprap.ConfigError, match="has no source before"):
        riprap.Pipeline("p").through("x", sink, source)
    ended = riprap.Pipeline("p").source(IterableSource("n", [1])).sink(MemorySink())
    with pytest.raises(riprap.ConfigError, match="already ends before"):
        ended.through("x", sink, source)
    keyed = (
        riprap.Pipeline("p", changelog=KafkaChangelog(kafka.bootstrap))
        .source(IterableSource("n", [1], keys=["k"]))
        .map("count", count, state=True)
    )
    with pytest.raises(riprap.ConfigError, match="put them after it"):
        keyed.through("x", sink, source)


def test_workers_check_each_half_of_a_pipeline_by_its_own_rules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second half keeping keyed state over a group without a changelog is refused under
    two workers, named, before any starts (as a pipeline of one half would be)."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(riprap.ConfigError, match=r"'window_count'.*changelog"):
        riprap.run_workers(f"{WORKER}:two_halves", workers=2)


def test_describe_shows_both_halves() -> None:
    """The first half (named after the through step) and then the pipeline itself."""
    pipeline = (
        riprap.Pipeline("p")
        .source(IterableSource("n", [1]))
        .map("a", abs)
        .through("x", MemorySink(), IterableSource("m", [2]))
        .map("b", abs)
        .sink(MemorySink())
    )
    lines = pipeline.describe().splitlines()
    assert ["pipeline p.x", "pipeline p"] == [line for line in lines if line.startswith("pipeline")]
    assert lines.index("  map a") < lines.index("pipeline p") < lines.index("  map b")
