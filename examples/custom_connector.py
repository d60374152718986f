"""A connector written from riprap's public API alone: a text-file source and a JSON Lines sink.

``LinesSource`` reads one text file as one partition whose positions are line
numbers, and resumes from the checkpointed position. ``JsonLinesAppendSink``
appends each batch to a file and fsyncs it before ``write`` returns, which is
what makes a batch *done*. It is not idempotent: after a crash the records
after the last checkpoint are written again (at-least-once), so it says so.

Run it: ``python examples/custom_connector.py input.txt out.jsonl``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import IO

import anyio
import orjson

import riprap
from riprap import Batch, SourceBatch, SourceContext
from riprap.checkpoints import MemoryCheckpoints


class LinesSource:
    """The lines of one text file; the partition is the file's name, positions are line numbers."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.name = f"lines:{self.path.name}"
        self._lines: list[str] = []
        self._next = 0

    async def open(self, context: SourceContext) -> None:
        """Load the file and skip what a previous run already finished."""
        text = await anyio.Path(self.path).read_text()
        self._lines = text.splitlines()
        self._next = context.positions.get(self.name, 0)

    async def read(self, max_records: int) -> SourceBatch | None:
        """Up to ``max_records`` lines, or ``None`` once the file is exhausted."""
        if self._next >= len(self._lines):
            return None
        start = self._next
        values = self._lines[start : start + max_records]
        self._next = start + len(values)
        return SourceBatch(self.name, list(values), start=start)

    async def aclose(self) -> None:
        """Nothing to release: the file was read whole."""


class JsonLinesAppendSink:
    """Appends each value, with its source position, as one JSON line; durable on return."""

    idempotent = False  # a replay after a crash appends the replayed records again

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.name = f"jsonl:{self.path.name}"
        self._file: IO[bytes] | None = None

    async def open(self) -> None:
        """Open the output for appending."""
        self._file = await anyio.to_thread.run_sync(self.path.open, "ab")

    async def write(self, batch: Batch) -> None:
        """Write and fsync the batch: when this returns, its records are done."""
        lines = []
        for index, value in enumerate(batch.items):
            partition, offset = batch.position(index)
            lines.append(orjson.dumps({"partition": partition, "offset": offset, "value": value}))
        await anyio.to_thread.run_sync(self._append, b"\n".join(lines) + b"\n")

    async def flush(self) -> None:
        """Nothing is buffered between writes."""

    async def aclose(self) -> None:
        """Close the output."""
        if self._file is not None:
            await anyio.to_thread.run_sync(self._file.close)
            self._file = None

    def _append(self, data: bytes) -> None:
        assert self._file is not None, "write() before open()"
        self._file.write(data)
        self._file.flush()
        os.fsync(self._file.fileno())


def build(source: str, output: str, store: MemoryCheckpoints | None = None) -> riprap.Pipeline:
    """Upper-case every line of ``source`` into ``output``."""
    return (
        riprap.Pipeline("shout", checkpoint=store or MemoryCheckpoints())
        .source(LinesSource(source))
        .map("upper", str.upper)
        .sink(JsonLinesAppendSink(output))
    )


if __name__ == "__main__":
    print(riprap.run(build(sys.argv[1], sys.argv[2])).format())
