"""``riprap checkpoint``: inspect a checkpoint store and repair it deliberately.

``riprap checkpoint show STORE`` prints, per pipeline, the positions by
partition, the size of the operator state, the generation (stored and
recorded), the epoch and its owner, the crash guard, the operators' notes and
whether the store is consistent with its recorded generation: whether a run
would start from it or stop with a ``CheckpointIntegrityError``.

``riprap checkpoint history STORE`` lists the generations the store keeps (the
last few snapshots, newest first), which ``riprap rollback --to`` picks from.

``riprap checkpoint reset STORE --yes`` accepts what is stored after a
rollback (an older copy, a lost SQLite ``-wal``); with ``--wipe`` it replaces
the checkpoint by an empty one instead, so the pipeline starts from the
beginning of its source. ``riprap checkpoint set STORE PARTITION=POSITION ...``
sets positions. Each action takes a new epoch (a run still using the store is
fenced out and stops), raises the generation above every one recorded or
stored, records it, and leaves a note in the checkpoint: who, when, what.

STORE is an SQLite checkpoint file, a directory of file checkpoints, or
``s3://BUCKET/PREFIX`` (``--endpoint-url`` for MinIO and other S3-compatible
stores, credentials from the usual AWS environment). ``--pipeline`` chooses
the pipeline when the store holds several.

Exit codes: 0 done (``show``: every pipeline shown is consistent); 1 ``show``
found an inconsistent store, or the store failed; 2 nothing is stored at
STORE, the command line is invalid, or ``reset`` lacks ``--yes``.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import getpass
import importlib.util
import os
import socket
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import anyio
import orjson

from riprap._core.errors import CheckpointError, ConfigError
from riprap.checkpoints._file import FileCheckpoints
from riprap.checkpoints._snapshot import MAX_NOTES, Checkpoint
from riprap.checkpoints._sqlite import SqliteCheckpoints
from riprap.cli._help import HELP_FORMAT, plain
from riprap.cli._kept import show_history
from riprap.cli._locations import FileLocation, KafkaLocation, parse_location
from riprap.cli._runs import EXIT_FAILED, EXIT_OK, EXIT_USAGE

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from riprap.checkpoints._guard import CrashGuard
    from riprap.checkpoints._integrity import CheckpointStatus, RepairableBackend

_SQLITE_RECORD = ".generation.json"
_STORE_FORMS = (
    "give an SQLite checkpoint file, a directory of file checkpoints or s3://BUCKET/PREFIX"
)


def add_checkpoint_commands(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """Add ``checkpoint`` with ``show``, ``reset`` and ``set`` to the ``riprap`` command."""
    checkpoint = subparsers.add_parser(
        "checkpoint",
        help="inspect and repair a checkpoint store",
        description=plain(__doc__ or ""),
        formatter_class=HELP_FORMAT,
    )
    checkpoint.set_defaults(handler=run_checkpoint_command)
    commands = checkpoint.add_subparsers(
        dest="checkpoint_command", required=True, metavar="COMMAND"
    )

    show = commands.add_parser("show", help="positions, generation, epoch, crash guard, damage")
    _add_store_arguments(show, pipeline_help="only this pipeline (default: every one)")
    show.add_argument("--json", action="store_true", help="one JSON object per line on stdout")
    show.add_argument("--stage", help="print this stage's saved state (JSON) instead")

    history = commands.add_parser("history", help="the generations kept, newest first")
    _add_store_arguments(history)
    history.add_argument("--json", action="store_true", help="one JSON object per line on stdout")

    reset = commands.add_parser(
        "reset", help="accept what is stored after a rollback, or wipe it (--wipe)"
    )
    _add_store_arguments(reset)
    reset.add_argument(
        "--wipe",
        action="store_true",
        help="replace the checkpoint by an empty one: the pipeline starts from the beginning",
    )
    reset.add_argument(
        "--stage",
        help="drop only this stage's saved state: it starts empty, positions stay",
    )
    reset.add_argument("--yes", action="store_true", help="do it (without: say what it would do)")

    set_cmd = commands.add_parser("set", help="set positions: PARTITION=POSITION ...")
    _add_store_arguments(set_cmd)
    set_cmd.add_argument(
        "positions",
        nargs="+",
        type=_assignment,
        metavar="PARTITION=POSITION",
        help="the position to resume the partition from (a non-negative integer)",
    )
    set_cmd.add_argument(
        "--new",
        action="store_true",
        help="allow partitions the checkpoint does not hold yet (not read so far)",
    )


def _add_store_arguments(
    parser: argparse.ArgumentParser, *, pipeline_help: str | None = None
) -> None:
    parser.add_argument(
        "store",
        help="an SQLite checkpoint file, a directory of file checkpoints or s3://BUCKET/PREFIX",
    )
    parser.add_argument(
        "--pipeline",
        help=pipeline_help or "the pipeline (needed when the store holds several)",
    )
    parser.add_argument(
        "--endpoint-url", help="S3 endpoint for s3:// stores (MinIO, a test server)"
    )


def _assignment(text: str) -> tuple[str, int]:
    partition, equals, position = text.rpartition("=")
    if not equals or not partition:
        raise argparse.ArgumentTypeError(f"{text!r} is not PARTITION=POSITION")
    if not position.isdigit():
        raise argparse.ArgumentTypeError(
            f"{text!r}: the position {position!r} is not a non-negative integer"
        )
    return partition, int(position)


def run_checkpoint_command(args: argparse.Namespace) -> int:
    """Run the parsed ``riprap checkpoint ...`` command; return the exit code."""
    backend = open_store(args.store, endpoint_url=args.endpoint_url)
    commands: dict[str, Callable[[RepairableBackend, argparse.Namespace], Awaitable[int]]] = {
        "show": _show,
        "history": _history,
        "reset": _reset,
        "set": _set,
    }
    command = commands[args.checkpoint_command]

    async def run() -> int:
        try:
            return await command(backend, args)
        finally:
            await backend.aclose()

    return anyio.run(run)


def open_store(text: str, *, endpoint_url: str | None = None) -> RepairableBackend:
    """The checkpoint backend ``text`` names (see the module docstring).

    Raises:
        ConfigError: ``text`` is malformed, names a Kafka topic, or nothing is
            stored there; or the S3 extra is missing.
    """
    try:
        location = parse_location(text)
    except ValueError as exc:
        raise ConfigError("STORE", f"{exc}; {_STORE_FORMS}") from None
    if isinstance(location, KafkaLocation):
        raise ConfigError(
            "STORE",
            f"{text}: KafkaCheckpoints keeps positions as the consumer group's committed"
            " offsets, which Kafka's own tools show and reset; " + _STORE_FORMS,
        )
    if isinstance(location, FileLocation):
        path = Path(location.path)
        if path.is_dir():
            return FileCheckpoints(path)
        if path.is_file() or Path(location.path + _SQLITE_RECORD).is_file():
            return SqliteCheckpoints(path)  # a database, or the record of a deleted one
        raise ConfigError("STORE", f"{text}: no checkpoints stored there; {_STORE_FORMS}")
    if importlib.util.find_spec("aiobotocore") is None:
        raise ConfigError(
            "STORE", f"{text}: needs the s3 extra (aiobotocore): pip install 'riprap[s3]'"
        )
    from riprap.connectors.s3 import S3Checkpoints

    return S3Checkpoints(location.bucket, location.prefix, endpoint_url=endpoint_url)


async def _pipeline(backend: RepairableBackend, args: argparse.Namespace) -> str:
    """The pipeline the command acts on: ``--pipeline``, or the store's only one."""
    if args.pipeline is not None:
        chosen: str = args.pipeline
        if not getattr(args, "new", False):
            await _refuse_unknown_pipeline(backend, chosen)
        return chosen
    names = await backend.pipelines()
    if len(names) == 1:
        return names[0]
    if not names:
        raise ConfigError("STORE", f"{backend.location}: no checkpoints stored there")
    raise ConfigError(
        "--pipeline",
        f"{backend.location} holds several pipelines ({', '.join(names)}): choose one",
    )


