"""A stateful pipeline scales from one to three processes and back; one is killed, one joins late.

One member of a group starts a keyed windowed count (state in a changelog,
positions in the group's offsets) while the input is still being produced,
two more join it; one of the three is killed with SIGKILL mid-run and
another joins later. The last output of every (user, window) must equal that
window's count in the input: a lost state change or one counted twice would
show there. Then every member stops and a fresh process, with nothing local,
restores the whole state from the changelog and goes on counting from it (as
a member of a new group, whose positions come from the changelog's marks).
With the SQLite store each process keeps a local copy of its own, as on
machines of their own.
"""

from __future__ import annotations

import signal
import uuid
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pytest

pytest.importorskip("aiokafka")

from ._changelog_worker import WINDOW
from ._group import Feeder, GroupWatch, Members, until

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from .conftest import KafkaHelper

pytestmark = [pytest.mark.anyio, pytest.mark.kafka, pytest.mark.slow]

WORKER = Path(__file__).with_name("_changelog_worker.py")
PARTITIONS = 6
USERS = 40
RECORDS = 16_000


def order(i: int) -> tuple[bytes, bytes]:
    """The ``i``-th order: keyed by its user, so a user's orders share a partition."""
    user = f"u{(i * 7) % USERS}"
    return user.encode(), orjson.dumps({"id": i, "user": user})


def expected_counts(records: range) -> dict[tuple[str, int], int]:
    """Per (user, window): how many of ``records`` it has."""
    return dict(Counter((orjson.loads(order(i)[1])["user"], i // WINDOW) for i in records))


def last_counts(messages: list[Any]) -> dict[tuple[str, int], int]:
    """Per (user, window): the count of its last output (a user's outputs share a partition)."""
    last: dict[tuple[str, int], int] = {}
    for message in sorted(messages, key=lambda m: (m.partition, m.offset)):
        value = orjson.loads(message.value)
        last[(value["user"], value["window"])] = value["count"]
    return last


@pytest.mark.parametrize("store", ["memory", "sqlite"])
async def test_three_members_a_kill_and_a_late_joiner_count_every_window_exactly(
    kafka: KafkaHelper, tmp_path: Path, store: str
) -> None:
    source, out = await kafka.create_topic(PARTITIONS), await kafka.create_topic(PARTITIONS)
    group, changelog = f"g-{uuid.uuid4().hex}", f"{source}-changelog"
    members = Members(tmp_path, [kafka.bootstrap, source, out, group], worker=WORKER)
    feeder = Feeder(kafka.bootstrap, source, per_round=100, limit=RECORDS, message=order)
    with members:
        async with feeder, GroupWatch(kafka.bootstrap, source, group, PARTITIONS) as watch:
            members.start("a", changelog, store)  # one process alone first
            await until(lambda: at_least(watch, 1_000), "1,000 records committed by one", members)
            for name in ("b", "c"):
                members.start(name, changelog, store)
            await watch.wait_stable(3, members)  # all three at work
            members.signal("b", signal.SIGKILL)
            del members.procs["b"]
            committed = watch.total()
            await until(
                lambda: at_least(watch, committed + 2_000), "progress after the kill", members
            )
            members.start("d", changelog, store)
            await until(fed(feeder), "the whole input produced", members)
            produced = await feeder.stop()
            assert RECORDS == produced
            await until(lambda: at_least(watch, produced), "every record committed", members)
            assert [] == watch.decreases
        for name in ("a", "c", "d"):
            assert 0 == await members.stop(name), members.stderr(name)

        outputs = await kafka.read_to_end(out)
        assert expected_counts(range(produced)) == last_counts(outputs)

        # A process of a new group, with nothing local, takes the state and the positions
        # from the changelog alone.
        more = range(produced, produced + USERS)
        await kafka.produce(source, [(*order(i), []) for i in more])
        fresh = f"{group}-fresh"
        members.args = [kafka.bootstrap, source, out, fresh]
        members.start("e", changelog, store)
        async with GroupWatch(kafka.bootstrap, source, fresh, PARTITIONS) as watch:
            await until(lambda: at_least(watch, produced + USERS), "the last records", members)
        assert 0 == await members.stop("e"), members.stderr("e")
    outputs = await kafka.read_to_end(out)
    assert expected_counts(range(produced + USERS)) == last_counts(outputs)


async def at_least(watch: GroupWatch, total: int) -> bool:
    """Whether the group has committed ``total`` records or more."""
    await watch.sample()
    return watch.total() >= total


def fed(feeder: Feeder) -> Callable[[], Awaitable[bool]]:
    """A condition: ``feeder`` has produced all it was to."""

    async def done() -> bool:
        return feeder.produced >= feeder.limit

    return done
