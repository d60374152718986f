"""``riprap dlq inspect|replay|purge s3://...`` against the moto server.

The letters come from a real failing pipeline writing to an S3 prefix;
replays run the ``riprap`` command in a child process with a fixed pipeline.
Credentials and region come from the environment the moto fixture sets.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import anyio
import orjson
import pytest

from riprap.connectors.s3 import S3DeadLetters
from tests.engine.dlq._letters import make_letter
from tests.engine.dlq._replay import (
    FAILED,
    ORDERS,
    STILL_BROKEN,
    STILL_FAILING,
    bad_amounts,
    bad_quantities,
    check_replay_sends_each_record_once,
    check_stopped_replay_resumes,
    failing_pipeline,
    replay,
    replayed,
    run_dlq,
    with_fix,
)

from .conftest import client_config

if TYPE_CHECKING:
    from pathlib import Path

    from riprap.deadletters import DeadLetter

pytestmark = pytest.mark.s3

DAY = 86_400.0


def sink(bucket: str, endpoint: str) -> S3DeadLetters:
    """The dead-letter sink on ``s3://bucket/dlq/``."""
    return S3DeadLetters(bucket, "dlq/", endpoint_url=endpoint, client_config=client_config())


@pytest.fixture
def dead_prefix(bucket: str, moto_endpoint: str) -> str:
    """``s3://bucket/dlq/`` holding the failing pipeline's dead letters."""

    async def fill() -> None:
        report = await failing_pipeline(ORDERS, sink(bucket, moto_endpoint)).run()
        assert len(FAILED) == sum(report.dead_lettered.values())

    anyio.run(fill)
    return f"s3://{bucket}/dlq/"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A directory holding the fixed pipeline, ``fix.py``."""
    return with_fix(tmp_path)


def test_inspect_counts_a_prefix(
    dead_prefix: str, moto_endpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Counts by stage and reason cover every object under the prefix."""
    assert 0 == run_dlq("inspect", dead_prefix, "--endpoint-url", moto_endpoint, "--json")
    report = orjson.loads(capsys.readouterr().out)
    assert (len(FAILED), dead_prefix) == (report["total"], report["path"])
    assert {"parse": len(bad_amounts(ORDERS)), "check": len(bad_quantities(ORDERS))} == (
        report["by_stage"]
    )


def test_inspect_filters(
    dead_prefix: str, moto_endpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--stage`` narrows the counts."""
    assert 0 == run_dlq("inspect", dead_prefix, "--endpoint-url", moto_endpoint, "--stage", "check")
    out = capsys.readouterr().out.splitlines()
    assert f"{dead_prefix}: {len(bad_quantities(ORDERS))} dead letters (0 repeats folded)" == out[0]


@pytest.mark.parametrize("where", ["s3://{bucket}/empty/", "s3://no-such-bucket-at-all/dlq/"])
def test_inspect_of_nothing_exits_2(
    bucket: str, moto_endpoint: str, where: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An empty prefix or a missing bucket holds no dead letters: exit 2."""
    location = where.format(bucket=bucket)
    assert 2 == run_dlq("inspect", location, "--endpoint-url", moto_endpoint)
    assert f"riprap dlq: {location}: no dead letters stored there" in capsys.readouterr().err


def test_purge_deletes_whole_old_objects_and_says_what_it_kept(
    bucket: str, moto_endpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Old objects go; an object with a newer letter stays, and the output says so."""
    now = time.time()
    old = [make_letter(i, at=now - 10 * DAY) for i in range(3)]
    new = [make_letter(10, at=now)]

    async def fill() -> None:
        dlq = sink(bucket, moto_endpoint)
        await dlq.open()
        groups: list[list[DeadLetter]] = [old[:2], [old[2], *new]]
        for group in groups:
            await dlq.write(group)
        await dlq.aclose()

    anyio.run(fill)
    location = f"s3://{bucket}/dlq/"
    assert 0 == run_dlq("purge", location, "--endpoint-url", moto_endpoint, "--older-than", "7d")
    out = capsys.readouterr().out
    assert out.startswith(
        f"{location}: removed 2 dead letters (0 repeats folded) in 1 object last failed before "
    )
    assert "; kept 1 dead letter as old in 1 object that also hold newer letters" in out
    assert 0 == run_dlq("inspect", location, "--endpoint-url", moto_endpoint, "--json")
    assert 2 == orjson.loads(capsys.readouterr().out)["total"]


@pytest.mark.slow
def test_replay_sends_each_failed_record_once(
    dead_prefix: str, moto_endpoint: str, workdir: Path
) -> None:
    """The fix gets every failed record once; replaying again sends nothing."""
    check_replay_sends_each_record_once([dead_prefix, "--endpoint-url", moto_endpoint], workdir)


@pytest.mark.slow
def test_replay_with_a_filter(dead_prefix: str, moto_endpoint: str, workdir: Path) -> None:
    """``--reason validation`` replays only the letters with that reason."""
    replay([dead_prefix, "--endpoint-url", moto_endpoint], workdir, "--reason", "validation")
    assert dict.fromkeys(bad_quantities(ORDERS), 1) == replayed(workdir)


@pytest.mark.slow
def test_a_stopped_replay_resumes_without_resending(
    dead_prefix: str, moto_endpoint: str, workdir: Path
) -> None:
    """SIGTERM stops a rate-limited replay; the next one sends only the rest, each once."""
    check_stopped_replay_resumes([dead_prefix, "--endpoint-url", moto_endpoint], workdir)


@pytest.mark.slow
def test_records_failing_again_can_go_to_another_prefix(
    dead_prefix: str, moto_endpoint: str, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--failed-to s3://...`` stores the letters the fix still rejects under that prefix."""
    (workdir / "fix.py").write_text(STILL_BROKEN)
    again = dead_prefix.replace("/dlq/", "/again/")
    store = [dead_prefix, "--endpoint-url", moto_endpoint]
    replay(store, workdir, "--failed-to", again)
    assert dict.fromkeys(FAILED - STILL_FAILING, 1) == replayed(workdir)
    assert 0 == run_dlq("inspect", again, "--endpoint-url", moto_endpoint, "--json")
    assert len(STILL_FAILING) == orjson.loads(capsys.readouterr().out)["total"]
