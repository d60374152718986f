"""Several worker processes of one pipeline: split the input, supervise, stop, aggregate.

``riprap run FILE --workers N`` and :func:`run_workers` start N child
processes (``python -m riprap.cli run FILE --worker i/N``), each running the
pipeline over its share of the input under a checkpoint name of its own, so
its positions are its own (:func:`worker_pipeline`). The supervisor here
restarts a worker that died (a signal, a hard crash) with bounded, growing
delays; forwards the first SIGINT/SIGTERM to every worker as one SIGTERM (each
drains and writes a final checkpoint) and every later one as another (each
aborts); and adds the workers' reports up into one.

A stage's state holds what its own worker saw, and no worker could take
another's over when the input moves, so a stateful stage under more than one
worker is refused. Keyed state (``.map(state=...)``, and stages that keep
theirs in a ``keyed_state`` attribute) is the exception where it cannot move
wrongly: it is kept per source partition, so it splits with
the input when each worker reads whole partitions that stay its own (files,
S3 objects: ``whole_partitions``), or follows its partitions through a
changelog when the group moves them (Kafka with ``changelog=``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast, final

import anyio
import orjson

from riprap._core.errors import ConfigError
from riprap._core.steps import StageStep
from riprap._runtime.keyed_state import keeps_keyed_state
from riprap._runtime.run import SIGNALS, catch_signals
from riprap._runtime.worker_names import pipeline_name, worker_name
from riprap.observability._report import RunReport

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence

    from riprap._core.pipeline import Pipeline
    from riprap._core.protocols import Source, Stage
    from riprap.checkpoints import CheckpointBackend
    from riprap.observability._health import HealthConfig
    from riprap.observability._statistics import Outcome

log = logging.getLogger("riprap")

MAX_PROBED_COUNT = 64
"""Worker counts up to this are looked for in the checkpoint store before a run."""
RESTART_DELAY = 0.5
"""Seconds before the first restart of a worker; each further one waits twice as long."""
RESTART_DELAY_MAX = 10.0
"""The longest wait before a restart."""
POLL = 0.05
"""Seconds between two looks at the workers."""
EXIT_USAGE = 2
"""A worker's exit code when its pipeline was refused: restarting it cannot help."""
SUPERVISOR_ENV = "RIPRAP_SUPERVISOR_PID"
"""Tells a worker its supervisor's pid: once its parent is another, the supervisor is gone."""
_WORST = ("completed", "stopped", "aborted", "failed")
"""Outcomes from best to worst: the aggregate's is its workers' worst."""


class SplittableSource(Protocol):
    """A source that can be split among worker processes (the optional protocol extension)."""

    def for_worker(self, index: int, count: int) -> Source:
        """What worker ``index`` of ``count`` reads: its share, or itself for a group member.

        A share that reads whole partitions, each always the same worker's for a
        given count, says so with a true ``whole_partitions`` attribute.
        """
        ...


def worker_pipeline(pipeline: Pipeline, index: int, count: int) -> Pipeline:
    """The pipeline worker ``index`` of ``count`` runs: its share of the source, its own name.

    Raises:
        ConfigError: The pipeline is invalid, has a stateful stage, or its
            source cannot be split (see :func:`check_splittable`).
    """
    split = check_splittable(pipeline, count)
    if count == 1:
        return pipeline
    source = split.for_worker(index, count)
    worker = pipeline.with_source(source).renamed(worker_name(pipeline.name, index, count))
    if pipeline.upstream is None:
        return worker
    # The half before a through() splits its own source; its name gets the worker's too.
    return worker.with_upstream(worker_pipeline(pipeline.upstream, index, count))


