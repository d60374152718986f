"""Pipeline options: one frozen record of every setting a run takes, checked before it runs."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from datetime import timedelta
from typing import Any, Literal

from riprap._core.clock import SYSTEM_CLOCK, Clock
from riprap._core.errors import ConfigError
from riprap._core.protocols import Sink
from riprap._core.state_stores import Changelog
from riprap.checkpoints._snapshot import CheckpointBackend
from riprap.deadletters._guard import DeadLetterGuard
from riprap.deadletters._stores import DeadLetterSink
from riprap.observability._alerts import AlertRule, AlertSink, LogAlerts
from riprap.observability._redact import Redactor
from riprap.observability._tracing import otel_available
from riprap.policies import PolicyHook, Retry

DEFAULT_SINK_RETRY = Retry(attempts=None, timeout=900.0, wait_initial=0.2, wait_max=10.0)
"""Retries of a failed sink write unless the pipeline says otherwise: an outage is
ridden out for ``sink_outage_timeout`` seconds (its deadline is set from that option)."""

DEFAULT_SINK_ATTEMPT_TIMEOUT = 60.0
"""Seconds one sink write may take unless the pipeline says otherwise."""

DEFAULT_OFFLOAD_THREADS = 16
"""Worker threads shared by the offloaded steps of a run unless the pipeline says otherwise."""

DEFAULT_MAX_IN_FLIGHT_BYTES = 256 * 1024 * 1024
"""Bytes of records read and not yet done, as sources count them (``max_in_flight_bytes``)."""

DEFAULT_MALLOC_TRIM_THRESHOLD = 64 * 1024 * 1024
"""Bytes of freed heap glibc may keep for the next batches unless the pipeline says otherwise:
the records in flight at the defaults (10,000 of up to 4 KiB, with batches of up to
about 8,000), so a batch's memory is reused instead of returned and faulted in again."""

DEFAULT_GC_THRESHOLD = 10_000
"""The cyclic garbage collector's first-generation threshold while a run is active, unless
the pipeline says otherwise: the records in flight at the defaults (``max_in_flight``), so
the container objects of a batch of decoded records do not each set off a collection."""

OnError = Literal["dlq", "stop"]
"""What a step does with a record that raised a ``DataError``: dead-letter it, or stop."""


