"""The suite's bar chart (needs matplotlib, the ``bench`` extra)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import matplotlib as mpl

mpl.use("Agg")  # files only: never open a window

import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter

if TYPE_CHECKING:
    from pathlib import Path

    from matplotlib.axes import Axes

RIPRAP = "#c0392b"
OTHER = "#7f8c8d"


def draw(path: Path, workloads: list[tuple[str, str, str]], results: dict[str, Any]) -> None:
    """A panel of records/s per throughput workload and one of W4's latencies, saved as PNG.

    W4 runs at a fixed rate, so its records/s only show that it kept up: its
    panel shows the latency percentiles instead.
    """
    throughput = [w for w in workloads if w[0] != "W4"]
    panels = len(throughput) + (1 if "W4" in results else 0)
    figure, axes = plt.subplots(panels, 1, figsize=(8, 2.2 * panels + 0.6), squeeze=False)
    for ax, (key, title, limit) in zip(axes[:, 0], throughput, strict=False):
        _throughput(ax, f"{key} {title}", limit, results[key])
    if "W4" in results:
        _latency(axes[-1, 0], results["W4"])
    figure.suptitle("riprap benchmark suite (median of runs; ratio to the workload's limit)")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _throughput(ax: Axes, title: str, limit: str, entries: dict[str, Any]) -> None:
    measured = [(impl, e) for impl, e in entries.items() if "records_per_s" in e]
    names = [f"{impl} (limit)" if impl == limit else impl for impl, _ in measured]
    rates = [e["records_per_s"] for _, e in measured]
    colours = [RIPRAP if impl == "riprap" else OTHER for impl, _ in measured]
    bars = ax.barh(names, rates, color=colours)
    labels = [
        f"{r:,.0f}/s" + (f"  {e['vs_limit']:.0%}" if e.get("vs_limit") else "")
        for r, (_, e) in zip(rates, measured, strict=True)
    ]
    ax.bar_label(bars, labels=labels, padding=3, fontsize=8)
    ax.invert_yaxis()
    ax.set_title(title, fontsize=10, loc="left")
    ax.set_xlabel("records/s")
    ax.set_xlim(0, max(rates, default=1) * 1.35)
    ax.xaxis.set_major_formatter(FuncFormatter(_compact))


def _latency(ax: Axes, entries: dict[str, Any]) -> None:
    measured = [(impl, e) for impl, e in entries.items() if "p99_ms" in e]
    width = 0.8 / 3
    for i, (key, label) in enumerate((("p50_ms", "p50"), ("p99_ms", "p99"), ("p999_ms", "p99.9"))):
        xs = [j + (i - 1) * width for j in range(len(measured))]
        bars = ax.bar(xs, [e[key] for _, e in measured], width, label=label)
        ax.bar_label(bars, fmt="%.2f", padding=2, fontsize=7)
    ax.set_xticks(range(len(measured)), [impl for impl, _ in measured])
    ax.set_title("W4 latency, emit to sink write (target: p99 < 50 ms)", fontsize=10, loc="left")
    ax.set_ylabel("ms")
    ax.legend(fontsize=7, loc="upper left")


def _compact(value: float, _position: int) -> str:
    """Axis labels as 800k or 1.2M."""
    if value >= 1e6:
        return f"{value / 1e6:g}M"
    return f"{value / 1e3:g}k" if value >= 1e3 else f"{value:g}"