async def _refuse_unknown_pipeline(backend: RepairableBackend, pipeline: str) -> None:
    """Refuse a ``--pipeline`` of which the store holds and records nothing: most likely a typo,
    which would show an empty status, or store a checkpoint nothing reads.

    Raises:
        ConfigError: Naming the pipelines the store holds and the likeliest one meant.
    """
    status = await backend.status(pipeline)
    if status.checkpoint is not None or status.recorded or status.epoch or status.problem:
        return  # stored, recorded or claimed: a pipeline of this store (damaged, maybe)
    names = await backend.pipelines()
    close = difflib.get_close_matches(pipeline, names, n=1)
    meant = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(
        "--pipeline",
        f"{backend.location} holds no pipeline {pipeline!r}{meant}; it holds "
        f"{', '.join(names) or 'none'}",
    )


# -- show -----------------------------------------------------------------------------------


async def _show(backend: RepairableBackend, args: argparse.Namespace) -> int:
    if args.stage is not None:
        return await _show_stage(backend, args)
    if args.pipeline is not None:
        names = [await _pipeline(backend, args)]
    else:
        names = await backend.pipelines()
        if not names:
            raise ConfigError("STORE", f"{backend.location}: no checkpoints stored there")
    statuses = [await backend.status(name) for name in names]
    out: TextIO = sys.stdout
    as_json = args.json or getattr(args, "log_format", None) == "json"
    for status in statuses:
        if as_json:
            out.write(orjson.dumps(status_summary(status)).decode() + "\n")
        else:
            out.write(format_status(status))
    return EXIT_OK if all(status.consistent for status in statuses) else EXIT_FAILED