QUEUE_BATCHES = 4
"""Batches a queue between two stages holds by default, at least."""
QUEUE_RECORDS = 1_000
"""Records a queue between two stages holds by default, at least (in smaller batches)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PipelineOptions:
    """How a pipeline runs; every field is a keyword of :class:`Pipeline`.

    Attributes:
        checkpoint: Where checkpoints go; ``None`` means SQLite at ``checkpoint_path``.
        checkpoint_path: File of the default SQLite checkpoint store.
        checkpoint_interval: Seconds between periodic checkpoints.
        max_in_flight: Records read from the source and not yet done (I9).
        max_in_flight_bytes: Bytes of those records, as the sources that know
            them count (files, S3, Parquet, Delta, Kafka, PostgreSQL changes
            and snapshots, webhook bodies, dead-letter replays): the source
            waits while this many are in flight, and caps a batch at an eighth
            of it (at least one record). ``None``: records only.
        batch_size: Most records the source hands over at once.
        queue_size: Batches buffered between two stages; ``None`` (the default):
            4, or as many as hold 1,000 records when batches are smaller
            (:attr:`queue_batches`).
        drain_timeout: Seconds a graceful stop waits for in-flight records.
        owner: Identity written with checkpoints (fencing); defaults to host:pid:random.
        clock: Time source for the checkpoint interval (tests pass a virtual clock).
        dead_letter: Where failed records go; without one, a failing record stops the run.
        redactor: Cleans error messages and tracebacks in dead letters and logs.
        max_crashes: A record that stopped the run this many times is dead-lettered
            (reason ``crash_loop``) on the next start instead of processed.
        dlq_guard: Stops (or pauses) the run when dead-lettering looks systematic;
            ``None`` turns the guard off.
        policy_hooks: Receive every retry, give-up, breaker change, rejection and
            fallback of every step (metrics and alerts plug in here).
        alerts: Alert rules evaluated in-process every ``alert_interval`` seconds.
        alert_sinks: Where alerts go (default: the log).
        alert_interval: Seconds between alert evaluations.
        tracing: ``True`` (the global OpenTelemetry tracer provider) or a
            ``TracerProvider``: one span per batch per stage (needs the ``otel`` extra).
        sink_outage_timeout: Seconds the sink's default retry keeps retrying a
            failing write (backpressure meanwhile) before the run stops.
        offload_threads: Worker threads the steps with ``offload="thread"``
            share; a call whose caller gave up keeps its thread until it returns.
        loop_lag_threshold: Seconds the event loop may be held before the run
            logs the step that held it and counts a stall; ``None``: no monitor.
        malloc_trim_threshold: Bytes of freed heap glibc keeps for reuse, set
            process-wide when the run starts (every entry point: ``riprap.run``,
            the CLI, ``Pipeline.run`` and ``Pipeline.open``); ``None`` leaves the
            allocator alone. See :func:`riprap.lowlevel.keep_freed_memory`.
        gc_threshold: The cyclic garbage collector's first-generation
            threshold while the run is active (every entry point; a higher one
            already set is kept, and the last run to end puts back what was
            there): a batch of decoded records alone outgrows Python's default
            of 700, and set off a collection per batch. ``None`` leaves the
            collector alone.
        changelog: Where keyed-state steps log their changes (a
            :class:`~riprap.state.Changelog` such as
            :class:`~riprap.connectors.kafka.KafkaChangelog`), so that the state of
            a source partition follows it to whichever process reads it; ``None``:
            keyed state lives in the checkpoint (see :mod:`riprap.state`).
    """

    checkpoint: CheckpointBackend | None = None
    checkpoint_path: str = ".riprap/checkpoints.db"
    checkpoint_interval: float = 5.0
    max_in_flight: int = 10_000
    max_in_flight_bytes: int | None = DEFAULT_MAX_IN_FLIGHT_BYTES
    batch_size: int = 1_000
    queue_size: int | None = None
    drain_timeout: float = 30.0
    owner: str | None = None
    clock: Clock = SYSTEM_CLOCK
    dead_letter: DeadLetterSink | None = None
    redactor: Redactor = field(default_factory=Redactor)
    max_crashes: int = 3
    dlq_guard: DeadLetterGuard | None = field(default_factory=DeadLetterGuard)
    policy_hooks: tuple[PolicyHook, ...] = ()
    alerts: tuple[AlertRule, ...] = ()
    alert_sinks: tuple[AlertSink, ...] = field(default_factory=lambda: (LogAlerts(),))
    alert_interval: float = 10.0
    tracing: Any = False
    sink_outage_timeout: float = 900.0
    offload_threads: int = DEFAULT_OFFLOAD_THREADS
    loop_lag_threshold: float | None = 1.0
    malloc_trim_threshold: int | None = DEFAULT_MALLOC_TRIM_THRESHOLD
    gc_threshold: int | None = DEFAULT_GC_THRESHOLD
    changelog: Changelog | None = None

    @property
    def max_batch_bytes(self) -> int | None:
        """Bytes at which a source that counts them ends a batch (an eighth of the bound)."""
        limit = self.max_in_flight_bytes
        return None if limit is None else max(1, limit // 8)

    @property
    def queue_batches(self) -> int:
        """Batches a queue between two stages holds (``queue_size``, or its default).

        Four batches of 10 records run dry between two turns of a busy event
        loop, and an async step's workers then wait for input; ``max_in_flight``
        bounds the records in all queues together whatever their length.
        """
        if self.queue_size is not None:
            return self.queue_size
        return max(QUEUE_BATCHES, -(-QUEUE_RECORDS // self.batch_size))

    def check(self) -> None:
        """Raise :class:`ConfigError` for the first impossible value."""
        positive_int("batch_size", self.batch_size)
        positive_int("max_in_flight", self.max_in_flight)
        if self.max_in_flight_bytes is not None:
            positive_int("max_in_flight_bytes", self.max_in_flight_bytes)
        if self.queue_size is not None:
            positive_int("queue_size", self.queue_size)
        if self.max_in_flight < self.batch_size:
            raise ConfigError(
                "max_in_flight",
                f"must be at least batch_size ({self.batch_size}), got {self.max_in_flight}",
            )
        positive_number("checkpoint_interval", self.checkpoint_interval)
        if not _is_number(self.drain_timeout) or self.drain_timeout < 0:
            raise ConfigError("drain_timeout", f"must be >= 0 seconds, got {self.drain_timeout!r}")
        finite("drain_timeout", self.drain_timeout)
        if self.checkpoint is not None:
            implements(
                "checkpoint", self.checkpoint, CheckpointBackend, "claim, save, load, aclose"
            )
        if self.checkpoint is None and not self.checkpoint_path:
            raise ConfigError("checkpoint_path", "must be a file path when no checkpoint is given")
        implements("clock", self.clock, Clock)
        if self.dead_letter is not None:
            implements("dead_letter", self.dead_letter, DeadLetterSink, "name, open, write, aclose")
            _not_a_record_sink(self.dead_letter)
        if not isinstance(self.redactor, Redactor):
            raise ConfigError("redactor", f"must be a riprap.Redactor, got {self.redactor!r}")
        positive_int("max_crashes", self.max_crashes)
        positive_number("sink_outage_timeout", self.sink_outage_timeout)
        positive_int("offload_threads", self.offload_threads)
        if self.loop_lag_threshold is not None:
            positive_number("loop_lag_threshold", self.loop_lag_threshold)
        positive_number("alert_interval", self.alert_interval)
        if self.malloc_trim_threshold is not None:
            positive_int("malloc_trim_threshold", self.malloc_trim_threshold)
        if self.gc_threshold is not None:
            positive_int("gc_threshold", self.gc_threshold)
        if self.changelog is not None:
            implements(
                "changelog", self.changelog, Changelog, "open, restore, write, flush, aclose"
            )
        if self.tracing and not otel_available():
            raise ConfigError("tracing", "needs opentelemetry-api: pip install 'riprap[otel]'")
        for rule in self.alerts:
            if not isinstance(rule, AlertRule):
                raise ConfigError("alerts", f"must hold riprap.AlertRule objects, got {rule!r}")
        for sink in self.alert_sinks:
            implements("alert_sinks", sink, AlertSink, "deliver")
        if self.dlq_guard is not None:
            if not isinstance(self.dlq_guard, DeadLetterGuard):
                raise ConfigError(
                    "dlq_guard", f"must be a riprap.DeadLetterGuard or None, got {self.dlq_guard!r}"
                )
            self.dlq_guard.check()


OPTION_NAMES = tuple(f.name for f in fields(PipelineOptions))


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def optional_limit(option: str, value: int | None) -> int | None:
    """``value`` if it is a positive integer, ``None`` for no limit; a plug-in's option check.

    Raises:
        ConfigError: Anything else, naming ``option``.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(option, f"must be a positive integer or None, got {value!r}")
    return value


