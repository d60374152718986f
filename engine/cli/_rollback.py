"""``riprap rollback``: undo a bad release of a pipeline that writes a lakehouse table.

The pipeline is loaded as ``riprap run`` loads it. ``--to`` names a checkpoint
generation the store keeps (``riprap checkpoint history`` lists them), or an
ISO time: the newest kept generation saved by then. Every sink with a
``rollback(*, pipeline, to, dry_run, force)`` method (``DeltaSink`` has one)
restores its table to the version that matches that checkpoint (the newest
whose commits hold nothing past its positions) and says, per source
partition, the position the restored table holds it to. The pipeline's
checkpoint then moves back to the checkpoint's positions, or lower where a
table holds less (never forward), so a fixed pipeline reprocesses the undone
range. ``--to-version`` names a table version instead (one Delta sink).
Without ``--yes`` the command only prints the plan: the tables' versions and
the positions, now and after.

Order: the checkpoint is set first, the tables are restored after. A crash in
between leaves positions behind what the tables hold, which a Delta sink's
app transactions skip on a replay (nothing is lost or written twice; the bad
rows are still there), and running the command again finishes the job. The
other order would leave restored tables behind a checkpoint that has moved
past the undone range: a run would never write it again.

Only positions move back: operator state (windows, dedupe) stays as it is.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import anyio
import anyio.to_thread

from riprap._core.errors import ConfigError
from riprap.checkpoints._history import kept_snapshot
from riprap.checkpoints._integrity import RepairableBackend
from riprap.cli._backfill import instant
from riprap.cli._checkpoint import set_positions
from riprap.cli._kept import iso, kept_history
from riprap.cli._load import load_pipeline
from riprap.cli._runs import EXIT_OK

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from datetime import datetime

    from riprap._core.pipeline import Pipeline
    from riprap._core.protocols import Sink
    from riprap.checkpoints._snapshot import Checkpoint

    Target = int | datetime | Mapping[str, int]
    """What a sink's table goes back to: a version, a time, or a checkpoint's positions."""


class TableRollback(Protocol):
    """What a sink's ``rollback`` returns (``DeltaRollback`` is one)."""

    @property
    def location(self) -> str: ...
    @property
    def from_version(self) -> int: ...
    @property
    def to_version(self) -> int: ...
    @property
    def positions(self) -> Mapping[str, int]: ...
    @property
    def undone(self) -> Sequence[tuple[int, str, str | None, str | None, int]]: ...


class RollbackSink(Protocol):
    """A sink whose table ``riprap rollback`` can restore."""

    name: str

    def rollback(
        self, *, pipeline: str, to: Target, dry_run: bool = True, force: bool = False
    ) -> TableRollback: ...


