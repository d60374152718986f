"""``riprap gate release``: let a quality gate's breached window through, deliberately.

A :class:`~riprap.stages.quality.QualityGate` in ``halt`` mode that halted a
run stays halted on every start: its halt is saved in the checkpoint.
``riprap gate release STORE GATE --window N --yes`` marks window ``N`` as
released in the gate's saved state: on the next run the window passes once
even if it breaches again (the run report counts its records as
``quality_gate_released`` and the log names the breached checks). Like
``riprap checkpoint reset``, it takes a new epoch (a run still using the store
is fenced out), raises the generation and leaves a note in the checkpoint:
who, when, what.

Exit codes: 0 done; 1 the store failed; 2 nothing stored, no such gate, the
window is already closed, the store is inconsistent (see ``riprap checkpoint``)
or ``--yes`` is missing.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import anyio

from riprap._core.errors import ConfigError
from riprap.cli._checkpoint import _add_store_arguments, _owner, _pipeline, open_store, rewritten
from riprap.cli._help import HELP_FORMAT, plain
from riprap.cli._runs import EXIT_OK, EXIT_USAGE

if TYPE_CHECKING:
    import argparse

    from riprap.checkpoints._integrity import CheckpointStatus, RepairableBackend
    from riprap.checkpoints._snapshot import Checkpoint


def add_gate_commands(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """Add ``gate`` with ``release`` to the ``riprap`` command."""
    gate = subparsers.add_parser(
        "gate",
        help="let a halted quality gate's window through",
        description=plain(__doc__ or ""),
        formatter_class=HELP_FORMAT,
    )
    gate.set_defaults(handler=run_gate_command)
    commands = gate.add_subparsers(dest="gate_command", required=True, metavar="COMMAND")
    release = commands.add_parser(
        "release", help="let window N of a gate through on the next run, once"
    )
    _add_store_arguments(release)
    release.add_argument("gate", help="the gate's step_id")
    release.add_argument(
        "--window", type=int, required=True, help="the window to let through (as in the error)"
    )
    release.add_argument("--yes", action="store_true", help="do it (without: say what it would do)")


def run_gate_command(args: argparse.Namespace) -> int:
    """Run the parsed ``riprap gate ...`` command; return the exit code."""
    backend = open_store(args.store, endpoint_url=args.endpoint_url)

    async def run() -> int:
        try:
            return await _release(backend, args)
        finally:
            await backend.aclose()

    return anyio.run(run)


def _released_state(state: Any, gate: str, window: int) -> Any:
    """The gate's state with ``window`` released (the stage knows its own format)."""
    from riprap.stages.quality import QualityGate  # the CLI imports stages lazily

    try:
        return QualityGate.release(state, window)
    except ValueError as exc:
        raise ConfigError("--window", f"gate {gate!r}: {exc}") from None


async def _release(backend: RepairableBackend, args: argparse.Namespace) -> int:
    pipeline = await _pipeline(backend, args)
    status = await backend.status(pipeline)
    gate, window = args.gate, args.window
    found = _checkpoint_with(status, gate)
    halted = (found.state[gate] or {}).get("halted")
    at = f"halted at window {halted['index']}" if halted else "not halted"
    _released_state(found.state[gate], gate, window)  # refuse early, before --yes
    if not args.yes:
        sys.stderr.write(
            f"riprap gate release: would let window {window} of gate {gate!r} ({at}) through"
            " on the next run; add --yes to do it\n"
        )
        return EXIT_USAGE
    owner = _owner()

    def build(current: CheckpointStatus, epoch: int) -> Checkpoint:
        base = _checkpoint_with(current, gate)
        state = {**base.state, gate: _released_state(base.state[gate], gate, window)}
        action = f"gate release {gate} --window {window} ({at})"
        return rewritten(base, current, epoch, owner, action, state=state)

    written = await backend.overwrite(pipeline, owner, build)
    sys.stdout.write(
        f"{status.where}: gate {gate!r} of pipeline {pipeline!r} lets window {window} through"
        f" on the next run ({at}); generation {written.generation}, epoch {written.epoch}\n"
    )
    return EXIT_OK


def _checkpoint_with(status: CheckpointStatus, gate: str) -> Checkpoint:
    """The stored checkpoint, if it is consistent and holds the gate's state.

    Raises:
        ConfigError: Nothing readable is stored, the store is inconsistent, or
            no stage ``gate`` has state in it.
    """
    checkpoint = status.checkpoint
    if status.problem is not None or checkpoint is None:
        why = status.problem or f"{status.where}: no checkpoint stored"
        raise ConfigError("STORE", f"{why}; see `riprap checkpoint show`")
    if gate not in checkpoint.state:
        stages = ", ".join(sorted(checkpoint.state)) or "none"
        raise ConfigError("GATE", f"no state of a stage {gate!r} is stored (stages: {stages})")
    return checkpoint
