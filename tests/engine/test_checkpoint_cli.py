"""``riprap checkpoint show|reset|set``: inspect a store, accept a rollback, wipe, set positions."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from typing import TYPE_CHECKING

import anyio
import orjson
import pytest

from riprap.checkpoints import (
    Checkpoint,
    CheckpointBackend,
    FileCheckpoints,
    RepairableBackend,
    SqliteCheckpoints,
)
from riprap.cli import main
from tests.checkpoint_contract import snapshot

if TYPE_CHECKING:
    from pathlib import Path

SHOWN = """\
pipeline 'orders'
  stored at    {path} (pipeline 'orders')
  consistent   yes
  generation   stored 101, recorded 101 (in {path}.generation.json)
  epoch        1, claimed by a
  saved        2023-11-14T22:13:20Z by a (epoch 1, seq 1)
  positions    2 partitions
    orders-0  10  identity 4096:3f2a
    orders-1  7
  state        53 bytes (dedupe, window)
  crash counts 1 record
  crash guard  written by a run that ended on its own
  notes        0 notes
"""


def saved(backend: CheckpointBackend, *checkpoints: Checkpoint) -> None:
    """Claim each checkpoint's pipeline for its owner (once), save them in order, close."""

    async def save() -> None:
        claimed: set[str] = set()
        for checkpoint in checkpoints:
            if checkpoint.pipeline not in claimed:
                await backend.claim(checkpoint.pipeline, checkpoint.owner)
                claimed.add(checkpoint.pipeline)
            await backend.save(checkpoint)
        await backend.aclose()

    anyio.run(save)


def rolled_back(tmp_path: Path) -> Path:
    """A file store whose ``orders`` snapshot was put back to an older copy (101, not 102)."""
    directory = tmp_path / "checkpoints"
    target = directory / "orders.checkpoint.json"

    async def save_twice() -> bytes:
        backend = FileCheckpoints(directory)
        await backend.claim("orders", "a")
        await backend.save(snapshot(1, "a", seq=1))
        older = target.read_bytes()
        await backend.save(snapshot(1, "a", seq=2))
        return older

    target.write_bytes(anyio.run(save_twice))
    return directory


def claimed(backend: CheckpointBackend, pipeline: str = "orders") -> Checkpoint | None:
    """What a run starting now would resume from (the claim's checkpoint)."""

    async def claim() -> Checkpoint | None:
        try:
            return (await backend.claim(pipeline, "next-run")).checkpoint
        finally:
            await backend.aclose()

    return anyio.run(claim)


def consistent(backend: RepairableBackend, pipeline: str = "orders") -> bool:
    """Whether the store is consistent with its recorded generation."""

    async def status() -> bool:
        try:
            return (await backend.status(pipeline)).consistent
        finally:
            await backend.aclose()

    return anyio.run(status)


def test_show_prints_everything_of_a_consistent_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``show`` on an SQLite file prints positions, state size, generations, epoch, guard, notes."""
    path = tmp_path / "checkpoints.db"
    saved(SqliteCheckpoints(path), snapshot(1, "a", seq=1))
    code = main(["checkpoint", "show", str(path)])
    expected = (0, SHOWN.format(path=path))
    assert expected == (code, capsys.readouterr().out)


def test_show_json_reports_a_rollback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``show --json`` exits 1 on a rolled-back store and gives both generations and the problem."""
    directory = rolled_back(tmp_path)
    code = main(["checkpoint", "show", str(directory), "--json"])
    shown = orjson.loads(capsys.readouterr().out)
    positions, identities = {"orders-0": 10, "orders-1": 7}, {"orders-0": "4096:3f2a"}
    expected = (1, False, 102, 101, True, positions, identities)
    assert expected == (
        code,
        shown["consistent"],
        shown["recorded_generation"],
        shown["checkpoint"]["generation"],
        "rolled back" in shown["problem"],
        shown["checkpoint"]["positions"],
        shown["checkpoint"]["identities"],
    )


