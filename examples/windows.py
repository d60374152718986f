"""Per-minute page-view counts with event-time windows, late data and a dead-letter queue.

Generates a day of synthetic page views in ``<data-dir>/views.jsonl``: event
times arrive shuffled by up to 30 seconds, and about 1% of the views are hours
late (a phone that was offline). The pipeline parses each line, counts views
and sums the time on page per page and per minute of event time, and upserts
one row per page and minute into ``<data-dir>/views.db``:

    JSON Lines -> parse -> Window(tumbling(60), out_of_orderness=30,
                                  allowed_lateness=120) -> SQLite (upsert)

Views later than the allowed lateness land in ``<data-dir>/late.jsonl`` with
reason ``late``. Run it with::

    python examples/windows.py [--data-dir riprap-windows] [--fresh]

Run it again: it resumes from its checkpoint, reads nothing new and the table
is unchanged. ``--fresh`` starts over.
"""

from __future__ import annotations

import argparse
import random
import shutil
from pathlib import Path
from typing import Any

import orjson

import riprap
import riprap.checkpoints
import riprap.deadletters
from riprap.connectors.files import JsonLinesSource
from riprap.connectors.sqlite import SqliteSink, read_table_sync
from riprap.stages.window import Aggregate, Window, tumbling

PAGES = ("/", "/pricing", "/docs", "/blog", "/signup")
VIEWS = 20_000
DAY_START = 1_700_000_000.0 - 1_700_000_000.0 % 86_400


def write_views(path: Path, seed: int = 7) -> None:
    """A day of page views, shuffled by up to 30 s, about 1% of them hours late."""
    rng = random.Random(seed)
    times = sorted(DAY_START + rng.uniform(0, 86_400) for _ in range(VIEWS))
    arrival = sorted(times, key=lambda t: t + rng.uniform(0, 30))
    with path.open("wb") as file:
        for i, t in enumerate(arrival):
            if rng.random() < 0.01:
                t -= rng.uniform(3_600, 7_200)  # an offline phone syncing late
            view = {"id": i, "page": rng.choice(PAGES), "at": t, "seconds": rng.randint(1, 300)}
            file.write(orjson.dumps(view) + b"\n")


def add_view(acc: dict[str, int], view: dict[str, Any]) -> dict[str, int]:
    """Count one view and its time on page."""
    acc["views"] += 1
    acc["seconds"] += view["seconds"]
    return acc


def merge(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    """Two partial counts as one (lets the same aggregate serve session windows)."""
    return {"views": a["views"] + b["views"], "seconds": a["seconds"] + b["seconds"]}


def build(data: Path) -> riprap.Pipeline:
    """The pipeline, with every file under ``data``."""
    per_minute = Window(
        "per_minute",
        window=tumbling(60),
        key=lambda view: view["page"],
        time=lambda view: view["at"],
        aggregate=Aggregate(init=lambda: {"views": 0, "seconds": 0}, add=add_view, merge=merge),
        out_of_orderness=30,
        allowed_lateness=120,
    )
    return (
        riprap.Pipeline(
            "page-views",
            checkpoint=riprap.checkpoints.SqliteCheckpoints(data / "checkpoints.db"),
            dead_letter=riprap.deadletters.JsonLinesDeadLetters(data / "late.jsonl"),
        )
        .source(JsonLinesSource(str(data / "views.jsonl")))
        .map("parse", orjson.loads)
        .stage(per_minute)
        .sink(SqliteSink(data / "views.db", table="per_minute", key=row_key))
    )


def row_key(result: dict[str, Any]) -> str:
    """One row per page and minute: re-emitted results overwrite it."""
    return f"{result['key']}@{result['start']:.0f}"


def main(argv: list[str] | None = None) -> riprap.RunReport:
    """Generate the input if missing, run the pipeline and print what happened."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("riprap-windows"))
    parser.add_argument("--fresh", action="store_true", help="delete the data and start over")
    args = parser.parse_args(argv)
    data: Path = args.data_dir
    if args.fresh and data.exists():
        shutil.rmtree(data)
    data.mkdir(parents=True, exist_ok=True)
    if not (data / "views.jsonl").exists():
        write_views(data / "views.jsonl")
    report = riprap.run(build(data))
    print(report.format())
    rows = read_table_sync(data / "views.db", "per_minute", key_column="key")
    busiest = max(rows.values(), key=lambda row: row["value"]["views"])
    print(f"{len(rows)} page-minutes; busiest: {busiest}")
    return report


if __name__ == "__main__":
    main()
