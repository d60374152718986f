"""The checkpoint backend contract, run against every embedded backend, plus per-backend tests.

Integrity tests damage stores the way accidents do: a digit changed, a file
torn or garbled, a database or its -wal lost or replaced by an older copy
after a crash. Each must end in a CheckpointIntegrityError naming the store
and the generations, never in a silent start from an older position.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import orjson
import pytest

import riprap
from riprap.checkpoints import (
    Checkpoint,
    CheckpointBackend,
    CheckpointError,
    CheckpointIntegrityError,
    FencedError,
    FileCheckpoints,
    MemoryCheckpoints,
    SqliteCheckpoints,
    decode,
    encode,
    encode_generation,
)
from riprap.connectors.memory import IterableSource, MemorySink

# The backend contract suite, run here against this module's `backend` fixture.
from tests.checkpoint_contract import snapshot
from tests.checkpoint_contract import test_aclose_keeps_data as test_aclose_keeps_data
from tests.checkpoint_contract import test_backwards_seq_refused as test_backwards_seq_refused
from tests.checkpoint_contract import test_claim_increments_epoch as test_claim_increments_epoch
from tests.checkpoint_contract import (
    test_damaged_snapshot_refused as test_damaged_snapshot_refused,
)
from tests.checkpoint_contract import test_deleted_store_refused as test_deleted_store_refused
from tests.checkpoint_contract import (
    test_fencing_across_instances as test_fencing_across_instances,
)
from tests.checkpoint_contract import (
    test_generation_below_record_refused as test_generation_below_record_refused,
)
from tests.checkpoint_contract import test_load_unknown_pipeline as test_load_unknown_pipeline
from tests.checkpoint_contract import test_new_epoch_restarts_seq as test_new_epoch_restarts_seq
from tests.checkpoint_contract import test_older_copy_refused as test_older_copy_refused
from tests.checkpoint_contract import (
    test_overwrite_accepts_older_copy as test_overwrite_accepts_older_copy,
)
from tests.checkpoint_contract import (
    test_overwrite_replaces_damaged_snapshot as test_overwrite_replaces_damaged_snapshot,
)
from tests.checkpoint_contract import test_pipelines_independent as test_pipelines_independent
from tests.checkpoint_contract import test_save_load_round_trip as test_save_load_round_trip
from tests.checkpoint_contract import test_stale_epoch_refused as test_stale_epoch_refused
from tests.checkpoint_contract import (
    test_status_of_consistent_store as test_status_of_consistent_store,
)
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
    from collections.abc import AsyncIterator, Callable

    from tests.checkpoint_contract import Tamper

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


class MemoryTamper:
    """Damage in a :class:`MemoryCheckpoints`: its stored bytes (it keeps no record)."""

    durable = False
    where = "memory"

    def __init__(self, backend: MemoryCheckpoints) -> None:
        self.backend = backend

    async def read(self) -> bytes:
        """The stored bytes of ``orders``."""
        data = self.backend._entries["orders"].snapshot
        assert data is not None
        return data

    async def write(self, data: bytes) -> None:
        """Replace the stored bytes of ``orders``."""
        self.backend._entries["orders"].snapshot = data

    async def copy(self) -> object:
        """Not possible: nothing outside the store would notice."""
        raise NotImplementedError

    async def restore(self, copy: object) -> None:
        """Not possible: nothing outside the store would notice."""
        raise NotImplementedError

    async def delete(self) -> None:
        """Not possible: nothing outside the store would notice."""
        raise NotImplementedError


class FileTamper:
    """Damage in a :class:`FileCheckpoints` directory, file by file."""

    durable = True

    def __init__(self, directory: Path) -> None:
        self.snapshot = directory / "orders.checkpoint.json"
        self.claim = directory / "orders.claim.json"
        self.where = str(self.snapshot)

    async def read(self) -> bytes:
        """The snapshot file."""
        return self.snapshot.read_bytes()

    async def write(self, data: bytes) -> None:
        """Overwrite the snapshot file in place."""
        self.snapshot.write_bytes(data)

    async def copy(self) -> object:
        """The snapshot and claim files' bytes."""
        return {path: path.read_bytes() for path in (self.snapshot, self.claim)}

    async def restore(self, copy: object) -> None:
        """Write the copied files back."""
        assert isinstance(copy, dict)
        for path, data in copy.items():
            path.write_bytes(data)

    async def delete(self) -> None:
        """Delete the snapshot and claim files."""
        self.snapshot.unlink()
        self.claim.unlink()


