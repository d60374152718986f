"""riprap: an asyncio stream-processing engine that survives production."""

from __future__ import annotations

import contextlib
import importlib.metadata

from ._acks import Ack as Ack
from ._alerts import Alert as Alert
from ._alerts import AlertRule as AlertRule
from ._alerts import AlertSink as AlertSink
from ._alerts import CallbackAlerts as CallbackAlerts
from ._alerts import LogAlerts as LogAlerts
from ._alerts import WebhookAlerts as WebhookAlerts
from ._allocator import keep_freed_memory as keep_freed_memory
from ._checkpoint import Checkpoint as Checkpoint
from ._checkpoint import CheckpointBackend as CheckpointBackend
from ._checkpoint import Claim as Claim
from ._ckpt_file import FileCheckpoints as FileCheckpoints
from ._ckpt_memory import MemoryCheckpoints as MemoryCheckpoints
from ._ckpt_sqlite import SqliteCheckpoints as SqliteCheckpoints
from ._clock import Clock as Clock
from ._clock import SystemClock as SystemClock
from ._deadletter import DeadLetter as DeadLetter
from ._dlq_sinks import DeadLetterFilter as DeadLetterFilter
from ._dlq_sinks import DeadLetterSink as DeadLetterSink
from ._dlq_sinks import JsonLinesDeadLetters as JsonLinesDeadLetters
from ._dlq_sinks import SqliteDeadLetters as SqliteDeadLetters
from ._dlq_sinks import purge_dead_letters as purge_dead_letters
from ._dlq_sinks import read_dead_letters as read_dead_letters
from ._dlq_source import DeadLetterSource as DeadLetterSource
from ._errors import BulkheadFullError as BulkheadFullError
from ._errors import CheckpointError as CheckpointError
from ._errors import CircuitOpenError as CircuitOpenError
from ._errors import ConfigError as ConfigError
from ._errors import DataError as DataError
from ._errors import DecodeError as DecodeError
from ._errors import EngineError as EngineError
from ._errors import FencedError as FencedError
from ._errors import PipelineError as PipelineError
from ._errors import PoisonPillError as PoisonPillError
from ._errors import StageTimeout as StageTimeout
from ._errors import TransientError as TransientError
from ._health import HealthConfig as HealthConfig
from ._health import serve_health as serve_health
from ._logging import JsonFormatter as JsonFormatter
from ._pipeline import Pipeline as Pipeline
from ._pipeline import PipelineOptions as PipelineOptions
from ._pipeline import StepOptions as StepOptions
from ._protocols import Sink as Sink
from ._protocols import SinkContext as SinkContext
from ._protocols import Source as Source
from ._protocols import SourceContext as SourceContext
from ._protocols import Stage as Stage
from ._protocols import StageContext as StageContext
from ._records import Batch as Batch
from ._records import Record as Record
from ._records import SourceBatch as SourceBatch
from ._redact import Redactor as Redactor
from ._report import RunReport as RunReport
from ._report import RunStatistics as RunStatistics
from ._report import StepStats as StepStats
from ._routing import DeadLetterGuard as DeadLetterGuard
from ._routing import DeadLetterRateError as DeadLetterRateError
from ._routing import DeadLetterWriteError as DeadLetterWriteError
from ._run import run as run
from ._run import run_async as run_async
from ._runtime import RunningPipeline as RunningPipeline
from ._tracing import trace_headers as trace_headers

__all__ = (
    "Ack",
    "Alert",
    "AlertRule",
    "AlertSink",
    "Batch",
    "BulkheadFullError",
    "CallbackAlerts",
    "Checkpoint",
    "CheckpointBackend",
    "CheckpointError",
    "CircuitOpenError",
    "Claim",
    "Clock",
    "ConfigError",
    "DataError",
    "DeadLetter",
    "DeadLetterFilter",
    "DeadLetterGuard",
    "DeadLetterRateError",
    "DeadLetterSink",
    "DeadLetterSource",
    "DeadLetterWriteError",
    "DecodeError",
    "EngineError",
    "FencedError",
    "FileCheckpoints",
    "HealthConfig",
    "JsonFormatter",
    "JsonLinesDeadLetters",
    "LogAlerts",
    "MemoryCheckpoints",
    "Pipeline",
    "PipelineError",
    "PipelineOptions",
    "PoisonPillError",
    "Record",
    "Redactor",
    "RunReport",
    "RunStatistics",
    "RunningPipeline",
    "Sink",
    "SinkContext",
    "Source",
    "SourceBatch",
    "SourceContext",
    "SqliteCheckpoints",
    "SqliteDeadLetters",
    "Stage",
    "StageContext",
    "StageTimeout",
    "StepOptions",
    "StepStats",
    "SystemClock",
    "TransientError",
    "WebhookAlerts",
    "keep_freed_memory",
    "purge_dead_letters",
    "read_dead_letters",
    "run",
    "run_async",
    "serve_health",
    "trace_headers",
)


__version__ = importlib.metadata.version("riprap")


def _public_module_names() -> None:
    """Show public names as ``riprap.X`` rather than the private module they live in."""
    for name in __all__:
        obj = globals()[name]
        if getattr(obj, "__module__", "").startswith("riprap._"):
            with contextlib.suppress(AttributeError, TypeError):  # e.g. type aliases
                obj.__module__ = __name__


_public_module_names()
