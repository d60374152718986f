"""A concurrent writer for the PostgreSQL tests: inserts, updates and deletes, bounded."""

from __future__ import annotations

import random
from functools import partial
from typing import TYPE_CHECKING

import anyio
import anyio.abc
import anyio.lowlevel
import asyncpg

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

ITEMS = "CREATE TABLE {} (id int PRIMARY KEY, name text, version int NOT NULL, doc jsonb)"
"""The table the writer changes (``items``), and the shape of the tables copies go to."""


async def start_writers(
    dsn: str,
    stop: anyio.Event,
    task_group: anyio.abc.TaskGroup,
    initial: int,
    *,
    pause: float = 0.001,
) -> None:
    """Two writers: one owns the ``initial`` rows ``0..initial-1``, the other inserts its own."""
    first = partial(writer, owned=range(initial), first_id=initial, pause=pause)
    second = partial(writer, owned=range(0), first_id=10**8, pause=pause)
    task_group.start_soon(first, dsn, stop, random.Random(0))
    task_group.start_soon(second, dsn, stop, random.Random(1))
    await anyio.lowlevel.checkpoint()


async def writer(
    dsn: str,
    stop: anyio.Event,
    rng: random.Random,
    *,
    owned: range,
    first_id: int,
    pause: float = 0.001,
) -> int:
    """Insert, update (bumping ``version``) and delete rows until ``stop``, up to 300 at once.

    It changes only the rows in ``owned`` and those it inserts (from ``first_id``
    on), so writers never wait for each other's locks. Returns the next free id.
    """
    conn = await asyncpg.connect(dsn)
    next_id, live = first_id, list(owned)
    try:
        for _ in range(100_000):
            if stop.is_set():
                break
            async with conn.transaction():
                for _ in range(rng.choice([1, 1, 3, 20, 20, 300])):
                    action = rng.random()
                    if action < 0.4 or not live:
                        await conn.execute("INSERT INTO items VALUES ($1, 'w', 0)", next_id)
                        live.append(next_id)
                        next_id += 1
                    elif action < 0.9:
                        await conn.execute(
                            "UPDATE items SET version = version + 1 WHERE id = $1",
                            rng.choice(live),
                        )
                    else:
                        await conn.execute("DELETE FROM items WHERE id = $1", live.pop())
            await anyio.sleep(pause)
    finally:
        await conn.close()
    return next_id


async def eventually(check: Callable[[], Awaitable[bool]], *, within: float = 30.0) -> None:
    """Await ``check()`` every 20 ms until it holds; fail after ``within`` seconds."""
    with anyio.fail_after(within):
        for _ in range(int(within / 0.02) + 1):
            if await check():
                return
            await anyio.sleep(0.02)
    raise TimeoutError(f"{check.__qualname__} did not hold within {within} s")
