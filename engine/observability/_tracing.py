"""Optional OpenTelemetry tracing: one span per batch per stage (extra ``otel``).

A batch's span continues the trace of its first record when that record
carries a W3C ``traceparent`` header (from Kafka, a webhook), so a record can
be followed from its producer through every stage. :func:`trace_headers`
gives sinks the headers that carry the current context onward. Without the
option nothing here is imported and the hot path pays one ``is None`` test.
"""

from __future__ import annotations

import importlib.util
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any, final

from riprap._core.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from riprap._core.records import Batch

TRACEPARENT = "traceparent"


def otel_available() -> bool:
    """Whether opentelemetry-api is installed (the ``otel`` extra)."""
    return importlib.util.find_spec("opentelemetry") is not None


@final
class Tracing:
    """Starts the spans of one pipeline's run."""

    def __init__(self, pipeline: str, provider: Any = None) -> None:
        if not otel_available():
            raise ConfigError("tracing", "needs opentelemetry-api: pip install 'riprap[otel]'")
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.pipeline = pipeline
        # A given TracerProvider wins over the global one (tests, multi-tenant services).
        self._tracer = (provider or trace.get_tracer_provider()).get_tracer("riprap")
        self._propagator = TraceContextTextMapPropagator()

    @contextmanager
    def span(self, stage: str, batch: Batch) -> Iterator[None]:
        """A span around one stage's work on ``batch``, child of its first record's trace."""
        attributes = self._attributes(stage, batch)
        parent = self._parent(batch)
        with self._tracer.start_as_current_span(
            f"riprap {stage}", context=parent, attributes=attributes
        ):
            yield

    def start(self, stage: str, batch: Batch) -> Any:
        """A started span for work on ``batch`` spread over tasks; the caller ends it."""
        attributes = self._attributes(stage, batch)
        parent = self._parent(batch)
        return self._tracer.start_span(f"riprap {stage}", context=parent, attributes=attributes)

    def active(self, span: Any) -> AbstractContextManager[Any]:
        """Make ``span`` (from :meth:`start`) current in this task, without ending it."""
        from opentelemetry import trace

        return trace.use_span(span, end_on_exit=False)

    def _attributes(self, stage: str, batch: Batch) -> dict[str, Any]:
        attributes: dict[str, Any] = {
            "riprap.pipeline": self.pipeline,
            "riprap.stage": stage,
            "riprap.records": len(batch.items),
        }
        partition, offset = batch.position(0) if batch.items else (None, None)
        if partition is not None:
            attributes["riprap.partition"] = partition
            attributes["riprap.first_offset"] = offset
        return attributes

    def _parent(self, batch: Batch) -> Any:
        if not batch.items:
            return None
        where = batch.locate(0)
        if where is None:
            return None
        source, index = where
        if source.headers is None:
            return None
        carrier = {
            name: value.decode("latin-1")
            for name, value in source.headers[index]
            if name == TRACEPARENT and isinstance(value, bytes)
        }
        return self._propagator.extract(carrier) if carrier else None


def trace_headers() -> list[tuple[str, bytes]]:
    """``traceparent`` of the current span as record headers (empty without otel or a span)."""
    if not otel_available():
        return []
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return [(name, value.encode("latin-1")) for name, value in carrier.items()]