async def _history(backend: RepairableBackend, args: argparse.Namespace) -> int:
    pipeline = await _pipeline(backend, args)
    as_json = args.json or getattr(args, "log_format", None) == "json"
    return await show_history(backend, pipeline, as_json=as_json)


def status_summary(status: CheckpointStatus) -> dict[str, Any]:
    """What ``show --json`` prints for one pipeline."""
    checkpoint = status.checkpoint
    summary: dict[str, Any] = {
        "pipeline": status.pipeline,
        "where": status.where,
        "consistent": status.consistent,
        "problem": None if status.problem is None else str(status.problem),
        "recorded_generation": status.recorded,
        "record": status.record,
        "epoch": status.epoch,
        "owner": status.owner,
        "checkpoint": None,
    }
    if checkpoint is not None:
        summary["checkpoint"] = {
            "generation": checkpoint.generation,
            "epoch": checkpoint.epoch,
            "seq": checkpoint.seq,
            "owner": checkpoint.owner,
            "created_at": checkpoint.created_at,
            "positions": dict(checkpoint.positions),
            "identities": dict(checkpoint.identities),
            "state_stages": sorted(checkpoint.state),
            "state_bytes": _state_size(checkpoint),
            "crash_counts": dict(checkpoint.crash_counts),
            "crash_guard": checkpoint.guard.to_dict(),
            "notes": list(checkpoint.notes),
        }
    return summary


