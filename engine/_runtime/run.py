"""``riprap.run``: run a pipeline from a script, with signals, uvloop and allocator tuning.

This is the one place (besides the CLI) where riprap acts on the whole
process: it installs signal handlers (the first SIGINT/SIGTERM stops the run
gracefully: drain, final checkpoint, exit 0; a second one aborts at once) and
lets the allocator keep freed memory between batches. Embedded pipelines
(:meth:`Pipeline.open`) touch neither.

The handlers are plain Python ones (:func:`signal.signal`), installed before
the event loop exists and removed only after it is gone, not the loop's own
(``add_signal_handler``, which leaves the default action in place until the
run's task installs it and puts it back as soon as that task ends): so a signal
at any moment of :func:`run` is neither lost nor lethal. One during start-up
reaches the run as soon as it exists (an abort cancels the start-up), one
after the run ended changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import signal
from collections.abc import Callable
from contextlib import AsyncExitStack, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, final

import anyio

from riprap._runtime.runtime import open_pipeline
from riprap.observability._health import check_bindable, serve_health
from riprap.observability._statistics import RunStatistics

if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import FrameType

    from riprap._core.pipeline import Pipeline
    from riprap._runtime.runtime import RunningPipeline
    from riprap.observability._health import HealthConfig
    from riprap.observability._report import RunReport

log = logging.getLogger("riprap")

SIGNALS = (signal.SIGINT, signal.SIGTERM)
"""What stops a run (the first) and aborts it (any later one)."""

ProgressHook = Callable[[RunStatistics], None]
"""Called with live statistics every ``progress_interval`` seconds."""


def uvloop_available() -> bool:
    """Whether uvloop is installed (the ``fast`` extra)."""
    return importlib.util.find_spec("uvloop") is not None


def run(
    pipeline: Pipeline,
    *,
    handle_signals: bool = True,
    use_uvloop: bool | None = None,
    progress: ProgressHook | None = None,
    progress_interval: float = 1.0,
    health: HealthConfig | None = None,
    check: bool = True,
) -> RunReport:
    """Run ``pipeline`` to completion in a new event loop and return its report.

    Args:
        pipeline: The pipeline to run.
        handle_signals: Stop gracefully on the first SIGINT/SIGTERM, abort on the second.
        use_uvloop: Use uvloop; by default whenever it is installed.
        progress: Called with live statistics while the run goes on.
        progress_interval: Seconds between progress calls.
        health: Serve /metrics, /healthz and /readyz while the run goes on.
        check: Raise the error that failed the run; with ``False`` a run that
            started and failed returns its report instead (``outcome`` is
            ``"failed"``, ``failure`` says where), as ``riprap run`` prints it.

    Raises:
        PipelineError: A stage failed; done records were checkpointed first.
        ConfigError: The pipeline is invalid.
    """
    pipeline.validate()
    uvloop = uvloop_available() if use_uvloop is None else use_uvloop

    async def main() -> RunReport:
        return await run_async(
            pipeline,
            handle_signals=handle_signals,
            progress=progress,
            progress_interval=progress_interval,
            health=health,
            check=check,
        )

    # Caught from before the loop exists until after it is closed: no gap.
    with catch_signals() if handle_signals else nullcontext():
        return anyio.run(main, backend="asyncio", backend_options={"use_uvloop": uvloop})


async def run_async(
    pipeline: Pipeline,
    *,
    handle_signals: bool = False,
    progress: ProgressHook | None = None,
    progress_interval: float = 1.0,
    health: HealthConfig | None = None,
    check: bool = True,
) -> RunReport:
    """Like :func:`run` inside a running event loop (signals off by default)."""
    if health is not None:  # a port in use stops the run before anything is read
        await anyio.to_thread.run_sync(check_bindable, health)
    with catch_signals() if handle_signals else nullcontext() as signals:
        created = None if signals is None else signals.attach
        running: RunningPipeline | None = None
        try:
            async with (
                open_pipeline(pipeline.plan(), created=created) as running,
                AsyncExitStack() as stack,
            ):
                if health is not None:
                    server = await stack.enter_async_context(serve_health(running, health))
                    log.info(
                        "health server on http://%s:%d (/metrics /healthz /readyz)",
                        health.host,
                        server.port,
                    )
                try:
                    return await _supervise(running, progress, progress_interval)
                finally:
                    if signals is not None:
                        # The run is over (its report is final): later signals change nothing.
                        signals.detach()
        except Exception as error:
            # Only the run's own failure has a report; errors around it are raised.
            if check or running is None or running.error is not error or running.report is None:
                raise
            return running.report
        finally:
            if signals is not None:
                signals.detach()


async def _supervise(
    running: RunningPipeline,
    progress: ProgressHook | None,
    progress_interval: float,
) -> RunReport:
    outcome: RunReport | BaseException | None = None
    async with anyio.create_task_group() as tg:
        if progress is not None:
            tg.start_soon(_report_progress, running, progress, progress_interval)
        try:
            outcome = await running.wait()
        except Exception as error:
            # Raised below, outside the task group, so callers get it unwrapped.
            outcome = error
        tg.cancel_scope.cancel()
    if isinstance(outcome, BaseException):
        raise outcome
    assert outcome is not None
    return outcome


@final
class CaughtSignals:
    """SIGINT and SIGTERM received while :func:`catch_signals` holds them, handed to a run.

    The handler only records the signal and, once a run is attached, schedules
    :meth:`_dispatch` in its event loop (``call_soon_threadsafe``, which is safe
    from a signal handler); the run is stopped or aborted there, between two
    steps of the loop. Signals received before a run is attached are dispatched
    when it is; after :meth:`detach` they are only counted.
    """

    def __init__(self) -> None:
        self.received: list[int] = []
        self._dispatched = 0
        self._running: RunningPipeline | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def handle(self, signum: int, frame: FrameType | None) -> None:
        """The signal handler: record ``signum``; wake the attached run's loop."""
        self.received.append(signum)
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closing: the run is over
                loop.call_soon_threadsafe(self._dispatch)

    def attach(self, running: RunningPipeline) -> None:
        """Send signals to ``running`` (from its event loop), those already received first."""
        self._running = running
        self._loop = asyncio.get_running_loop()
        self._dispatch()

    def detach(self) -> None:
        """The run is over: signals from now on are recorded and nothing else."""
        self._running = None
        self._loop = None

    def _dispatch(self) -> None:
        """Stop the run on the first signal, abort it on any later one."""
        while self._running is not None and self._dispatched < len(self.received):
            running = self._running
            signum = self.received[self._dispatched]
            self._dispatched += 1
            name = signal.Signals(signum).name
            if self._dispatched == 1:
                log.warning(
                    "%s received: stopping pipeline %s after draining (again to abort)",
                    name,
                    running.name,
                )
                running.stop()
            else:
                log.warning(
                    "%s received again: aborting pipeline %s",
                    name,
                    running.name,
                    extra={"pipeline": running.name},
                )
                running.abort()


