"""The crash guard: what a run records so that the next one can tell it crashed, and find why.

A record that kills the process without a Python exception (``os._exit``, an
abort in a native library, the OOM killer) leaves no error to count. So every
snapshot of a live run says ``running``; only the final checkpoint of a run
that ended on its own clears it. A run that finds ``running`` set knows the
previous one died, and counts an *unclean end* against each partition's
position. After ``max_crashes`` unclean ends at the same position the suspect
range (position up to the read ``frontier`` recorded before the crash) is
*isolated*: processed in chunks of a sixteenth of it, one chunk at a time with
nothing else in flight, each behind a durable ``in_progress`` mark. A death
narrows the range to the chunk that was in progress, so the culprit is named
after a few deaths; only a single record that died ``max_crashes`` times in
isolation is quarantined. An operator's ``kill -9`` lands on a different
record almost every time.
"""

from __future__ import annotations

import traceback as tracebacks
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from riprap._core.errors import PoisonPillError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

ISOLATION_SPLIT = 16
"""Chunks an isolated range is cut into: a death narrows the range to one of them."""

PROCESS_DIED = (
    "the process ended without a Python exception while this record was in progress "
    "(a native crash, os._exit, or a kill such as the OOM killer)"
)
"""What a crash-loop letter says about a record whose crashes raised nothing."""

MAX_TRACEBACK_CHARS = 4_000
"""The end of a crash's traceback kept in the checkpoint (the innermost frames)."""


@dataclass(frozen=True, slots=True)
class CrashRecord:
    """How one record stopped the pipeline: where, with what, and when first and last.

    ``error`` is the redacted ``Type: message`` line; ``error_type`` and
    ``traceback`` (redacted, its last 4,000 characters) keep the original
    exception for the record's crash-loop letter. A process that died
    without an exception leaves ``stage`` and both of them empty.
    """

    stage: str
    error: str
    first_at: float
    last_at: float
    error_type: str = ""
    traceback: str = ""

    def again(
        self, at: float, stage: str, error: str, *, error_type: str = "", traceback: str = ""
    ) -> CrashRecord:
        """The same record after one more crash at ``at``; what is unknown now is kept."""
        return CrashRecord(
            stage or self.stage,
            error or self.error,
            self.first_at,
            at,
            error_type or self.error_type,
            traceback[-MAX_TRACEBACK_CHARS:] or self.traceback,
        )

    def to_list(self) -> list[str | float]:
        """JSON-ready form: ``[stage, error, first, last]``, then type and traceback if known."""
        head: list[str | float] = [self.stage, self.error, self.first_at, self.last_at]
        if self.error_type or self.traceback:
            head += [self.error_type, self.traceback[-MAX_TRACEBACK_CHARS:]]
        return head


def crash_record(
    known: CrashRecord | None,
    stage: str,
    error: BaseException,
    at: float,
    redact: Callable[[str], str],
) -> CrashRecord:
    """``known`` (``None``: a first crash) after ``error`` raised in ``stage`` stopped the run."""
    text = redact(f"{type(error).__name__}: {error}")
    kind = _type_name(error)
    trace = redact("".join(tracebacks.format_exception(error))[-4 * MAX_TRACEBACK_CHARS :])
    if known is None:
        return CrashRecord(stage, text, at, at, kind, trace[-MAX_TRACEBACK_CHARS:])
    return known.again(at, stage, text, error_type=kind, traceback=trace)


def poison_pill(pipeline: str, count: int, crash: CrashRecord | None) -> PoisonPillError:
    """What a crash-loop letter carries: the original error's text, type and traceback."""
    how = f": {crash.error}" if crash is not None else ""
    message = f"record stopped pipeline {pipeline!r} {count} times; quarantined{how}"
    if crash is None:
        return PoisonPillError(message)
    return PoisonPillError(message, error_type=crash.error_type, traceback=crash.traceback)


def _type_name(error: BaseException) -> str:
    """``module.QualName`` of the error's type; builtins by their bare name (as dead letters)."""
    cls = type(error)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


