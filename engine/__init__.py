"""riprap: an asyncio stream-processing engine that survives production."""

from __future__ import annotations

from ._acks import Ack as Ack
from ._checkpoint import Checkpoint as Checkpoint
from ._checkpoint import CheckpointBackend as CheckpointBackend
from ._checkpoint import Claim as Claim
from ._ckpt_file import FileCheckpoints as FileCheckpoints
from ._ckpt_memory import MemoryCheckpoints as MemoryCheckpoints
from ._ckpt_sqlite import SqliteCheckpoints as SqliteCheckpoints
from ._clock import Clock as Clock
from ._clock import SystemClock as SystemClock
from ._errors import CheckpointError as CheckpointError
from ._errors import ConfigError as ConfigError
from ._errors import DataError as DataError
from ._errors import DecodeError as DecodeError
from ._errors import EngineError as EngineError
from ._errors import FencedError as FencedError
from ._errors import PipelineError as PipelineError
from ._errors import TransientError as TransientError
from ._pipeline import Pipeline as Pipeline
from ._pipeline import PipelineOptions as PipelineOptions
from ._protocols import Sink as Sink
from ._protocols import Source as Source
from ._protocols import SourceContext as SourceContext
from ._protocols import Stage as Stage
from ._records import Batch as Batch
from ._records import Record as Record
from ._records import SourceBatch as SourceBatch
from ._report import RunReport as RunReport
from ._report import RunStatistics as RunStatistics
from ._report import StepStats as StepStats
from ._run import run as run
from ._run import run_async as run_async
from ._runtime import RunningPipeline as RunningPipeline

__all__ = (
    "Ack",
    "Batch",
    "Checkpoint",
    "CheckpointBackend",
    "CheckpointError",
    "Claim",
    "Clock",
    "ConfigError",
    "DataError",
    "DecodeError",
    "EngineError",
    "FencedError",
    "FileCheckpoints",
    "MemoryCheckpoints",
    "Pipeline",
    "PipelineError",
    "PipelineOptions",
    "Record",
    "RunReport",
    "RunStatistics",
    "RunningPipeline",
    "Sink",
    "Source",
    "SourceBatch",
    "SourceContext",
    "SqliteCheckpoints",
    "Stage",
    "StepStats",
    "SystemClock",
    "TransientError",
    "run",
    "run_async",
)
