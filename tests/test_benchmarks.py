"""Smoke tests: every benchmark runs at a tiny size, so the harness cannot rot."""

from __future__ import annotations

from typing import TYPE_CHECKING

from benchmarks import bench_memory, bench_metrics, bench_policies

if TYPE_CHECKING:
    import pytest


def test_memory_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """W1 runs on 2,000 records and prints the three implementations."""
    bench_memory.main(["--records", "2000", "--repeat", "1"])
    out = capsys.readouterr().out
    assert ["plain loop", "plain loop, same fns", "riprap"] == [
        line.split("  ")[0] for line in out.splitlines()[2:]
    ]


def test_policy_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """The policy overhead benchmark runs with a few calls and prints the full stack."""
    bench_policies.main(["--calls", "200", "--repeat", "1"])
    assert "full stack" in capsys.readouterr().out


def test_metrics_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """The metrics cost benchmark runs on 2,000 records."""
    bench_metrics.main(["--records", "2000", "--repeat", "1"])
    assert "scraped every 100 ms" in capsys.readouterr().out
