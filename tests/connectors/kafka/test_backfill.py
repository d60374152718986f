"""``riprap backfill`` end to end: a Kafka pipeline over a time window, into SQLite."""

from __future__ import annotations

import re
import sqlite3
import sys
import textwrap
import uuid
from typing import TYPE_CHECKING

import anyio
import pytest

pytest.importorskip("aiokafka")

from .test_bounded import produce_stamped

if TYPE_CHECKING:
    from pathlib import Path

    from .conftest import KafkaHelper

pytestmark = pytest.mark.anyio

PIPELINE = """
import riprap
from riprap.connectors.kafka import KafkaSource
from riprap.connectors.sqlite import SqliteSink

pipeline = (
    riprap.Pipeline("orders", checkpoint_path="checkpoints.db", checkpoint_interval=0.2)
    .source(KafkaSource({topic!r}, bootstrap_servers={bootstrap!r}, group_id={group!r}))
    .map("decode", lambda value: {{"id": int(value)}})
    .sink(SqliteSink("out.db", table="orders", key="id"))
)
"""


async def backfill(tmp_path: Path, *args: str) -> tuple[int, str, str]:
    """Run ``riprap backfill pipeline.py ARGS`` in a child process (bounded in time)."""
    command = [sys.executable, "-m", "riprap.cli", "backfill", "pipeline.py", "-q", *args]
    with anyio.fail_after(120):
        done = await anyio.run_process(command, cwd=tmp_path, check=False)
    return done.returncode, done.stdout.decode(), done.stderr.decode()


def ids(path: Path) -> list[int]:
    """The ids the backfill upserted, sorted."""
    with sqlite3.connect(path) as db:
        return sorted(row[0] for row in db.execute('SELECT "id" FROM "orders"'))


@pytest.mark.kafka
async def test_backfill_runs_the_window_once_under_its_own_name(
    kafka: KafkaHelper, tmp_path: Path
) -> None:
    """The window's records are upserted, the run ends by itself, and a rerun resumes."""
    topic = await kafka.create_topic(2)
    await produce_stamped(kafka, topic, 30, partitions=2)
    group = f"live-{uuid.uuid4().hex}"
    script = PIPELINE.format(topic=topic, bootstrap=kafka.bootstrap, group=group)
    (tmp_path / "pipeline.py").write_text(textwrap.dedent(script))
    window = ("--from", "2026-01-01T00:00:05Z", "--to", "2026-01-01T01:00:15+01:00")

    code, out, err = await backfill(tmp_path, *window)
    again = await backfill(tmp_path, *window)

    assert (0, list(range(5, 15))) == (code, ids(tmp_path / "out.db")), err
    assert "'orders.backfill-20260101T000005Z-20260101T000015Z'" in err
    assert re.search(r"completed\n\s+records in\s+10\n", out), out
    assert 0 == again[0], again[2]
    assert re.search(r"completed\n\s+records in\s+0\n", again[1]), again[1]  # resumed at its end
    assert {} == await kafka.committed(topic, group, partitions=2)