_caught: CaughtSignals | None = None
"""The signals held now (:func:`catch_signals`, :func:`hold_signals`), shared by nested uses."""


@contextmanager
def catch_signals() -> Iterator[CaughtSignals]:
    """Hold SIGINT and SIGTERM until the block ends, then put the previous handlers back.

    Nested uses, and uses after :func:`hold_signals`, share the signals already held.

    Raises:
        ValueError: Not in the main thread (only it can handle signals).
    """
    global _caught
    if _caught is not None:
        yield _caught
        return
    previous: dict[int, Any] = {sig: signal.getsignal(sig) for sig in SIGNALS}
    caught = hold_signals()
    try:
        yield caught
    finally:
        _caught = None
        caught.detach()
        for sig, handler in previous.items():
            # None: a handler installed from C, which Python cannot put back.
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)


def hold_signals() -> CaughtSignals:
    """Hold SIGINT and SIGTERM from now on, until :func:`ignore_signals` (or for good).

    For the ``riprap`` command, which starts holding them before its run and
    keeps them until it exits: a signal between two steps is never lethal.

    Raises:
        ValueError: Not in the main thread (only it can handle signals).
    """
    global _caught
    if _caught is None:
        caught = CaughtSignals()
        for sig in SIGNALS:
            signal.signal(sig, caught.handle)
        _caught = caught
    return _caught


def ignore_signals() -> None:
    """Ignore SIGINT and SIGTERM from now on: the ``riprap`` command once its run is over.

    A signal while the command prints the report or exits changes nothing (the
    exit code is the run's). Ignoring, not a Python handler: the interpreter
    resets Python handlers to the default action early in its exit, which
    would let a late signal kill the process after all.
    """
    global _caught
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    if _caught is not None:
        _caught.detach()
    _caught = None


async def _report_progress(
    running: RunningPipeline, progress: ProgressHook, interval: float
) -> None:
    while True:
        await anyio.sleep(interval)
        progress(running.statistics())
