"""The Grafana dashboard and Prometheus rules use metric names riprap really exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import anyio
from prometheus_client import generate_latest

import riprap
import riprap.checkpoints
from riprap.connectors.memory import IterableSource, MemorySink

MONITORING = Path(__file__).parent.parent / "examples" / "monitoring"


def exported_names() -> set[str]:
    """Metric names of a finished run's registry."""

    async def run() -> bytes:
        p = (
            riprap.Pipeline("names", checkpoint=riprap.checkpoints.MemoryCheckpoints())
            .source(IterableSource("s", [1, 2, 3]))
            .sink(MemorySink())
        )
        async with p.open() as running:
            await running.wait()
            return generate_latest(running.metrics_registry)

    text = anyio.run(run).decode()
    return set(re.findall(r"^# TYPE (\S+) ", text, flags=re.MULTILINE))


def referenced(text: str) -> set[str]:
    """riprap_* names in a query text, without the _total suffix Prometheus adds."""
    return {name.removesuffix("_total") for name in re.findall(r"riprap_[a-z_]+", text)}


def test_dashboard_and_rules_reference_real_metrics() -> None:
    """Every riprap_* name in the dashboard and the alert rules is exported."""
    exported = {name.removesuffix("_total") for name in exported_names()}
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    queries = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    rules = (MONITORING / "prometheus-alerts.yml").read_text()
    assert set() == referenced(queries) - exported
    assert set() == referenced(rules) - exported
