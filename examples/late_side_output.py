"""Late events on a side output: per-minute sensor averages, late readings in a table of their own.

Generates readings of a few sensors in ``<data-dir>/readings.jsonl``: event
times arrive shuffled by up to 10 seconds, and about 2% of the readings come
from a gateway that was offline for an hour. The pipeline averages each
sensor per minute of event time and upserts one row per sensor and minute;
readings too late for their window go to the side output ``late`` and from
there to a table of their own, to be reconciled later, rather than to the
dead-letter store::

    JSON Lines -> parse -> Window(tumbling(60), out_of_orderness=10,
                                  on_late="output") -> SQLite "per_minute"
                                          \\
                                           late -> tag -> SQLite "late" (late.db)

A late reading is done (its position may be checkpointed) only once the
``late`` table has it, as with every sink. Run it with::

    python examples/late_side_output.py [--data-dir riprap-late] [--fresh]
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
from riprap import Branch
from riprap.connectors.files import JsonLinesSource
from riprap.connectors.sqlite import SqliteSink, read_table_sync
from riprap.stages.window import Aggregate, Window, tumbling

SENSORS = ("boiler", "chiller", "pump-1", "pump-2")
READINGS = 5_000
START = 1_700_000_000.0 - 1_700_000_000.0 % 3_600


def write_readings(path: Path, seed: int = 5) -> None:
    """Four hours of readings, shuffled by up to 10 s, about 2% an hour late."""
    rng = random.Random(seed)
    times = sorted(START + rng.uniform(0, 4 * 3_600) for _ in range(READINGS))
    arrival = sorted(times, key=lambda t: t + rng.uniform(0, 10))
    with path.open("wb") as file:
        for i, t in enumerate(arrival):
            if rng.random() < 0.02:
                t -= 3_600  # from the gateway that was offline
            reading = {"id": i, "sensor": rng.choice(SENSORS), "at": t, "celsius": rng.gauss(60, 5)}
            file.write(orjson.dumps(reading) + b"\n")


def add(acc: dict[str, float], reading: dict[str, Any]) -> dict[str, float]:
    """Count one reading and sum its temperature."""
    return {"n": acc["n"] + 1, "sum": acc["sum"] + reading["celsius"]}


def average(acc: dict[str, float]) -> dict[str, float]:
    """The minute's reading count and mean temperature."""
    return {"readings": acc["n"], "celsius": round(acc["sum"] / acc["n"], 2)}


def late_row(reading: dict[str, Any]) -> dict[str, Any]:
    """A late reading as stored for reconciliation."""
    return {**reading, "minute": reading["at"] - reading["at"] % 60}


def row_key(result: dict[str, Any]) -> str:
    """One row per sensor and minute: a re-emitted result overwrites it."""
    return f"{result['key']}@{result['start']:.0f}"


def build(data: Path) -> riprap.Pipeline:
    """The pipeline, with every file under ``data``."""
    per_minute = Window(
        "per_minute",
        window=tumbling(60),
        key=lambda reading: reading["sensor"],
        time=lambda reading: reading["at"],
        aggregate=Aggregate(init=lambda: {"n": 0, "sum": 0.0}, add=add, result=average),
        out_of_orderness=10,
        on_late="output",  # to the side output "late", not to the dead-letter store
    )
    return (
        riprap.Pipeline(
            "sensor-minutes",
            checkpoint=riprap.checkpoints.SqliteCheckpoints(data / "checkpoints.db"),
        )
        .source(JsonLinesSource(str(data / "readings.jsonl")))
        .map("parse", orjson.loads)
        .stage(per_minute)
        .sink(SqliteSink(data / "sensors.db", table="per_minute", key=row_key, name="per_minute"))
        .side_output(
            "late",
            Branch()
            .map("tag", late_row)
            .sink(SqliteSink(data / "late.db", table="late", key="id", name="late")),
        )
    )


def main(argv: list[str] | None = None) -> riprap.RunReport:
    """Generate the input if missing, run the pipeline and print what happened."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("riprap-late"))
    parser.add_argument("--fresh", action="store_true", help="delete the data and start over")
    args = parser.parse_args(argv)
    data: Path = args.data_dir
    if args.fresh and data.exists():
        shutil.rmtree(data)
    data.mkdir(parents=True, exist_ok=True)
    if not (data / "readings.jsonl").exists():
        write_readings(data / "readings.jsonl")
    pipeline = build(data)
    print(pipeline.describe())
    report = riprap.run(pipeline)
    print(report.format())
    minutes = read_table_sync(data / "sensors.db", "per_minute", key_column="key")
    late = read_table_sync(data / "late.db", "late", key_column="id")
    print(f"{len(minutes)} sensor-minutes; {len(late)} late readings kept for reconciliation")
    return report


if __name__ == "__main__":
    main()
