"""Rolling a Delta sink's table back to an earlier version, with the positions to resume from.

A bad deployment wrote wrong rows: restore the table to the version before it
and move the pipeline's positions back to what that version holds, then run
the fixed pipeline. The table's commits say both: each of the sink's commits
records its pipeline, its sink and the positions it covers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, final

from deltalake import CommitProperties, DeltaTable, Transaction

from riprap import ConfigError

from ._storage import LakeS3Options, storage_options, table_uri

if TYPE_CHECKING:
    import os


@final
@dataclass(frozen=True, slots=True)
class DeltaRollback:
    """What a rollback of a Delta sink's table changes (or changed).

    Attributes:
        location: The table.
        from_version: The table's version before the rollback.
        to_version: The version its data is restored to.
        positions: Per source partition, where the pipeline resumes: the
            position the restored table holds it to (0: nothing of it).
        undone: The commits undone, newest first: ``(version, operation,
            pipeline, sink, rows added)``; pipeline and sink are ``None`` for
            commits riprap did not make.
        done: Whether the table was restored (``False``: a dry run).

    .. versionadded:: 0.1
    """

    location: str
    from_version: int
    to_version: int
    positions: Mapping[str, int]
    undone: tuple[tuple[int, str, str | None, str | None, int], ...]
    done: bool

    def checkpoint_command(self, store: str, pipeline: str) -> str:
        """The ``riprap checkpoint set`` command that moves the pipeline's positions back."""
        assignments = " ".join(f"'{p}={n}'" for p, n in sorted(self.positions.items()))
        return f"riprap checkpoint set {store} --pipeline {pipeline} {assignments}"

    def describe(self) -> str:
        """A few lines for a person: what is (or would be) undone and where the run resumes."""
        verb = "restored" if self.done else "would restore"
        lines = [f"{self.location}: {verb} version {self.to_version} (now {self.from_version})"]
        for version, operation, pipeline, sink, rows in self.undone:
            who = f"{pipeline}/{sink}" if pipeline is not None else "not riprap"
            lines.append(f"  undo version {version}: {operation} by {who}, {rows} rows")
        lines += [f"  resume {p} at {n}" for p, n in sorted(self.positions.items())]
        return "\n".join(lines)


def rollback_delta(
    location: str | os.PathLike[str],
    *,
    pipeline: str,
    to: int | datetime | Mapping[str, int],
    sink: str = "delta",
    dry_run: bool = True,
    force: bool = False,
    s3: LakeS3Options | None = None,
) -> DeltaRollback:
    """Restore a :class:`DeltaSink`'s table to version ``to`` (or the one current at a time).

    The restore is one commit that also sets the sink's app transactions back,
    so a rerun writes again what it undoes. Stop the pipeline first; then move
    its positions back with :meth:`DeltaRollback.checkpoint_command` (``riprap
    checkpoint set``) and run the fixed pipeline. Blocking: call it from a
    script or a worker thread.

    Args:
        location: The table: a local directory or ``s3://bucket/prefix``.
        pipeline: The pipeline whose sink wrote the table.
        to: The version to restore, a ``datetime`` (the version current then),
            or a checkpoint's positions: the newest version whose commits of
            this sink hold no record at or after them (the version that
            matches that checkpoint; it may be the current one).
        sink: The sink's step name.
        dry_run: Only say what would change (the default).
        force: Also undo commits of other writers (refused without it).
        s3: How to reach S3 for an ``s3://`` table.

    Raises:
        ConfigError: ``to`` is not an earlier version (or, for positions, no
            version is that old), or commits of other writers would be undone
            without ``force``.

    .. versionadded:: 0.1
    """
    uri = table_uri(location)
    options = storage_options(uri, s3)
    table = DeltaTable(uri, storage_options=None if options is None else dict(options))
    current = table.version()
    if isinstance(to, Mapping):
        target = _version_holding(table, pipeline, sink, to)
        low = 0
    else:
        target, low = _version_at(uri, options, to), 1
    if not 0 <= target <= current - low:
        raise ConfigError(
            "to", f"version {target} is not an earlier version of {uri!r} ({current})"
        )
    undone: tuple[tuple[int, str, str | None, str | None, int], ...] = ()
    if target < current:
        history = table.history(current - target)
        undone = tuple(_undone(commit) for commit in history if commit["version"] > target)
    others = [u for u in undone if (u[2], u[3]) != (pipeline, sink)]
    if others and not force:
        raise ConfigError("force", f"undoing version {others[0][0]} of another writer needs force")
    partitions = {p for commit in table.history() for p in _positions(commit, pipeline, sink)}
    past = DeltaTable(
        uri, version=target, storage_options=None if options is None else dict(options)
    )
    prefix = f"riprap/{pipeline}/{sink}/"
    positions = {p: past.transaction_version(prefix + p) or 0 for p in partitions}
    if not dry_run and target < current:  # a table at the checkpoint's version stays as it is
        transactions = [Transaction(prefix + p, n) for p, n in positions.items()]
        metadata = {"riprap.pipeline": pipeline, "riprap.sink": sink, "riprap.positions": positions}
        # Signed like the sink's commits: a rerun after a crash undoes it without force.
        properties = CommitProperties(custom_metadata=metadata, app_transactions=transactions)
        table.restore(target, commit_properties=properties)
    return DeltaRollback(uri, current, target, positions, undone, not dry_run)


def _version_at(uri: str, options: Mapping[str, str] | None, to: int | datetime) -> int:
    """``to`` as a version number."""
    if isinstance(to, bool) or not isinstance(to, int | datetime):
        raise ConfigError("to", f"expected a version or a datetime, got {to!r}")
    if isinstance(to, int):
        return to
    table = DeltaTable(uri, storage_options=None if options is None else dict(options))
    table.load_as_version(to)
    return table.version()


def _version_holding(
    table: DeltaTable, pipeline: str, sink: str, positions: Mapping[str, int]
) -> int:
    """The newest version at which the sink's commits stay below ``positions`` everywhere.

    The positions a version holds are those its sink commits (and restores,
    which sign the positions they restore) last recorded, per partition.

    Raises:
        ConfigError: Even the first version holds more than ``positions``.
    """
    held: dict[str, int] = {}
    found = -1
    for commit in sorted(table.history(), key=lambda c: int(c["version"])):
        if _positions(commit, pipeline, sink):
            held.update(commit["riprap.positions"])
        if all(n <= positions.get(p, 0) for p, n in held.items()):
            found = int(commit["version"])
    if found < 0:
        raise ConfigError("to", f"no version of {table.table_uri!r} is as old as those positions")
    return found


def _undone(commit: Mapping[str, Any]) -> tuple[int, str, str | None, str | None, int]:
    metrics = commit.get("operationMetrics") or {}
    # A sink's commit of files written earlier has no metrics of Delta's: it signs its count.
    rows = int(metrics.get("num_added_rows", 0) or commit.get("riprap.rows", 0) or 0)
    return (
        int(commit["version"]),
        str(commit.get("operation", "?")),
        commit.get("riprap.pipeline"),
        commit.get("riprap.sink"),
        rows,
    )


def _positions(commit: Mapping[str, Any], pipeline: str, sink: str) -> list[str]:
    """The partitions a commit of ``pipeline``'s ``sink`` covered."""
    if (commit.get("riprap.pipeline"), commit.get("riprap.sink")) != (pipeline, sink):
        return []
    positions = commit.get("riprap.positions")
    return list(positions) if isinstance(positions, dict) else []
