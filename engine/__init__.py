"""riprap: an asyncio stream-processing engine that survives production.

This namespace holds what a pipeline author needs: the builder, the run
functions, records, the plug-in protocols and the errors to raise. The rest
lives in named namespaces: :mod:`riprap.policies`, :mod:`riprap.checkpoints`,
:mod:`riprap.deadletters`, :mod:`riprap.observability`, :mod:`riprap.lowlevel`
(for connector and stage authors), :mod:`riprap.testing` and :mod:`riprap.cli`.
"""

from __future__ import annotations

import importlib.metadata

from riprap._core.clock import Clock as Clock
from riprap._core.clock import SystemClock as SystemClock
from riprap._core.errors import ConfigError as ConfigError
from riprap._core.errors import DataError as DataError
from riprap._core.errors import DecodeError as DecodeError
from riprap._core.errors import EngineError as EngineError
from riprap._core.errors import PipelineError as PipelineError
from riprap._core.errors import StalledError as StalledError
from riprap._core.errors import TransientError as TransientError
from riprap._core.options import PipelineOptions as PipelineOptions
from riprap._core.pipeline import Pipeline as Pipeline
from riprap._core.protocols import Sink as Sink
from riprap._core.protocols import SinkContext as SinkContext
from riprap._core.protocols import Source as Source
from riprap._core.protocols import SourceContext as SourceContext
from riprap._core.protocols import Stage as Stage
from riprap._core.protocols import StageContext as StageContext
from riprap._core.public import fixup_module_metadata
from riprap._core.records import Batch as Batch
from riprap._core.records import Record as Record
from riprap._core.records import SourceBatch as SourceBatch
from riprap._core.steps import StepOptions as StepOptions
from riprap._core.topology import Branch as Branch
from riprap._runtime.run import run as run
from riprap._runtime.run import run_async as run_async
from riprap._runtime.runtime import RunningPipeline as RunningPipeline
from riprap._runtime.workers import WorkersReport as WorkersReport
from riprap._runtime.workers import run_workers as run_workers
from riprap.observability._report import RunReport as RunReport
from riprap.observability._statistics import RunStatistics as RunStatistics

__all__ = (
    "Batch",
    "Branch",
    "Clock",
    "ConfigError",
    "DataError",
    "DecodeError",
    "EngineError",
    "Pipeline",
    "PipelineError",
    "PipelineOptions",
    "Record",
    "RunReport",
    "RunStatistics",
    "RunningPipeline",
    "Sink",
    "SinkContext",
    "Source",
    "SourceBatch",
    "SourceContext",
    "Stage",
    "StageContext",
    "StalledError",
    "StepOptions",
    "SystemClock",
    "TransientError",
    "WorkersReport",
    "run",
    "run_async",
    "run_workers",
)

__version__ = importlib.metadata.version("riprap")

fixup_module_metadata(__name__, globals())
