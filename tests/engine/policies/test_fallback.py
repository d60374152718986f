"""Fallback: a degraded result for failures of the dependency, and nothing else."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from riprap import DataError, TransientError
from riprap.policies import CircuitOpenError, FallbackUsed, PolicyEvent, fallback

if TYPE_CHECKING:
    from riprap.testing import VirtualClock


async def cached(error: Exception, sku: str) -> str:
    """The degraded answer: a cached price, tagged with the error type."""
    return f"cached {sku} ({type(error).__name__})"


@pytest.mark.anyio
async def test_fallback_result_and_event(clock: VirtualClock) -> None:
    """A transient failure is replaced by the fallback's result, with a FallbackUsed event."""
    events: list[PolicyEvent] = []
    error = TransientError("down")

    @fallback(cached, clock=clock, hooks=(events.append,), stage="price", dependency="pricing")
    async def price(sku: str) -> str:
        raise error

    assert "cached A1 (TransientError)" == await price("A1")
    assert 1 == len(events)
    event = events[0]
    assert isinstance(event, FallbackUsed)
    assert (error, "price", "pricing") == (event.error, event.stage, event.dependency)


@pytest.mark.anyio
async def test_fallback_on_open_circuit(clock: VirtualClock) -> None:
    """An open circuit is answered by the fallback."""

    @fallback(cached, clock=clock)
    async def price(sku: str) -> str:
        raise CircuitOpenError("pricing", remaining=10.0)

    assert "cached B2 (CircuitOpenError)" == await price("B2")


@pytest.mark.anyio
@pytest.mark.parametrize("error", [DataError("bad sku"), ValueError("bug")])
async def test_data_errors_and_bugs_are_not_hidden(clock: VirtualClock, error: Exception) -> None:
    """A DataError must reach the DLQ and a bug must stop the pipeline: no fallback."""
    events: list[PolicyEvent] = []

    @fallback(cached, clock=clock, hooks=(events.append,))
    async def price(sku: str) -> str:
        raise error

    with pytest.raises(type(error)):
        await price("C3")
    assert [] == events


@pytest.mark.anyio
async def test_custom_predicate(clock: VirtualClock) -> None:
    """``on`` chooses which errors the fallback replaces."""

    @fallback(cached, clock=clock, on=lambda exc: isinstance(exc, KeyError))
    async def price(sku: str) -> str:
        raise KeyError(sku)

    assert "cached D4 (KeyError)" == await price("D4")


@pytest.mark.anyio
async def test_success_skips_the_fallback(clock: VirtualClock) -> None:
    """A successful call returns its own result and emits nothing."""
    events: list[PolicyEvent] = []

    @fallback(cached, clock=clock, hooks=(events.append,))
    async def price(sku: str) -> str:
        return f"live {sku}"

    assert "live E5" == await price("E5")
    assert [] == events


@pytest.mark.anyio
async def test_failing_fallback_propagates_chained(clock: VirtualClock) -> None:
    """If the fallback fails too, its error propagates with the original as context."""
    original = TransientError("down")

    async def broken(error: Exception, sku: str) -> str:
        raise RuntimeError("cache empty")

    @fallback(broken, clock=clock)
    async def price(sku: str) -> str:
        raise original

    with pytest.raises(RuntimeError) as info:
        await price("F6")
    assert info.value.__context__ is original
