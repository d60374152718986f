"""The progress line of CLI runs."""

from __future__ import annotations

import io

import riprap
from riprap.cli._progress import ProgressPrinter


def stats(**changes: object) -> riprap.RunStatistics:
    """Statistics with defaults, some fields changed."""
    base = {
        "records_in": 1_000,
        "records_out": 900,
        "in_flight": 50,
        "dropped": 40,
        "dead_lettered": 10,
        "elapsed": 2.0,
        "checkpoints": 3,
        "last_checkpoint_age": 1.0,
        "positions": {"p": 950},
    }
    base.update(changes)
    return riprap.RunStatistics(**base)  # type: ignore[arg-type]


def test_line_shows_counts_rate_lag_and_open_breakers() -> None:
    """Counts, rate, lag and open breakers all appear in one line."""
    printer = ProgressPrinter("orders", io.StringIO())
    line = printer.format(stats(lag=1_234, open_breakers=("payments",)))
    assert (
        "[orders] in 1,000  out 900  dropped 40  dlq 10  in flight 50  500/s  "
        "checkpoint 1s ago  lag 1,234  OPEN: payments"
    ) == line


def test_plain_output_writes_a_line_every_interval() -> None:
    """Off a terminal, a plain line is written at most every ``every`` seconds."""
    out = io.StringIO()
    printer = ProgressPrinter("orders", out, every=10.0)
    for elapsed in (0.5, 1.0, 10.6, 11.0):
        printer(stats(elapsed=elapsed))
    assert 2 == len(out.getvalue().splitlines())


def test_lag_comes_with_a_catch_up_estimate() -> None:
    """The estimate follows the rate the lag shrank over the last minute, or says it does not."""
    printer = ProgressPrinter("orders", io.StringIO())
    assert printer.format(stats(elapsed=10.0, lag=10_000)).endswith("lag 10,000")
    assert printer.format(stats(elapsed=20.0, lag=9_000)).endswith("lag 9,000 (catch-up ~1m30s)")
    assert printer.format(stats(elapsed=30.0, lag=9_500)).endswith("(catch-up ~6m20s)")
    grown = printer.format(stats(elapsed=90.0, lag=12_000))
    assert grown.endswith("lag 12,000 (not catching up)")
    assert printer.format(stats(elapsed=95.0, lag=0)).endswith("lag 0")
