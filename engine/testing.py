"""Helpers for testing pipelines: virtual time and a one-call runner.

.. versionadded:: 0.1
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._virtual_clock import VirtualClock as VirtualClock
from ._virtual_clock import wait_all_tasks_blocked as wait_all_tasks_blocked

if TYPE_CHECKING:
    from ._pipeline import Pipeline
    from ._report import RunReport


async def run_pipeline(pipeline: Pipeline, *, clock: VirtualClock | None = None) -> RunReport:
    """Run ``pipeline`` to completion; with ``clock``, in virtual time (sleeps jump ahead).

    The pipeline's own ``clock`` option is replaced by ``clock`` when given, so
    checkpoint intervals, retries, breakers and timeouts all run on it.
    """
    if clock is None:
        return await pipeline.run()
    async with clock.autojump():
        return await pipeline.with_options(clock=clock).run()


__all__ = ("VirtualClock", "run_pipeline", "wait_all_tasks_blocked")
