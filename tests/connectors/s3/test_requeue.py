"""``riprap s3 requeue``: quarantined objects, once repaired, reach the sink once.

The command runs in a child process against a pipeline file; credentials and
region come from the environment the moto fixture sets.
"""

from __future__ import annotations

import gzip
import sys
from typing import TYPE_CHECKING

import anyio
import orjson
import pytest

if TYPE_CHECKING:
    from pathlib import Path

    from .conftest import Store

pytestmark = [pytest.mark.s3, pytest.mark.anyio]

PIPELINE = """
import orjson
import riprap
from riprap.connectors.s3 import S3Checkpoints, S3Sink, S3Source

BUCKET, ENDPOINT = {bucket!r}, {endpoint!r}
pipeline = (
    riprap.Pipeline("copy", checkpoint=S3Checkpoints(BUCKET, "state/", endpoint_url=ENDPOINT))
    .source(S3Source(BUCKET, "in/", quarantine_prefix="quarantine/", endpoint_url=ENDPOINT))
    .map("parse", orjson.loads)
    .sink(S3Sink(BUCKET, "out/", endpoint_url=ENDPOINT))
)
no_copies = pipeline.with_source(S3Source(BUCKET, "in/", endpoint_url=ENDPOINT))
"""


async def riprap_cli(tmp_path: Path, *args: str) -> tuple[int, str]:
    """Run ``riprap ARGS`` in a child process in ``tmp_path``; its exit code and stderr."""
    done = await anyio.run_process(
        [sys.executable, "-m", "riprap.cli", *args], cwd=tmp_path, check=False
    )
    return done.returncode, done.stderr.decode()


async def landed(store: Store) -> list[int]:
    """The ``n`` of every record in ``out/``, sorted."""
    lines = [line for key in await store.keys("out/") for line in (await store.get(key)).split()]
    return sorted(orjson.loads(line)["n"] for line in lines)


def jsonl(numbers: range) -> bytes:
    """JSON Lines of ``{"n": ...}`` records."""
    return b"".join(orjson.dumps({"n": n}) + b"\n" for n in numbers)


async def test_requeue_reads_repaired_copies_once(store: Store, tmp_path: Path) -> None:
    """A corrupt object is quarantined; its copy, repaired, is read by ``riprap s3 requeue``
    under the pipeline's ``.requeue`` checkpoint, and a second requeue reads nothing again.
    """
    (tmp_path / "p.py").write_text(PIPELINE.format(bucket=store.bucket, endpoint=store.endpoint))
    await store.put("in/a.jsonl", jsonl(range(3)))
    await store.put("in/b.jsonl.gz", b"\x1f\x8bcorrupt")
    first = await riprap_cli(tmp_path, "run", "-q", "p.py")
    quarantined = await store.keys("quarantine/")
    await store.put("quarantine/in/b.jsonl.gz", gzip.compress(jsonl(range(10, 15))))
    requeued = await riprap_cli(tmp_path, "s3", "requeue", "-q", "p.py")
    output = await landed(store)
    again = await riprap_cli(tmp_path, "s3", "requeue", "-q", "p.py")
    assert (0, ["quarantine/in/b.jsonl.gz", "quarantine/in/b.jsonl.gz.reason.json"]) == (
        first[0],
        quarantined,
    ), first[1]
    assert (0, True, [0, 1, 2, 10, 11, 12, 13, 14]) == (
        requeued[0],
        "'copy.requeue'" in requeued[1],
        output,
    ), requeued[1]
    assert (0, output) == (again[0], await landed(store)), again[1]


async def test_requeue_without_quarantine_copies_is_a_usage_error(
    store: Store, tmp_path: Path
) -> None:
    """A source that keeps no quarantined copies cannot requeue: exit 2, naming the option."""
    (tmp_path / "p.py").write_text(PIPELINE.format(bucket=store.bucket, endpoint=store.endpoint))
    code, stderr = await riprap_cli(tmp_path, "s3", "requeue", "p.py:no_copies")
    assert (2, True) == (code, "quarantine_prefix" in stderr), stderr
