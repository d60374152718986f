"""Kafka's default key partitioning (murmur2), about six times faster than aiokafka's.

Every keyed message the sink produces is hashed, so the hash is on the hot
path: aiokafka's pure-Python murmur2 masks every intermediate and reads one
byte at a time (about 5 µs for a short key, a quarter of the per-record cost
of a Kafka -> Kafka pipeline). This one reads whole 32-bit words and masks
only after multiplications; the results are the same (a property test checks
it against aiokafka's), so records land where Java clients would put them.
"""

from __future__ import annotations

import random
import struct

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF
_WORDS = struct.Struct("<I").iter_unpack


def murmur2(data: bytes) -> int:
    """The 32-bit murmur2 hash of ``data``, as Kafka's Java client computes it."""
    length = len(data)
    h = _SEED ^ length
    body = length & ~3
    if body:
        for (k,) in _WORDS(data[:body] if body != length else data):
            k = (k * _M) & _MASK
            k ^= k >> 24
            h = ((h * _M) & _MASK) ^ ((k * _M) & _MASK)
    tail = length & 3
    if tail:
        if tail == 3:
            h ^= data[body + 2] << 16
        if tail >= 2:
            h ^= data[body + 1] << 8
        h = ((h ^ data[body]) * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    return h ^ (h >> 15)


def partition_for(key: bytes | None, partitions: int) -> int:
    """The partition Kafka's default partitioner picks: murmur2 of the key, random without one."""
    if key is None:
        return random.randrange(partitions)
    return (murmur2(key) & 0x7FFFFFFF) % partitions
