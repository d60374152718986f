"""Order sagas: reserve inventory -> charge payment -> schedule shipment, undone on failure.

Run it with ``python examples/saga_orders.py [DIRECTORY]`` (default
``riprap-saga-demo``). Each order runs a saga against three fake services.
The payment service declines every order whose id is 3 modulo 7 (a
``DataError``: the reservation is released and the outcome is
``compensated``) and is unavailable on the first attempt for every fifth order
(a ``TransientError``: retried, then the saga goes on). Outcomes are upserted
into ``outcomes.db``; the run checkpoints to ``checkpoints.db``, so running it
again (or after a kill) resumes where it stopped.

The fake services keep everything in ``services.db``: every call in
``attempts``, every applied effect in ``effects`` and every compensation in
``undos``. They honour idempotency keys (a call with a key already applied
returns the stored result and is logged as ``replayed``), and nothing makes
``effects`` unique, so a double application would show as two rows.
"""

from __future__ import annotations

import sqlite3
import sys
import threading
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, final

import anyio
import orjson

import riprap
import riprap.checkpoints
from riprap.connectors.memory import IterableSource
from riprap.connectors.sqlite import SqliteSink
from riprap.policies import Retry
from riprap.stages.saga import Saga, SagaStep

if TYPE_CHECKING:
    from collections.abc import Callable

PIPELINE = "saga-orders"
ORDERS = 200

_SCHEMA = """
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY, service TEXT NOT NULL, key TEXT NOT NULL, outcome TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS effects (
    id INTEGER PRIMARY KEY, service TEXT NOT NULL, key TEXT NOT NULL,
    order_id INTEGER NOT NULL, result TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS undos (
    id INTEGER PRIMARY KEY, service TEXT NOT NULL, key TEXT NOT NULL, effect_id INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS attempts_key ON attempts (service, key);
CREATE INDEX IF NOT EXISTS effects_key ON effects (service, key);
CREATE INDEX IF NOT EXISTS undos_key ON undos (service, key);
"""


@final
class EffectStore:
    """The fake services' SQLite database; every call is one transaction in a worker thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._ready = False
        self._setup = threading.Lock()

    async def apply(
        self,
        service: str,
        key: str,
        order: dict[str, Any],
        fail: Callable[[dict[str, Any], int], Exception | None] | None,
    ) -> dict[str, Any]:
        """Apply ``service``'s effect for ``key`` once; a known key returns the stored result."""
        result, error = await anyio.to_thread.run_sync(self._apply, service, key, order, fail)
        if error is not None:
            raise error
        return result

    async def undo(self, service: str, key: str, effect_id: int) -> None:
        """Record the compensation of effect ``effect_id`` once per ``key``."""
        await anyio.to_thread.run_sync(self._undo, service, key, effect_id)

    def _connect(self) -> sqlite3.Connection:
        # The schema and WAL mode are set up once: done on every call, by several
        # threads at once, they can fail with "database is locked" at once instead
        # of waiting; BEGIN IMMEDIATE below waits for the lock as it should.
        with self._setup:
            if not self._ready:
                with closing(sqlite3.connect(self.path, timeout=30.0)) as setup:
                    setup.execute("PRAGMA journal_mode=WAL")
                    setup.executescript(_SCHEMA)
                self._ready = True
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        return conn

    def _apply(
        self,
        service: str,
        key: str,
        order: dict[str, Any],
        fail: Callable[[dict[str, Any], int], Exception | None] | None,
    ) -> tuple[dict[str, Any], Exception | None]:
        with closing(self._connect()) as conn:
            found = conn.execute(
                "SELECT result FROM effects WHERE service = ? AND key = ?", (service, key)
            ).fetchone()
            if found is not None:
                _log_call(conn, service, key, "replayed")
                return orjson.loads(found[0]), None
            tried = conn.execute(
                "SELECT count(*) FROM attempts WHERE service = ? AND key = ?", (service, key)
            ).fetchone()[0]
            error = fail(order, tried + 1) if fail is not None else None
            if error is not None:
                _log_call(conn, service, key, type(error).__name__)
                return {}, error
            cursor = conn.execute(
                "INSERT INTO effects (service, key, order_id, result) VALUES (?, ?, ?, '')",
                (service, key, order["id"]),
            )
            result = {"service": service, "effect_id": cursor.lastrowid}
            conn.execute(
                "UPDATE effects SET result = ? WHERE id = ?",
                (orjson.dumps(result), cursor.lastrowid),
            )
            _log_call(conn, service, key, "applied")
            return result, None

    def _undo(self, service: str, key: str, effect_id: int) -> None:
        with closing(self._connect()) as conn:
            found = conn.execute(
                "SELECT 1 FROM undos WHERE service = ? AND key = ?", (service, key)
            ).fetchone()
            if found is None:
                conn.execute(
                    "INSERT INTO undos (service, key, effect_id) VALUES (?, ?, ?)",
                    (service, key, effect_id),
                )
            _log_call(conn, service, key, "replayed" if found else "applied")


