"""P1: overhead of the resilience policies on a trivial async call, against the bare call.

Each variant awaits ``noop(i)`` (an ``async def`` that returns its argument)
``--calls`` times in one event loop, on the real clock, with no failure, so
the figures are the happy-path cost of the wrappers: a shared-timer deadline
per timeout, a permit, a context variable and a window update for the
breaker, a slot for the bulkhead, a frame for retry and fallback. An attempt
timeout with a grace period (the default) runs each attempt in a task of its
own, which costs a task and one event-loop turn; the ``in-task`` variants
measure ``attempt_grace=None``. Variants alternate within each repetition so
noise hits them alike; the best repetition counts. The ratio is to the bare
call measured in the same run.

Run: ``python -m benchmarks.bench_policies [--calls N] [--repeat K]``.
"""

from __future__ import annotations

import argparse
import gc
import time
from typing import TYPE_CHECKING

import anyio

from riprap.policies import (
    BreakerConfig,
    Bulkhead,
    CircuitBreaker,
    Policies,
    PolicyStack,
    Retry,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    Call = Callable[[int], Awaitable[int]]


async def noop(i: int) -> int:
    """The trivial dependency call."""
    return i


async def degraded(error: Exception, i: int) -> int:
    """The fallback (never used: nothing fails)."""
    return -i


def full_stack(attempt_grace: float | None) -> Call:
    """Every policy at once: two timeouts, retry, breaker, bulkhead and fallback."""
    breaker = CircuitBreaker("dep", BreakerConfig(window="time", window_size=60))
    policies = Policies(
        timeout=30.0,
        retry=Retry(attempts=3),
        breaker=breaker,
        bulkhead=Bulkhead(64),
        attempt_timeout=5.0,
        attempt_grace=attempt_grace,
    )
    return PolicyStack(policies, stage="bench").wrap(noop, fallback=degraded)


def variants() -> dict[str, Call]:
    """The bare call, each policy alone, and the full stack, wrapped once."""
    in_task = Policies(attempt_timeout=5.0, attempt_grace=None)
    return {
        "bare call": noop,
        "retry": PolicyStack(Policies(retry=Retry())).wrap(noop),
        "breaker": PolicyStack(Policies(breaker=CircuitBreaker("dep2"))).wrap(noop),
        "bulkhead": PolicyStack(Policies(bulkhead=Bulkhead(64))).wrap(noop),
        "timeout": PolicyStack(Policies(attempt_timeout=5.0)).wrap(noop),
        "timeout in-task": PolicyStack(in_task).wrap(noop),
        "fallback": PolicyStack().wrap(noop, fallback=degraded),
        "full stack": full_stack(1.0),
        "full in-task": full_stack(None),
    }


async def run_calls(call: Call, n: int) -> float:
    """Seconds to await ``call(i)`` for i in range(n), checking every result."""
    gc.collect()
    started = time.perf_counter()
    for i in range(n):
        if await call(i) != i:
            raise SystemExit("a wrapped call returned the wrong value")
    return time.perf_counter() - started


async def measure(n: int, repeat: int) -> dict[str, float]:
    """Best-of-``repeat`` nanoseconds per call of every variant."""
    calls = variants()
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(repeat):
        for label, call in calls.items():
            best[label] = min(best[label], await run_calls(call, n))
    return {label: seconds / n * 1e9 for label, seconds in best.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    calls = max(1, min(args.calls, 1_000_000))  # bounded: a benchmark must finish
    ns = anyio.run(measure, calls, max(1, args.repeat))
    base = ns["bare call"]
    print(f"P1 policy overhead, {calls:,} calls, best of {args.repeat}")
    print(f"{'variant':<16}{'ns/call':>10}{'ratio':>9}")
    for label, value in ns.items():
        print(f"{label:<16}{value:>10,.0f}{value / base:>8.1f}x")


if __name__ == "__main__":
    main()
