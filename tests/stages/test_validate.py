"""Validate (per-record rules) and QualityGate (per-window checks) in real pipelines."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import types
from typing import TYPE_CHECKING, Any, TypedDict, cast

import anyio
import orjson
import pytest

import riprap
import riprap.checkpoints
import riprap.deadletters
from riprap.connectors.files import JsonLinesSource
from riprap.connectors.memory import IterableSource, MemorySink
from riprap.connectors.sqlite import read_table
from riprap.stages.quality import (
    DistinctCount,
    GateWindow,
    Mean,
    NullRate,
    QualityGate,
    QualityGateError,
    References,
    RowCount,
    WindowResult,
)
from riprap.stages.validate import Expect, Validate, ValidationError
from tests._examples import load_example
from tests._sources import MIB

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

pytestmark = pytest.mark.anyio


def order(n: int) -> dict[str, Any]:
    """The ``n``-th synthetic order: positive amount, a customer, a currency."""
    return {
        "id": n,
        "amount": 10.0 + n % 7,
        "customer": f"c{n % 5}",
        "currency": "EUR" if n % 2 else "USD",
        "email": f"user{n}@example.com",
    }


def pipeline(tmp_path: Path, name: str = "orders", **options: Any) -> riprap.Pipeline:
    """A pipeline with in-memory checkpoints and a JSON Lines DLQ under ``tmp_path``."""
    options.setdefault("checkpoint", riprap.checkpoints.MemoryCheckpoints())
    options.setdefault(
        "dead_letter", riprap.deadletters.JsonLinesDeadLetters(tmp_path / "dlq.jsonl")
    )
    return riprap.Pipeline(name, **options)


def letters(tmp_path: Path) -> list[riprap.deadletters.DeadLetter]:
    """The dead letters written under ``tmp_path``."""
    path = tmp_path / "dlq.jsonl"
    return list(riprap.deadletters.read_dead_letters(path)) if path.exists() else []


def order_rules() -> Validate:
    """The order validation used by several tests."""
    return Validate(
        "check",
        Expect.required("id", "amount"),
        Expect.instance_of("amount", int, float),
        Expect.in_range("amount", min=0),
        Expect.matches("email", r"[^@\s]+@[^@\s]+"),
        Expect.one_of("currency", {"EUR", "USD"}),
    )


# -- Validate ------------------------------------------------------------------


async def test_failing_records_are_dead_lettered_with_field_and_rule(tmp_path: Path) -> None:
    """Invalid records reach the DLQ naming field and rule; valid ones reach the sink in order."""
    values = [order(n) for n in range(20)]
    values[3]["amount"] = -5
    values[7]["currency"] = "GBP"
    del values[11]["amount"]
    values[12]["email"] = "not-an-email"
    sink = MemorySink()
    p = (
        pipeline(tmp_path, batch_size=6)
        .source(IterableSource("orders", values))
        .stage(order_rules())
        .sink(sink)
    )
    report = await p.run()
    bad = {3, 7, 11, 12}
    assert [n for n in range(20) if n not in bad] == [v["id"] for v in sink.values]
    found = {(letter.offset, letter.reason) for letter in letters(tmp_path)}
    assert {(n, "validation") for n in bad} == found
    messages = {letter.offset: letter.message for letter in letters(tmp_path)}
    assert "field 'amount' failed rule in_range(min=0, max=None)" in messages[3]
    assert "field 'currency' failed rule one_of('EUR', 'USD')" in messages[7]
    assert "field 'amount' failed rule required (missing)" in messages[11]
    assert "field 'email' failed rule matches(" in messages[12]
    assert {"validation": 4} == report.dead_lettered
    assert {"memory": 20} == report.positions


async def test_validate_works_as_a_map_function(tmp_path: Path) -> None:
    """Used with .map, a Validate returns valid values and dead-letters the rest."""
    values = [order(n) for n in range(10)]
    values[4]["amount"] = "12"
    sink = MemorySink()
    p = (
        pipeline(tmp_path)
        .source(IterableSource("orders", values))
        .map("check", order_rules())
        .sink(sink)
    )
    await p.run()
    assert [n for n in range(10) if n != 4] == [v["id"] for v in sink.values]
    (letter,) = letters(tmp_path)
    assert ("validation", 4) == (letter.reason, letter.offset)
    assert "field 'amount' failed rule instance_of(int | float) (got str)" in letter.message


async def test_a_batch_of_only_invalid_records_completes(tmp_path: Path) -> None:
    """When every record of a batch fails, all are dead-lettered and the position advances."""
    values = [{"id": n} for n in range(5)]
    sink = MemorySink()
    p = (
        pipeline(tmp_path)
        .source(IterableSource("orders", values))
        .stage(Validate("check", Expect.required("amount")))
        .sink(sink)
    )
    report = await p.run()
    assert ([], {"memory": 5}) == (sink.values, report.positions)
    assert 5 == len(letters(tmp_path))


def test_every_failed_rule_is_reported() -> None:
    """A record breaking several rules gets one ValidationError listing all of them."""
    check = order_rules()
    bad = {"id": 1, "amount": True, "email": 3, "currency": ["EUR"]}
    with pytest.raises(ValidationError) as caught:
        check(bad)
    error = caught.value
    assert ("amount", "instance_of(int | float)", "validation") == (
        error.field,
        error.rule,
        error.reason,
    )
    assert ["amount", "amount", "email", "currency"] == [f.field for f in error.failures]
    assert "got bool" in str(error)
    assert check.failures(order(2)) == []


@dataclasses.dataclass
class Order:
    """A dataclass schema."""

    id: int
    amount: float
    tags: list[str]
    note: str | None = None


class Customer(TypedDict, total=False):
    """A TypedDict schema with an optional field."""

    id: int
    tier: str


class StrictCustomer(Customer, total=True):
    """A TypedDict whose ``name`` is required."""

    name: str


def test_schema_rules_from_a_dataclass_and_a_typeddict() -> None:
    """Required fields and shallow types come from the class annotations."""
    orders = Validate("orders", Expect.schema(Order))
    assert [] == orders.failures({"id": 1, "amount": 2, "tags": ["a"], "note": None})
    assert [] == orders.failures(Order(1, 2.5, []))
    (missing,) = orders.failures({"id": 1, "amount": 2.0})
    assert ("tags", "schema(Order): required") == (missing.field, missing.rule)
    (wrong,) = orders.failures({"id": 1, "amount": "2", "tags": []})
    assert ("amount", "schema(Order): type float") == (wrong.field, wrong.rule)
    customers = Validate("customers", Expect.schema(StrictCustomer))
    assert [] == customers.failures({"name": "Ada"})
    (failure,) = customers.failures({"name": "Ada", "tier": 3})
    assert "tier" == failure.field
    assert "name" == customers.failures({"id": 1})[0].field


def test_invalid_rules_are_config_errors() -> None:
    """Impossible rule options fail when the rule is built, naming the option."""
    attempts: list[Callable[[], object]] = [
        lambda: Expect.matches("email", "("),
        lambda: Expect.one_of("currency", []),
        lambda: Expect.in_range("amount", min=5, max=1),
        lambda: Expect.instance_of("amount"),
        lambda: Expect.schema(int),
        lambda: Validate("empty"),
    ]
    options = []
    for attempt in attempts:
        with pytest.raises(riprap.ConfigError) as caught:
            attempt()
        options.append(caught.value.option)
    expected = [
        "Expect.matches",
        "Expect.one_of",
        "Expect.in_range",
        "Expect.instance_of",
        "schema",
        "Validate('empty').rules",
    ]
    assert expected == options


def test_validate_statistics_count_failures_by_field_and_rule() -> None:
    """statistics() is a frozen record of records checked, passed, failed and why."""
    check = Validate("check", Expect.in_range("amount", min=0), Expect.that("id", bool, rule="id"))
    for value in ({"id": 1, "amount": 1}, {"id": 0, "amount": -1}, {"id": 2, "amount": -2}):
        with contextlib.suppress(ValidationError):
            check(value)
    stats = check.statistics()
    assert (3, 1, 2) == (stats.records_in, stats.passed, stats.failed)
    assert {"amount: in_range(min=0, max=None)": 2, "id: that(id)": 1} == dict(stats.failures)
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.failed = 0  # type: ignore[misc]


# -- QualityGate -----------------------------------------------------------------


def zero_amounts_from(first_bad: int) -> Any:
    """A transform with a bug: from order ``first_bad`` on, it zeroes the amount column."""

    def convert(value: dict[str, Any]) -> dict[str, Any]:
        amount = 0.0 if value["id"] >= first_bad else value["amount"]
        return {**value, "amount": amount}

    return convert


async def test_zeroed_column_halts_before_the_window_reaches_the_sink(tmp_path: Path) -> None:
    """A bug zeroing a column stops the run; no record of the bad window is written."""
    backend = riprap.checkpoints.MemoryCheckpoints()
    sink = MemorySink()
    events: list[WindowResult] = []
    gate = QualityGate(
        "gate",
        window=100,
        checks=[Mean("amount", min=8.0), NullRate("customer", max_rate=0.0)],
        on_breach="halt",
        on_window=events.append,
    )
    p = (
        pipeline(tmp_path, checkpoint=backend, batch_size=30, max_in_flight=300)
        .source(IterableSource("orders", [order(n) for n in range(1_000)]))
        .map("convert", zero_amounts_from(350))
        .stage(gate)
        .sink(sink)
    )
    with pytest.raises(QualityGateError) as caught:
        await p.run()
    error = caught.value
    assert ("gate", 3, "mean(amount)", "[8, inf]") == (
        error.step_id,
        error.window,
        error.check,
        error.bound,
    )
    assert math.isclose(error.measured, sum(10.0 + n % 7 for n in range(300, 350)) / 100)
    assert str(error).startswith("quality gate 'gate' halted the run: window 3 (100 records)")
    written = [v["id"] for v in sink.values]
    assert list(range(len(written))) == written
    assert len(written) <= 300
    saved = await backend.load("orders")
    assert saved is not None
    assert saved.positions["memory"] <= 300
    assert ["passed", "passed", "passed", "halted"] == [e.action for e in events]
    stats = gate.statistics()
    assert (4, 3, 1, 7, 1) == (
        stats.windows,
        stats.windows_passed,
        stats.windows_failed,
        stats.checks_passed,
        stats.checks_failed,
    )


async def test_quarantine_mode_dead_letters_the_breached_window(tmp_path: Path) -> None:
    """In quarantine mode a breached window goes to the DLQ and later windows go on."""
    sink = MemorySink()
    gate = QualityGate("gate", window=50, checks=[Mean("amount", min=1.0)], on_breach="quarantine")
    bug = zero_amounts_from(100)

    def convert(value: dict[str, Any]) -> dict[str, Any]:
        return bug(value) if value["id"] < 150 else value

    p = (
        pipeline(tmp_path, batch_size=20, dlq_guard=None)
        .source(IterableSource("orders", [order(n) for n in range(300)]))
        .map("convert", convert)
        .stage(gate)
        .sink(sink)
    )
    report = await p.run()
    assert [n for n in range(300) if not 100 <= n < 150] == [v["id"] for v in sink.values]
    found = letters(tmp_path)
    assert list(range(100, 150)) == sorted(letter.offset or 0 for letter in found)
    assert {"quality_gate"} == {letter.reason for letter in found}
    assert "mean(amount) = 0 breached (bound [1, inf])" in found[0].message
    assert ({"quality_gate": 50}, {"memory": 300}) == (report.dead_lettered, report.positions)
    stats = gate.statistics()
    assert (6, 5, 1, 50, 250) == (
        stats.windows,
        stats.windows_passed,
        stats.windows_failed,
        stats.records_quarantined,
        stats.records_passed,
    )


async def test_row_count_catches_records_lost_upstream(tmp_path: Path) -> None:
    """A filter bug that drops a third of the records breaches the row count check."""
    sink = MemorySink()
    gate = QualityGate("gate", window=40, checks=[RowCount(tolerance=0.1)], on_breach="halt")
    p = (
        pipeline(tmp_path, batch_size=25)
        .source(IterableSource("orders", [order(n) for n in range(500)]))
        .filter("keep", lambda v: v["id"] < 200 or v["id"] % 3 != 0)
        .stage(gate)
        .sink(sink)
    )
    with pytest.raises(QualityGateError) as caught:
        await p.run()
    assert "row_count" == caught.value.check
    assert math.isclose(2 / 3, caught.value.measured, rel_tol=0.05)
    assert all(v["id"] < 200 for v in sink.values)


async def test_gate_splits_batches_at_window_ends_and_checks_the_tail(tmp_path: Path) -> None:
    """Windows hold exactly ``window`` records across batches; the partial tail is checked."""
    sink = MemorySink()
    events: list[WindowResult] = []
    gate = QualityGate(
        "gate",
        window=10,
        checks=[RowCount(), DistinctCount("id", min=1)],
        on_breach="halt",
        on_window=events.append,
    )
    p = (
        pipeline(tmp_path, batch_size=7, max_in_flight=21)
        .source(IterableSource("orders", [order(n) for n in range(95)]))
        .stage(gate)
        .sink(sink)
    )
    report = await p.run()
    assert list(range(95)) == [v["id"] for v in sink.values]
    assert [10] * 9 + [5] == [e.records for e in events]
    assert [10] * 9 + [5] == [e.records_in for e in events]
    assert {"memory": 95} == report.positions


def test_checks_measure_null_rate_distinct_count_and_references() -> None:
    """Each check reports the measured value, the bound and whether it held."""
    items = [{"customer": "c1"}, {"customer": None}, {"customer": "c2"}, {"customer": "zz"}]
    window = GateWindow(0, items, records_in=8)
    results = [
        check.evaluate(window)
        for check in (
            NullRate("customer", max_rate=0.2),
            DistinctCount("customer", min=2, max=3),
            References("customer", frozenset({"c1", "c2"})),
            RowCount(tolerance=0.5),
        )
    ]
    summary = [(r.check, round(r.measured, 3), r.bound, r.passed) for r in results]
    assert [
        ("null_rate(customer)", 0.25, "[0, 0.2]", False),
        ("distinct_count(customer)", 3.0, "[2, 3]", True),
        ("references(customer)", 0.333, "[0, 0]", False),
        ("row_count", 0.5, "[0.5, 1.5]", True),
    ] == summary


def test_gate_options_are_checked() -> None:
    """An invalid window, missing checks or an unknown on_breach is a ConfigError."""
    bad: list[dict[str, Any]] = [
        {"window": 0, "checks": [RowCount()], "on_breach": "halt"},
        {"window": 10, "checks": [], "on_breach": "halt"},
        {"window": 10, "checks": [RowCount()], "on_breach": "ignore"},
    ]
    options = []
    for kwargs in bad:
        with pytest.raises(riprap.ConfigError) as caught:
            QualityGate("gate", **kwargs)
        options.append(caught.value.option)
    expected = ["QualityGate('gate').window", "QualityGate('gate').checks"]
    assert [*expected, "QualityGate('gate').on_breach"] == options


async def test_window_must_fit_in_the_in_flight_bound_when_the_context_says() -> None:
    """A context that carries max_in_flight and batch_size rejects a window that cannot fit."""
    gate = QualityGate("gate", window=1_000, checks=[RowCount()], on_breach="halt")
    context = types.SimpleNamespace(max_in_flight=1_000, batch_size=100)
    with pytest.raises(riprap.ConfigError, match="max_in_flight"):
        await gate.open(cast("riprap.StageContext", context))


def counting_gate(window: int, windows: list[int]) -> QualityGate:
    """A gate of ``window`` records that passes any window with an id, noting each size."""
    return QualityGate(
        "gate",
        window=window,
        checks=[DistinctCount("id", min=1)],
        on_breach="halt",
        on_window=lambda result: windows.append(result.records),
    )


async def test_a_window_that_holds_every_record_in_flight_stops_the_run_by_name(
    tmp_path: Path,
) -> None:
    """Behind a filter that keeps 1 record in 100, a window of 50 needs 5,000 source records
    in flight: with room for 1,000 the run stops with StalledError naming the gate instead
    of waiting forever; nothing was written, and a rerun with room gets every record once.
    """
    backend = riprap.checkpoints.MemoryCheckpoints()
    orders = [order(n) for n in range(20_000)]
    windows: list[int] = []

    def gated(sink: MemorySink, max_in_flight: int) -> riprap.Pipeline:
        return (
            pipeline(tmp_path, checkpoint=backend, batch_size=100, max_in_flight=max_in_flight)
            .source(IterableSource("orders", orders))
            .filter("rare", lambda o: o["id"] % 100 == 0)
            .stage(counting_gate(50, windows))
            .sink(sink)
        )

    stalled = MemorySink()
    with anyio.fail_after(30), pytest.raises(riprap.StalledError) as caught:
        await gated(stalled, max_in_flight=1_000).run()
    assert (("gate",), 1_000, "max_in_flight", 1_000) == (
        caught.value.stages,
        caught.value.records,
        caught.value.bound,
        caught.value.limit,
    )
    assert "held by step 'gate'" in str(caught.value)
    assert [] == stalled.values

    sink = MemorySink()
    report = await gated(sink, max_in_flight=10_000).run()
    assert list(range(0, 20_000, 100)) == [v["id"] for v in sink.values]
    assert [50] * 4 == windows
    assert {"memory": 20_000} == report.positions


async def test_a_window_that_holds_every_byte_in_flight_names_the_byte_bound(
    tmp_path: Path,
) -> None:
    """10 KiB lines, one in 12 kept: a window of 20 needs about 2.5 MiB of source batches
    in flight; under a 1 MiB bound in bytes the run stops naming ``max_in_flight_bytes``.
    """
    path = tmp_path / "orders.jsonl"
    pad = "x" * 10_240
    path.write_text(
        "".join(orjson.dumps({"id": n, "pad": pad}).decode() + "\n" for n in range(2_400))
    )
    sink = MemorySink()
    p = (
        pipeline(tmp_path, max_in_flight_bytes=MIB)
        .source(JsonLinesSource(str(path), decode=True))
        .filter("rare", lambda o: o["id"] % 12 == 0)
        .stage(counting_gate(20, []))
        .sink(sink)
    )
    with anyio.fail_after(30), pytest.raises(riprap.StalledError) as caught:
        await p.run()
    assert ("max_in_flight_bytes", MIB) == (caught.value.bound, caught.value.limit)
    assert [] == sink.values


class FailsAfter:
    """``source`` that raises ``OSError`` on the read after its first ``reads``."""

    def __init__(self, source: riprap.Source, reads: int) -> None:
        self.source = source
        self.name = source.name
        self.reads = reads

    async def open(self, context: riprap.SourceContext) -> None:
        await self.source.open(context)

    async def read(self, max_records: int) -> riprap.SourceBatch | None:
        if self.reads == 0:
            raise OSError("connection reset by peer")
        self.reads -= 1
        return await self.source.read(max_records)

    async def aclose(self) -> None:
        await self.source.aclose()


async def test_a_source_that_fails_leaves_the_open_window_open(tmp_path: Path) -> None:
    """A failing read is not the end of the input: the partial window is not judged or
    let through, and the next run completes it with the records read again.
    """
    backend = riprap.checkpoints.MemoryCheckpoints()
    orders = [order(n) for n in range(95)]
    windows: list[int] = []

    def gated(source: riprap.Source, sink: MemorySink) -> riprap.Pipeline:
        return (
            pipeline(tmp_path, checkpoint=backend, batch_size=7, max_in_flight=21)
            .source(source)
            .stage(counting_gate(10, windows))
            .sink(sink)
        )

    first = MemorySink()
    with pytest.raises(Exception, match="connection reset by peer"):
        await gated(FailsAfter(IterableSource("orders", orders), reads=5), first).run()
    assert [10, 10, 10] == windows  # 35 records read: the open window's 5 stay open
    second = MemorySink()
    await gated(IterableSource("orders", orders), second).run()
    assert [10] * 9 + [5] == windows
    assert list(range(95)) == sorted({v["id"] for v in [*first.values, *second.values]})


async def test_example_runs_and_halts_on_the_zeroed_amounts(tmp_path: Path) -> None:
    """The example writes valid, unique orders, resumes, and halts when amounts are zeroed."""
    example = load_example("quality_and_dedupe.py")
    first, second = await example.main(tmp_path / "ok")
    rows = await read_table(tmp_path / "ok" / "orders.db", "orders")
    written = {value["id"] for value in rows.values()}
    assert (len(rows), len(rows), 0) == (len(written), first.records_out, second.records_in)
    with pytest.raises(QualityGateError, match="mean"):
        await example.main(tmp_path / "bug", zero_bug=True)
    zeroed = await read_table(tmp_path / "bug" / "orders.db", "orders")
    assert [] == [v for v in zeroed.values() if v["amount"] == 0]