@dataclass(frozen=True, slots=True)
class CrashGuard:
    """Crash bookkeeping saved in every checkpoint (see the module docstring).

    Attributes:
        running: The run that wrote this snapshot had not ended (yet) on its own.
        frontier: Per partition, the end of the last batch read: nothing beyond it
            was in flight when the snapshot was taken.
        unclean: Per partition, ``(position, n)``: the run ended uncleanly ``n``
            times in a row with the partition checkpointed at ``position``.
        isolating: Per partition, ``(end, chunk)``: the suspect range up to ``end``
            (exclusive) is processed ``chunk`` records at a time.
        in_progress: ``(partition, start, end)`` of the chunk being processed in isolation.
        crashes: Per ``"partition@offset"``, how that record stopped the pipeline.
        read_bound: Most records the run that wrote this snapshot reads beyond its
            last saved frontier (it saves before reading more); ``None`` for
            snapshots of runs that did not bound their reads.
    """

    running: bool = False
    frontier: Mapping[str, int] = field(default_factory=dict)
    unclean: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    isolating: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    in_progress: tuple[str, int, int] | None = None
    crashes: Mapping[str, CrashRecord] = field(default_factory=dict)
    read_bound: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (checkpoints store this)."""
        bound = {} if self.read_bound is None else {"read_bound": self.read_bound}
        return {
            **bound,
            "running": self.running,
            "frontier": dict(self.frontier),
            "unclean": {p: list(v) for p, v in self.unclean.items()},
            "isolating": {p: list(v) for p, v in self.isolating.items()},
            "in_progress": None if self.in_progress is None else list(self.in_progress),
            "crashes": {key: crash.to_list() for key, crash in self.crashes.items()},
        }

    @classmethod
    def from_dict(cls, raw: object) -> CrashGuard:
        """Parse :meth:`to_dict`'s output.

        Raises:
            ValueError: ``raw`` is not such a mapping; the message says which field.
        """
        if not isinstance(raw, dict):
            raise ValueError("guard is not a mapping")
        running = raw.get("running", False)
        if not isinstance(running, bool):
            raise ValueError("guard.running is not a boolean")
        bound = raw.get("read_bound")
        if bound is not None and (not _is_int(bound) or bound < 1):
            raise ValueError("guard.read_bound is not a positive integer")
        return cls(
            read_bound=bound,
            running=running,
            frontier=_int_map(raw.get("frontier", {}), "frontier"),
            unclean={p: _int_pair(v, "unclean") for p, v in _map(raw, "unclean").items()},
            isolating={p: _int_pair(v, "isolating") for p, v in _map(raw, "isolating").items()},
            in_progress=_chunk(raw.get("in_progress")),
            crashes={k: _crash(v) for k, v in _map(raw, "crashes").items()},
        )

    def after_unclean_end(
        self, positions: Mapping[str, int], *, max_crashes: int, now: float
    ) -> CrashGuard:
        """The guard for a run that starts after the run that saved this one died.

        Each partition the dead run read counts one more unclean end at its
        position (the count restarts where the position moved); a partition
        reaching ``max_crashes`` is isolated up to its frontier. A death during
        an isolated chunk narrows isolation to that chunk; a single record that
        died counts one more crash (see :meth:`died`).
        """
        unclean: dict[str, tuple[int, int]] = {}
        isolating = dict(self.isolating)
        for partition, end in self.frontier.items():
            position = positions.get(partition, -1)
            if position >= end:
                continue  # nothing of it was in flight
            before = self.unclean.get(partition)
            count = before[1] + 1 if before is not None and before[0] == position else 1
            unclean[partition] = (position, count)
            if count >= max_crashes and partition not in isolating:
                isolating[partition] = (end, _chunk_size(end - max(position, 0)))
        crashes = dict(self.crashes)
        if self.in_progress is not None:
            partition, start, end = self.in_progress
            isolating[partition] = (end, _chunk_size(end - start))
            key = self.died()
            if key is not None:
                known = crashes.get(key)
                crashes[key] = (
                    CrashRecord("", PROCESS_DIED, now, now)
                    if known is None
                    else known.again(now, "", PROCESS_DIED)
                )
        return replace(
            self,
            running=True,
            frontier={},
            unclean=unclean,
            isolating=isolating,
            in_progress=None,
            crashes=crashes,
        )

    def died(self) -> str | None:
        """``"partition@offset"`` of the single record in progress when the run died, if any."""
        if self.in_progress is None:
            return None
        partition, start, end = self.in_progress
        return crash_key(partition, start) if end - start == 1 else None

    def after_clean_end(self) -> CrashGuard:
        """The guard for a run that starts after a run that ended on its own.

        Unclean ends are no longer in a row; an isolation a stop interrupted goes on.
        """
        return replace(self, running=True, frontier={}, unclean={}, in_progress=None)

    def pruned(self, positions: Mapping[str, int]) -> CrashGuard:
        """Without what positions have moved past: crashes of done records, finished isolation."""
        crashes = {key: crash for key, crash in self.crashes.items() if not _passed(key, positions)}
        isolating = {
            p: (end, chunk)
            for p, (end, chunk) in self.isolating.items()
            if positions.get(p, -1) < end
        }
        if crashes == self.crashes and isolating == self.isolating:
            return self
        return replace(self, crashes=crashes, isolating=isolating)


@dataclass(slots=True)
class CrashWatch:
    """Which batches a run after an unclean end checkpoints its frontier for, before they move.

    The dead run read at most ``bound`` records past its last saved frontier,
    so a record that killed it lies below ``frontier + bound`` in a partition
    of that frontier, or among the first ``bound`` records of another
    partition. Batches there are watched (the next crash's suspect range is
    then exact); past them the run goes at full speed. Without a bound (a
    snapshot of an older version) every batch is watched.
    """

    bound: int | None
    limits: Mapping[str, int]
    read: dict[str, int] = field(default_factory=dict)

    @classmethod
    def after(cls, dead: CrashGuard) -> CrashWatch:
        """The watch for the run after ``dead``'s run died."""
        bound = dead.read_bound
        limits = {} if bound is None else {p: end + bound for p, end in dead.frontier.items()}
        return cls(bound, limits)

    def covers(self, partition: str, start: int, records: int) -> bool:
        """Whether the batch of ``records`` at ``start`` must be watched."""
        if self.bound is None:
            return True
        limit = self.limits.get(partition)
        if limit is not None:
            return start < limit
        read = self.read.get(partition, 0)
        self.read[partition] = read + records
        return read < self.bound