def test_show_lists_every_pipeline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without ``--pipeline``, ``show`` prints each pipeline of the store."""
    directory = tmp_path / "checkpoints"
    saved(FileCheckpoints(directory), snapshot(1, "a", seq=1))
    saved(FileCheckpoints(directory), snapshot(1, "a", seq=1, pipeline="users"))
    code = main(["checkpoint", "show", str(directory)])
    headers = [line for line in capsys.readouterr().out.splitlines() if line.startswith("pipe")]
    expected = (0, ["pipeline 'orders'", "pipeline 'users'"])
    assert expected == (code, headers)


def test_reset_without_yes_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``reset`` without ``--yes`` says what it would do, exits 2 and leaves the store as it was."""
    directory = rolled_back(tmp_path)
    code = main(["checkpoint", "reset", str(directory)])
    err = capsys.readouterr().err
    expected = (2, True, False)
    assert expected == (
        code,
        "would accept the stored generation 101 (recorded: 102)" in err and "--yes" in err,
        consistent(FileCheckpoints(directory)),
    )


def test_reset_accepts_a_rollback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``reset --yes`` accepts the older copy: the next run resumes from it, with a note."""
    directory = rolled_back(tmp_path)
    code = main(["checkpoint", "reset", str(directory), "--pipeline", "orders", "--yes"])
    out = capsys.readouterr().out
    resumed = claimed(FileCheckpoints(directory))
    assert resumed is not None
    expected = (0, True, 103, {"orders-0": 10, "orders-1": 7}, {"dedupe", "window"}, True)
    assert expected == (
        code,
        "accepted; now generation 103" in out,
        resumed.generation,
        dict(resumed.positions),
        set(resumed.state),
        resumed.notes[-1].endswith("reset: accepted generation 101 (recorded 102)"),
    )


def test_reset_wipe_replaces_a_garbled_snapshot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A garbled snapshot cannot be accepted; ``reset --wipe --yes`` starts the pipeline over."""
    path = tmp_path / "checkpoints.db"
    saved(SqliteCheckpoints(path), snapshot(1, "a", seq=3))
    db = sqlite3.connect(path)
    with db:
        db.execute("UPDATE riprap_checkpoints SET snapshot = x'7b7b7b'")
    db.close()
    refused = main(["checkpoint", "reset", str(path), "--yes"])
    refusal = capsys.readouterr().err
    wiped = main(["checkpoint", "reset", str(path), "--wipe", "--yes"])
    resumed = claimed(SqliteCheckpoints(path))
    assert resumed is not None
    nothing: dict[str, int] = {}
    expected = (2, True, 0, nothing, 104, True)
    assert expected == (
        refused,
        "no readable checkpoint to accept" in refusal and "--wipe" in refusal,
        wiped,
        dict(resumed.positions),
        resumed.generation,
        "reset --wipe: started over" in resumed.notes[-1],
    )


