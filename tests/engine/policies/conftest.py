"""Fixtures for the policy tests: a virtual clock whose time jumps when every task is blocked."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from riprap.testing import VirtualClock

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


@pytest.fixture
async def clock() -> AsyncIterator[VirtualClock]:
    """A virtual clock with its autojump driver running for the whole test."""
    clock = VirtualClock()
    async with clock.autojump():
        yield clock
