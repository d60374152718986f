"""S3 through a fault-injecting proxy: short and cut-off reads, lost answers, 503s.

Every pipeline here copies ``in/`` to ``out/`` and the records are counted
where they land: none lost, none twice, no healthy object quarantined.
"""

from __future__ import annotations

import contextlib
import gzip
from typing import TYPE_CHECKING, Any

import orjson
import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

import riprap
from riprap.checkpoints import CheckpointError, CheckpointIntegrityError, FencedError
from riprap.connectors.s3 import S3Checkpoints, S3ReadError, S3Sink, S3Source
from riprap.policies import Retry
from tests.checkpoint_contract import snapshot

from ._proxy import Action, Fault, FaultProxy, fault_proxy
from .conftest import CREDENTIALS, REGION, client_config

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from .conftest import Store

pytestmark = [pytest.mark.s3, pytest.mark.anyio]

OBJECTS = 4
RECORDS = 750
"""Records per input object: 3,000 in all."""

FAST_RETRY = Retry(attempts=None, timeout=30.0, wait_initial=0.01, wait_max=0.05)
"""The sink's retry, with short waits."""


def key_of(part: int) -> str:
    """Input object ``part``: gzip for even parts, plain JSON Lines for odd ones."""
    return f"in/part-{part}.jsonl" + (".gz" if part % 2 == 0 else "")


@contextlib.asynccontextmanager
async def uploader(store: Store, *, checksum: bool) -> AsyncIterator[Any]:
    """A client for the test's server; without ``checksum`` its objects carry none."""
    calculation = "when_supported" if checksum else "when_required"
    config = AioConfig(request_checksum_calculation=calculation)
    creator = get_session().create_client(
        "s3", endpoint_url=store.endpoint, region_name=REGION, config=config, **CREDENTIALS
    )
    async with creator as client:
        yield client


async def put_inputs(store: Store, *, checksum: bool) -> list[dict[str, int]]:
    """Store the input objects; return every record they hold."""
    expected: list[dict[str, int]] = []
    async with uploader(store, checksum=checksum) as client:
        for part in range(OBJECTS):
            values = [{"part": part, "n": n} for n in range(RECORDS)]
            expected.extend(values)
            data = b"".join(orjson.dumps(value) + b"\n" for value in values)
            body = gzip.compress(data) if key_of(part).endswith(".gz") else data
            await client.put_object(Bucket=store.bucket, Key=key_of(part), Body=body)
    return expected


def copy(store: Store, *, source_url: str, sink_url: str, checkpoint_url: str) -> riprap.Pipeline:
    """``in/`` -> parse -> ``out/``, checkpointed in the bucket, each part at its own URL."""

    def common(url: str) -> dict[str, Any]:
        return {"endpoint_url": url, "client_config": client_config()}

    source = S3Source(store.bucket, "in/", quarantine_prefix="quarantine/", **common(source_url))
    return (
        riprap.Pipeline(
            "faults",
            checkpoint=S3Checkpoints(store.bucket, "state/", **common(checkpoint_url)),
            batch_size=100,
            checkpoint_interval=0.05,
        )
        .source(source)
        .map("parse", orjson.loads)
        .sink(S3Sink(store.bucket, "out/", gzip=True, **common(sink_url)), retry=FAST_RETRY)
    )


async def landed(store: Store) -> list[dict[str, int]]:
    """Every record in ``out/``, in key order."""
    records: list[dict[str, int]] = []
    for key in await store.keys("out/"):
        records.extend(orjson.loads(line) for line in gzip.decompress(await store.get(key)).split())
    return records


def ordered(records: list[dict[str, int]]) -> list[tuple[int, int]]:
    """``records`` as sorted ``(part, n)`` pairs: a duplicate shows, a loss shows."""
    return sorted((record["part"], record["n"]) for record in records)


