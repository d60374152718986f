"""The checkpoint backend contract, run against every embedded backend, plus per-backend tests."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING

import anyio
import orjson
import pytest

from riprap.checkpoints import (
    CheckpointBackend,
    CheckpointError,
    FencedError,
    FileCheckpoints,
    MemoryCheckpoints,
    SqliteCheckpoints,
)

# The backend contract suite, run here against this module's `backend` fixture.
from tests.checkpoint_contract import snapshot
from tests.checkpoint_contract import test_aclose_keeps_data as test_aclose_keeps_data
from tests.checkpoint_contract import test_backwards_seq_refused as test_backwards_seq_refused
from tests.checkpoint_contract import test_claim_increments_epoch as test_claim_increments_epoch
from tests.checkpoint_contract import (
    test_fencing_across_instances as test_fencing_across_instances,
)
from tests.checkpoint_contract import test_load_unknown_pipeline as test_load_unknown_pipeline
from tests.checkpoint_contract import test_new_epoch_restarts_seq as test_new_epoch_restarts_seq
from tests.checkpoint_contract import test_pipelines_independent as test_pipelines_independent
from tests.checkpoint_contract import test_save_load_round_trip as test_save_load_round_trip
from tests.checkpoint_contract import test_stale_epoch_refused as test_stale_epoch_refused
from tests.checkpoint_contract import test_unclaimed_epoch_refused as test_unclaimed_epoch_refused
from tests.checkpoint_contract import (
    test_unserialisable_state_refused as test_unserialisable_state_refused,
)
from tests.checkpoint_contract import (
    test_wrong_owner_same_epoch_refused as test_wrong_owner_same_epoch_refused,
)
from tests.checkpoint_contract import (
    test_zombie_cannot_overwrite_new_owner as test_zombie_cannot_overwrite_new_owner,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

pytestmark = pytest.mark.anyio


def make_backend(kind: str, tmp_path: Path) -> CheckpointBackend:
    """A fresh backend of ``kind`` storing under ``tmp_path``."""
    if kind == "memory":
        return MemoryCheckpoints()
    if kind == "file":
        return FileCheckpoints(tmp_path / "checkpoints")
    return SqliteCheckpoints(tmp_path / "checkpoints.db")


@pytest.fixture(params=["memory", "file", "sqlite"])
async def backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[CheckpointBackend]:
    """Each embedded backend in turn, closed after the test."""
    store = make_backend(request.param, tmp_path)
    yield store
    await store.aclose()


@pytest.fixture(params=["file", "sqlite"])
def durable_kind(request: pytest.FixtureRequest) -> str:
    """The backends that persist outside the process."""
    kind: str = request.param
    return kind


@pytest.fixture
async def twin_backends(
    durable_kind: str, tmp_path: Path
) -> AsyncIterator[tuple[CheckpointBackend, CheckpointBackend]]:
    """Two backends of each durable kind on one path (two processes' view), closed after."""
    first, second = make_backend(durable_kind, tmp_path), make_backend(durable_kind, tmp_path)
    yield first, second
    await first.aclose()
    await second.aclose()


CHILD = textwrap.dedent(
    """
    import sys
    import anyio
    from riprap.checkpoints import Checkpoint, FencedError, FileCheckpoints, SqliteCheckpoints

    kind, path = sys.argv[1], sys.argv[2]
    backend = FileCheckpoints(path) if kind == "file" else SqliteCheckpoints(path)
    claim = anyio.run(backend.claim, "orders", "child")
    print("claimed", claim.epoch, flush=True)
    sys.stdin.readline()
    try:
        anyio.run(backend.save, Checkpoint("orders", claim.epoch, "child", seq=1))
    except FencedError as exc:
        print("fenced", exc.current_epoch, flush=True)
    else:
        print("saved", flush=True)
    anyio.run(backend.aclose)
    """
)


def test_fencing_across_processes(durable_kind: str, tmp_path: Path) -> None:
    """A child process that lost its claim to the parent cannot save."""
    path = tmp_path / ("checkpoints" if durable_kind == "file" else "checkpoints.db")
    args = [sys.executable, "-c", CHILD, durable_kind, str(path)]
    with subprocess.Popen(
        args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as child:
        assert child.stdout is not None
        claimed = child.stdout.readline()
        parent = make_backend(durable_kind, tmp_path)
        claim = anyio.run(parent.claim, "orders", "parent")
        anyio.run(parent.aclose)
        rest, errors = child.communicate("go\n", timeout=60)
    expected = ("claimed 1\n", 2, "fenced 2\n", "", 0)
    assert expected == (
        claimed,
        claim.epoch,
        rest,
        errors,
        child.returncode,
    )


# -- corruption ---------------------------------------------------------------------------------


async def test_file_corrupt_snapshot(tmp_path: Path) -> None:
    """A damaged snapshot file raises CheckpointError naming it, and a claim changes nothing."""
    store = FileCheckpoints(tmp_path)
    await store.claim("orders", "a")
    await store.save(snapshot(1, "a", seq=1))
    target = tmp_path / "orders.checkpoint.json"
    target.write_bytes(b'{"version": 1, "pipeline": "ord')
    with pytest.raises(CheckpointError, match="corrupt checkpoint") as loading:
        await store.load("orders")
    with pytest.raises(CheckpointError) as claiming:
        await store.claim("orders", "b")
    with pytest.raises(CheckpointError):
        await store.save(snapshot(1, "a", seq=2))
    claim_file = orjson.loads((tmp_path / "orders.claim.json").read_bytes())
    expected = (True, True, 1)
    assert expected == (
        str(target) in str(loading.value),
        str(target) in str(claiming.value),
        claim_file["epoch"],
    )


async def test_file_snapshot_of_wrong_type(tmp_path: Path) -> None:
    """A well-formed JSON file with fields of the wrong type is reported, not trusted."""
    store = FileCheckpoints(tmp_path)
    await store.claim("orders", "a")
    bad = snapshot(1, "a", seq=1).to_json().replace(b'"seq":1', b'"seq":"1"')
    target = tmp_path / "orders.checkpoint.json"
    target.write_bytes(bad)
    with pytest.raises(CheckpointError, match="seq '1' is not a non-negative integer") as caught:
        await store.load("orders")
    assert str(target) in str(caught.value)


async def test_file_snapshot_of_other_pipeline(tmp_path: Path) -> None:
    """A snapshot file copied over another pipeline's is refused."""
    store = FileCheckpoints(tmp_path)
    await store.claim("users", "a")
    await store.save(snapshot(1, "a", seq=1, pipeline="users"))
    os.replace(tmp_path / "users.checkpoint.json", tmp_path / "orders.checkpoint.json")
    with pytest.raises(CheckpointError, match="belongs to pipeline 'users'"):
        await store.load("orders")


async def test_file_corrupt_claim(tmp_path: Path) -> None:
    """A damaged claim file raises CheckpointError naming it."""
    store = FileCheckpoints(tmp_path)
    await store.claim("orders", "a")
    target = tmp_path / "orders.claim.json"
    target.write_bytes(b"[1, 2]")
    with pytest.raises(CheckpointError, match="corrupt claim: not a JSON object") as caught:
        await store.claim("orders", "b")
    assert str(target) in str(caught.value)


async def test_sqlite_corrupt_row(tmp_path: Path) -> None:
    """A damaged snapshot row raises CheckpointError naming the database and pipeline."""
    path = tmp_path / "checkpoints.db"
    store = SqliteCheckpoints(path)
    try:
        await store.claim("orders", "a")
        await store.save(snapshot(1, "a", seq=1))
        with sqlite3.connect(path) as db:
            db.execute("UPDATE riprap_checkpoints SET snapshot = x'7b7b7b'")
        db.close()
        with pytest.raises(CheckpointError, match="corrupt checkpoint") as caught:
            await store.load("orders")
    finally:
        await store.aclose()
    assert f"{path} (pipeline 'orders')" in str(caught.value)


async def test_sqlite_not_a_database(tmp_path: Path) -> None:
    """A file that is not an SQLite database raises CheckpointError naming it."""
    path = tmp_path / "checkpoints.db"
    path.write_bytes(b"this is not a database, just some text that is long enough" * 20)
    store = SqliteCheckpoints(path)
    try:
        with pytest.raises(CheckpointError) as caught:
            await store.load("orders")
    finally:
        await store.aclose()
    assert str(path) in str(caught.value)


# -- per-backend details ------------------------------------------------------------------------


async def test_file_leaves_no_temp_files(tmp_path: Path) -> None:
    """Claims, saves and refused saves leave exactly the pipeline's three files."""
    store = FileCheckpoints(tmp_path)
    for seq, owner in enumerate(("a", "b"), start=1):
        claim = await store.claim("orders", owner)
        await store.save(snapshot(claim.epoch, owner, seq=seq))
    with pytest.raises(FencedError):
        await store.save(snapshot(1, "a", seq=5))
    expected = {"orders.checkpoint.json", "orders.claim.json", "orders.lock"}
    assert expected == set(os.listdir(tmp_path))


async def test_file_failed_write_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that fails before the rename removes its temp file and keeps the old snapshot."""
    store = FileCheckpoints(tmp_path)
    await store.claim("orders", "a")
    first = snapshot(1, "a", seq=1)
    await store.save(first)

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(CheckpointError, match="No space left"):
        await store.save(snapshot(1, "a", seq=2))
    monkeypatch.undo()
    expected = {"orders.checkpoint.json", "orders.claim.json", "orders.lock"}
    assert (expected, first) == (set(os.listdir(tmp_path)), await store.load("orders"))


async def test_file_names_are_escaped(tmp_path: Path) -> None:
    """Pipeline names with path separators stay inside the directory and round-trip."""
    store = FileCheckpoints(tmp_path / "ckpt")
    names = ["../escape", "a/b", "x.claim"]
    for name in names:
        await store.claim(name, "a")
        await store.save(snapshot(1, "a", seq=1, pipeline=name))
    loaded = [await store.load(name) for name in names]
    assert ([snapshot(1, "a", seq=1, pipeline=n) for n in names], ["ckpt"]) == (
        loaded,
        os.listdir(tmp_path),
    )


async def test_sqlite_uses_wal(tmp_path: Path) -> None:
    """The database is put in WAL mode so loads run beside a writer."""
    path = tmp_path / "checkpoints.db"
    store = SqliteCheckpoints(path)
    await store.claim("orders", "a")
    await store.aclose()
    db = sqlite3.connect(path)
    try:
        mode = db.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        db.close()
    expected = "wal"
    assert expected == mode
