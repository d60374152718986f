"""Source outcome names as bounded metric labels, like dead-letter reasons (I10).

A source names what it reports through ``SourceContext.count``; a connector
that built the name from data (an object key, an error text) would leak it into
``/metrics`` and the report and grow a series per value. So a name counts as
itself only if it is an identifier and one of the first few of the run;
anything else counts as ``other``, with one warning per run.
"""

from __future__ import annotations

import logging
from typing import final

from riprap._runtime.routing import MAX_REASONS, OTHER_REASON, REASON_PATTERN

log = logging.getLogger("riprap.runtime")


@final
class OutcomeLabels:
    """Maps the outcome names of one run's source to bounded labels."""

    __slots__ = ("_known", "_pipeline", "_source", "_warned")

    def __init__(self, pipeline: str, source: str) -> None:
        self._pipeline = pipeline
        self._source = source
        self._known: set[str] = set()
        self._warned = False

    def label(self, outcome: object) -> str:
        """``outcome`` if it may be a metric label, else :data:`OTHER_REASON`."""
        if isinstance(outcome, str):
            if outcome in self._known:
                return outcome
            valid = REASON_PATTERN.fullmatch(outcome) is not None
            if valid and len(self._known) < MAX_REASONS:
                self._known.add(outcome)
                return outcome
        else:
            valid = False
        self._warn(valid)
        return OTHER_REASON

    def _warn(self, valid: bool) -> None:
        if self._warned:
            return
        self._warned = True
        why = (
            f"more than {MAX_REASONS} distinct outcomes in this run"
            if valid
            else f"an outcome name that does not match {REASON_PATTERN.pattern!r}"
        )
        log.warning(
            "source %r counted %s; counted as %r (further such outcomes are not logged)",
            self._source,
            why,
            OTHER_REASON,
            extra={"pipeline": self._pipeline, "source": self._source},
        )
