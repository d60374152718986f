"""Observability: run statistics, metrics, health, alerts, logs, tracing and redaction.

Every observer reads the run's statistics snapshot; none reaches into the runtime.

.. versionadded:: 0.1
"""

from __future__ import annotations

from riprap._core.public import fixup_module_metadata
from riprap.observability._alerts import Alert as Alert
from riprap.observability._alerts import AlertRule as AlertRule
from riprap.observability._alerts import AlertSink as AlertSink
from riprap.observability._alerts import CallbackAlerts as CallbackAlerts
from riprap.observability._alerts import LogAlerts as LogAlerts
from riprap.observability._alerts import WebhookAlerts as WebhookAlerts
from riprap.observability._health import HealthConfig as HealthConfig
from riprap.observability._health import HealthServer as HealthServer
from riprap.observability._health import serve_health as serve_health
from riprap.observability._histogram import HistogramSnapshot as HistogramSnapshot
from riprap.observability._logging import JsonFormatter as JsonFormatter
from riprap.observability._redact import Redactor as Redactor
from riprap.observability._redact import redact_url as redact_url
from riprap.observability._statistics import CheckpointStatistics as CheckpointStatistics
from riprap.observability._statistics import LoopStatistics as LoopStatistics
from riprap.observability._statistics import PolicySummary as PolicySummary
from riprap.observability._statistics import SourceStatistics as SourceStatistics
from riprap.observability._statistics import StepStats as StepStats
from riprap.observability._tracing import trace_headers as trace_headers

__all__ = (
    "Alert",
    "AlertRule",
    "AlertSink",
    "CallbackAlerts",
    "CheckpointStatistics",
    "HealthConfig",
    "HealthServer",
    "HistogramSnapshot",
    "JsonFormatter",
    "LogAlerts",
    "LoopStatistics",
    "PolicySummary",
    "Redactor",
    "SourceStatistics",
    "StepStats",
    "WebhookAlerts",
    "redact_url",
    "serve_health",
    "trace_headers",
)

fixup_module_metadata(__name__, globals())