def add_rollback_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``riprap rollback`` to the commands."""
    cmd = commands.add_parser(
        "rollback",
        help="move a pipeline and its Delta tables back to an earlier checkpoint generation",
        description="Restore the tables of a pipeline's Delta sinks to the versions that "
        "match a kept checkpoint generation and move its positions back to it; "
        "a dry run without --yes.",
    )
    cmd.add_argument("pipeline", help="path/to/file.py[:name] (name defaults to 'pipeline')")
    goal = cmd.add_mutually_exclusive_group(required=True)
    goal.add_argument(
        "--to",
        type=target,
        metavar="GENERATION|TIME",
        help="a kept checkpoint generation (`riprap checkpoint history`), or an ISO time"
        " with a timezone (the newest generation saved by then)",
    )
    goal.add_argument(
        "--to-version",
        type=_version,
        metavar="VERSION",
        help="a table version instead (a pipeline with one Delta sink)",
    )
    cmd.add_argument("--force", action="store_true", help="also undo commits of other writers")
    cmd.add_argument("--yes", action="store_true", help="do it (without: print the plan only)")
    cmd.set_defaults(handler=run_rollback)


def target(text: str) -> int | datetime:
    """A checkpoint generation or an ISO time, as an argparse ``type``.

    Raises:
        argparse.ArgumentTypeError: Neither a non-negative integer nor an ISO time with a timezone.
    """
    if text.isdigit():
        return int(text)
    try:
        return instant(text)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"not a generation, and {exc}") from None


def _version(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a table version (0, 1, ...)")
    return int(text)


def run_rollback(args: argparse.Namespace) -> int:
    """Run the parsed ``riprap rollback`` command; return the exit code.

    Raises:
        ConfigError: The pipeline has no sink to roll back, a version is given
            for several tables, another sink is not idempotent, the checkpoint
            store is missing or inconsistent, or the table refuses the target.
    """
    pipeline = load_pipeline(args.pipeline)
    sinks = rollback_sinks(pipeline)
    if args.to_version is not None and len(sinks) > 1:
        raise ConfigError("--to-version", "a version names one table; give --to for several sinks")
    backend = _backend(pipeline)

    async def run() -> int:
        try:
            return await _rollback(pipeline, sinks, backend, args)
        finally:
            await backend.aclose()

    return anyio.run(run)


def rollback_sinks(pipeline: Pipeline) -> list[RollbackSink]:
    """The sinks of ``pipeline`` with a ``rollback`` method.

    Raises:
        ConfigError: There is none, or another sink is not idempotent (moving
            positions back would write its records twice).
    """
    sinks: list[Sink] = [s for s in (pipeline.sink_, *_branch_sinks(pipeline)) if s is not None]
    found: list[RollbackSink] = []
    for sink in sinks:
        if callable(getattr(sink, "rollback", None)):
            found.append(sink)  # type: ignore[arg-type]  # checked by the duck test above
        elif not sink.idempotent:
            raise ConfigError(
                "sink",
                f"sink {sink.name!r} is not idempotent: reprocessing would write its records twice",
            )
    if not found:
        raise ConfigError(
            "sink", f"pipeline {pipeline.name!r} has no sink that can roll back (DeltaSink can)"
        )
    return found


def _branch_sinks(pipeline: Pipeline) -> list[Sink | None]:
    return [branch.sink_ for _, branch in pipeline.branches]


def _backend(pipeline: Pipeline) -> RepairableBackend:
    """The pipeline's checkpoint store.

    Raises:
        ConfigError: The default SQLite file does not exist, or the store cannot be repaired.
    """
    options = pipeline.options
    if options.checkpoint is None:
        if not Path(options.checkpoint_path).is_file():
            raise ConfigError(
                "checkpoint_path", f"{options.checkpoint_path!r}: no checkpoint stored there"
            )
        from riprap.checkpoints._sqlite import SqliteCheckpoints

        return SqliteCheckpoints(options.checkpoint_path)
    if not isinstance(options.checkpoint, RepairableBackend):
        raise ConfigError(
            "checkpoint", f"{type(options.checkpoint).__name__} cannot be set by an operator"
        )
    return options.checkpoint


async def _rollback(
    pipeline: Pipeline,
    sinks: Sequence[RollbackSink],
    backend: RepairableBackend,
    args: argparse.Namespace,
) -> int:
    status = await backend.status(pipeline.name)
    if status.checkpoint is None or not status.consistent:
        why = status.problem or f"{status.where}: no checkpoint of {pipeline.name!r}"
        raise ConfigError("checkpoint", f"{why}; repair it with `riprap checkpoint` first")
    now = status.checkpoint.positions
    goal: Checkpoint | None = None
    to: Target = args.to_version
    if args.to is not None:
        goal = kept_snapshot(await kept_history(backend, pipeline.name), args.to)
        to = dict(goal.positions)
    plans = [await _call(sink, pipeline.name, to, args.force, dry_run=True) for sink in sinks]
    after = positions_after(now, plans, {} if goal is None else goal.positions)
    out = sys.stdout
    if goal is not None:
        out.write(f"checkpoint generation {goal.generation}, saved {iso(goal.created_at)}\n")
    out.write(format_plan(pipeline.name, backend.location, plans, now, after))
    if not args.yes:
        out.write("dry run: nothing changed; add --yes to do it\n")
        return EXIT_OK
    if after:  # first the checkpoint, then the tables: see the module docstring
        await set_positions(backend, pipeline.name, after, action="rollback: set")
    restored = [await _call(sink, pipeline.name, to, args.force, dry_run=False) for sink in sinks]
    # A partition first committed after the plan was made: move it back too, or it has a gap.
    later = {p: n for p, n in positions_after(now, restored, {}).items() if n < after.get(p, n + 1)}
    if later:
        await set_positions(backend, pipeline.name, later, action="rollback: set")
    out.write("done: run the fixed pipeline to reprocess the undone range\n")
    return EXIT_OK


async def _call(
    sink: RollbackSink, pipeline: str, to: Target, force: bool, *, dry_run: bool
) -> TableRollback:
    def call() -> TableRollback:
        return sink.rollback(pipeline=pipeline, to=to, dry_run=dry_run, force=force)

    return await anyio.to_thread.run_sync(call)


def positions_after(
    now: Mapping[str, int], plans: Sequence[TableRollback], goal: Mapping[str, int]
) -> dict[str, int]:
    """The positions to set: per checkpointed partition, the lowest of the goal's and the tables'.

    ``goal`` holds the positions of the generation rolled back to (empty for a
    table version). A position never moves forward: what a table holds beyond
    the checkpoint is skipped on the replay anyway, and other sinks may still lack it.
    """
    after: dict[str, int] = {}
    found = [goal, *(plan.positions for plan in plans)]
    for partition, position in itertools.chain.from_iterable(p.items() for p in found):
        if partition in now and position < now[partition]:
            after[partition] = min(position, after.get(partition, position))
    return after


def format_plan(
    pipeline: str,
    store: str,
    plans: Sequence[TableRollback],
    now: Mapping[str, int],
    after: Mapping[str, int],
) -> str:
    """The plan for a person: tables, commits undone, positions now -> after."""
    lines = [f"rollback of pipeline {pipeline!r}"]
    for plan in plans:
        lines.append(f"  table {plan.location}: version {plan.from_version} -> {plan.to_version}")
        for version, operation, writer, sink, rows in plan.undone:
            who = f"{writer}/{sink}" if writer is not None else "not riprap"
            lines.append(f"    undo version {version}: {operation} by {who}, {rows} rows")
    lines.append(f"  checkpoint {store}:")
    if not after:
        lines.append("    no position moves back")
    for partition, position in sorted(after.items()):
        count = now[partition] - position
        lines.append(
            f"    {partition}: {now[partition]} -> {position} ({count} records to reprocess)"
        )
    return "\n".join(lines) + "\n"
