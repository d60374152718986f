"""Dependencies that misbehave, shared by the policy tests."""

from __future__ import annotations

import asyncio

import anyio


async def returns_when_cancelled() -> str:
    """Waits forever, but catches the cancellation meant to stop it and returns ``"swallowed"``."""
    try:
        await anyio.sleep_forever()
    except asyncio.CancelledError:
        return "swallowed"
    return "unreachable"