def optional_seconds(option: str, value: float | timedelta | None) -> float | None:
    """``value`` as positive, finite float seconds (a number or a timedelta), or ``None``.

    Raises:
        ConfigError: Anything else, naming ``option``.
    """
    if value is None:
        return None
    number = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(number, bool) or not isinstance(number, int | float):
        raise ConfigError(option, f"must be seconds (a number or timedelta), got {value!r}")
    if not (number > 0 and math.isfinite(number)):
        raise ConfigError(option, f"must be positive and finite, got {value!r}")
    return float(number)


def positive_int(option: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(option, f"must be a positive integer, got {value!r}")


def positive_number(option: str, value: object) -> None:
    if not _is_number(value) or value <= 0:  # type: ignore[operator]
        raise ConfigError(option, f"must be a positive number of seconds, got {value!r}")
    finite(option, value)


def finite(option: str, value: object) -> None:
    """Refuse NaN and infinity: NaN compares false with everything, infinity turns a timer off."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(option, f"must be a finite number of seconds, got {value!r}")


def _not_a_record_sink(store: object) -> None:
    """Refuse a record sink given as the dead-letter store.

    It passes the store protocol's check by its method names, but its
    ``write`` takes a Batch: it would fail at the first dead letter, after retries.
    """
    if isinstance(store, Sink):
        raise ConfigError(
            "dead_letter",
            f"{store!r} is a record sink (its write takes a Batch), not a dead-letter store; "
            "use riprap.deadletters.JsonLinesDeadLetters or SqliteDeadLetters",
        )


def implements(option: str, value: object, protocol: type, members: str = "") -> None:
    """Refuse a ``value`` that lacks what the runtime-checkable ``protocol`` needs.

    Args:
        option: What the value was given as, for the message.
        value: The plug-in object.
        protocol: The protocol it must implement.
        members: The protocol's members, listed in the message as a reminder.
    """
    if not isinstance(value, protocol):
        needs = f" ({members})" if members else ""
        raise ConfigError(option, f"{value!r} does not implement {protocol.__name__}{needs}")
