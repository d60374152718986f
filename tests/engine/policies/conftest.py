"""Fixtures for the policy tests: a virtual clock whose time jumps when every task is blocked."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from riprap._virtual_clock import VirtualClock


@pytest.fixture
async def clock() -> AsyncIterator[VirtualClock]:
    """A virtual clock with its autojump driver running for the whole test."""
    clock = VirtualClock()
    async with clock.autojump():
        yield clock