def format_status(status: CheckpointStatus) -> str:
    """What ``show`` prints for one pipeline."""
    checkpoint = status.checkpoint
    lines = [f"pipeline {status.pipeline!r}", f"  stored at    {status.where}"]
    if status.problem is None:
        lines.append("  consistent   yes")
    else:
        lines.append(f"  consistent   NO: {status.problem}")
    recorded = f"{status.recorded}" if status.recorded else "none"
    if status.record is not None:
        recorded += f" (in {status.record})"
    stored = "none" if checkpoint is None else str(checkpoint.generation)
    if checkpoint is None and status.problem is not None:
        stored = "unreadable" if _damaged(status) else "none"
    lines.append(f"  generation   stored {stored}, recorded {recorded}")
    claimed = f"{status.epoch}" if status.epoch else "none"
    if status.owner is not None:
        claimed += f", claimed by {status.owner}"
    lines.append(f"  epoch        {claimed}")
    if checkpoint is None:
        return "\n".join(lines) + "\n"
    lines.append(
        f"  saved        {_iso(checkpoint.created_at)} by {checkpoint.owner}"
        f" (epoch {checkpoint.epoch}, seq {checkpoint.seq})"
    )
    lines.append(f"  positions    {_count(len(checkpoint.positions), 'partition')}")
    width = max((len(partition) for partition in checkpoint.positions), default=0)
    identities = checkpoint.identities
    lines.extend(
        f"    {partition:<{width}}  {position}"
        + (f"  identity {identities[partition]}" if partition in identities else "")
        for partition, position in sorted(checkpoint.positions.items())
    )
    stages = ", ".join(sorted(checkpoint.state)) or "no stage"
    lines.append(f"  state        {_state_size(checkpoint):,} bytes ({stages})")
    lines.append(f"  crash counts {_count(len(checkpoint.crash_counts), 'record')}")
    lines.append(f"  crash guard  {guard_summary(checkpoint.guard)}")
    lines.append(f"  notes        {_count(len(checkpoint.notes), 'note')}")
    lines.extend(f"    {note}" for note in checkpoint.notes)
    return "\n".join(lines) + "\n"


def guard_summary(guard: CrashGuard) -> str:
    """One line on the crash guard: clean end or not, unclean ends, isolation, crashes."""
    parts = [
        "the run that wrote it had not ended (it crashed, or is running)"
        if guard.running
        else "written by a run that ended on its own"
    ]
    if guard.unclean:
        ends = ", ".join(
            f"{partition} {count}x at {position}"
            for partition, (position, count) in sorted(guard.unclean.items())
        )
        parts.append(f"unclean ends: {ends}")
    if guard.isolating:
        ranges = ", ".join(
            f"{partition} up to {end} by {chunk}"
            for partition, (end, chunk) in sorted(guard.isolating.items())
        )
        parts.append(f"isolating {ranges}")
    if guard.in_progress is not None:
        partition, start, end = guard.in_progress
        parts.append(f"in progress: {partition} [{start}, {end})")
    if guard.crashes:
        parts.append(f"{_count(len(guard.crashes), 'crashed record')}")
    return "; ".join(parts)


def _damaged(status: CheckpointStatus) -> bool:
    return bool(getattr(status.problem, "damaged", False))


def _state_size(checkpoint: Checkpoint) -> int:
    return len(orjson.dumps(dict(checkpoint.state)))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# -- reset and set --------------------------------------------------------------------------


def _who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _note(action: str) -> str:
    return f"{_iso(time.time())} {_who()}: {action}"


def _notes(base: Checkpoint | None, action: str) -> tuple[str, ...]:
    earlier = base.notes if base is not None else ()
    return (*earlier, _note(action))[-MAX_NOTES:]


def rewritten(
    base: Checkpoint, current: CheckpointStatus, epoch: int, owner: str, action: str, **changes: Any
) -> Checkpoint:
    """``base`` as an operator writes it back: the claimed epoch, the next generation, noted."""
    return dataclasses.replace(
        base,
        epoch=epoch,
        owner=owner,
        seq=1,
        generation=current.next_generation,
        created_at=time.time(),
        notes=_notes(base, action),
        **changes,
    )


def _owner() -> str:
    return f"riprap checkpoint:{_who()}:{os.getpid()}"


