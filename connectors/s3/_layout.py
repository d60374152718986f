"""Where the S3 sink's objects live and what their names say.

An object holds a run of one source partition's records and is named by the
positions of its first and last record::

    <prefix><partition, percent-encoded>/<first>-<last>.<format>[.gz]

A position is the record's source offset, written as 20 digits; a record
that shares its offset with records before it (the outputs of a
``flat_map``) adds ``.<n>``, its index among them (``…0042.3``). Offsets are
zero-padded, so key order is position order and a listing can start at a
position (``StartAfter``).
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, final

from ._client import call, sanitize

if TYPE_CHECKING:
    from ._client import S3ClientConfig

Position = tuple[int, int]
"""``(source offset, index among the sink's records with that offset)``."""

_NAME = re.compile(r"(\d{20})(?:\.(\d+))?-(\d{20})(?:\.(\d+))?\.[^/]+")
_PAGE = 1000
_FIRST_WIDTH = 1024
"""Offsets below the replay's start searched first for an object that holds it."""


@final
@dataclass(frozen=True, slots=True)
class Stored:
    """An object already in the bucket: the positions of its first and last record."""

    first: Position
    last: Position
    key: str


def position_text(position: Position) -> str:
    """A position as it appears in object names."""
    offset, index = position
    return f"{offset:020d}" if index == 0 else f"{offset:020d}.{index}"


def directory(prefix: str, partition: str) -> str:
    """The key prefix of ``partition``'s objects."""
    return f"{prefix}{sanitize(partition)}/"


def parse(key: str, folder: str) -> Stored | None:
    """The positions in the name of ``key`` (under ``folder``); ``None`` for foreign keys."""
    match = _NAME.fullmatch(key, len(folder))
    if not key.startswith(folder) or match is None:
        return None
    first = (int(match[1]), int(match[2] or 0))
    last = (int(match[3]), int(match[4] or 0))
    return Stored(first, last, key) if first <= last else None


async def open_listing(
    config: S3ClientConfig, client: Any, bucket: str, folder: str, start: int
) -> tuple[Stored | None, StoredListing]:
    """What a partition's records from offset ``start`` on find in ``folder``.

    Returns ``(holder, listing)``: the object that begins before ``start`` yet
    holds records at or after it (a replay from a checkpoint inside an object:
    the checkpoint counts whole source batches, and an object may end inside
    one), and the objects beginning at or after ``start``, listed as needed.
    An empty folder costs one call; the holder is searched for by listing
    backwards from ``start`` over widening ranges (x16 each time).
    """
    listing = StoredListing(config, client, bucket, folder, start)
    smallest = await StoredListing(config, client, bucket, folder, 0).take()
    if smallest is None:
        listing.finish()
        return None, listing
    width = _FIRST_WIDTH
    while smallest.first[0] < start:
        low = max(start - width, smallest.first[0])
        below = StoredListing(config, client, bucket, folder, low)
        holder: Stored | None = None
        while (stored := await below.take()) is not None and stored.first[0] < start:
            holder = stored
        if holder is not None:
            return (holder if holder.last >= (start, 0) else None), listing
        width *= 16
    return None, listing


@final
class StoredListing:
    """A folder's objects from an offset on, listed a page at a time as a replay advances.

    Args:
        start: List the objects whose first offset is at least this.
    """

    def __init__(
        self, config: S3ClientConfig, client: Any, bucket: str, folder: str, start: int
    ) -> None:
        self._config = config
        self._client = client
        self._bucket = bucket
        self._folder = folder
        self._start_after = f"{folder}{start:020d}"
        self._token: str | None = None
        self._done = False
        self.listed: deque[Stored] = deque()
        """Objects listed and not yet taken, in position order."""

    def finish(self) -> None:
        """Take the folder as having nothing more to list."""
        self._done = True

    async def through(self, offset: int) -> None:
        """List on until an object beginning after ``offset`` is known or none is left."""
        while not self._done and (not self.listed or self.listed[-1].first[0] <= offset):
            await self._page()

    async def take(self) -> Stored | None:
        """The next object, taken off the list; ``None`` when none is left."""
        while not self.listed and not self._done:
            await self._page()
        return self.listed.popleft() if self.listed else None

    async def _page(self) -> None:
        args: dict[str, Any] = {"Bucket": self._bucket, "Prefix": self._folder, "MaxKeys": _PAGE}
        if self._token:
            args["ContinuationToken"] = self._token
        else:
            args["StartAfter"] = self._start_after
        page = await call(self._config, self._client.list_objects_v2(**args))
        for item in page.get("Contents", ()):
            stored = parse(item["Key"], self._folder)
            if stored is not None:
                self.listed.append(stored)
        self._token = page.get("NextContinuationToken")
        self._done = not page.get("IsTruncated") or not self._token
