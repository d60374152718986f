"""Sinks that tests hold in their hand."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

if TYPE_CHECKING:
    from riprap import Batch


class GatedSink:
    """Writes only while its gate is open: a sink that is slow, or down, until the test says."""

    idempotent = False

    def __init__(self, name: str = "gated") -> None:
        self.name = name
        self.gate = anyio.Event()
        self.values: list[Any] = []

    async def open(self) -> None:
        await anyio.lowlevel.checkpoint()

    async def write(self, batch: Batch) -> None:
        await self.gate.wait()
        self.values.extend(batch.items)

    async def flush(self) -> None:
        await anyio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await anyio.lowlevel.checkpoint()