class SqliteTamper:
    """Damage in an SQLite checkpoint database: its row, or the whole file."""

    durable = True

    def __init__(self, backend: SqliteCheckpoints, path: Path) -> None:
        self.backend = backend
        self.path = path
        self.where = f"{path} (pipeline 'orders')"

    async def read(self) -> bytes:
        """The snapshot blob of ``orders``."""
        db = sqlite3.connect(self.path)
        try:
            (data,) = db.execute(
                "SELECT snapshot FROM riprap_checkpoints WHERE pipeline = 'orders'"
            ).fetchone()
        finally:
            db.close()
        assert isinstance(data, bytes)
        return data

    async def write(self, data: bytes) -> None:
        """Replace the snapshot blob of ``orders`` (the database stays well-formed)."""
        db = sqlite3.connect(self.path)
        try:
            with db:
                db.execute(
                    "UPDATE riprap_checkpoints SET snapshot = ? WHERE pipeline = 'orders'", (data,)
                )
        finally:
            db.close()

    async def copy(self) -> object:
        """The database file, complete once the backend's connection is closed."""
        await self.backend.aclose()  # the last connection checkpoints the -wal into the file
        return self.path.read_bytes()

    async def restore(self, copy: object) -> None:
        """Put the copied file back, without -wal and -shm."""
        assert isinstance(copy, bytes)
        await self.backend.aclose()
        self.path.write_bytes(copy)
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(f"{self.path}{suffix}")

    async def delete(self) -> None:
        """Delete the database with its -wal and -shm files."""
        await self.backend.aclose()
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(f"{self.path}{suffix}")


@pytest.fixture
def tamper(backend: CheckpointBackend, tmp_path: Path) -> Tamper:
    """Raw access to the store of the ``backend`` fixture, for the damage tests."""
    if isinstance(backend, MemoryCheckpoints):
        return MemoryTamper(backend)
    if isinstance(backend, FileCheckpoints):
        return FileTamper(backend.directory)
    assert isinstance(backend, SqliteCheckpoints)
    return SqliteTamper(backend, Path(backend.path))


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
    """Claims, saves and refused saves leave exactly the pipeline's files and its history."""
    store = FileCheckpoints(tmp_path)
    for seq, owner in enumerate(("a", "b"), start=1):
        claim = await store.claim("orders", owner)
        await store.save(snapshot(claim.epoch, owner, seq=seq))
    with pytest.raises(FencedError):
        await store.save(snapshot(1, "a", seq=5))
    expected = {
        "orders.checkpoint.json",
        "orders.claim.json",
        "orders.generation.json",
        "orders.history",
        "orders.lock",
    }
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
    expected = {
        "orders.checkpoint.json",
        "orders.claim.json",
        "orders.generation.json",
        "orders.history",
        "orders.lock",
    }
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


# -- integrity: checksums, generations, rollbacks -----------------------------------------------


def test_checksum_survives_another_json_layout() -> None:
    """A snapshot re-serialised with other whitespace and key order still verifies."""
    saved = snapshot(1, "a", seq=2, state={"window": {"z": [1, 2.5], "a": None}, "n": 3})
    relaid = orjson.dumps(orjson.loads(encode(saved)), option=orjson.OPT_INDENT_2)
    assert saved == decode(relaid, where="test", pipeline="orders")


