"""A Dedupe on keyed state over files, loaded by ``riprap.run_workers`` in the test's directory."""

from __future__ import annotations

from pathlib import Path

import riprap
from riprap.connectors.files import JsonLinesSource
from riprap.connectors.sqlite import SqliteSink
from riprap.stages.dedupe import Dedupe
from riprap.state import SqliteStore

PIPELINE = Path(__file__)
FILES, LINES = 4, 120


def first_per_file() -> riprap.Pipeline:
    """Per file, the first record of each ``n // 3`` (loaded by the workers)."""
    return (
        riprap.Pipeline("first-per-file", checkpoint_path="checkpoints.db")
        .source(JsonLinesSource("in-*.jsonl", decode=True))
        .stage(Dedupe("first", key=lambda r: r["n"] // 3, ttl=3600, store=SqliteStore("state")))
        .sink(SqliteSink("out.db", table="firsts", key="id"))
    )