async def _reset(backend: RepairableBackend, args: argparse.Namespace) -> int:
    if args.stage is not None:
        return await _reset_stage(backend, args)
    pipeline = await _pipeline(backend, args)
    status = await backend.status(pipeline)
    out, err = sys.stdout, sys.stderr
    found = status.checkpoint
    if args.wipe:
        plan = (
            "wipe its positions, state and crash counts: it starts from the beginning of its source"
        )
    elif found is None:
        why = str(status.problem) if status.problem is not None else f"{status.where}: empty"
        err.write(
            f"riprap checkpoint reset: no readable checkpoint to accept: {why}\n"
            "  --wipe starts the pipeline from the beginning; `riprap checkpoint set`"
            " chooses positions\n"
        )
        return EXIT_USAGE
    elif status.consistent:
        out.write(f"{status.where}: consistent (generation {found.generation}); nothing to reset\n")
        return EXIT_OK
    else:
        plan = (
            f"accept the stored generation {found.generation} (recorded: {status.recorded})"
            " and resume from its positions"
        )
    if not args.yes:
        err.write(f"riprap checkpoint reset: would {plan}; add --yes to do it\n")
        return EXIT_USAGE

    def build(current: CheckpointStatus, epoch: int) -> Checkpoint:
        base = current.checkpoint
        if args.wipe:
            action = (
                f"reset --wipe: started over (stored generation {_found(current)},"
                f" recorded {current.recorded or 'none'})"
            )
            base = Checkpoint(pipeline, epoch, owner, notes=base.notes if base else ())
        elif base is None:
            raise CheckpointError(f"{current.where}: changed meanwhile; nothing readable to accept")
        else:
            action = f"reset: accepted generation {base.generation} (recorded {current.recorded})"
        return rewritten(base, current, epoch, owner, action)

    owner = _owner()
    written = await backend.overwrite(pipeline, owner, build)
    out.write(
        f"{status.where}: {'wiped' if args.wipe else 'accepted'};"
        f" now generation {written.generation}, epoch {written.epoch}\n"
    )
    return EXIT_OK


async def _set(backend: RepairableBackend, args: argparse.Namespace) -> int:
    pipeline = await _pipeline(backend, args)
    wanted: dict[str, int] = dict(args.positions)
    if not args.new:
        _refuse_unknown(backend.location, pipeline, (await backend.status(pipeline)), wanted)
    written, dropped = await set_positions(backend, pipeline, wanted)
    if dropped:
        sys.stderr.write(
            f"riprap checkpoint set: the stored checkpoint could not be read ({dropped});"
            " its state and crash counts are gone\n"
        )
    sys.stdout.write(
        f"{backend.location}: pipeline {pipeline!r} now resumes from "
        + ", ".join(f"{p}={written.positions[p]}" for p in sorted(wanted))
        + f"; generation {written.generation}, epoch {written.epoch}\n"
    )
    return EXIT_OK


