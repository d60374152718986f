"""Checkpoints of many partitions: encoding and decoding a snapshot as it grows with the input.

A source over an S3 prefix or a file glob keeps a position (and an identity)
for every object or file it has read, so its snapshot grows with the input.
This times :meth:`~riprap.checkpoints.Checkpoint.to_json` (canonical JSON in
pieces of bounded cost, with its checksum: what every save runs in a worker
thread) and :func:`~riprap.checkpoints.decode` (parsed, checked, checksum
verified: what every start runs) for ``--partitions`` S3-like keys. The limit
is one ``orjson`` call and a sha256 over the same data, which holds the GIL for
the whole encoding. Implementations alternate, the first of each round rotating.

Run: ``python -m benchmarks.bench_checkpoint_size [--partitions N ...] [--repeat R]``.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import time
from typing import TYPE_CHECKING, Any

import orjson

from riprap.checkpoints import Checkpoint, decode

if TYPE_CHECKING:
    from collections.abc import Callable


def make_checkpoint(partitions: int) -> Checkpoint:
    """A snapshot of ``partitions`` objects read whole, each with a 64-bit identity."""
    keys = [f"s3://landing/orders/2026/12/{i:08d}.jsonl" for i in range(partitions)]
    return Checkpoint(
        pipeline="orders",
        epoch=3,
        owner="host/1234/abcd",
        seq=42,
        positions=dict.fromkeys(keys, -1),
        identities={key: f"{i:016x}" for i, key in enumerate(keys)},
    )


def one_call(checkpoint: Checkpoint) -> bytes:
    """The limit: the fields in one ``orjson`` call (keys sorted) and their sha256."""
    data = orjson.dumps(
        {
            "positions": dict(checkpoint.positions),
            "identities": dict(checkpoint.identities),
            "pipeline": checkpoint.pipeline,
        },
        option=orjson.OPT_SORT_KEYS,
    )
    hashlib.sha256(data).hexdigest()
    return data


def one_call_back(data: bytes) -> Any:
    """The limit of a decode: one ``orjson.loads`` and a sha256 of the bytes."""
    hashlib.sha256(data).hexdigest()
    return orjson.loads(data)


def measure(partitions: int, repeat: int) -> dict[str, tuple[float, float]]:
    """Median milliseconds of each operation and its median ratio to the limit's."""
    checkpoint = make_checkpoint(partitions)
    stored = checkpoint.to_json()
    limit_stored = one_call(checkpoint)
    runs: dict[str, Callable[[], object]] = {
        "encode, one call": lambda: one_call(checkpoint),
        "encode, riprap": checkpoint.to_json,
        "decode, one call": lambda: one_call_back(limit_stored),
        "decode, riprap": lambda: decode(stored, where="bench", pipeline="orders"),
    }
    took: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for round_ in range(repeat):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            runs[name]()
            took[name].append(time.perf_counter() - started)
    out: dict[str, tuple[float, float]] = {}
    for name, times in took.items():
        base = took[name.split(",")[0] + ", one call"]
        ratio = statistics.median(t / b for t, b in zip(times, base, strict=True))
        out[name] = (statistics.median(times) * 1000, ratio)
    out["snapshot MiB"] = (len(stored) / 2**20, 0.0)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--partitions", type=int, nargs="+", default=[1_000, 100_000])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    for partitions in args.partitions:
        results = measure(partitions, args.repeat)
        size = results.pop("snapshot MiB")[0]
        print(f"{partitions:,} partitions, snapshot {size:.1f} MiB, median of {args.repeat}")
        print(f"{'operation':<20}{'ms':>10}{'vs one call':>14}")
        for name, (ms, ratio) in results.items():
            print(f"{name:<20}{ms:>10.1f}{ratio:>13.1f}x")


if __name__ == "__main__":
    main()
