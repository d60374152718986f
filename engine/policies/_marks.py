"""What the policies learnt about a failed call, carried on its exception.

A policy re-raises the caller's exception unchanged (never a wrapper), so what
it knows rides along as private attributes: how many attempts really ran, why
a retry gave up, and whether the last attempt was a breaker probe or waited
for the breaker. The dead-letter router reads them to pick an honest reason
and attempt count; the retry layer reads the admission marks to keep breaker
waits and probes off a record's attempts and deadline.

An exception that refuses attributes (a few builtins) simply carries none:
every reader has a default.
"""

from __future__ import annotations

import contextlib

from riprap._core.errors import BulkheadFullError, CircuitOpenError, StageTimeout

_ATTEMPTS = "_riprap_attempts"
_GAVE_UP = "_riprap_gave_up"
_PROBE = "_riprap_probe"
_PAUSED = "_riprap_paused"


def _set(exc: BaseException, name: str, value: object) -> None:
    with contextlib.suppress(AttributeError, TypeError):
        setattr(exc, name, value)


def mark_attempts(exc: BaseException, attempts: int) -> None:
    """Record on ``exc`` how many attempts really ran (reached the call)."""
    _set(exc, _ATTEMPTS, attempts)


def mark_gave_up(exc: BaseException, reason: str) -> None:
    """Record on ``exc`` that a retry policy gave up on it, and why."""
    _set(exc, _GAVE_UP, reason)


def mark_admission(exc: BaseException, *, probe: bool, paused: float) -> None:
    """Record that the failed attempt was a breaker probe and/or waited ``paused`` seconds.

    ``paused`` is the time the retry must not charge to the record: waiting for
    the breaker, plus the probe's own duration when it was a probe.
    """
    _set(exc, _PROBE, probe)
    _set(exc, _PAUSED, paused)


def copy_attempts(source: BaseException, target: BaseException) -> None:
    """Carry the attempt count from a cancellation over to the error that replaces it."""
    attempts = getattr(source, _ATTEMPTS, None)
    if isinstance(attempts, int):
        mark_attempts(target, attempts)


def attempts_of(exc: BaseException) -> int:
    """How many attempts ran before ``exc`` ended the call.

    The count a retry policy recorded; otherwise 0 for a call refused before it
    ran (open breaker, full bulkhead) and 1 for any other.
    """
    attempts = getattr(exc, _ATTEMPTS, None)
    if isinstance(attempts, int):
        return attempts
    return 0 if isinstance(exc, CircuitOpenError | BulkheadFullError) else 1


def probe_of(exc: BaseException) -> bool:
    """Whether the attempt that raised ``exc`` was a half-open breaker's probe."""
    return getattr(exc, _PROBE, False) is True


def paused_of(exc: BaseException) -> float:
    """Seconds of the failed attempt that a retry deadline must not count."""
    paused = getattr(exc, _PAUSED, 0.0)
    return paused if isinstance(paused, float) else 0.0


def failure_reason(exc: BaseException) -> str:
    """The dead-letter reason of a transient error that got through every policy.

    ``retry_after_exceeds_deadline`` when the server asked for a wait past the
    retry deadline; ``retries_exhausted`` only when retries ran (two attempts
    or more) and the policy gave up; otherwise what ended the call:
    ``circuit_open``, ``bulkhead_full``, ``timeout``, or ``transient_error``
    (no retry ran).
    """
    gave_up = getattr(exc, _GAVE_UP, None)
    if gave_up == "retry_after_exceeds_deadline":
        return "retry_after_exceeds_deadline"
    if gave_up is not None and attempts_of(exc) > 1:
        return "retries_exhausted"
    if isinstance(exc, CircuitOpenError):
        return "circuit_open"
    if isinstance(exc, BulkheadFullError):
        return "bulkhead_full"
    if isinstance(exc, StageTimeout):
        return "timeout"
    return "transient_error"