def test_set_moves_positions_and_keeps_state(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``set`` changes the named partitions only, keeps the state and leaves a note."""
    directory = tmp_path / "checkpoints"
    saved(FileCheckpoints(directory), snapshot(1, "a", seq=1))
    code = main(["checkpoint", "set", str(directory), "orders-0=55", "new=3", "--new"])
    out = capsys.readouterr().out
    resumed = claimed(FileCheckpoints(directory))
    assert resumed is not None
    expected = (
        0,
        True,
        {"orders-0": 55, "orders-1": 7, "new": 3},
        {"dedupe", "window"},
        102,
        "set new=3 (was unset), orders-0=55 (was 10)",
    )
    assert expected == (
        code,
        "resumes from new=3, orders-0=55" in out,
        dict(resumed.positions),
        set(resumed.state),
        resumed.generation,
        resumed.notes[-1].partition(": ")[2],
    )


def test_set_refuses_a_partition_the_checkpoint_does_not_hold(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A typo sets nothing the pipeline reads: refused, naming the likeliest partition meant,
    with the checkpoint unchanged; ``--new`` sets a partition not read yet."""
    directory = tmp_path / "checkpoints"
    saved(FileCheckpoints(directory), snapshot(1, "a", seq=1))
    code = main(["checkpoint", "set", str(directory), "orders-0=55", "order-1=0"])
    err = capsys.readouterr().err
    resumed = claimed(FileCheckpoints(directory))
    assert resumed is not None
    assert (code, dict(resumed.positions)) == (2, {"orders-0": 10, "orders-1": 7})
    assert (
        "holds no partition 'order-1' (did you mean 'orders-1'?); it holds orders-0, "
        "orders-1. To set a partition the pipeline has not read yet, add --new"
    ) in " ".join(err.split())
    assert 0 == main(["checkpoint", "set", str(directory), "order-1=0", "--new"])
    resumed = claimed(FileCheckpoints(directory))
    assert resumed is not None
    assert {"orders-0": 10, "orders-1": 7, "order-1": 0} == dict(resumed.positions)


def test_a_pipeline_the_store_does_not_hold_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--pipeline`` with a typo showed an empty, consistent status and ``set`` stored a
    checkpoint nothing reads: both are refused, naming the pipeline meant; ``set --new``
    prepares a pipeline that has not run yet."""
    directory = tmp_path / "checkpoints"
    saved(FileCheckpoints(directory), snapshot(1, "a", seq=1))
    show = main(["checkpoint", "show", str(directory), "--pipeline", "order"])
    set_ = main(["checkpoint", "set", str(directory), "--pipeline", "order", "orders-0=1"])
    err = " ".join(capsys.readouterr().err.split())
    assert (show, set_) == (2, 2)
    assert err.count(f"{directory} holds no pipeline 'order' (did you mean 'orders'?)") == 2
    assert sorted(p.name for p in directory.iterdir() if p.name.startswith("order.")) == []
    assert (directory / "orders.checkpoint.json").exists()
    assert 0 == main(["checkpoint", "set", str(directory), "--pipeline", "later", "in=5", "--new"])
    assert 0 == main(["checkpoint", "show", str(directory), "--pipeline", "later"])


def test_several_pipelines_need_a_choice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``set`` without ``--pipeline`` on a store of several pipelines names them, exit 2."""
    directory = tmp_path / "checkpoints"
    saved(FileCheckpoints(directory), snapshot(1, "a", seq=1))
    saved(FileCheckpoints(directory), snapshot(1, "a", seq=1, pipeline="users"))
    code = main(["checkpoint", "set", str(directory), "orders-0=1"])
    expected = (
        2,
        "riprap: --pipeline: " + str(directory) + " holds several pipelines"
        " (orders, users): choose one\n",
    )
    assert expected == (code, capsys.readouterr().err)


@pytest.mark.parametrize(
    ("store", "problem"),
    [
        ("missing.db", "no checkpoints stored there"),
        ("kafka://127.0.0.1:9092/orders", "committed offsets"),
        ("gopher://x", "unknown scheme"),
    ],
)
def test_unusable_store_is_a_usage_error(
    store: str, problem: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A store that holds nothing, is a Kafka topic or is malformed exits 2 naming STORE."""
    target = str(tmp_path / store) if store == "missing.db" else store
    code = main(["checkpoint", "show", target])
    err = capsys.readouterr().err
    expected = (2, True, True)
    assert expected == (code, err.startswith("riprap: STORE: "), problem in err)


def test_malformed_assignment_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``set`` with a position that is not a non-negative integer is an argparse error (exit 2)."""
    with pytest.raises(SystemExit) as caught:
        main(["checkpoint", "set", str(tmp_path), "orders-0=-4"])
    expected = (2, True)
    assert expected == (
        caught.value.code,
        "is not a non-negative integer" in capsys.readouterr().err,
    )


def test_show_through_python_m(tmp_path: Path) -> None:
    """``python -m riprap.cli checkpoint show`` works as a command and exits 0 on a sound store."""
    path = tmp_path / "checkpoints.db"
    saved(SqliteCheckpoints(path), snapshot(1, "a", seq=1))
    done = subprocess.run(
        [sys.executable, "-m", "riprap.cli", "checkpoint", "show", "checkpoints.db"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    relative = SHOWN.format(path="checkpoints.db")
    expected = (0, relative, "")
    assert expected == (done.returncode, done.stdout, done.stderr)
