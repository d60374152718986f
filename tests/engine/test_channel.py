"""The batch channel between runner tasks: bounded, FIFO, and ends as anyio streams do."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import pytest

from riprap._runtime.channel import channel
from riprap.testing import wait_until

if TYPE_CHECKING:
    from collections.abc import Callable

    from riprap._runtime.channel import ChannelReceiver, ChannelSender

pytestmark = pytest.mark.anyio


def int_channel(capacity: int) -> tuple[ChannelSender[int], ChannelReceiver[int]]:
    """A channel of ints: ``channel`` takes no item, so its item type is named here."""
    return channel(capacity)


async def test_items_arrive_in_order_and_iteration_ends_when_the_sender_closes() -> None:
    """Items come out in the order sent, and ``async for`` ends once the sender closes."""
    send, receive = int_channel(2)
    received: list[int] = []

    async def consume() -> None:
        async with receive:
            received.extend([item async for item in receive])

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        async with send:
            for i in range(10):
                await send.send(i)

    assert list(range(10)) == received


async def test_a_full_channel_holds_the_sender_until_an_item_is_taken() -> None:
    """A send into a full channel waits until the receiver takes an item."""
    send, receive = int_channel(2)
    sent: list[int] = []

    async def produce() -> None:
        for i in range(3):
            await send.send(i)
            sent.append(i)

    async with anyio.create_task_group() as tg:
        tg.start_soon(produce)
        await wait_until(lambda: receive.buffered() == 2)
        assert [0, 1] == sent  # the third send waits for room
        assert 0 == await receive.receive()
        await wait_until(lambda: len(sent) == 3)
    assert [1, 2] == [await receive.receive(), await receive.receive()]


async def test_receive_waits_for_a_send() -> None:
    """A receive on an empty channel waits until something is sent."""
    send, receive = int_channel(1)
    got: list[int] = []

    async def consume() -> None:
        got.append(await receive.receive())

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        await anyio.wait_all_tasks_blocked()
        assert [] == got
        await send.send(1)
    assert [1] == got


async def test_buffered_items_are_received_after_the_sender_closed() -> None:
    """Items buffered before the sender closed still arrive, then the stream ends."""
    send, receive = int_channel(3)
    await send.send(1)
    await send.send(2)
    send.close()
    assert [1, 2] == [await receive.receive(), await receive.receive()]
    with pytest.raises(anyio.EndOfStream):
        await receive.receive()


async def test_a_receiver_waiting_when_the_sender_closes_gets_end_of_stream() -> None:
    """A receiver blocked on an empty channel ends with EndOfStream when the sender closes."""
    send, receive = int_channel(1)
    async with anyio.create_task_group() as tg:
        tg.start_soon(_close_when_blocked, send.close)
        with pytest.raises(anyio.EndOfStream):
            await receive.receive()


async def test_a_waiting_sender_fails_when_the_receiver_closes() -> None:
    """A sender blocked on a full channel, and every later send, fail once the receiver closes."""
    send, receive = int_channel(1)
    await send.send(1)
    async with anyio.create_task_group() as tg:
        tg.start_soon(_close_when_blocked, receive.close)
        with pytest.raises(anyio.BrokenResourceError):
            await send.send(2)
    with pytest.raises(anyio.BrokenResourceError):
        await send.send(3)


async def test_using_a_closed_end_is_an_error() -> None:
    """Sending or receiving on an end closed by its own task raises ClosedResourceError."""
    send, receive = int_channel(1)
    send.close()
    with pytest.raises(anyio.ClosedResourceError):
        await send.send(1)
    receive.close()
    with pytest.raises(anyio.ClosedResourceError):
        await receive.receive()


async def test_a_cancelled_wait_leaves_the_channel_usable() -> None:
    """Cancelling a blocked send or receive leaves the channel consistent and usable."""
    send, receive = int_channel(1)
    with anyio.move_on_after(0.01):
        await receive.receive()
    await send.send(7)
    assert 7 == await receive.receive()
    await send.send(8)
    with anyio.move_on_after(0.01):
        await send.send(9)  # full: cancelled while waiting, never added
    assert 1 == receive.buffered()
    assert 8 == await receive.receive()


def test_capacity_must_be_positive() -> None:
    """A channel needs room for at least one item."""
    with pytest.raises(ValueError, match="capacity must be at least 1, got 0"):
        channel(0)


async def _close_when_blocked(close: Callable[[], None]) -> None:
    """Call ``close`` once every other task is blocked (on the channel)."""
    await anyio.wait_all_tasks_blocked()
    close()
