"""Group positions never move backwards: frozen members, restart storms (child processes)."""

from __future__ import annotations

import signal
import uuid
from collections import Counter
from typing import TYPE_CHECKING

import pytest

pytest.importorskip("aiokafka")

from ._group import Feeder, GroupWatch, Members, until

if TYPE_CHECKING:
    from pathlib import Path

    from .conftest import KafkaHelper

pytestmark = [pytest.mark.anyio, pytest.mark.kafka, pytest.mark.slow]

PARTITIONS = 4
SESSION_MS = "1500"
"""A short session: a frozen member is fenced after 1.5 s, and joins complete sooner."""


async def output_keys(kafka: KafkaHelper, topic: str) -> Counter[bytes]:
    """How often each key reached the output topic (read to its end: the members have stopped)."""
    messages = await kafka.read_to_end(topic)
    return Counter(m.key for m in messages)


async def test_a_member_frozen_past_its_session_never_moves_group_offsets_back(
    kafka: KafkaHelper, tmp_path: Path
) -> None:
    """SIGSTOP a member past its session timeout, resume it: the group's offsets never decrease."""
    source, out = await kafka.create_topic(PARTITIONS), await kafka.create_topic(PARTITIONS)
    group = f"g-{uuid.uuid4().hex}"
    args = [kafka.bootstrap, source, out, group]
    feeder = Feeder(kafka.bootstrap, source, per_round=100, limit=200_000)
    watch = GroupWatch(kafka.bootstrap, source, group, PARTITIONS)
    with Members(tmp_path, args) as members:
        async with feeder, watch:
            members.start("a", "kafka", SESSION_MS)
            members.start("b", "kafka", SESSION_MS)
            await watch.wait_stable(2, members)
            members.signal("a", signal.SIGSTOP)
            frozen = dict(watch.latest)

            async def b_took_over() -> bool:
                return all(watch.latest.get(p, 0) > frozen.get(p, 0) for p in range(PARTITIONS))

            await until(b_took_over, "member B committing every partition", members)
            members.signal("a", signal.SIGCONT)
            await watch.wait_stable(2, members)
            # B leaves: A gets every partition, including the ones it had before it froze.
            assert 0 == await members.stop("b")
            await watch.wait_stable(1, members)
            produced = await feeder.stop()

            async def all_committed() -> bool:
                return produced == watch.total()

            await until(all_committed, "every record committed", members)
            assert 0 == await members.stop("a")
        keys = await output_keys(kafka, out)
    assert [] == watch.decreases
    assert {f"k{i}".encode() for i in range(produced)} == set(keys)


@pytest.mark.parametrize("store", ["kafka", "sqlite"])
async def test_graceful_restart_storm_never_moves_offsets_back_nor_repeats_a_record(
    kafka: KafkaHelper, tmp_path: Path, store: str
) -> None:
    """Eight graceful restarts of two members: offsets never decrease, each key is written once."""
    source, out = await kafka.create_topic(PARTITIONS), await kafka.create_topic(PARTITIONS)
    group = f"g-{uuid.uuid4().hex}"
    feeder = Feeder(kafka.bootstrap, source, per_round=100, limit=200_000)
    watch = GroupWatch(kafka.bootstrap, source, group, PARTITIONS)

    def store_of(name: str) -> str:
        return "kafka" if store == "kafka" else str(tmp_path / f"{name}.db")

    with Members(tmp_path, [kafka.bootstrap, source, out, group]) as members:
        async with feeder, watch:
            members.start("a", store_of("a"), SESSION_MS)
            members.start("b", store_of("b"), SESSION_MS)
            await watch.wait_stable(2, members)
            for restart in range(8):
                name = "ab"[restart % 2]
                assert 0 == await members.stop(name)
                members.start(name, store_of(name), SESSION_MS)
                await watch.wait_stable(2, members)
            produced = await feeder.stop()

            async def all_committed() -> bool:
                return produced == watch.total()

            await until(all_committed, "every record committed", members)
            assert (0, 0) == (await members.stop("a"), await members.stop("b"))
        keys = await output_keys(kafka, out)
    assert [] == watch.decreases
    assert {f"k{i}".encode(): 1 for i in range(produced)} == dict(keys)
