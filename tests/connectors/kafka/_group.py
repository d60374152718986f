"""Helpers for tests that run consumer-group members as child processes.

A :class:`Feeder` produces keyed orders continuously, a :class:`GroupWatch`
polls the group's committed offsets and records every decrease, and
:class:`Members` starts, stops and freezes worker processes (always killed and
reaped on the way out). Every wait is bounded in polls and in time.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self, final

import anyio
import orjson
import pytest

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from types import TracebackType

DEADLINE = 45.0
"""Seconds any one wait may take."""
POLL = 0.05
"""Seconds between two looks."""
WORKER = Path(__file__).with_name("_kafka_worker.py")


def _tail(path: Path) -> str:
    """The end of a child's stderr."""
    return path.read_text(errors="replace")[-3000:] if path.exists() else "(no stderr)"


@final
class Members:
    """Worker processes of one group, started from the same arguments, each under a name."""

    def __init__(self, workdir: Path, args: list[str], worker: Path = WORKER) -> None:
        self.workdir = workdir
        self.args = args
        self.worker = worker
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        """The running members by name."""
        self.started = 0
        self._all: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, checkpoint: str, *extra: str) -> None:
        """Start member ``name`` with its checkpoint store (output in ``<name>-<n>.out|err``)."""
        self.started += 1
        stem = self.workdir / f"{name}-{self.started}"
        with stem.with_suffix(".out").open("wb") as out, stem.with_suffix(".err").open("wb") as err:
            self.procs[name] = subprocess.Popen(
                [sys.executable, str(self.worker), *self.args, checkpoint, *extra],
                cwd=self.workdir,
                stdout=out,
                stderr=err,
            )
        self.procs[name].stderr_path = stem.with_suffix(".err")  # type: ignore[attr-defined]
        self._all.append(self.procs[name])

    def signal(self, name: str, signum: signal.Signals) -> None:
        """Send ``signum`` to member ``name``."""
        self.procs[name].send_signal(signum)

    async def stop(self, name: str) -> int:
        """SIGTERM member ``name`` and wait for its exit code (bounded)."""
        proc = self.procs[name]
        proc.send_signal(signal.SIGTERM)
        for _ in range(int(DEADLINE / POLL)):
            code = proc.poll()
            if code is not None:
                del self.procs[name]
                return code
            await anyio.sleep(POLL)
        pytest.fail(f"member {name} did not stop within {DEADLINE}s:\n{self.stderr(name)}")

    def stderr(self, name: str) -> str:
        """The end of member ``name``'s stderr."""
        path: Path | None = getattr(self.procs[name], "stderr_path", None)
        return "(no stderr)" if path is None else _tail(path)

    def check_alive(self) -> None:
        """Fail at once, with its stderr, if a member has exited."""
        for name, proc in self.procs.items():
            code = proc.poll()
            if code is not None:
                pytest.fail(f"member {name} exited with {code}:\n{self.stderr(name)}")

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for proc in self._all:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
            proc.wait(timeout=DEADLINE)


async def until(
    condition: Callable[[], Awaitable[bool]], what: str, members: Members | None = None
) -> None:
    """Wait until ``condition`` holds; fail if a member exits or time runs out."""
    deadline = time.monotonic() + DEADLINE
    for _ in range(int(DEADLINE / POLL)):
        if await condition():
            return
        if members is not None:
            members.check_alive()
        if time.monotonic() > deadline:
            break
        await anyio.sleep(POLL)
    pytest.fail(f"timed out waiting for {what}")


