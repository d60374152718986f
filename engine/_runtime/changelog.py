"""The run's changelog: keyed state restored when a partition is assigned, logged before each save.

Why one changelog per pipeline rather than one per step: a checkpoint moves a
partition's position once for every step. Were each step logged on its own, a
crash between two logs' writes would leave the steps at different positions,
and no start position would suit them all (I3). So a commit writes each
step's changes of a partition, then one mark of the partition's position, and
a restore takes a partition's changes up to its last mark only.

Why a mark ahead of the source's stored position is safe to start from: a
mark is written before the checkpoint that moves the position is saved, with
the cut's positions, and a cut's position has every record below it done (its
sinks wrote it). A crash between the two leaves the mark ahead; the records
between are done and their changes are in the state, so the partition
resumes at the mark.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol, final

from riprap._core.errors import ConfigError
from riprap._core.state_values import StateStoreError

if TYPE_CHECKING:
    from collections.abc import Collection, Mapping

    from riprap._core.state_stores import Changelog, RestoredState
    from riprap._core.state_values import Entry

log = logging.getLogger("riprap.state")


class Owner(Protocol):
    """A step's keyed state, as the hub moves partitions in and out of it."""

    def local(self, partition: str) -> tuple[int, int] | None: ...

    def load(
        self,
        partition: str,
        values: Mapping[str, Entry],
        *,
        complete: bool,
        offset: int | None,
        position: int | None,
    ) -> None: ...

    async def logged(self, partition: str, offset: int | None, position: int) -> None: ...

    def release(self, partition: str) -> None: ...