def _chunk_size(span: int) -> int:
    return max(1, -(-span // ISOLATION_SPLIT))


def _chunk(value: object) -> tuple[str, int, int] | None:
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or len(value) != 3
        or not isinstance(value[0], str)
        or not all(_is_int(v) for v in value[1:])
    ):
        raise ValueError(f"guard.in_progress holds {value!r}, not [partition, start, end]")
    return (value[0], value[1], value[2])


def crash_key(partition: str, offset: int) -> str:
    """``"partition@offset"``: how crash counts name a record."""
    return f"{partition}@{offset}"


def _passed(key: str, positions: Mapping[str, int]) -> bool:
    partition, _, offset = key.rpartition("@")
    position = positions.get(partition)
    return position is not None and offset.lstrip("-").isdigit() and int(offset) < position


def _map(raw: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = raw.get(name, {})
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ValueError(f"guard.{name} is not a mapping")
    return value


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_map(value: object, name: str) -> dict[str, int]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and _is_int(v) for k, v in value.items()
    ):
        raise ValueError(f"guard.{name} is not a mapping of partition to integer")
    return dict(value)


def _int_pair(value: object, name: str) -> tuple[int, int]:
    if not isinstance(value, list) or len(value) != 2 or not all(_is_int(v) for v in value):
        raise ValueError(f"guard.{name} holds {value!r}, not a pair of integers")
    return (value[0], value[1])


def _crash(value: object) -> CrashRecord:
    if (
        not isinstance(value, list)
        or len(value) not in (4, 6)
        or not all(isinstance(v, str) for v in value[:2] + value[4:])
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value[2:4])
    ):
        raise ValueError(
            f"guard.crashes holds {value!r}, not [stage, error, first, last(, type, traceback)]"
        )
    return CrashRecord(value[0], value[1], float(value[2]), float(value[3]), *value[4:])
