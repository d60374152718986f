"""QualityGate across restarts: the same windows, a halt that holds, a deliberate release."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

import riprap
import riprap.checkpoints
import riprap.deadletters
import riprap.lowlevel
from riprap.cli import main
from riprap.connectors.memory import IterableSource
from riprap.stages.quality import Mean, QualityGate, QualityGateError, WindowResult

from ..engine._subprocesses import DEADLINE, load_checkpoint, query, spawn, wait_for_child
from ._gate_worker import PIPELINE as GATE_PIPELINE
from ._gate_worker import TABLE as GATE_TABLE

GATE_WORKER = Path(__file__).with_name("_gate_worker.py")

pytestmark = pytest.mark.anyio

WINDOW = 10
RECORDS = 60
BAD = range(30, 40)
"""Window 3: a transform bug zeroes the amount of exactly these records."""


def orders() -> list[dict[str, Any]]:
    """Orders of amount 10, except window 3 whose amounts are zero."""
    return [{"id": n, "amount": 0.0 if n in BAD else 10.0} for n in range(RECORDS)]


class FlakySink:
    """An upserting sink (by id); its write fails once, as a bug, on the batch with ``crash_at``."""

    name = "flaky"
    idempotent = True

    def __init__(self, rows: dict[int, dict[str, Any]], crash_at: int | None) -> None:
        self.rows = rows
        self.crash_at = crash_at

    async def open(self) -> None:
        """Nothing to open."""

    async def write(self, batch: riprap.Batch) -> None:
        """Upsert the batch, or fail once if it holds ``crash_at``."""
        if self.crash_at is not None and any(v["id"] == self.crash_at for v in batch.items):
            self.crash_at = None
            raise RuntimeError("sink bug")
        self.rows.update((v["id"], v) for v in batch.items)

    async def flush(self) -> None:
        """Writes are immediate."""

    async def aclose(self) -> None:
        """Nothing to close."""


async def cli(argv: list[str]) -> int:
    """Run the ``riprap`` command in a worker thread (it runs its own event loop)."""
    return await anyio.to_thread.run_sync(main, argv)


def gate(events: list[WindowResult] | None = None) -> QualityGate:
    """A fresh gate, as a restarted process builds it: mean amount of every 10 at least 5."""
    return QualityGate(
        "gate",
        window=WINDOW,
        checks=[Mean("amount", min=5.0)],
        on_breach="halt",
        on_window=None if events is None else events.append,
    )


def pipeline(tmp_path: Path, sink: FlakySink, stage: QualityGate) -> riprap.Pipeline:
    """Orders -> gate -> sink, checkpointed in SQLite under ``tmp_path``."""
    return (
        riprap.Pipeline(
            "orders",
            checkpoint=riprap.checkpoints.SqliteCheckpoints(tmp_path / "ckpt.db"),
            batch_size=5,
            max_in_flight=40,
            checkpoint_interval=0.001,
        )
        .source(IterableSource("orders", orders()))
        .stage(stage)
        .sink(sink)
    )


@pytest.mark.parametrize("crash_at", range(WINDOW, 4 * WINDOW))
async def test_restart_at_any_offset_never_lets_the_bad_window_through(
    tmp_path: Path, crash_at: int
) -> None:
    """A crash at any record around the bad window, then restarts: the gate halts on window 3
    every time and no record of it ever reaches the sink."""
    rows: dict[int, dict[str, Any]] = {}
    with pytest.raises((QualityGateError, riprap.PipelineError)):
        await pipeline(tmp_path, FlakySink(rows, crash_at), gate()).run()
    for _ in range(2):
        with pytest.raises(QualityGateError) as caught:
            await pipeline(tmp_path, FlakySink(rows, None), gate()).run()
        assert 3 == caught.value.window
    assert set() == set(rows) & set(BAD)


async def test_halted_gate_stays_halted_until_released_then_passes_the_window_once(
    tmp_path: Path,
) -> None:
    """A halt survives restarts; `riprap gate release` lets that window through once, and the
    run report records it."""
    rows: dict[int, dict[str, Any]] = {}
    with pytest.raises(QualityGateError):
        await pipeline(tmp_path, FlakySink(rows, None), gate()).run()
    events: list[WindowResult] = []
    with pytest.raises(QualityGateError, match="stays halted"):
        await pipeline(tmp_path, FlakySink(rows, None), gate(events)).run()
    assert [] == events  # halted before checking anything again
    store = str(tmp_path / "ckpt.db")
    assert 2 == await cli(["gate", "release", store, "gate", "--window", "3"])  # without --yes
    assert 0 == await cli(["gate", "release", store, "gate", "--window", "3", "--yes"])
    report = await pipeline(tmp_path, FlakySink(rows, None), gate(events)).run()
    assert "completed" == report.outcome
    assert list(range(RECORDS)) == sorted(rows)
    assert {"quality_gate_released": WINDOW} == dict(report.source_outcomes)
    assert "released" == next(e.action for e in events if e.index == 3)
    saved = riprap.checkpoints.SqliteCheckpoints(tmp_path / "ckpt.db")
    checkpoint = await saved.load("orders")
    await saved.aclose()
    assert checkpoint is not None
    assert any("gate release gate --window 3" in note for note in checkpoint.notes)


async def test_verdicts_are_forgotten_once_their_records_are_written(tmp_path: Path) -> None:
    """The gate keeps a closed window's verdict only while its records are in flight: after a
    clean run its state is where windows start and the next window number (bounded memory)."""
    rows: dict[int, dict[str, Any]] = {}
    p = (
        riprap.Pipeline("good", checkpoint=riprap.checkpoints.MemoryCheckpoints(), batch_size=5)
        .source(IterableSource("orders", [{"id": n, "amount": 10.0} for n in range(95)]))
        .stage(stage := gate())
        .sink(FlakySink(rows, None))
    )
    await p.run()
    assert list(range(95)) == sorted(rows)
    state = stage.snapshot()
    assert ([], {"memory": 94}, 10) == (state["decided"], state["boundary"], state["index"])


async def test_release_refuses_a_closed_window_or_an_unknown_gate(tmp_path: Path) -> None:
    """Releasing a window already passed, or a gate with no saved state, is a usage error."""
    with pytest.raises(QualityGateError):
        await pipeline(tmp_path, FlakySink({}, None), gate()).run()
    store = str(tmp_path / "ckpt.db")
    assert 2 == await cli(["gate", "release", store, "gate", "--window", "1", "--yes"])
    assert 2 == await cli(["gate", "release", store, "nope", "--window", "3", "--yes"])


async def test_graceful_stop_leaves_the_partial_window_for_the_next_run() -> None:
    """After a stop (not the end of the input) the partial window is neither checked nor
    emitted: its records are not done, so the next run replays them into the same window."""
    emitted: list[riprap.Batch] = []
    events: list[WindowResult] = []

    async def emit(batch: riprap.Batch) -> None:
        emitted.append(batch)

    stopping = gate(events)
    await stopping.open(
        riprap.StageContext(
            pipeline="orders",
            clock=riprap.SystemClock(),
            dead_letter=lambda batch, index, error, reason: None,
            source_exhausted=lambda: False,
        )
    )
    source = riprap.SourceBatch("p", [{"id": n, "amount": 10.0} for n in range(5)], start=0)
    ack = riprap.lowlevel.Ack(lambda: None)
    batch = riprap.Batch(list(source.values), ack, riprap.lowlevel.SourceOrigin(source))
    await stopping.process(batch, emit)
    await stopping.finish(emit)
    assert ([], [], False) == (emitted, events, ack.done)


# -- across SIGKILL ----------------------------------------------------------------------------

CRASH_RECORDS = 1_000
CRASH_BAD = range(500, 550)
"""Window 10 of the worker's gate: zero amounts."""


