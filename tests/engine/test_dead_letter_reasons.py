"""Dead-letter reasons and attempt counts say what really happened to a record, in virtual time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

import riprap
import riprap.checkpoints
import riprap.deadletters
from riprap.connectors.memory import IterableSource, MemorySink
from riprap.policies import BreakerConfig, Bulkhead, CircuitBreaker, Retry
from riprap.testing import VirtualClock

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

pytestmark = pytest.mark.anyio


class Dependency:
    """Answers each call with the next behaviour of ``plan`` (the last one repeats).

    ``"fail"`` raises a transient error, ``"slow"`` takes 100 s, ``"busy"``
    takes 1 s, ``"throttle"`` raises with a 60 s ``Retry-After``; anything
    else returns the value.
    """

    def __init__(self, clock: VirtualClock, *plan: str) -> None:
        self.clock = clock
        self.plan = list(plan)
        self.calls = 0

    async def __call__(self, value: int) -> int:
        step = self.plan[min(self.calls, len(self.plan) - 1)]
        self.calls += 1
        if step == "fail":
            raise riprap.TransientError("down")
        if step == "throttle":
            raise riprap.TransientError("429", retry_after=60.0)
        await self.clock.sleep({"slow": 100.0, "busy": 1.0}.get(step, 0.0))
        return value


def open_breaker(clock: VirtualClock) -> CircuitBreaker:
    """A breaker forced open: it refuses every call."""
    breaker = CircuitBreaker("scores", BreakerConfig(), clock=clock)
    breaker.force_open()
    return breaker


@dataclass(frozen=True)
class Scenario:
    """A step's options, what its dependency does, and the letters expected."""

    plan: tuple[str, ...]
    options: Callable[[VirtualClock], dict[str, Any]]
    expected: list[tuple[str, int]]
    records: int = 1


def retry(attempts: int, timeout: float | None = 45.0) -> Retry:
    """A retry policy without jitter, 0.1 s first backoff."""
    return Retry(attempts=attempts, timeout=timeout, wait_initial=0.1, wait_jitter="none")


SCENARIOS: dict[str, Scenario] = {
    "open breaker, no retry": Scenario(
        ("ok",),
        lambda clock: {"breaker": open_breaker(clock), "on_open": "raise"},
        [("circuit_open", 0)],
    ),
    "open breaker, with retry": Scenario(
        ("ok",),
        lambda clock: {"breaker": open_breaker(clock), "on_open": "raise", "retry": retry(3)},
        [("circuit_open", 0)],
    ),
    "full bulkhead": Scenario(
        ("busy",),
        lambda clock: {"bulkhead": Bulkhead(1, max_waiters=0), "concurrency": 2},
        [("bulkhead_full", 0)],
        records=2,
    ),
    "503 without a retry policy": Scenario(("fail",), lambda clock: {}, [("transient_error", 1)]),
    "503 after three attempts": Scenario(
        ("fail",), lambda clock: {"retry": retry(3)}, [("retries_exhausted", 3)]
    ),
    "attempt timeout without a retry policy": Scenario(
        ("slow",), lambda clock: {"attempt_timeout": 1.0}, [("timeout", 1)]
    ),
    "total timeout during the second attempt": Scenario(
        ("fail", "slow"), lambda clock: {"timeout": 5.0, "retry": retry(5)}, [("timeout", 2)]
    ),
    "Retry-After past the retry deadline": Scenario(
        ("throttle",),
        lambda clock: {"retry": retry(5, timeout=10.0)},
        [("retry_after_exceeds_deadline", 1)],
    ),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_dead_letters_name_what_ended_the_record(name: str, tmp_path: Path) -> None:
    """Each way a transient failure ends gets its own reason and the attempts that really ran."""
    scenario = SCENARIOS[name]
    clock = VirtualClock()
    dlq = tmp_path / "dlq.jsonl"
    pipeline = (
        riprap.Pipeline(
            "reasons",
            checkpoint=riprap.checkpoints.MemoryCheckpoints(),
            clock=clock,
            dead_letter=riprap.deadletters.JsonLinesDeadLetters(dlq),
        )
        .source(IterableSource("ids", list(range(scenario.records))))
        .map("score", Dependency(clock, *scenario.plan), **scenario.options(clock))
        .sink(MemorySink())
    )
    async with clock.autojump():
        report = await pipeline.run()
    letters = list(riprap.deadletters.read_dead_letters(dlq))
    assert scenario.expected == [(letter.reason, letter.attempts) for letter in letters]
    assert {scenario.expected[0][0]: 1} == dict(report.dead_lettered)