def test_dataclass_state_verifies() -> None:
    """State holding a dataclass is stored as a mapping whose checksum verifies on read."""

    @dataclasses.dataclass
    class Window:
        zeta: int
        alpha: list[int]

    saved = snapshot(1, "a", seq=1, state={"w": Window(3, [1, 2])})
    expected = {"w": {"alpha": [1, 2], "zeta": 3}}
    assert expected == decode(encode(saved), where="test", pipeline="orders").state


async def test_file_changed_digit_in_valid_json(tmp_path: Path) -> None:
    """A snapshot file that is still valid, well-typed JSON but one digit off is refused."""
    store = FileCheckpoints(tmp_path)
    await store.claim("orders", "a")
    await store.save(snapshot(1, "a", seq=3, positions={"orders-0": 1234}))
    target = tmp_path / "orders.checkpoint.json"
    target.write_bytes(target.read_bytes().replace(b'"orders-0":1234', b'"orders-0":1284'))
    with pytest.raises(CheckpointIntegrityError) as caught:
        await store.claim("orders", "b")
    message = str(caught.value)
    expected = (1284, True, True, True)
    assert expected == (
        orjson.loads(target.read_bytes())["positions"]["orders-0"],
        "checksum mismatch" in message,
        str(target) in message,
        "expected generation 103" in message,
    )


@pytest.mark.parametrize("durable_kind", ["file", "sqlite"])
async def test_files_are_private(durable_kind: str, tmp_path: Path) -> None:
    """Every file a durable backend creates (database, -wal, -shm, record, lock) has mode 0600."""
    backend = make_backend(durable_kind, tmp_path)
    await backend.claim("orders", "a")
    await backend.save(snapshot(1, "a", seq=1))
    directory = tmp_path / "checkpoints" if durable_kind == "file" else tmp_path
    modes = {
        name: os.stat(directory / name).st_mode & 0o777
        for name in os.listdir(directory)
        if not name.startswith(".")
    }
    await backend.aclose()
    names = {
        "file": {"orders.checkpoint.json", "orders.claim.json", "orders.generation.json"},
        "sqlite": {"checkpoints.db", "checkpoints.db-wal", "checkpoints.db-shm"},
    }[durable_kind]
    names |= {"orders.lock"} if durable_kind == "file" else {"checkpoints.db.generation.json"}
    expected = dict.fromkeys(names, 0o600)
    if durable_kind == "file":
        expected["orders.history"] = 0o700  # the kept snapshots' directory
    assert expected == modes


@pytest.mark.parametrize("durable_kind", ["file", "sqlite"])
async def test_record_behind_store_is_raised(durable_kind: str, tmp_path: Path) -> None:
    """A record left behind by a crash between save and record is raised by the next claim."""
    backend = make_backend(durable_kind, tmp_path)
    assert isinstance(backend, FileCheckpoints | SqliteCheckpoints)
    await backend.claim("orders", "a")
    await backend.save(snapshot(1, "a", seq=1))
    await backend.save(snapshot(1, "a", seq=2))
    record = (
        tmp_path / "checkpoints" / "orders.generation.json"
        if durable_kind == "file"
        else tmp_path / "checkpoints.db.generation.json"
    )
    behind = (
        encode_generation("orders", 101)
        if durable_kind == "file"
        else orjson.dumps({"version": 1, "generations": {"orders": 101}})
    )
    record.write_bytes(behind)
    claim = await backend.claim("orders", "b")
    status = await backend.status("orders")
    await backend.aclose()
    expected = (102, 102, True)
    assert expected == (
        claim.checkpoint.generation if claim.checkpoint else None,
        status.recorded,
        status.consistent,
    )


@pytest.mark.parametrize("durable_kind", ["file", "sqlite"])
async def test_corrupt_record_named(durable_kind: str, tmp_path: Path) -> None:
    """A garbled generation record stops the claim with an error naming the record file."""
    backend = make_backend(durable_kind, tmp_path)
    await backend.claim("orders", "a")
    await backend.save(snapshot(1, "a", seq=1))
    record = (
        tmp_path / "checkpoints" / "orders.generation.json"
        if durable_kind == "file"
        else tmp_path / "checkpoints.db.generation.json"
    )
    record.write_bytes(b"{oops")
    with pytest.raises(CheckpointError, match="corrupt generation record") as caught:
        await backend.claim("orders", "b")
    await backend.aclose()
    assert str(record) in str(caught.value)


