"""Event-loop lag: noticing, and naming, the step that held the loop.

Everything of a run shares one event loop. Sync code that blocks it (a sync
step doing I/O, a sink calling a blocking SDK) freezes every other task: no
timeout fires, and stops, checkpoints, health checks and metric scrapes wait.
The monitor is a task that sleeps a short interval and compares how long the
sleep really took; the excess is the lag. When it passes the threshold, one
line is logged naming the culprit, and the stall is counted for the metrics.

Naming the culprit costs a clock read and a dict update per fused batch and
per call of an unfused sync step, which is what can hold the loop for long:
those runs report how long they held it to a :class:`LoopWatch`, and the
monitor names the step that held it the longest since its last look. Lag
that no sync step explains (a stage, the sink, the source, or other code of
the process) is reported as ``unknown``, with the step that was busy the
longest in the meantime as a hint.

The lag is measured on the event loop's own clock, not the pipeline's: a
virtual clock does not move while code blocks, and moving one by hand in a
test is not a stall.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, final

import anyio

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

log = logging.getLogger("riprap.runtime")

UNKNOWN = "unknown"
"""The step named when no sync step explains the lag."""

MAX_INTERVAL = 0.25
"""Longest sleep between two measurements (a quarter of the threshold if shorter)."""


@final
class LoopWatch:
    """How long each sync step held the event loop since the monitor last looked.

    Cheap enough for the hot path: one dict update per report.
    """

    __slots__ = ("held_by",)

    def __init__(self) -> None:
        self.held_by: dict[str, float] = {}

    def held(self, step: str, seconds: float) -> None:
        """``step`` ran for ``seconds`` without yielding."""
        held_by = self.held_by
        held_by[step] = held_by.get(step, 0.0) + seconds

    def take(self) -> tuple[str | None, float]:
        """The step that held the loop the longest since the last call, and for how long."""
        held_by, self.held_by = self.held_by, {}
        step = max(held_by, key=held_by.__getitem__, default=None)
        return step, 0.0 if step is None else held_by[step]


@final
class LoopLagMonitor:
    """Measures event-loop lag; logs and counts each lag above ``threshold``.

    Args:
        pipeline: The pipeline's name, for the log.
        watch: Where sync steps report how long they held the loop.
        busy: Seconds each step (and the sink) has spent on batches so far.
        threshold: Lag in seconds that counts as a stall.
    """

    def __init__(
        self,
        pipeline: str,
        watch: LoopWatch,
        busy: Callable[[], Mapping[str, float]],
        *,
        threshold: float,
    ) -> None:
        self.pipeline = pipeline
        self.watch = watch
        self.busy = busy
        self.threshold = threshold
        self.interval = min(threshold / 4, MAX_INTERVAL)
        self.stalls: dict[str, int] = {}
        """Stalls by the step that caused them (``unknown`` when none explains it)."""
        self.last_lag = 0.0
        self.max_lag = 0.0

    async def run(self) -> None:
        """Measure until cancelled."""
        before = dict(self.busy())
        while True:
            started = anyio.current_time()
            await anyio.sleep(self.interval)
            lag = max(anyio.current_time() - started - self.interval, 0.0)
            step, held = self.watch.take()
            busy = dict(self.busy())
            self.last_lag = lag
            self.max_lag = max(self.max_lag, lag)
            if lag >= self.threshold:
                self._stalled(lag, step if held >= lag / 2 else None, _busiest(before, busy))
            before = busy

    def _stalled(self, lag: float, step: str | None, busiest: str | None) -> None:
        culprit = step or UNKNOWN
        self.stalls[culprit] = self.stalls.get(culprit, 0) + 1
        extra = {"pipeline": self.pipeline, "stage": culprit}
        if step is not None:
            log.warning(
                "pipeline %s: step %s held the event loop for %.2f s (loop_lag_threshold %g s): "
                "timeouts, stops, checkpoints, health and metrics waited meanwhile; "
                "run it with offload='thread' if it blocks",
                self.pipeline,
                step,
                lag,
                self.threshold,
                extra=extra,
            )
            return
        log.warning(
            "pipeline %s: the event loop was held for %.2f s (loop_lag_threshold %g s), "
            "not by a sync step: by a stage, the sink, the source or other code of the "
            "process (busiest step meanwhile: %s)",
            self.pipeline,
            lag,
            self.threshold,
            busiest or "none",
            extra=extra,
        )


def _busiest(before: Mapping[str, float], after: Mapping[str, float]) -> str | None:
    """The step whose busy time grew the most between the two readings, if any grew."""
    grown = {step: after[step] - before.get(step, 0.0) for step in after}
    step = max(grown, key=grown.__getitem__, default=None)
    return step if step is not None and grown[step] > 0 else None