def _log_call(conn: sqlite3.Connection, service: str, key: str, outcome: str) -> None:
    """Log one call and commit its transaction."""
    conn.execute(
        "INSERT INTO attempts (service, key, outcome) VALUES (?, ?, ?)", (service, key, outcome)
    )
    conn.execute("COMMIT")


@final
@dataclass(frozen=True, slots=True)
class FakeService:
    """A remote service that honours idempotency keys, answering after ``delay`` seconds.

    Attributes:
        name: The service's name in the effect tables.
        store: Where its effects live.
        delay: Seconds each call takes.
        fail: ``fail(order, attempt)`` returns the error a call raises, or ``None``.
    """

    name: str
    store: EffectStore
    delay: float = 0.0
    fail: Callable[[dict[str, Any], int], Exception | None] | None = None

    async def apply(self, order: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        """The action: apply the effect (once per key) and return its receipt."""
        await anyio.sleep(self.delay)
        return await self.store.apply(self.name, idempotency_key, order, self.fail)

    async def undo(self, order: dict[str, Any], result: Any, idempotency_key: str) -> None:
        """The compensation: undo the effect ``result`` describes (once per key)."""
        await anyio.sleep(self.delay)
        await self.store.undo(self.name, idempotency_key, int(result["effect_id"]))


def payment_failure(order: dict[str, Any], attempt: int) -> Exception | None:
    """Decline every order with id 3 mod 7; be unavailable at the first try for every 5th."""
    if order["id"] % 7 == 3:
        return riprap.DataError("card declined", reason="card_declined")
    if order["id"] % 5 == 0 and attempt == 1:
        return riprap.TransientError("payment service unavailable")
    return None


@final
@dataclass(frozen=True, slots=True)
class Services:
    """The three services an order saga calls."""

    inventory: FakeService
    payments: FakeService
    shipping: FakeService


def create_services(path: Path, *, delay: float = 0.0) -> Services:
    """The fake services, sharing the effect database at ``path``."""
    store = EffectStore(path)
    return Services(
        inventory=FakeService("inventory", store, delay),
        payments=FakeService("payments", store, delay, payment_failure),
        shipping=FakeService("shipping", store, delay),
    )


def build_saga(services: Services, *, concurrency: int = 8) -> Saga:
    """Reserve -> charge -> ship; a declined payment releases the reservation."""
    quick = Retry(attempts=3, wait_initial=0.01, wait_max=0.05)
    return Saga(
        "order",
        [
            SagaStep("reserve", services.inventory.apply, services.inventory.undo, retry=quick),
            SagaStep("charge", services.payments.apply, services.payments.undo, retry=quick),
            SagaStep("ship", services.shipping.apply, retry=quick),
        ],
        key=lambda order: order["id"],
        concurrency=concurrency,
    )


def make_orders(count: int) -> list[dict[str, Any]]:
    """``count`` deterministic orders."""
    return [{"id": i, "sku": f"sku-{i % 10}", "quantity": 1 + i % 3} for i in range(count)]


def build_pipeline(
    directory: Path,
    *,
    orders: int = ORDERS,
    saga: Saga | None = None,
    delay: float = 0.001,
    checkpoint_interval: float = 1.0,
) -> riprap.Pipeline:
    """Orders -> saga -> outcomes table, checkpointed in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    if saga is None:
        saga = build_saga(create_services(directory / "services.db", delay=delay))
    return (
        riprap.Pipeline(
            PIPELINE,
            checkpoint=riprap.checkpoints.SqliteCheckpoints(directory / "checkpoints.db"),
            checkpoint_interval=checkpoint_interval,
            batch_size=16,
            max_in_flight=64,
        )
        .source(IterableSource("orders", make_orders(orders), partition="orders"))
        .stage(saga)
        .sink(
            SqliteSink(directory / "outcomes.db", table="outcomes", key="key", columns=("outcome",))
        )
    )


def summary(directory: Path) -> dict[str, int]:
    """Outcomes by kind, and effects applied twice under one key (always 0)."""
    with closing(sqlite3.connect(directory / "outcomes.db")) as conn:
        counts = dict(conn.execute("SELECT outcome, count(*) FROM outcomes GROUP BY outcome"))
    with closing(sqlite3.connect(directory / "services.db")) as conn:
        (doubles,) = conn.execute(
            "SELECT count(*) FROM (SELECT 1 FROM effects GROUP BY service, key HAVING count(*) > 1)"
        ).fetchone()
    return {**counts, "double_applied": doubles}


def main(argv: list[str]) -> int:
    """Run the sagas and print the report and a summary of the outcomes."""
    directory = Path(argv[0] if argv else "riprap-saga-demo")
    report = riprap.run(build_pipeline(directory))
    print(report.format())
    print(orjson.dumps(summary(directory)).decode())
    return 0 if report.outcome == "completed" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
