"""Fan-out and routing: batches to branches, each branch's steps and sink in tasks of their own.

Completion needs nothing new: a batch sent to ``k`` branches has its ack
retained ``k - 1`` more times, and each branch releases one share when it is
done with the batch (its sink wrote it, its filter dropped it, or its dead
letters are durable). The batch's positions become done when the last share
is released, so the done-prefix rule of :class:`~riprap._runtime.acks.PartitionTracker`
holds across branches as it does along one line (I1). The fork runs in the
task before the branches (no task or queue of its own). A route sends each
branch only the records it picked (a batch of its own, sharing the ack the
same way); records it leaves out are dropped or dead-lettered, as for any
step. A pipeline with one sink never passes through here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, final

from riprap._core.records import Batch
from riprap._runtime.channel import ChannelReceiver, ChannelSender, ClosesOnExit, channel
from riprap._runtime.step_stats import entry_step_id

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from anyio.abc import TaskGroup

    from riprap._runtime.route import RouteRunner
    from riprap._runtime.segments import Segment
    from riprap._runtime.sink_runner import SinkRunner


@final
class BranchRunner:
    """One branch at run time: its segments (steps), then its sink."""

    __slots__ = ("name", "segments", "sink")

    def __init__(self, name: str, segments: Sequence[Segment], sink: SinkRunner) -> None:
        self.name = name
        self.segments = tuple(segments)
        self.sink = sink


@final
class Branches:
    """The branches of one run: their channels, made up front, the fork, and their tasks.

    The fork is what the last runner before the branches sends into (the
    source task itself when every step before them is fused), so a fan-out
    costs no task or queue hop of its own.

    Args:
        branches: The branches, in order.
        queue_size: Batches each branch's queues hold.
        route: Picks each record's branches; ``None``: every branch gets every batch.
    """

    __slots__ = ("_branches", "_streams", "entries", "fork", "queues")

    def __init__(
        self, branches: Sequence[BranchRunner], queue_size: int, route: RouteRunner | None
    ) -> None:
        self._branches = tuple(branches)
        self._streams: list[list[tuple[ChannelSender[Batch], ChannelReceiver[Batch]]]] = [
            [channel(queue_size) for _ in range(len(branch.segments) + 1)] for branch in branches
        ]
        entries = [streams[0][0] for streams in self._streams]
        self.entries = tuple(entries)
        """The channel into each branch (a side output's stages send there, not the fork)."""
        self.fork = Fork(entries) if route is None else RouteFork(entries, route)
        self.queues: dict[str, ChannelReceiver[Batch]] = {}
        """The queue in front of each branch step and sink, by its name (``queue_depths``)."""
        for branch, streams in zip(self._branches, self._streams, strict=True):
            names = [entry_step_id(s) for s in branch.segments] + [branch.sink.sink.name]
            self.queues.update(
                {name: receive for name, (_, receive) in zip(names, streams, strict=True)}
            )

    def start(self, tg: TaskGroup, finished: Callable[[], None]) -> None:
        """Start every branch's steps and sink in ``tg``; ``finished()`` once every sink has ended.

        The tasks join the run's own task group, as a single sink's does, so a
        failing branch cancels the whole run at once.
        """
        left = len(self._branches)

        async def run_sink(runner: SinkRunner, receive: ChannelReceiver[Batch]) -> None:
            nonlocal left
            await runner.run(receive)
            left -= 1
            if left == 0:
                finished()

        for branch, streams in zip(self._branches, self._streams, strict=True):
            for segment, (_, receive), (send, _) in zip(
                branch.segments, streams[:-1], streams[1:], strict=True
            ):
                tg.start_soon(segment.run, receive, send)
            tg.start_soon(run_sink, branch.sink, streams[-1][1])


class _ForkBase(ClosesOnExit):
    """Closing a fork closes every branch's entry: each branch ends after what it holds."""

    __slots__ = ("_sends",)

    def __init__(self, sends: Sequence[ChannelSender[Batch]]) -> None:
        self._sends = tuple(sends)

    def close(self) -> None:
        for send in self._sends:
            send.close()


@final
class Fork(_ForkBase):
    """Sends each batch to every branch, its ack retained once per extra branch.

    Every branch gets a batch of its own (a step or a sink may replace a
    batch's items); the last one gets the original list, the others a copy.
    The values themselves are shared, not copied.
    """

    __slots__ = ()

    async def send(self, batch: Batch, /) -> None:
        sends = self._sends
        ack, items, origin = batch.ack, batch.items, batch.origin
        # Before the first send: a branch may finish its share before the next
        # one is sent, and must not complete the ack meanwhile.
        ack.retain(len(sends) - 1)
        for send in sends[:-1]:
            await send.send(Batch(list(items), ack, origin))
        await sends[-1].send(batch)


@final
class RouteFork(_ForkBase):
    """Sends each branch the records its route picked for it (see :class:`RouteRunner`)."""

    __slots__ = ("_route",)

    def __init__(self, sends: Sequence[ChannelSender[Batch]], route: RouteRunner) -> None:
        super().__init__(sends)
        self._route = route

    async def send(self, batch: Batch, /) -> None:
        parts = await self._route.split(batch)
        for send, part in zip(self._sends, parts, strict=True):
            if part is not None:
                await send.send(part)
