"""Saga with its log as keyed state (``store=``): resumed from the store, never a step twice."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

import riprap
from riprap.checkpoints import SqliteCheckpoints
from riprap.connectors.memory import IterableSource, MemorySink
from riprap.stages.saga import Saga, SagaError, SagaStep
from riprap.state import MemoryStore, SqliteStore, StateStore

from .test_saga import Services

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.anyio


def store_of(kind: str, tmp_path: Path) -> StateStore:
    return MemoryStore() if kind == "memory" else SqliteStore(tmp_path / "state")


def orders(tmp_path: Path, saga: Saga, sink: MemorySink) -> riprap.Pipeline:
    return (
        riprap.Pipeline(
            "orders", checkpoint=SqliteCheckpoints(tmp_path / "checkpoints.db"), batch_size=4
        )
        .source(IterableSource("orders", list(range(20)), partition="p"))
        .stage(saga)
        .sink(sink)
    )


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_saga_stopped_by_a_bug_resumes_from_its_store(tmp_path: Path, kind: str) -> None:
    """A bug in the second step stops the run; the next run, with a fresh saga on the same
    store, calls neither the first step again nor any step of a finished saga."""
    services = Services(errors={"o9:charge": [RuntimeError("payments bug")]})

    def saga() -> Saga:
        steps = [services.step("reserve"), services.step("charge")]
        return Saga("order", steps, key=lambda v: f"o{v}", store=store_of(kind, tmp_path))

    with pytest.raises(SagaError, match="payments bug"):
        await orders(tmp_path, saga(), MemorySink()).run()
    assert ["reserve", "charge"] == services.calls("o9")
    sink = MemorySink()
    report = await orders(tmp_path, saga(), sink).run()
    assert "completed" == report.outcome
    assert ["reserve", "charge", "charge"] == services.calls("o9")
    for order in range(20):
        assert 1 == services.calls(f"o{order}").count("reserve"), order
    outcomes: dict[str, Any] = {v["key"]: v["outcome"] for v in sink.values}
    assert "completed" == outcomes["o9"]


def test_a_store_must_be_a_store() -> None:
    """Something else is refused, naming the option."""
    step = SagaStep("reserve", Services().step("reserve").action)
    with pytest.raises(riprap.ConfigError, match=r"Saga\('order'\)\.store"):
        Saga("order", [step], store="state")  # type: ignore[arg-type]
