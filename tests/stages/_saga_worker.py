"""Subprocess for the saga fault test: the order sagas of ``examples/saga_orders.py``.

Usage: ``python _saga_worker.py DIRECTORY``. The run checkpoints to
``DIRECTORY/checkpoints.db`` every few milliseconds and resumes from it, so the
test can SIGKILL it at any moment and start it again. Every service call takes
a few milliseconds, so kills land between the steps of running sagas.

With ``RIPRAP_SAGA_BREAK_COMPENSATION=PATH`` set and no file at ``PATH``, the
first inventory compensation of the run creates the file and raises a bug: the
run stops with a ``SagaError`` (traceback, exit code 1) in the middle of compensating.
With ``RIPRAP_SAGA_STORE=memory`` the saga keeps its log as keyed state
(``store=MemoryStore()``), which the checkpoint holds per partition.

On completion the run's report is written to stdout as one JSON object.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import orjson

import riprap
from riprap.stages.saga import Saga
from riprap.state import MemoryStore

if TYPE_CHECKING:
    from types import ModuleType

    from riprap.stages.saga import Compensation

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "saga_orders.py"
BREAK_ENV = "RIPRAP_SAGA_BREAK_COMPENSATION"
STORE_ENV = "RIPRAP_SAGA_STORE"
ORDERS = 240
DELAY = 0.003
"""Seconds per service call."""


def load_example() -> ModuleType:
    """The example module, imported from its file."""
    spec = importlib.util.spec_from_file_location("saga_orders", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def broken_once(compensate: Compensation, marker: str) -> Compensation:
    """``compensate``, except that its first call ever (no ``marker`` file yet) raises a bug."""

    async def call(value: Any, result: Any, idempotency_key: str) -> object:
        path = anyio.Path(marker)
        if not await path.exists():
            await path.write_text(idempotency_key)
            raise RuntimeError(f"refund bug while compensating {idempotency_key}")
        return await compensate(value, result, idempotency_key)

    return call


def build(directory: Path) -> riprap.Pipeline:
    """The example pipeline with quick checkpoints, slow-ish services and maybe a bug."""
    example = load_example()
    services = example.create_services(directory / "services.db", delay=DELAY)
    saga: Saga = example.build_saga(services)
    marker = os.environ.get(BREAK_ENV)
    steps = list(saga.steps)
    if marker:
        reserve, *rest = steps
        assert reserve.compensate is not None
        steps = [dataclasses.replace(reserve, compensate=broken_once(reserve.compensate, marker))]
        steps += rest
    store = MemoryStore() if os.environ.get(STORE_ENV) == "memory" else None
    saga = Saga(saga.step_id, steps, key=saga.key, concurrency=saga.concurrency, store=store)
    pipeline: riprap.Pipeline = example.build_pipeline(
        directory, orders=ORDERS, saga=saga, checkpoint_interval=0.02
    )
    return pipeline


def main(argv: list[str]) -> int:
    """Run to completion and print the report as JSON (a failed run raises: exit code 1)."""
    (directory,) = argv
    report = riprap.run(build(Path(directory)))
    summary = {"outcome": report.outcome, "records_in": report.records_in}
    sys.stdout.write(orjson.dumps(summary).decode() + "\n")
    return 0 if report.outcome == "completed" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
