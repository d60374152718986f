"""Smoke test: the W1 workers benchmark runs at a tiny size, so it cannot rot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import w1_workers

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_w1_workers_compares_one_and_two_workers(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One and two workers each read every record once; both speed-ups are reported."""
    monkeypatch.chdir(ROOT)  # the workers load the benchmark file by path, as documented
    w1_workers.main(["--records", "400", "--repeat", "1", "--json"])
    result = json.loads(capsys.readouterr().out)
    expected = {"wall", "run"}
    assert expected <= set(result)
    assert {"ratio", "low", "high"} == set(result["run"]["speed_up"])
    assert [1, 1] == [len(result["run"]["one_worker_s"]), len(result["run"]["two_workers_s"])]
