"""Run every benchmark of the suite and print their tables."""

from __future__ import annotations

import importlib
import sys

SUITE = (
    "benchmarks.bench_memory",
    "benchmarks.bench_policies",
    "benchmarks.bench_metrics",
    "benchmarks.bench_kafka",
)


def main() -> None:
    for name in SUITE:
        module = importlib.import_module(name)
        module.main(sys.argv[1:] if len(SUITE) == 1 else [])
        print()


if __name__ == "__main__":
    main()