def legacy_snapshot(generation_free: Checkpoint) -> bytes:
    """The snapshot as riprap wrote it before checksums and generations (format version 1)."""
    cp = generation_free
    return orjson.dumps(
        {
            "version": 1,
            "pipeline": cp.pipeline,
            "epoch": cp.epoch,
            "owner": cp.owner,
            "seq": cp.seq,
            "positions": dict(cp.positions),
            "state": dict(cp.state),
            "crash_counts": dict(cp.crash_counts),
            "created_at": cp.created_at,
        }
    )


async def test_legacy_snapshot_accepted_once_with_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A version-1 snapshot in a store with no record is trusted with a warning, then upgraded."""
    old = snapshot(1, "a", seq=2, generation=0, identities={})
    store = FileCheckpoints(tmp_path)
    tmp_path.joinpath("orders.checkpoint.json").write_bytes(legacy_snapshot(old))
    with caplog.at_level(logging.WARNING, logger="riprap.checkpoint"):
        claim = await store.claim("orders", "b")
    warned = [r.getMessage() for r in caplog.records if "format version 1" in r.getMessage()]
    await store.save(dataclasses.replace(old, epoch=claim.epoch, owner="b", seq=1, generation=1))
    stored = orjson.loads(tmp_path.joinpath("orders.checkpoint.json").read_bytes())
    expected = (old, 1, 2, 1)
    assert expected == (claim.checkpoint, len(warned), stored["version"], stored["generation"])


async def test_legacy_snapshot_behind_record_refused(tmp_path: Path) -> None:
    """A version-1 snapshot restored over a store that recorded generations is a rollback."""
    store = FileCheckpoints(tmp_path)
    await store.claim("orders", "a")
    await store.save(snapshot(1, "a", seq=2))
    old = snapshot(1, "a", seq=1, generation=0, identities={})
    tmp_path.joinpath("orders.checkpoint.json").write_bytes(legacy_snapshot(old))
    with pytest.raises(CheckpointIntegrityError) as caught:
        await store.claim("orders", "b")
    expected = (102, 0)
    assert expected == (caught.value.expected, caught.value.found)


SAVER = textwrap.dedent(
    """
    import os
    import sys
    import anyio
    from riprap.checkpoints import Checkpoint, SqliteCheckpoints

    path, first, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    backend = SqliteCheckpoints(path)

    async def save(claim, seqs):
        for seq in seqs:
            cp = Checkpoint("orders", claim.epoch, "child", seq=seq, generation=seq,
                            positions={"orders-0": 1000 * seq})
            await backend.save(cp)

    claim = anyio.run(backend.claim, "orders", "child")
    anyio.run(save, claim, range(1, first + 1))
    print("saved", first, flush=True)
    sys.stdin.readline()
    anyio.run(save, claim, range(first + 1, total + 1))
    print("saved", total, flush=True)
    os._exit(0)  # no close: the -wal file stays as a crash leaves it
    """
)


def crashed_saver(path: Path, *, first: int, total: int, between: Callable[[], None]) -> str:
    """Run a child that saves ``first`` checkpoints, waits for ``between``, saves up to
    ``total`` and dies without closing the database; return its output."""
    args = [sys.executable, "-c", SAVER, str(path), str(first), str(total)]
    with subprocess.Popen(
        args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as child:
        assert child.stdout is not None
        line = child.stdout.readline()
        between()
        out, err = child.communicate("go\n", timeout=60)
    assert "" == err
    return line + out


def _delete(wal: Path) -> None:
    wal.unlink()


def _truncate(wal: Path) -> None:
    data = wal.read_bytes()
    wal.write_bytes(data[: len(data) * 2 // 3])


def _overwrite(wal: Path) -> None:
    wal.write_bytes(os.urandom(wal.stat().st_size))


WAL_DAMAGES = {"deleted": _delete, "truncated": _truncate, "overwritten": _overwrite}


@pytest.mark.parametrize("damage", sorted(WAL_DAMAGES))
async def test_sqlite_wal_damage_refused(damage: str, tmp_path: Path) -> None:
    """After a crash, a deleted, truncated or overwritten -wal file never rolls back silently."""
    path = tmp_path / "checkpoints.db"
    output = crashed_saver(path, first=2, total=6, between=lambda: None)
    wal = tmp_path / "checkpoints.db-wal"
    wal_left = wal.stat().st_size > 0
    WAL_DAMAGES[damage](wal)
    backend = SqliteCheckpoints(path)
    try:
        with pytest.raises(CheckpointIntegrityError) as claiming:
            await backend.claim("orders", "next")
        with pytest.raises(CheckpointIntegrityError) as loading:
            await backend.load("orders")
    finally:
        await backend.aclose()
    error = claiming.value
    message = str(error)
    expected = ("saved 2\nsaved 6\n", True, 6, True, True, True, True, message)
    assert expected == (
        output,
        wal_left,
        error.expected,
        error.found is None or error.found < 6,
        f"{path} (pipeline 'orders')" in message,
        "expected generation 6" in message,
        f"riprap checkpoint show {path} --pipeline orders" in message,
        str(loading.value),
    )


async def test_sqlite_live_copy_restored_refused(tmp_path: Path) -> None:
    """A copy of a live database (file and -wal) put back after later saves is refused."""
    path = tmp_path / "checkpoints.db"
    backup = tmp_path / "backup"
    backup.mkdir()

    def copy_live_files() -> None:
        for suffix in ("", "-wal"):
            shutil.copyfile(f"{path}{suffix}", backup / f"checkpoints.db{suffix}")

    crashed_saver(path, first=2, total=5, between=copy_live_files)
    for suffix in ("", "-wal"):
        shutil.copyfile(backup / f"checkpoints.db{suffix}", f"{path}{suffix}")
    os.remove(f"{path}-shm")
    backend = SqliteCheckpoints(path)
    try:
        with pytest.raises(CheckpointIntegrityError) as caught:
            await backend.claim("orders", "next")
    finally:
        await backend.aclose()
    message = str(caught.value)
    expected = (5, 2, True, True)
    assert expected == (
        caught.value.expected,
        caught.value.found,
        "expected generation 5" in message and "found generation 2" in message,
        f"riprap checkpoint reset {path} --pipeline orders --yes" in message,
    )


def counting_pipeline(backend: CheckpointBackend, count: int) -> riprap.Pipeline:
    """Numbers 0..count-1 into memory, checkpointed in ``backend``."""
    return (
        riprap.Pipeline("numbers", checkpoint=backend)
        .source(IterableSource("numbers", range(count), partition="numbers"))
        .sink(MemorySink())
    )


async def test_runs_raise_the_generation_and_refuse_a_rollback(tmp_path: Path) -> None:
    """Each run's saves raise the generation; a run on a store rolled back fails."""
    directory = tmp_path / "checkpoints"
    target = directory / "numbers.checkpoint.json"
    await counting_pipeline(FileCheckpoints(directory), 10).run()
    first = await FileCheckpoints(directory).load("numbers")
    older = target.read_bytes()
    await counting_pipeline(FileCheckpoints(directory), 20).run()
    second = await FileCheckpoints(directory).load("numbers")
    target.write_bytes(older)
    with pytest.raises(CheckpointIntegrityError) as caught:
        await counting_pipeline(FileCheckpoints(directory), 30).run()
    assert first is not None
    assert second is not None
    expected = (True, second.generation, first.generation, {"numbers": 20})
    assert expected == (
        second.generation > first.generation > 0,
        caught.value.expected,
        caught.value.found,
        dict(second.positions),
    )
