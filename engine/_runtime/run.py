"""``riprap.run``: run a pipeline from a script, with signals, uvloop and allocator tuning.

This is the one place (besides the CLI) where riprap acts on the whole
process: it installs signal handlers (the first SIGINT/SIGTERM stops the run
gracefully: drain, final checkpoint, exit 0; a second one aborts at once) and
lets the allocator keep freed memory between batches. Embedded pipelines
(:meth:`Pipeline.open`) touch neither.
"""

from __future__ import annotations

import importlib.util
import logging
import signal
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING

import anyio

from riprap._runtime.allocator import DEFAULT_TRIM_THRESHOLD, keep_freed_memory
from riprap.observability._health import serve_health
from riprap.observability._statistics import RunStatistics

if TYPE_CHECKING:
    from riprap._core.pipeline import Pipeline
    from riprap._runtime.runtime import RunningPipeline
    from riprap.observability._health import HealthConfig
    from riprap.observability._report import RunReport

log = logging.getLogger("riprap")

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
    malloc_trim_threshold: int | None = DEFAULT_TRIM_THRESHOLD,
) -> RunReport:
    """Run ``pipeline`` to completion in a new event loop and return its report.

    Args:
        pipeline: The pipeline to run.
        handle_signals: Stop gracefully on the first SIGINT/SIGTERM, abort on the second.
        use_uvloop: Use uvloop; by default whenever it is installed.
        progress: Called with live statistics while the run goes on.
        progress_interval: Seconds between progress calls.
        health: Serve /metrics, /healthz and /readyz while the run goes on.
        malloc_trim_threshold: Bytes of freed heap glibc may keep for the next
            batches (see :func:`keep_freed_memory`); ``None`` leaves the
            allocator alone.

    Raises:
        PipelineError: A stage failed; done records were checkpointed first.
        ConfigError: The pipeline is invalid.
    """
    pipeline.validate()
    uvloop = uvloop_available() if use_uvloop is None else use_uvloop
    if malloc_trim_threshold is not None:
        keep_freed_memory(malloc_trim_threshold)

    async def main() -> RunReport:
        return await run_async(
            pipeline,
            handle_signals=handle_signals,
            progress=progress,
            progress_interval=progress_interval,
            health=health,
        )

    return anyio.run(main, backend="asyncio", backend_options={"use_uvloop": uvloop})


async def run_async(
    pipeline: Pipeline,
    *,
    handle_signals: bool = False,
    progress: ProgressHook | None = None,
    progress_interval: float = 1.0,
    health: HealthConfig | None = None,
) -> RunReport:
    """Like :func:`run` inside a running event loop (signals off by default)."""
    async with pipeline.open() as running, AsyncExitStack() as stack:
        if health is not None:
            server = await stack.enter_async_context(serve_health(running, health))
            log.info(
                "health server on http://%s:%d (/metrics /healthz /readyz)",
                health.host,
                server.port,
            )
        return await _supervise(running, handle_signals, progress, progress_interval)


async def _supervise(
    running: RunningPipeline,
    handle_signals: bool,
    progress: ProgressHook | None,
    progress_interval: float,
) -> RunReport:
    outcome: RunReport | BaseException | None = None
    async with anyio.create_task_group() as tg:
        if handle_signals:
            tg.start_soon(_watch_signals, running)
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


async def _watch_signals(running: RunningPipeline) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        seen = 0
        async for signum in signals:
            seen += 1
            if seen == 1:
                log.warning(
                    "%s received: stopping pipeline %s after draining (again to abort)",
                    signal.Signals(signum).name,
                    running.name,
                )
                running.stop()
            else:
                log.warning(
                    "second signal: aborting pipeline %s",
                    running.name,
                    extra={"pipeline": running.name},
                )
                running.abort()


async def _report_progress(
    running: RunningPipeline, progress: ProgressHook, interval: float
) -> None:
    while True:
        await anyio.sleep(interval)
        progress(running.statistics())
