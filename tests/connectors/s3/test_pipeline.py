"""S3 -> S3 pipelines: checkpoints, dead letters and quarantine in S3; a rerun changes nothing."""

from __future__ import annotations

import datetime
import gzip
from typing import TYPE_CHECKING, Any

import orjson
import pytest

import riprap
from riprap.connectors.files import parse_json_line
from riprap.connectors.s3 import OBJECT_COMPLETE, S3Checkpoints, S3DeadLetters, S3Sink, S3Source
from tests._examples import load_example

from .conftest import client_config

if TYPE_CHECKING:
    from .conftest import Store

pytestmark = [pytest.mark.s3, pytest.mark.anyio]


def add_double(line: bytes) -> dict[str, Any]:
    """Parse a JSON line and add ``double``."""
    value: dict[str, Any] = parse_json_line(line)
    value["double"] = value["n"] * 2
    return value


def build(store: Store, source: S3Source) -> riprap.Pipeline:
    """in/ -> parse -> out/, with checkpoints and dead letters in the same bucket."""
    common: dict[str, Any] = {"endpoint_url": store.endpoint, "client_config": client_config()}
    return (
        riprap.Pipeline(
            "s3-copy",
            checkpoint=S3Checkpoints(store.bucket, "state/", **common),
            dead_letter=S3DeadLetters(store.bucket, "dlq/", **common),
            batch_size=7,
        )
        .source(source)
        .map("parse", add_double)
        .sink(S3Sink(store.bucket, "out/", gzip=True, **common))
    )


async def read_output(store: Store) -> list[dict[str, Any]]:
    """Every record in the output objects, in key order."""
    records: list[dict[str, Any]] = []
    for key in await store.keys("out/"):
        records.extend(orjson.loads(line) for line in gzip.decompress(await store.get(key)).split())
    return records


async def test_s3_to_s3_with_quarantine_and_dead_letters(store: Store) -> None:
    """Good records reach out/ exactly once, a bad line is dead-lettered, a corrupt object
    quarantined, and a second run reads nothing and changes nothing.
    """
    expected: list[dict[str, Any]] = []
    for part in range(3):
        values = [{"n": part * 100 + i} for i in range(20)]
        expected.extend({**v, "double": v["n"] * 2} for v in values)
        data = b"".join(orjson.dumps(v) + b"\n" for v in values)
        if part == 1:
            data += b"{not json\n"
        await store.put(f"in/2024-01-0{part + 1}.jsonl.gz", gzip.compress(data))
    await store.put("in/2024-01-04.jsonl.gz", b"\x1f\x8bcorrupt")
    source = S3Source(
        store.bucket,
        "in/",
        quarantine_prefix="quarantine/",
        endpoint_url=store.endpoint,
        client_config=client_config(),
    )
    report = await build(store, source).run()
    output = await read_output(store)
    output_keys = await store.keys("out/")
    rerun_source = S3Source(
        store.bucket, "in/", endpoint_url=store.endpoint, client_config=client_config()
    )
    rerun = await build(store, rerun_source).run()
    assert ("completed", 61, 60, {"decode_error": 1}) == (
        report.outcome,
        report.records_in,
        report.records_out,
        dict(report.dead_lettered),
    )
    assert (sorted(expected, key=str), len(expected)) == (sorted(output, key=str), len(output))
    assert {OBJECT_COMPLETE} == set(report.positions.values())
    assert (["in/2024-01-04.jsonl.gz"], 1) == (
        [q.key for q in source.quarantined],
        len(await store.keys("dlq/")),
    )
    assert ("completed", 0, 4, output_keys) == (
        rerun.outcome,
        rerun.records_in,
        rerun_source.statistics().objects_skipped,
        await store.keys("out/"),
    )


async def test_a_quarantined_object_is_in_the_report_and_the_metrics(store: Store) -> None:
    """A run over objects of which one is corrupt reports one quarantined object in its report
    (printed too) and as ``riprap_source_outcomes_total``.
    """
    await store.put_lines("in/1.jsonl", [b'{"n": 1}'])
    await store.put("in/2.jsonl.gz", b"\x1f\x8bcorrupt")
    await store.put_lines("in/3.jsonl", [b'{"n": 3}'])
    source = S3Source(
        store.bucket,
        "in/",
        name="objects",
        endpoint_url=store.endpoint,
        client_config=client_config(),
    )
    async with build(store, source).open() as running:
        report = await running.wait()
        metric = running.metrics_registry.get_sample_value(
            "riprap_source_outcomes_total",
            {"pipeline": "s3-copy", "source": "objects", "outcome": "objects_quarantined"},
        )
    assert ({"objects_quarantined": 1}, 1.0, 2) == (
        dict(report.source_outcomes),
        metric,
        report.records_out,
    )
    assert "objects_quarantined" in report.format()


async def test_backfill_example_is_idempotent(store: Store) -> None:
    """The backfill reads only its window, and a fresh rerun overwrites the same objects."""
    example = load_example("s3_backfill.py")
    for day in range(1, 5):
        events = [{"id": f"{day}-{i}", "amount": day + i / 100} for i in range(5)]
        data = gzip.compress(b"".join(orjson.dumps(e) + b"\n" for e in events))
        await store.put(f"events/2024-01-0{day}/part-0.jsonl.gz", data)
    window = (datetime.date(2024, 1, 2), datetime.date(2024, 1, 3))
    common: dict[str, Any] = {"endpoint_url": store.endpoint, "client_config": client_config()}
    first = await example.build(store.bucket, *window, **common).run()
    first_keys = await store.keys("backfill/")
    again = await example.build(store.bucket, *window, fresh=True, **common).run()
    ids: list[str] = []
    for key in await store.keys("backfill/"):
        data = gzip.decompress(await store.get(key))
        ids.extend(orjson.loads(line)["id"] for line in data.split())
    expected_ids = sorted(f"{day}-{i}" for day in (2, 3) for i in range(5))
    assert (10, 10, first_keys, expected_ids) == (
        first.records_out,
        again.records_out,
        await store.keys("backfill/"),
        sorted(ids),
    )