async def run_through(store: Store, *faults: Fault) -> tuple[riprap.RunReport, FaultProxy]:
    """Run :func:`copy` with its source reading through a proxy that injects ``faults``."""
    async with fault_proxy(store.endpoint) as (proxy, url):
        proxy.add(*faults)
        pipeline = copy(
            store, source_url=url, sink_url=store.endpoint, checkpoint_url=store.endpoint
        )
        report = await pipeline.run()
    return report, proxy


@pytest.mark.parametrize("checksum", [False, True], ids=["no-checksum", "checksum"])
async def test_a_short_content_length_is_retried_not_quarantined(
    store: Store, checksum: bool
) -> None:
    """Answers that announce and send half an object are read again: all 3,000 records land
    once and no object is quarantined, whether or not the objects carry a checksum.
    """
    expected = await put_inputs(store, checksum=checksum)
    report, proxy = await run_through(
        store, Fault("short_length", "GET", "/in/part-", times=None, every=2)
    )
    assert ordered(expected) == ordered(await landed(store))
    assert ("completed", 3, [], {}) == (
        report.outcome,
        proxy.injected["short_length"],
        await store.keys("quarantine/"),
        dict(report.source_outcomes),
    )
    assert report.retries >= 3


async def test_cut_off_bodies_and_unavailable_answers_are_retried(store: Store) -> None:
    """Bodies cut off mid-stream and 503 answers are retried: every record lands once."""
    expected = await put_inputs(store, checksum=True)
    report, proxy = await run_through(
        store,
        Fault("unavailable", "GET", "/in/part-1", times=2),
        Fault("truncate", "GET", "/in/part-", times=None, every=2, keep=0.9),
    )
    assert ordered(expected) == ordered(await landed(store))
    assert ("completed", 2, 3, []) == (
        report.outcome,
        proxy.injected["unavailable"],
        proxy.injected["truncate"],
        await store.keys("quarantine/"),
    )


@pytest.mark.parametrize("action", ["short_length", "truncate"])
async def test_a_persistent_bad_read_stops_the_run_naming_the_object(
    store: Store, action: Action
) -> None:
    """An object that never arrives whole stops the run with an error that names it and
    its size; it is not quarantined and none of its records is used.
    """
    expected = await put_inputs(store, checksum=False)
    size = len(await store.get(key_of(1)))
    with pytest.raises(S3ReadError) as caught:
        await run_through(store, Fault(action, "GET", key_of(1), times=None))
    error = caught.value
    got = size // 2 if action == "short_length" else None
    assert (store.bucket, key_of(1), size, got) == (
        error.bucket,
        error.key,
        error.expected,
        error.got,
    )
    assert f"s3://{store.bucket}/{key_of(1)}: " in str(error)
    output = ordered(await landed(store))
    first = ordered([record for record in expected if record["part"] == 0])
    assert ([], True, len(set(output))) == (
        await store.keys("quarantine/"),
        set(output) <= set(first),
        len(output),
    )


async def test_a_checkpoint_write_whose_answer_was_lost_counts_as_done(store: Store) -> None:
    """A claim and a save that S3 stored but whose answers were lost (the connection reset,
    botocore's retry got 412) succeed: the claim takes one epoch, the save is loaded back.
    """
    async with fault_proxy(store.endpoint) as (proxy, url):
        backend = S3Checkpoints(
            store.bucket, "state/", endpoint_url=url, client_config=client_config()
        )
        proxy.add(Fault("reset", "PUT", ".checkpoint.json", times=2))
        claim = await backend.claim("orders", "a")
        saved = snapshot(claim.epoch, "a", 1)
        await backend.save(saved)
        loaded = await backend.load("orders")
    assert (1, saved, 2) == (claim.epoch, loaded, proxy.injected["reset"])


