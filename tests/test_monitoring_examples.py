"""The Grafana dashboard and Prometheus rules use metric names riprap really exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import anyio
from prometheus_client import generate_latest

import riprap
import riprap.checkpoints
from riprap.connectors.memory import IterableSource, MemorySink
from tests._promql import Scrapes, evaluate

MONITORING = Path(__file__).parent.parent / "examples" / "monitoring"
_SUFFIXES = ("_total", "_bucket", "_count", "_sum")


def scrape_of_a_run(records: int = 3) -> str:
    """The exposition text of a finished run: two fused steps, an async one, a sink."""

    async def run() -> bytes:
        async def enrich(n: int) -> int:
            return n

        p = (
            riprap.Pipeline(
                "names", checkpoint=riprap.checkpoints.MemoryCheckpoints(), batch_size=10
            )
            .source(IterableSource("s", list(range(records))))
            .map("parse", lambda n: n)
            .filter("even", lambda n: n % 2 == 0)
            .map("enrich", enrich)
            .sink(MemorySink())
        )
        async with p.open() as running:
            await running.wait()
            return generate_latest(running.metrics_registry)

    return anyio.run(run).decode()


def exported_names() -> set[str]:
    """Metric names of a finished run's registry."""
    return set(re.findall(r"^# TYPE (\S+) ", scrape_of_a_run(), flags=re.MULTILINE))


def referenced(text: str) -> set[str]:
    """riprap_* names in a query text, without the suffixes Prometheus adds to samples."""
    names = set()
    for name in re.findall(r"riprap_[a-z_]+", text):
        for suffix in _SUFFIXES:
            name = name.removesuffix(suffix)
        names.add(name)
    return names


def dashboard_queries() -> list[str]:
    """Every query of the dashboard's panels."""
    dashboard: dict[str, Any] = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p["targets"]]


def test_dashboard_and_rules_reference_real_metrics() -> None:
    """Every riprap_* name in the dashboard and the alert rules is exported."""
    exported = {name.removesuffix("_total") for name in exported_names()}
    rules = (MONITORING / "prometheus-alerts.yml").read_text()
    assert set() == referenced(" ".join(dashboard_queries())) - exported
    assert set() == referenced(rules) - exported


def test_dashboard_shows_p99_per_step_by_step_id() -> None:
    """The dashboard's p99 query, on two scrapes, gives one series per step id, fused or not."""
    scrapes = Scrapes()
    scrapes.add(0.0, scrape_of_a_run(records=100))
    scrapes.add(60.0, scrape_of_a_run(records=300))
    [p99] = [q for q in dashboard_queries() if "0.99" in q and "step_latency" in q]
    result = evaluate(p99.replace("$pipeline", "names"), scrapes, 60.0)
    assert isinstance(result, dict)
    assert {"parse", "even", "enrich"} == {dict(labels)["stage"] for labels in result}
    assert all(0 < seconds <= 60 for seconds in result.values())


def test_every_dashboard_query_evaluates() -> None:
    """Each dashboard query parses and gives a result on two scrapes of a run."""
    scrapes = Scrapes()
    scrapes.add(0.0, scrape_of_a_run(records=100))
    scrapes.add(60.0, scrape_of_a_run(records=300))
    for query in dashboard_queries():
        evaluate(query.replace("$pipeline", "names"), scrapes, 60.0)