@final
class GroupWatch:
    """Polls a group's committed offsets of a topic; every decrease is recorded."""

    def __init__(self, bootstrap: str, topic: str, group: str, partitions: int) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.group = group
        self.partitions = partitions
        self.latest: dict[int, int] = {}
        self.decreases: list[tuple[int, int, int]] = []
        """``(partition, before, after)`` for every offset seen to go down."""
        self.samples = 0
        self._stack = AsyncExitStack()
        self._consumer: Any = None
        self._admin: Any = None

    async def __aenter__(self) -> Self:
        from aiokafka import AIOKafkaConsumer
        from aiokafka.admin import AIOKafkaAdminClient

        # A consumer with a group id that never subscribes reads offsets, never joins.
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=self.group, enable_auto_commit=False
        )
        await self._consumer.start()
        self._stack.push_async_callback(self._consumer.stop)
        self._admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await self._admin.start()
        self._stack.push_async_callback(self._admin.close)
        tg = await self._stack.enter_async_context(anyio.create_task_group())
        self._stack.callback(tg.cancel_scope.cancel)
        tg.start_soon(self._poll)
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stack.aclose()

    async def _poll(self) -> None:
        for _ in range(100_000):
            await self.sample()
            await anyio.sleep(POLL)

    async def sample(self) -> dict[int, int]:
        """Read the committed offsets now; record decreases; return them."""
        from aiokafka import TopicPartition

        for p in range(self.partitions):
            offset = await self._consumer.committed(TopicPartition(self.topic, p))
            if offset is None:
                continue
            before = self.latest.get(p)
            if before is not None and offset < before:
                self.decreases.append((p, before, offset))
            self.latest[p] = offset if before is None else max(before, offset)
        self.samples += 1
        return dict(self.latest)

    def total(self) -> int:
        """The sum of the highest committed offsets seen."""
        return sum(self.latest.values())

    async def members(self) -> tuple[str, int]:
        """The group's state and its number of members."""
        described = await self._admin.describe_consumer_groups([self.group])
        groups = described[0].groups
        if not groups:
            return "Dead", 0
        _, _, state, _, _, members = groups[0][:6]
        return str(state), len(members)

    async def wait_stable(self, count: int, members: Members) -> None:
        """Wait until the group is stable with ``count`` members, then until every partition moves.

        Every partition is fed, so every member's partitions move only once it
        works: then the group has settled with all of them at work.
        """

        async def stable() -> bool:
            return (await self.members()) == ("Stable", count)

        await until(stable, f"a stable group of {count}", members)
        before = dict(self.latest)

        async def moved() -> bool:
            now = self.latest
            return all(now.get(p, 0) > before.get(p, 0) for p in range(self.partitions))

        await until(moved, "every partition's committed offset moving on", members)


def _order(i: int) -> tuple[bytes, bytes]:
    """The ``i``-th keyed order: key ``k<i>``."""
    return f"k{i}".encode(), orjson.dumps({"id": i, "qty": i % 5})


@final
class Feeder:
    """Produces keyed orders (``k0``, ``k1``, ...) in small rounds until stopped."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        per_round: int,
        limit: int,
        message: Callable[[int], tuple[bytes, bytes]] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.per_round = per_round
        self.limit = limit
        self.message = message or _order
        """``message(i)``: the key and value of the ``i``-th message."""
        self.produced = 0
        self._stop = anyio.Event()
        self._done = anyio.Event()
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> Self:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, enable_idempotence=False, acks="all", linger_ms=5
        )
        await producer.start()
        self._stack.push_async_callback(producer.stop)
        tg = await self._stack.enter_async_context(anyio.create_task_group())
        self._stack.callback(tg.cancel_scope.cancel)
        tg.start_soon(self._feed, producer)
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stack.aclose()

    async def _feed(self, producer: Any) -> None:
        import asyncio

        try:
            await self._rounds(producer, asyncio.gather)
        finally:
            self._done.set()

    async def _rounds(self, producer: Any, gather: Callable[..., Awaitable[Any]]) -> None:
        while not self._stop.is_set() and self.produced < self.limit:
            start = self.produced
            futures = []
            for i in range(start, min(start + self.per_round, self.limit)):
                key, value = self.message(i)
                futures.append(await producer.send(self.topic, value, key=key))
            await gather(*futures)
            self.produced += len(futures)
            await anyio.sleep(POLL)

    async def stop(self) -> int:
        """Stop producing (after the round in progress); return how many were produced."""
        self._stop.set()
        with anyio.fail_after(DEADLINE):
            await self._done.wait()
        return self.produced
