"""Resilience policies: retry, timeout, circuit breaker, bulkhead, fallback.

A stage's calls go through a :class:`PolicyStack` built from :class:`Policies`,
outermost first: fallback -> total timeout -> retry -> bulkhead -> breaker
check -> attempt timeout -> call. Code that waits again before it touches the
dependency (for a pooled connection) re-checks the breaker with
:func:`admit_nowait` and :func:`admit`;
an attempt that ignores its timeout's cancellation is abandoned to a
:class:`Shelter` after a grace period. Each policy also works on its own, as a
decorator (``@retry(...)``, ``@timeout(...)``, ``@fallback(...)``,
``@breaker``, ``@bulkhead``) or an async context manager (``async with
breaker:``, ``async with bulkhead:``, ``async with fail_after(...):``).

Every policy reads time from an injectable :class:`~riprap.Clock` and jitter
from an injectable ``random.Random`` (I8), and reports what it does as events
to :class:`PolicyHook` callables.
"""

from __future__ import annotations

from riprap._core.errors import BulkheadFullError as BulkheadFullError
from riprap._core.errors import CircuitOpenError as CircuitOpenError
from riprap._core.errors import StageTimeout as StageTimeout
from riprap._core.public import fixup_module_metadata

from ._admission import admit as admit
from ._admission import admit_nowait as admit_nowait
from ._breaker import BreakerConfig as BreakerConfig
from ._breaker import BreakerStatistics as BreakerStatistics
from ._breaker import CallPermit as CallPermit
from ._breaker import CircuitBreaker as CircuitBreaker
from ._bulkhead import Bulkhead as Bulkhead
from ._bulkhead import BulkheadStatistics as BulkheadStatistics
from ._classify import DEFAULT_CLASSIFIER as DEFAULT_CLASSIFIER
from ._classify import Classifier as Classifier
from ._classify import ClassifierHook as ClassifierHook
from ._classify import Verdict as Verdict
from ._classify import classify as classify
from ._classify import parse_retry_after as parse_retry_after
from ._classify import retry_after as retry_after
from ._events import CallAbandoned as CallAbandoned
from ._events import CallRejected as CallRejected
from ._events import CircuitState as CircuitState
from ._events import CircuitStateChanged as CircuitStateChanged
from ._events import FallbackUsed as FallbackUsed
from ._events import PolicyEvent as PolicyEvent
from ._events import PolicyHook as PolicyHook
from ._events import RetryGaveUp as RetryGaveUp
from ._events import RetryScheduled as RetryScheduled
from ._fallback import FallbackFn as FallbackFn
from ._fallback import fallback as fallback
from ._fallback import falls_back as falls_back
from ._retry import Jitter as Jitter
from ._retry import RandomSource as RandomSource
from ._retry import Retry as Retry
from ._retry import RetryBudget as RetryBudget
from ._retry import retry as retry
from ._shelter import Shelter as Shelter
from ._shelter import ShelterStatistics as ShelterStatistics
from ._stack import Layer as Layer
from ._stack import Policies as Policies
from ._stack import PolicyStack as PolicyStack
from ._stack import PolicyStatistics as PolicyStatistics
from ._timeout import TimeoutScope as TimeoutScope
from ._timeout import fail_after as fail_after
from ._timeout import move_on_after as move_on_after
from ._timeout import timeout as timeout

__all__ = (
    "DEFAULT_CLASSIFIER",
    "BreakerConfig",
    "BreakerStatistics",
    "Bulkhead",
    "BulkheadFullError",
    "BulkheadStatistics",
    "CallAbandoned",
    "CallPermit",
    "CallRejected",
    "CircuitBreaker",
    "CircuitOpenError",
    "CircuitState",
    "CircuitStateChanged",
    "Classifier",
    "ClassifierHook",
    "FallbackFn",
    "FallbackUsed",
    "Jitter",
    "Layer",
    "Policies",
    "PolicyEvent",
    "PolicyHook",
    "PolicyStack",
    "PolicyStatistics",
    "RandomSource",
    "Retry",
    "RetryBudget",
    "RetryGaveUp",
    "RetryScheduled",
    "Shelter",
    "ShelterStatistics",
    "StageTimeout",
    "TimeoutScope",
    "Verdict",
    "admit",
    "admit_nowait",
    "classify",
    "fail_after",
    "fallback",
    "falls_back",
    "move_on_after",
    "parse_retry_after",
    "retry",
    "retry_after",
    "timeout",
)


fixup_module_metadata(__name__, globals())
