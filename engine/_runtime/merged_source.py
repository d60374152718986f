"""Several sources read as one pipeline's input, each under a name (``Pipeline.sources``).

A :class:`MergedSource` gives each member's partitions the prefix ``name/``,
so every member's positions live in the one checkpoint and stay where they
are as long as the names do (not the sources' own names, nor their order).
The runtime reads every member in a task of its own (:attr:`MergedSource.members`):
each takes room for its batches from the one in-flight bound and sends them
into the one queue before the steps, so a slow sink slows every source, and a
member that ends leaves the others reading; the run's input ends when the last
member ends. Hooks reach each member with its own partition names: the
positions it opens at, ``committed``, ``lag`` and the ``drain`` of a rebalance.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar, final

from riprap._core.errors import ConfigError
from riprap._core.steps import check_name

if TYPE_CHECKING:
    from collections.abc import Collection, Mapping

    from riprap._core.protocols import Source, SourceContext
    from riprap._core.records import SourceBatch

T = TypeVar("T")

SEPARATOR = "/"
"""Between a member's name and its own partition name (names cannot hold it)."""


def _own(prefix: str, positions: Mapping[str, T]) -> dict[str, T]:
    """The positions (or identities) under ``prefix``, by the member's own partition names."""
    cut = len(prefix)
    return {p[cut:]: pos for p, pos in positions.items() if p.startswith(prefix)}


@final
class MemberSource:
    """One source of a merge; the runtime sees its partitions as ``name/partition``.

    Args:
        name: The member's name in the merge (its partitions' prefix).
        source: The source itself.
    """

    __slots__ = ("_identities", "name", "prefix", "source")

    def __init__(self, name: str, source: Source) -> None:
        self.name = name
        self.source = source
        self.prefix = name + SEPARATOR
        self._identities: tuple[Mapping[str, str] | None, Mapping[str, str]] = (None, {})

    async def open(self, context: SourceContext) -> None:
        """Open the member at its own positions, with a ``drain`` that speaks its names."""
        prefix = self.prefix
        drain = context.drain

        async def drain_own(partitions: Collection[str], within: float) -> Mapping[str, int]:
            drained = await drain([prefix + p for p in partitions], within)
            return _own(prefix, drained)

        assigned = context.assigned

        async def assigned_own(starts: Mapping[str, int | None]) -> Mapping[str, int]:
            floors = await assigned({prefix + p: start for p, start in starts.items()})
            return _own(prefix, floors)

        own = replace(
            context,
            positions=_own(prefix, context.positions),
            drain=drain_own,
            assigned=assigned_own,
            identities=_own(prefix, context.identities),
        )
        await self.source.open(own)

    async def read(self, max_records: int) -> SourceBatch | None:
        """The member's next batch, its partition renamed ``name/partition``."""
        batch = await self.source.read(max_records)
        if batch is not None:
            batch.partition = self.prefix + batch.partition
        return batch

    async def committed(self, positions: Mapping[str, int]) -> None:
        """Hand the member its part of a saved checkpoint, if it has that hook and a part."""
        committed = getattr(self.source, "committed", None)
        own = _own(self.prefix, positions)
        if committed is not None and own:
            await committed(own)

    def identities(self, positions: Mapping[str, int]) -> Mapping[str, str]:
        """The member's identities by prefixed partition (none if it has no such hook)."""
        identities = getattr(self.source, "identities", None)
        if not callable(identities):
            return {}
        own = identities(_own(self.prefix, positions))
        if own is not self._identities[0]:  # the same mapping while nothing changed
            self._identities = (own, {self.prefix + p: i for p, i in own.items()})
        return self._identities[1]

    def lag(self) -> dict[str, int] | None:
        """The member's lag by prefixed partition, ``None`` if it does not know."""
        lag = getattr(self.source, "lag", None)
        if not callable(lag):
            return None
        return {self.prefix + p: behind for p, behind in lag().items()}

    async def aclose(self) -> None:
        await self.source.aclose()


@final
class MergedSource:
    """The sources of a pipeline that reads several, as one :class:`~riprap.Source`.

    The runtime reads the :attr:`members` concurrently. :meth:`read` serves a
    caller that reads the merge by hand: it takes the members in turn, one
    batch each, so a member that waits holds up the others there.

    Raises:
        ConfigError: No source, a name that is not a plain name, or one source
            given twice.
    """

    __slots__ = ("_live", "_next", "members", "name")

    def __init__(self, sources: Mapping[str, Source]) -> None:
        if not sources:
            raise ConfigError("sources", "needs at least one source, each under a name")
        seen: dict[int, str] = {}
        for name, source in sources.items():
            check_name(f"sources.{name}", name)
            other = seen.setdefault(id(source), name)
            if other != name:
                raise ConfigError(
                    f"sources.{name}",
                    f"is the same source object as sources.{other}; give each name a "
                    "source of its own",
                )
        self.members = tuple(MemberSource(name, source) for name, source in sources.items())
        self.name = "+".join(sources)
        self._live = list(self.members)
        self._next = 0

    async def open(self, context: SourceContext) -> None:
        """Open every member at its own positions."""
        for member in self.members:
            await member.open(context)

    async def read(self, max_records: int) -> SourceBatch | None:
        """The next batch of the members in turn; ``None`` once every member has ended."""
        live = self._live
        while live:
            self._next %= len(live)
            batch = await live[self._next].read(max_records)
            if batch is not None:
                self._next += 1
                return batch
            del live[self._next]
        return None

    async def committed(self, positions: Mapping[str, int]) -> None:
        """Hand each member its part of a saved checkpoint."""
        for member in self.members:
            await member.committed(positions)

    @property
    def whole_partitions(self) -> bool:
        """Whether every member's shares are whole partitions, each always one worker's."""
        return all(getattr(m.source, "whole_partitions", False) for m in self.members)

    def for_worker(self, index: int, count: int) -> MergedSource:
        """Worker ``index`` of ``count``: each member's share, under the same names.

        A merge of consumer-group members only (each shares itself) is itself.

        Raises:
            ConfigError: A member cannot be split (it has no ``for_worker``, or
                its own refuses), named.
        """
        shares: dict[str, Source] = {}
        for member in self.members:
            split = getattr(member.source, "for_worker", None)
            if not callable(split):
                raise ConfigError(
                    "workers",
                    f"source {member.name!r} of the merge ({type(member.source).__name__}) "
                    f"cannot be split among {count} workers: it has no for_worker(index, count)",
                )
            shares[member.name] = split(index, count)
        if all(shares[member.name] is member.source for member in self.members):
            return self
        return MergedSource(shares)

    def identities(self, positions: Mapping[str, int]) -> Mapping[str, str]:
        """Every member's identities at ``positions``, by prefixed partition."""
        members = self.members
        return {p: i for member in members for p, i in member.identities(positions).items()}

    def lag(self) -> dict[str, int] | None:
        """Every member's lag that is known, by prefixed partition; ``None`` if none knows."""
        known = [lag for member in self.members if (lag := member.lag()) is not None]
        return {p: behind for lag in known for p, behind in lag.items()} if known else None

    async def aclose(self) -> None:
        """Close every member, each even if one before it failed."""
        await _close_all(list(self.members))


async def _close_all(members: list[Any]) -> None:
    if not members:
        return
    try:
        await members[0].aclose()
    finally:
        await _close_all(members[1:])
