"""kill -9 during an S3 -> S3 run, restart to completion: every record exactly once.

The test process runs the moto server (it outlives the killed workers) and
starts ``_s3_worker.py`` against it. Each run is SIGKILLed once the output has
grown; after each kill every record before a checkpointed position must be in
the output (I1). The last run completes, and the output objects then hold
every input record exactly once: replays overwrite the same deterministically
named objects (I2), also when the sink cuts objects by count and by time, so
that a replay groups records differently from the run it repeats.
"""

from __future__ import annotations

import gzip
import signal
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.engine._subprocesses import DEADLINE, spawn, wait_for_child

from ._s3_worker import PIPELINE
from .conftest import CREDENTIALS, FAKE_ENV, REGION

pytestmark = [pytest.mark.s3, pytest.mark.slow]

WORKER = Path(__file__).with_name("_s3_worker.py")
OBJECTS = 12
LINES = 40
"""480 records, about 48 output objects: the third kill (8 objects on) still lands mid-run."""
KILLS = 3
COMPLETE = 1 << 62


def sync_client(endpoint: str) -> Any:
    """A blocking botocore client for the test process (no event loop here)."""
    import botocore.session

    session = botocore.session.get_session()
    return session.create_client("s3", endpoint_url=endpoint, region_name=REGION, **CREDENTIALS)


def write_input(client: Any, bucket: str) -> set[tuple[str, int]]:
    """Upload the input objects (every other one gzipped); return ``(key, n)`` of each record."""
    expected: set[tuple[str, int]] = set()
    for k in range(OBJECTS):
        key = f"in/part-{k:03d}.jsonl" + (".gz" if k % 2 else "")
        values: list[dict[str, Any]] = [
            {"key": key, "i": i, "n": k * 1000 + i} for i in range(LINES)
        ]
        data = b"".join(orjson.dumps(v) + b"\n" for v in values)
        client.put_object(Bucket=bucket, Key=key, Body=gzip.compress(data) if k % 2 else data)
        expected.update((key, v["n"]) for v in values)
    return expected


def keys(client: Any, bucket: str, prefix: str) -> list[str]:
    """Every key under ``prefix``."""
    found: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        found.extend(item["Key"] for item in page.get("Contents", ()))
    return found


def output(client: Any, bucket: str) -> list[dict[str, Any]]:
    """Every record of every output object (duplicates kept)."""
    records: list[dict[str, Any]] = []
    for key in keys(client, bucket, "out/"):
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        records.extend(orjson.loads(line) for line in body.splitlines())
    return records


def positions(client: Any, bucket: str) -> dict[str, int]:
    """The checkpointed positions, as a restart would read them."""
    try:
        body = client.get_object(Bucket=bucket, Key=f"state/{PIPELINE}.checkpoint.json")
    except client.exceptions.NoSuchKey:
        return {}
    stored = orjson.loads(body["Body"].read())
    return dict(stored["checkpoint"]["positions"]) if stored["checkpoint"] else {}


def check_no_loss(client: Any, bucket: str) -> int:
    """I1: every record before a checkpointed position is in the output; return how many."""
    written = {(r["key"], r["i"]) for r in output(client, bucket)}
    prefix = f"s3://{bucket}/"
    covered = {
        (partition.removeprefix(prefix), i)
        for partition, position in positions(client, bucket).items()
        for i in range(min(position, LINES))
    }
    missing = covered - written
    assert set() == missing
    return len(covered)


@pytest.mark.parametrize("limits", [False, True], ids=["object-per-batch", "count-and-time"])
def test_kill_and_restart_writes_every_record_once(
    moto_endpoint: str, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limits: bool
) -> None:
    """SIGKILLed runs never checkpoint past unwritten records, and after the last run the
    output objects hold every input record exactly once.
    """
    for name, value in FAKE_ENV.items():
        monkeypatch.setenv(name, value)
    client = sync_client(moto_endpoint)
    expected = write_input(client, bucket)
    args = [sys.executable, str(WORKER), moto_endpoint, bucket, *(["limits"] if limits else [])]
    covered: list[int] = []
    for run in range(KILLS):
        target = len(keys(client, bucket, "out/")) + 8

        def grown(target: int = target) -> bool:
            return len(keys(client, bucket, "out/")) >= target

        with spawn(args, tmp_path, f"run-{run}") as proc:
            wait_for_child(grown, proc, f"{target} output objects")
            proc.kill()
            proc.wait(timeout=DEADLINE)
        assert -signal.SIGKILL == proc.returncode, f"run {run} ended before it could be killed"
        covered.append(check_no_loss(client, bucket))
    with spawn(args, tmp_path, "final") as proc:
        returncode = proc.wait(timeout=DEADLINE)
    assert 0 == returncode, (tmp_path / "final.err").read_text()
    records = output(client, bucket)
    written = [(r["key"], r["n"]) for r in records]
    final = positions(client, bucket)
    client.close()
    assert sorted(covered) == covered, "the checkpoint went backwards"
    assert (len(expected), expected) == (len(written), set(written))
    assert {COMPLETE} == set(final.values())
    assert [] == [r for r in records if r["square"] != r["n"] ** 2]