def check_splittable(pipeline: Pipeline, count: int) -> SplittableSource:
    """Refuse, naming the reason, a pipeline that ``count`` workers cannot share.

    A stage is stateful when its ``snapshot()``, taken before the run, is not
    ``None``.

    Raises:
        ConfigError: For ``count`` below 1, a stateful stage (``count > 1``), a
            source without ``for_worker`` or whose ``for_worker`` refuses (``count > 1``).
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigError("workers", f"must be a whole number >= 1, not {count!r}")
    plan = pipeline.plan()
    if count == 1:
        return cast("SplittableSource", plan.source)
    if pipeline.upstream is not None:  # each half is split by its own rules
        check_splittable(pipeline.upstream, count)
    keyed = []
    for step in plan.all_steps():
        if isinstance(step, StageStep) and keeps_keyed_state(step.stage):
            keyed.append(step.step_id)
        elif isinstance(step, StageStep) and _stateful(step.stage):
            raise ConfigError(
                "workers",
                f"pipeline {pipeline.name!r} has a stateful stage {step.step_id!r}: its state "
                f"would be split among {count} workers that cannot hand it over; "
                "run it with one worker",
            )
    if not callable(getattr(plan.source, "for_worker", None)):
        raise ConfigError(
            "workers",
            f"source {plan.source.name!r} ({type(plan.source).__name__}) cannot be split among "
            f"{count} workers: it has no for_worker(index, count) and is no consumer-group member",
        )
    split = cast("SplittableSource", plan.source)
    share = split.for_worker(0, count)  # a share it cannot make is refused now
    if keyed:
        shared = share is cast("object", split)  # a group member shares itself
        _check_keyed(pipeline, keyed, shared, getattr(share, "whole_partitions", False))
    return split


def _check_keyed(pipeline: Pipeline, steps: list[str], shared: bool, whole: bool) -> None:
    """Refuse keyed state that could not follow its partitions among workers.

    Raises:
        ConfigError: The workers share a group without a changelog, or split
            partitions among themselves (a key's records would meet several states).
    """
    named = ", ".join(repr(step) for step in steps)
    if shared and pipeline.plan().options.changelog is None:
        raise ConfigError(
            "workers",
            f"pipeline {pipeline.name!r} keeps keyed state ({named}) and its workers share a "
            "consumer group, which moves partitions among them: keep the state in a changelog "
            "(changelog=KafkaChangelog(...)) so that it follows them",
        )
    if not shared and not whole:
        raise ConfigError(
            "workers",
            f"pipeline {pipeline.name!r} keeps keyed state ({named}), but its source "
            f"{pipeline.plan().source.name!r} splits partitions among workers: the records of "
            "one key would meet a different state in each; run it with one worker",
        )


def _stateful(stage: Stage) -> bool:
    """Whether ``stage`` keeps state: its fresh ``snapshot()`` is not ``None`` (or fails)."""
    try:
        return stage.snapshot() is not None
    except Exception:  # a snapshot that needs an open stage is a stateful stage's
        return True


def check_layout(pipeline: Pipeline, count: int) -> None:
    """Refuse ``count`` workers where the checkpoint store holds positions of another count.

    Worker ``i`` of ``M`` stored positions of its share only; under another
    count the shares differ, so those positions would be ignored (files read
    again) or, worse, taken for another share's. A source that is not split
    (``for_worker`` returns itself: a consumer-group member, whose group's
    offsets win) may change its count freely.

    Raises:
        ConfigError: Positions of another worker count exist; names them.
    """
    source = check_splittable(pipeline, count)
    if pipeline.upstream is not None:
        check_layout(pipeline.upstream, count)
    backend = _backend(pipeline)
    if backend is None or _shared(source, count):
        return
    names = [worker_name(pipeline.name, 0, m) for m in range(1, MAX_PROBED_COUNT + 1) if m != count]
    found = anyio.run(_stored, backend, names)
    if found:
        raise ConfigError(
            "workers",
            f"the checkpoint store holds positions of pipeline {pipeline.name!r} under "
            f"{found[0]!r}: they belong to another worker count and are meaningless under "
            f"{count}; run with that count again, or start over by wiping each of that "
            "count's workers (riprap checkpoint reset STORE --pipeline NAME --wipe --yes)",
        )


def _shared(source: object, count: int) -> bool:
    """Whether ``source`` is not split but shared by the workers (a consumer-group member)."""
    for_worker = getattr(source, "for_worker", None)
    if not callable(for_worker):
        return False
    try:
        return for_worker(0, max(count, 2)) is source
    except ConfigError:  # cannot be split at all: one worker keeps the plain name
        return False


def _backend(pipeline: Pipeline) -> CheckpointBackend | None:
    """The pipeline's checkpoint store, or ``None`` when the default file does not exist yet."""
    options = pipeline.options
    if options.checkpoint is not None:
        return options.checkpoint
    if not Path(options.checkpoint_path).exists():
        return None
    from riprap.checkpoints._sqlite import SqliteCheckpoints

    return SqliteCheckpoints(options.checkpoint_path)


async def _stored(backend: CheckpointBackend, names: Iterable[str]) -> list[str]:
    """The names among ``names`` whose checkpoint in ``backend`` holds positions."""
    found = []
    try:
        for name in names:
            checkpoint = await backend.load(name)
            if checkpoint is not None and checkpoint.positions:
                found.append(name)
        return found
    finally:
        await backend.aclose()


@final
@dataclass(frozen=True, slots=True)
class WorkersReport:
    """What a run of several workers did: their reports added up, and each one's.

    Attributes:
        report: The sum of the workers' counts, their worst outcome, the
            longest duration, every position; no per-step counts.
        workers: Each worker's final report, ``None`` for one that ended without
            a report (it died for good, or its pipeline was refused).
        restarts: How many times each worker was restarted after dying.

    .. versionadded:: 0.2
    """

    report: RunReport
    workers: tuple[RunReport | None, ...]
    restarts: tuple[int, ...]

    def format(self, *, verbose: bool = False) -> str:
        """The aggregate report followed by the worker and restart counts."""
        return "\n".join(
            [
                self.report.format(verbose=verbose),
                f"  workers         {len(self.workers):>12,}",
                f"  restarts        {sum(self.restarts):>12,}",
            ]
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: the aggregate's, with ``workers`` and ``restarts`` added."""
        return {
            **self.report.to_dict(),
            "workers": len(self.workers),
            "restarts": list(self.restarts),
        }


def report_to_json(report: RunReport) -> bytes:
    """A worker's report as its supervisor reads it back (:func:`report_from_json`)."""
    return orjson.dumps(report.to_dict())


def report_from_json(data: bytes) -> RunReport:
    """A worker's report written by :func:`report_to_json` (no per-step counts, no traceback)."""
    return _report_from_dict(orjson.loads(data))


def _report_from_dict(raw: dict[str, Any]) -> RunReport:
    upstream = raw.get("upstream")
    return RunReport(
        upstream=None if upstream is None else _report_from_dict(upstream),
        pipeline=raw["pipeline"],
        outcome=raw["outcome"],
        records_in=raw["records_in"],
        records_out=raw["records_out"],
        dropped=raw["dropped"],
        duration=raw["duration"],
        checkpoints=raw["checkpoints"],
        positions=raw["positions"],
        steps=(),
        dead_lettered=raw["dead_lettered"],
        absorbed=raw["absorbed"],
        fallbacks=raw["fallbacks"],
        retries=raw["retries"],
        breaker_trips=raw["breaker_trips"],
        error=raw["error"],
        abandoned_calls=raw["abandoned_calls"],
        source_outcomes=raw["source_outcomes"],
        dead_letters_deleted=raw["dead_letters_deleted"],
    )


def merge_reports(pipeline: str, reports: Sequence[RunReport | None]) -> RunReport:
    """One report for ``pipeline`` from its workers': counts summed, the worst outcome.

    A worker without a report counts as failed.
    """
    done = [r for r in reports if r is not None]
    outcomes: list[Outcome] = [r.outcome for r in done]
    if len(done) < len(reports):
        outcomes.append("failed")
    errors = [
        f"worker {i}: {'ended without a report' if r is None else r.error}"
        for i, r in enumerate(reports)
        if r is None or r.error
    ]
    positions: dict[str, int] = {}
    for r in done:
        for partition, position in r.positions.items():
            positions[partition] = max(position, positions.get(partition, position))
    halves = [r.upstream for r in done if r.upstream is not None]
    upstream = None  # the first halves of a through(), added up the same way
    if halves:
        upstream = merge_reports(pipeline_name(halves[0].pipeline), halves)
    return RunReport(
        upstream=upstream,
        pipeline=pipeline,
        outcome=max(outcomes, key=_WORST.index, default="failed"),
        records_in=sum(r.records_in for r in done),
        records_out=sum(r.records_out for r in done),
        dropped=sum(r.dropped for r in done),
        duration=max((r.duration for r in done), default=0.0),
        checkpoints=sum(r.checkpoints for r in done),
        positions=positions,
        steps=(),
        dead_lettered=_summed(r.dead_lettered for r in done),
        absorbed=sum(r.absorbed for r in done),
        fallbacks=sum(r.fallbacks for r in done),
        retries=sum(r.retries for r in done),
        breaker_trips=sum(r.breaker_trips for r in done),
        error="; ".join(errors) or None,
        abandoned_calls=sum(r.abandoned_calls for r in done),
        source_outcomes=_summed(r.source_outcomes for r in done),
        dead_letters_deleted=sum(r.dead_letters_deleted for r in done),
    )


def _summed(counts: Iterable[Any]) -> dict[str, int]:
    total: dict[str, int] = {}
    for mapping in counts:
        for key, value in mapping.items():
            total[key] = total.get(key, 0) + value
    return total


@dataclass(slots=True)
class _Worker:
    """One worker slot: its process now, its restarts, its final report."""

    index: int
    command: list[str]
    report_path: Path
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    restart_at: float | None = 0.0  # monotonic time of the next start; None: no more starts
    report: RunReport | None = None
    fatal: bool = field(default=False)  # ended in a way no restart can mend


def run_workers(
    target: str,
    *,
    workers: int,
    max_restarts: int = 5,
    handle_signals: bool = True,
    health: HealthConfig | None = None,
    log_format: Literal["console", "json"] = "console",
    verbose: bool = False,
    pipeline: Pipeline | None = None,
) -> WorkersReport:
    """Run the pipeline ``target`` names in ``workers`` processes; return their reports.

    ``target`` is ``path/to/file.py[:name]``, as ``riprap run`` takes it (each
    worker loads it anew). Each worker's own report goes to stderr, with its
    logs.

    Args:
        target: The pipeline file and the name in it (default ``pipeline``).
        workers: How many processes.
        max_restarts: Restarts per worker after it died; one more death ends the run.
        handle_signals: Forward SIGINT/SIGTERM to the workers: the first stops
            them gracefully, any later one aborts them.
        health: Each worker serves /metrics, /healthz and /readyz on
            ``health.port`` plus its index (any free port if 0).
        log_format: The workers' log lines: ``"console"`` text or ``"json"``.
        verbose: The workers log at DEBUG level.
        pipeline: ``target`` already loaded, to check it without loading it again.

    Raises:
        ConfigError: The pipeline is invalid, cannot be split, or the
            checkpoint store holds positions of another worker count.

    .. versionadded:: 0.2
    """
    if pipeline is None:
        from riprap.cli._load import load_pipeline  # the CLI's loader, shared with `riprap run`

        pipeline = load_pipeline(target)
    check_layout(pipeline, workers)
    if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or max_restarts < 0:
        raise ConfigError("max_restarts", f"must be a whole number >= 0, not {max_restarts!r}")
    folder = Path(tempfile.mkdtemp(prefix="riprap-workers-"))
    try:
        options = ["--log-format", log_format, *(["-v"] if verbose else [])]
        run_options = [] if health is None else _health_options(health)
        slots = [
            _Worker(
                i, _command(target, i, workers, folder, options, run_options), folder / f"{i}.json"
            )
            for i in range(workers)
        ]
        with catch_signals() if handle_signals else contextlib.nullcontext() as caught:
            _Supervisor(slots, max_restarts, caught.received if caught else []).run()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    reports = tuple(slot.report for slot in slots)
    return WorkersReport(
        merge_reports(pipeline.name, reports), reports, tuple(s.restarts for s in slots)
    )


def _health_options(health: HealthConfig) -> list[str]:
    return ["--metrics-port", str(health.port), "--metrics-host", health.host]


def _command(
    target: str,
    index: int,
    count: int,
    folder: Path,
    options: Sequence[str],
    run_options: Sequence[str],
) -> list[str]:
    """The command line of worker ``index``: ``riprap [options] run target [run_options] ...``."""
    return [
        sys.executable,
        "-m",
        "riprap.cli",
        *options,
        "run",
        target,
        *run_options,
        "--quiet",
        "--worker",
        f"{index}/{count}",
        "--worker-report",
        str(folder / f"{index}.json"),
    ]


@final
class _Supervisor:
    """Starts, watches, restarts and stops the workers until each has ended for good."""

    def __init__(self, slots: list[_Worker], max_restarts: int, signals: list[int]) -> None:
        self.slots = slots
        self.max_restarts = max_restarts
        self.signals = signals  # appended to by the signal handler
        self.forwarded = 0
        self.stopping = False

    def run(self) -> None:
        """Poll until every worker has ended; on the way out no worker is left running."""
        try:
            while any(s.process is not None or s.restart_at is not None for s in self.slots):
                self._forward_signals()
                now = time.monotonic()
                for slot in self.slots:
                    self._tend(slot, now)
                time.sleep(POLL)
        finally:
            for slot in self.slots:
                if slot.process is not None and slot.process.poll() is None:
                    slot.process.kill()
                    slot.process.wait()

    def _forward_signals(self) -> None:
        """One SIGTERM to every running worker per signal received: the first stops, later abort."""
        while self.forwarded < len(self.signals):
            self.forwarded += 1
            self._stop_all("a signal")

    def _stop_all(self, why: str) -> None:
        if not self.stopping:
            log.warning("stopping %d workers after %s", len(self.slots), why)
        self.stopping = True
        for slot in self.slots:
            slot.restart_at = None
            if slot.process is not None and slot.process.poll() is None:
                slot.process.send_signal(signal.SIGTERM)

    def _tend(self, slot: _Worker, now: float) -> None:
        if slot.process is None:
            if slot.restart_at is not None and now >= slot.restart_at:
                self._start(slot)
            return
        code = slot.process.poll()
        if code is not None:
            slot.process = None
            self._ended(slot, code)

    def _start(self, slot: _Worker) -> None:
        slot.restart_at = None
        with _signals_blocked():  # inherited: held until the worker's handlers are in place
            slot.process = subprocess.Popen(
                slot.command,
                # The worker knows its supervisor even if it dies before the worker looks.
                env={**os.environ, SUPERVISOR_ENV: str(os.getpid())},
                stdout=2,  # the worker's own report joins the logs on stderr
                start_new_session=True,  # a terminal's Ctrl-C reaches the supervisor alone
            )
        log.info("worker %d started (pid %d)", slot.index, slot.process.pid)

    def _ended(self, slot: _Worker, code: int) -> None:
        if slot.report_path.exists():
            slot.report = report_from_json(slot.report_path.read_bytes())
            slot.report_path.unlink()
            if slot.report.outcome == "failed":
                self._stop_all(f"worker {slot.index} failed")
            return
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        if code == EXIT_USAGE or self.stopping or slot.restarts >= self.max_restarts:
            log.error("worker %d ended without a report (%s)", slot.index, how)
            self._stop_all(f"worker {slot.index} ended for good")
            return
        delay = min(RESTART_DELAY * 2**slot.restarts, RESTART_DELAY_MAX)
        slot.restarts += 1
        slot.restart_at = time.monotonic() + delay
        log.warning(
            "worker %d died (%s); restart %d of %d in %.1fs",
            slot.index,
            how,
            slot.restarts,
            self.max_restarts,
            delay,
        )


@contextlib.contextmanager
def _signals_blocked() -> Iterator[None]:
    """Block SIGINT/SIGTERM while a worker is started, so that it starts with them blocked.

    The signal mask survives ``fork`` and ``exec``: a SIGTERM forwarded while
    the worker still imports would otherwise kill it at once; blocked, it
    waits until the worker's run unblocks it (:func:`unblock_signals`) and
    then stops the run gracefully. The supervisor gets its own blocked
    signals as soon as the worker is started.
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def unblock_signals() -> None:
    """In a worker whose signal handlers are in place: let the held SIGINT/SIGTERM in."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


def write_report(path: str, report: RunReport) -> None:
    """Write a worker's report where its supervisor reads it: whole or not at all."""
    partial = f"{path}.partial"
    with open(partial, "wb") as file:
        file.write(report_to_json(report))
    os.replace(partial, path)