def _refuse_unknown(
    location: str, pipeline: str, status: CheckpointStatus, wanted: Mapping[str, int]
) -> None:
    """Refuse partitions a readable checkpoint does not hold: a typo would set nothing the
    pipeline reads, and the operator would take the repair for done.

    Raises:
        ConfigError: Naming each unknown partition, the likeliest one meant, and ``--new``.
    """
    if status.checkpoint is None:
        return  # nothing stored (or nothing readable) to tell a typo from a new partition
    known = sorted(status.checkpoint.positions)
    unknown = sorted(p for p in wanted if p not in status.checkpoint.positions)
    if not unknown:
        return
    guesses = []
    for partition in unknown:
        close = difflib.get_close_matches(partition, known, n=1)
        guesses.append(f"{partition!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    shown = ", ".join(known[:10]) + (f" and {len(known) - 10} more" if len(known) > 10 else "")
    raise ConfigError(
        "PARTITION",
        f"{location} (pipeline {pipeline!r}) holds no partition "
        + ", ".join(guesses)
        + f"; it holds {shown or 'none'}. To set a partition the pipeline has not read "
        "yet, add --new",
    )


async def set_positions(
    backend: RepairableBackend, pipeline: str, wanted: Mapping[str, int], *, action: str = "set"
) -> tuple[Checkpoint, str | None]:
    """Store ``pipeline``'s checkpoint with ``wanted`` positions, fenced, as a new generation.

    Returns what was stored and, if the stored checkpoint could not be read
    (its state and crash counts are then gone), why.
    """
    owner = _owner()
    dropped: list[str] = []

    def build(current: CheckpointStatus, epoch: int) -> Checkpoint:
        base = current.checkpoint
        dropped.clear()
        if base is None:
            base = Checkpoint(pipeline, epoch, owner)
            if current.problem is not None:
                dropped.append(str(current.problem))
        before = base.positions
        changes = ", ".join(
            f"{partition}={position} (was {before.get(partition, 'unset')})"
            for partition, position in sorted(wanted.items())
        )
        positions = {**before, **wanted}
        return rewritten(
            base,
            current,
            epoch,
            owner,
            f"{action} {changes}",
            positions=positions,
            guard=_forget(base.guard, wanted, positions),
            # The operator says where to resume: what the source saw there no longer binds.
            identities={p: i for p, i in base.identities.items() if p not in wanted},
        )

    written = await backend.overwrite(pipeline, owner, build)
    return written, dropped[0] if dropped else None


def _forget(
    guard: CrashGuard, partitions: Mapping[str, int], positions: Mapping[str, int]
) -> CrashGuard:
    """The crash guard without what it knew of ``partitions``, whose positions were set."""
    in_progress = guard.in_progress
    if in_progress is not None and in_progress[0] in partitions:
        in_progress = None
    return dataclasses.replace(
        guard,
        frontier={p: v for p, v in guard.frontier.items() if p not in partitions},
        unclean={p: v for p, v in guard.unclean.items() if p not in partitions},
        isolating={p: v for p, v in guard.isolating.items() if p not in partitions},
        in_progress=in_progress,
    ).pruned(positions)


def _found(status: CheckpointStatus) -> str:
    if status.checkpoint is not None:
        return str(status.checkpoint.generation)
    return "unreadable" if _damaged(status) else "none"


# -- one stage's state ----------------------------------------------------------------------


def _stage_state(status: CheckpointStatus, stage: str) -> tuple[Checkpoint, Any]:
    """The readable checkpoint and the saved state of ``stage`` in it.

    Raises:
        ConfigError: Nothing readable is stored, or no state of ``stage``.
    """
    checkpoint = status.checkpoint
    if checkpoint is None:
        why = status.problem or f"{status.where}: no checkpoint stored"
        raise ConfigError("STORE", str(why))
    if stage not in checkpoint.state:
        stages = ", ".join(sorted(checkpoint.state)) or "none"
        raise ConfigError("--stage", f"no state of a stage {stage!r} (stages: {stages})")
    return checkpoint, checkpoint.state[stage]


async def _show_stage(backend: RepairableBackend, args: argparse.Namespace) -> int:
    status = await backend.status(await _pipeline(backend, args))
    _, state = _stage_state(status, args.stage)
    sys.stdout.write(orjson.dumps(state, option=orjson.OPT_INDENT_2).decode() + "\n")
    return EXIT_OK if status.consistent else EXIT_FAILED


async def _reset_stage(backend: RepairableBackend, args: argparse.Namespace) -> int:
    pipeline, stage = await _pipeline(backend, args), args.stage
    _, state = _stage_state(await backend.status(pipeline), stage)
    size = len(orjson.dumps(state))
    if not args.yes:
        sys.stderr.write(
            f"riprap checkpoint reset: would drop the state of stage {stage!r} ({size:,} bytes;"
            " what it holds is not read again) and keep the positions; add --yes to do it\n"
        )
        return EXIT_USAGE
    owner = _owner()

    def build(current: CheckpointStatus, epoch: int) -> Checkpoint:
        base, _ = _stage_state(current, stage)
        return rewritten(
            base,
            current,
            epoch,
            owner,
            f"reset --stage {stage}: dropped its state ({size:,} bytes)",
            state={name: value for name, value in base.state.items() if name != stage},
        )

    written = await backend.overwrite(pipeline, owner, build)
    sys.stdout.write(
        f"{backend.location}: dropped the state of stage {stage!r} of pipeline {pipeline!r};"
        f" generation {written.generation}, epoch {written.epoch}\n"
    )
    return EXIT_OK
