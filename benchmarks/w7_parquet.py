"""W7: JSON Lines -> Parquet files, riprap's ParquetSink against a plain pyarrow loop.

The work is :mod:`benchmarks.bench_lake`'s: parse each line, build Arrow
tables of a declared schema, write Parquet files of 50,000 rows. Needs the
``lake`` extra (pyarrow, deltalake); without it each implementation is skipped.

Run: ``python -m benchmarks.w7_parquet [--impl NAME] [--records N] [--json]``.
"""

from __future__ import annotations

from importlib.util import find_spec
from typing import TYPE_CHECKING

from benchmarks._child import Skipped, child_main

if TYPE_CHECKING:
    import argparse

    from benchmarks._child import Impl, Result

TARGET = "parquet"


def lake_impl(target: str, name: str) -> Impl:
    """Implementation ``name`` of ``target``, skipped with the reason when the extra is missing."""

    def impl(args: argparse.Namespace) -> Result:
        missing = [m for m in ("pyarrow", "deltalake") if find_spec(m) is None]
        if missing:
            raise Skipped(f"{', '.join(missing)} not installed (pip install -e '.[lake]')")
        from benchmarks.bench_lake import child_impls  # needs the lake extra

        return child_impls(target)[name](args)

    return impl


IMPLS = {name: lake_impl(TARGET, name) for name in ("pyarrow loop", "riprap")}


def main(argv: list[str] | None = None) -> None:
    """Run the chosen implementations (all by default) and print their figures."""
    child_main(__doc__, IMPLS, argv, default_records=500_000)


if __name__ == "__main__":
    main()
