"""Run the micro-benchmarks (W1 in one process, policies, metrics, Kafka) and print their tables.

The suite with every workload in fresh processes is ``python -m benchmarks.suite``;
scaling with the input is ``python -m benchmarks.scaling``.
"""

from __future__ import annotations

import argparse
import importlib

SUITE = (
    "benchmarks.bench_memory",
    "benchmarks.bench_policies",
    "benchmarks.bench_metrics",
    "benchmarks.bench_kafka",
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Each runs on its own too: python -m " + ", python -m ".join(SUITE) + ".",
    )
    parser.parse_args(argv)
    for name in SUITE:
        importlib.import_module(name).main([])
        print()


if __name__ == "__main__":
    main()