def crash_worker(tmp_path: Path, run: int) -> Any:
    """Start run number ``run`` of the gate worker in ``tmp_path``."""
    args = [sys.executable, str(GATE_WORKER), "in.jsonl", "ckpt.db", "out.db"]
    return spawn(args, tmp_path, f"run-{run}")


def written_ids(database: Path) -> set[int]:
    """The ids the worker's sink holds."""
    if not database.exists():
        return set()
    rows = query(database, f"SELECT value FROM {GATE_TABLE}")
    return {int(orjson.loads(value)["id"]) for (value,) in rows}


def checkpointed(path: Path) -> int:
    """The checkpointed line of the input (0 before the first checkpoint)."""
    checkpoint = load_checkpoint(path, GATE_PIPELINE)
    return 0 if checkpoint is None else next(iter(checkpoint.positions.values()), 0)


@pytest.mark.slow
@pytest.mark.parametrize("targets", [(120, 330), (260, 400)])
def test_sigkill_around_the_bad_window_never_lets_it_reach_the_sink(
    tmp_path: Path, targets: tuple[int, int]
) -> None:
    """Killed with SIGKILL at checkpoints around the bad window and restarted, the gate halts
    on window 10 in the end, every run after the halt halts again, and no record of it is
    ever written."""
    with (tmp_path / "in.jsonl").open("wb") as file:
        for n in range(CRASH_RECORDS):
            amount = 0.0 if n in CRASH_BAD else 10.0
            file.write(orjson.dumps({"id": n, "amount": amount}) + b"\n")
    checkpoints = tmp_path / "ckpt.db"
    for run, target in enumerate(targets):
        with crash_worker(tmp_path, run) as proc:
            wait_for_child(
                lambda: checkpointed(checkpoints) >= target,  # noqa: B023
                proc,
                f"checkpoint {target}",
            )
            proc.kill()
            proc.wait(timeout=DEADLINE)
        assert set() == written_ids(tmp_path / "out.db") & set(CRASH_BAD)
    for run in (2, 3):
        with crash_worker(tmp_path, run) as proc:
            assert 1 == proc.wait(timeout=DEADLINE)
        errors = (tmp_path / f"run-{run}.err").read_text()
        assert "QualityGateError" in errors
        assert "window 10 " in errors
    assert set() == written_ids(tmp_path / "out.db") & set(CRASH_BAD)
