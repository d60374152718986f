"""A sink outage, told: logged while it lasts, and a clear error if it outlasts the retry.

By default a sink rides out an outage: its retry keeps trying for
``sink_outage_timeout`` seconds while the source waits (the in-flight bound
holds everything else back). Retries are silent by themselves, so this hook
logs the first failure, a line a minute while it goes on, and the recovery;
and when the retry gives up, :func:`outage_error` says what happened instead of
blaming the record the sink happened to be writing.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, final

from riprap._core.errors import TransientError
from riprap.policies import RetryScheduled

if TYPE_CHECKING:
    from collections.abc import Callable

    from riprap.observability._redact import Redactor
    from riprap.policies import PolicyEvent

log = logging.getLogger("riprap.runtime")

LOG_EVERY = 60.0
"""Seconds (on the pipeline clock) between two lines while the sink is still failing."""


@final
class SinkOutageLog:
    """A policy hook on the sink's stack that logs its outages.

    Args:
        pipeline: The pipeline's name.
        sink: The sink's name (the stage its retry events carry).
        redactor: Cleans the error messages that go to the log.
        limit: Seconds the sink's retry keeps trying, if it has a deadline.
    """

    __slots__ = ("_last_logged", "_retries", "_since", "limit", "pipeline", "redactor", "sink")

    def __init__(self, pipeline: str, sink: str, redactor: Redactor, limit: float | None) -> None:
        self.pipeline = pipeline
        self.sink = sink
        self.redactor = redactor
        self.limit = limit
        self._since: float | None = None
        self._last_logged = 0.0
        self._retries = 0

    def __call__(self, event: PolicyEvent, /) -> None:
        if not isinstance(event, RetryScheduled) or event.stage != self.sink:
            return
        self._retries += 1
        error = self.redactor.redact(f"{type(event.error).__name__}: {event.error}")
        extra = {"pipeline": self.pipeline, "stage": self.sink}
        if self._since is None:
            self._since = self._last_logged = event.at
            within = "" if self.limit is None else f" for up to {self.limit:g} s"
            log.warning(
                "pipeline %s: sink %s failed (%s); retrying%s while the source waits",
                self.pipeline,
                self.sink,
                error,
                within,
                extra=extra,
            )
        elif event.at - self._last_logged >= LOG_EVERY:
            self._last_logged = event.at
            log.warning(
                "pipeline %s: sink %s still failing after %.0f s and %d retries (%s)",
                self.pipeline,
                self.sink,
                event.at - self._since,
                self._retries,
                error,
                extra=extra,
            )

    def written(self, now: Callable[[], float]) -> None:
        """A write succeeded (at ``now()``, read only if an outage was in progress: it is over)."""
        if self._since is None:
            return
        log.warning(
            "pipeline %s: sink %s recovered after %.0f s and %d retries",
            self.pipeline,
            self.sink,
            now() - self._since,
            self._retries,
            extra={"pipeline": self.pipeline, "stage": self.sink},
        )
        self._since = None
        self._retries = 0


def outage_error(sink: str, error: Exception, seconds: float, attempts: int) -> TransientError:
    """What stops a run whose sink kept failing transiently until its retry gave up."""
    return TransientError(
        f"sink {sink!r} kept failing for {seconds:.0f} s ({attempts} attempts) and the run "
        "stops; nothing is lost, its records are written on the next start "
        f"(sink_outage_timeout= or .sink(retry=...) waits longer). "
        f"Last error: {type(error).__name__}: {error}"
    )