async def test_a_checkpoint_that_never_arrives_whole_is_a_named_checkpoint_error(
    store: Store,
) -> None:
    """A checkpoint object cut off on every read is a ``CheckpointError`` naming it, not a
    raw transport error and not "damaged".
    """
    async with fault_proxy(store.endpoint) as (proxy, url):
        backend = S3Checkpoints(
            store.bucket, "state/", endpoint_url=url, client_config=client_config()
        )
        await backend.claim("orders", "a")
        proxy.add(Fault("truncate", "GET", ".checkpoint.json", times=None))
        with pytest.raises(CheckpointError) as caught:
            await backend.load("orders")
    where = f"s3://{store.bucket}/state/orders.checkpoint.json: cannot read: reading "
    assert (True, False, 3) == (
        str(caught.value).startswith(where),
        isinstance(caught.value, CheckpointIntegrityError),
        proxy.injected["truncate"],
    )


async def test_a_lost_answer_does_not_unfence_a_zombie(store: Store) -> None:
    """A save from an owner whose claim was taken over is still refused under resets."""
    async with fault_proxy(store.endpoint) as (proxy, url):
        backend = S3Checkpoints(
            store.bucket, "state/", endpoint_url=url, client_config=client_config()
        )
        proxy.add(Fault("reset", "PUT", ".checkpoint.json", times=None, every=2))
        zombie = await backend.claim("orders", "a")
        await backend.claim("orders", "b")
        with pytest.raises(FencedError):
            await backend.save(snapshot(zombie.epoch, "a", 1))
    assert 1 == proxy.injected["reset"]


async def test_s3_to_s3_through_every_fault_loses_and_duplicates_nothing(store: Store) -> None:
    """Source, sink and checkpoints all behind the proxy, with resets after stored PUTs,
    short and cut-off reads (of objects and checkpoints) and 503s: every record lands exactly
    once, and a rerun reads nothing and changes nothing.
    """
    expected = await put_inputs(store, checksum=False)
    async with fault_proxy(store.endpoint) as (proxy, url):
        proxy.add(
            Fault("reset", "PUT", ".checkpoint.json", times=None, every=2),
            Fault("reset", "PUT", "/out/", times=None, every=3),
            Fault("unavailable", "PUT", "/out/", times=None, every=4),
            Fault("short_length", "GET", "/in/part-", times=None, every=3),
            Fault("truncate", "GET", "/in/part-", times=None, every=2),
            Fault("truncate", "GET", ".checkpoint.json", times=None, every=3),
            Fault("short_length", "GET", ".checkpoint.json", times=None, every=5),
        )
        report = await copy(store, source_url=url, sink_url=url, checkpoint_url=url).run()
        output_keys = await store.keys("out/")
        rerun = await copy(store, source_url=url, sink_url=url, checkpoint_url=url).run()
    assert ordered(expected) == ordered(await landed(store))
    assert ("completed", 3000, 3000, []) == (
        report.outcome,
        report.records_in,
        report.records_out,
        await store.keys("quarantine/"),
    )
    assert ("completed", 0, output_keys) == (
        rerun.outcome,
        rerun.records_in,
        await store.keys("out/"),
    )
    assert {"reset", "unavailable", "short_length", "truncate"} == set(proxy.injected)


async def test_an_object_replaced_after_the_listing_is_read_whole(store: Store) -> None:
    """An object replaced between the listing and its GET is checked against its new size,
    not refused for differing from the listed one (it is read whole, new records and all).
    """
    await store.put("in/a.jsonl", b'{"n": 0}\n')
    await store.put("in/b.jsonl", b'{"n": 1}\n')
    source = S3Source(
        store.bucket, "in/", endpoint_url=store.endpoint, client_config=client_config()
    )
    await source.open(riprap.SourceContext(pipeline="test", positions={}))
    try:
        first = await source.read(10)  # lists both objects, reads a
        await store.put("in/b.jsonl", b'{"n": 1}\n{"n": 2}\n{"n": 3}\n')
        rest = [batch async for batch in _batches(source)]
    finally:
        await source.aclose()
    values = [v for batch in [first, *rest] if batch is not None for v in batch.values]
    assert [0, 1, 2, 3] == [orjson.loads(value)["n"] for value in values]


async def _batches(source: S3Source) -> AsyncIterator[riprap.SourceBatch]:
    """Every remaining batch of ``source``."""
    while (batch := await source.read(10)) is not None:
        yield batch
