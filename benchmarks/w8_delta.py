"""W8: JSON Lines -> a Delta Lake table, riprap's DeltaSink against a plain pyarrow/deltalake loop.

The work is :mod:`benchmarks.bench_lake`'s: parse each line, build Arrow
tables of a declared schema, append them to a Delta table, one commit per
50,000 rows. Needs the ``lake`` extra; without it each implementation is skipped.

Run: ``python -m benchmarks.w8_delta [--impl NAME] [--records N] [--json]``.
"""

from __future__ import annotations

from benchmarks._child import child_main
from benchmarks.w7_parquet import lake_impl

IMPLS = {name: lake_impl("delta", name) for name in ("pyarrow loop", "riprap")}


def main(argv: list[str] | None = None) -> None:
    """Run the chosen implementations (all by default) and print their figures."""
    child_main(__doc__, IMPLS, argv, default_records=500_000)


if __name__ == "__main__":
    main()
