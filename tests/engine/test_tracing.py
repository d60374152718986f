"""OpenTelemetry tracing: a span per batch per stage, continuing the record's trace."""

from __future__ import annotations

import sys

import pytest

import riprap
import riprap.checkpoints
from riprap.connectors.memory import IterableSource, MemorySink

otel = pytest.importorskip("opentelemetry.sdk.trace")
exporter_module = pytest.importorskip("opentelemetry.sdk.trace.export.in_memory_span_exporter")
export = pytest.importorskip("opentelemetry.sdk.trace.export")

pytestmark = pytest.mark.anyio

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01".encode()


async def test_spans_per_batch_per_stage_continue_the_record_trace() -> None:
    """Each stage makes one span per batch, in the trace of the first record's traceparent."""
    exporter = exporter_module.InMemorySpanExporter()
    provider = otel.TracerProvider()
    provider.add_span_processor(export.SimpleSpanProcessor(exporter))

    async def slow(v: int) -> int:
        return v

    source = IterableSource("in", list(range(20)))
    p = (
        riprap.Pipeline(
            "traced",
            checkpoint=riprap.checkpoints.MemoryCheckpoints(),
            tracing=provider,
            batch_size=10,
        )
        .source(source)
        .map("double", lambda v: v * 2)
        .map("slow", slow)
        .sink(MemorySink())
    )

    class HeaderSource:
        """Wraps the list source and gives every record a traceparent header."""

        name = "in"

        async def open(self, context: riprap.SourceContext) -> None:
            await source.open(context)

        async def read(self, max_records: int) -> riprap.SourceBatch | None:
            batch = await source.read(max_records)
            if batch is not None:
                batch.headers = [[("traceparent", TRACEPARENT)] for _ in batch.values]
            return batch

        async def aclose(self) -> None:
            await source.aclose()

    await p.with_source(HeaderSource()).run()
    spans = exporter.get_finished_spans()
    names = sorted(span.name for span in spans)
    assert ["riprap double", "riprap double", "riprap memory", "riprap memory"] == [
        n for n in names if n != "riprap slow"
    ]
    assert 2 == names.count("riprap slow")
    assert {TRACE_ID} == {format(span.context.trace_id, "032x") for span in spans}
    assert {10} == {span.attributes["riprap.records"] for span in spans}


def test_tracing_without_otel_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Asking for tracing without opentelemetry installed names the extra to install."""
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # as if not installed
    with pytest.raises(riprap.ConfigError, match=r"^tracing: needs opentelemetry-api"):
        riprap.Pipeline("p", tracing=True)