@final
class ChangelogHub:
    """Restores partitions from the changelog and commits the cut's changes before a save."""

    def __init__(self, changelog: Changelog, pipeline: str) -> None:
        self.changelog = changelog
        self.pipeline = pipeline
        self._owners: dict[str, Owner] = {}
        self._marks: dict[str, int | None] = {}
        """Restored partitions: the position of each one's last mark (``None``: none yet)."""
        self._staged: dict[str, dict[str, dict[str, Entry]]] = {}
        """Changes cut and not yet committed: partition -> step -> token -> entry."""
        self._opened = False

    async def open(self) -> None:
        """Connect the changelog."""
        await self.changelog.open(self.pipeline)
        self._opened = True

    async def aclose(self) -> None:
        """Close the changelog (what was not committed is replayed by the next owner)."""
        if self._opened:
            self._opened = False
            await self.changelog.aclose()

    # -- keyed state's side ---------------------------------------------------------

    def attach(self, step_id: str, owner: Any) -> None:
        """Register a step's keyed state: restores load into it, releases empty it."""
        self._owners[step_id] = owner

    def require(self, step_id: str, partition: str) -> None:
        """Refuse a record of a partition whose state was never restored.

        Raises:
            ConfigError: The source does not announce its partitions (only a
                Kafka source does), so the state could not be restored first.
        """
        if partition not in self._marks:
            raise ConfigError(
                f"state({step_id!r})",
                f"a record of partition {partition!r} arrived before its state was restored "
                "from the changelog: a changelog needs a source that announces the partitions "
                "it is given (KafkaSource)",
            )

    def stage(self, step_id: str, partition: str, changes: Mapping[str, Entry]) -> None:
        """Keep a cut's changes of ``partition`` for the next commit (newer ones win)."""
        self._staged.setdefault(partition, {}).setdefault(step_id, {}).update(changes)

    # -- the source's side -----------------------------------------------------------

    async def assigned(self, starts: Mapping[str, int | None]) -> dict[str, int]:
        """Restore newly assigned partitions; return where each must start at least.

        ``starts`` gives, per partition, where its source would resume (``None``:
        nowhere stored). A partition already restored here keeps its state.

        Raises:
            StateStoreError: A partition's last commit is behind where its source
                resumes (unless the changelog accepts that).
        """
        floors: dict[str, int] = {}
        for partition, start in starts.items():
            if partition in self._marks:
                mark = self._marks[partition]
            else:
                mark = await self._restore(partition, start)
                self._marks[partition] = mark
            if mark is not None:
                floors[partition] = mark
        return floors

    async def _restore(self, partition: str, start: int | None) -> int | None:
        """Restore ``partition`` into every step, from their local copies when all have one."""
        copies = [owner.local(partition) for owner in self._owners.values()]
        since = None if not copies or None in copies else min(c for c in copies if c is not None)
        restored = await self.changelog.restore(partition, None if since is None else since[0])
        if not restored.complete and since is not None and restored.position is None:
            # Nothing committed since the copies: they are the state, at their position.
            restored = replace(restored, position=since[1], offset=since[0])
        mark = self._check(partition, restored.position, start)
        self._load(partition, restored)
        return mark

    def _check(self, partition: str, mark: int | None, start: int | None) -> int | None:
        """The mark to resume from, after refusing (or accepting) one behind ``start``."""
        if start is None or (mark is not None and mark >= start):
            if mark is not None and start is not None and mark > start:
                log.info(
                    "pipeline %s: %s resumes at its changelog commit %d, past its stored "
                    "position %d (the records between were done before the position was saved)",
                    self.pipeline,
                    partition,
                    mark,
                    start,
                )
            return mark
        what = "holds no commit" if mark is None else f"was last committed at position {mark}"
        if not self.changelog.accept_behind:
            raise StateStoreError(
                f"changelog of pipeline {self.pipeline!r}",
                f"partition {partition!r} {what}, but its source resumes at {start}: the state "
                "would miss the changes of the records between (the changelog was deleted or "
                "replaced, or the group's offsets were moved on). To rebuild the state, start "
                "the input again from where the changelog is; to keep the state as it is and "
                "go on, open the changelog with accept_behind=True",
            )
        log.warning(
            "pipeline %s: changelog partition %s %s, behind its source's position %d; "
            "going on from there with the state as it is (accept_behind)",
            self.pipeline,
            partition,
            what,
            start,
        )
        return None

    def _load(self, partition: str, restored: RestoredState) -> None:
        values = restored.values
        for step_id, owner in self._owners.items():
            owner.load(
                partition,
                values.get(step_id, {}),
                complete=restored.complete,
                offset=restored.offset,
                position=restored.position,
            )
        unknown = sorted(set(values) - set(self._owners))
        if unknown:
            log.warning(
                "pipeline %s: the changelog holds state of %s for steps this pipeline does not "
                "have (%s); it is left where it is",
                self.pipeline,
                partition,
                ", ".join(unknown),
            )

    def release(self, partitions: Collection[str]) -> None:
        """Forget partitions given up: their next owner restores them from the changelog."""
        for partition in partitions:
            self._marks.pop(partition, None)
            self._staged.pop(partition, None)
            for owner in self._owners.values():
                owner.release(partition)

    # -- the checkpoint's side -------------------------------------------------------

    async def commit(self, positions: Mapping[str, int]) -> None:
        """Log the cut's changes and positions of every restored partition that moved.

        Called after a checkpoint is cut and before it is saved, with its positions:
        the checkpoint is saved only once its changes are durable in the changelog.
        """
        staged, self._staged = self._staged, {}
        targets = [
            partition
            for partition, mark in self._marks.items()
            if partition in positions and (partition in staged or positions[partition] != mark)
        ]
        try:
            for partition in targets:
                await self.changelog.write(
                    partition, staged.get(partition, {}), positions[partition]
                )
            offsets = await self.changelog.flush() if targets else {}
        except BaseException:
            self._restage(staged)
            raise
        for partition in targets:
            if partition in self._marks:  # not released meanwhile
                self._marks[partition] = position = positions[partition]
                for owner in self._owners.values():
                    await owner.logged(partition, offsets.get(partition), position)

    def _restage(self, staged: dict[str, dict[str, dict[str, Entry]]]) -> None:
        """Put back changes a failed commit did not log, under any cut since."""
        for partition, steps in staged.items():
            if partition not in self._marks:
                continue
            newer = self._staged.setdefault(partition, {})
            for step_id, changes in steps.items():
                newer[step_id] = {**changes, **newer.get(step_id, {})}
