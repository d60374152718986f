"""``riprap dlq inspect|replay|purge kafka://...`` against the test broker.

The letters come from a real failing pipeline writing to a dead-letter topic;
replays run the ``riprap`` command in a child process with a fixed pipeline.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import orjson
import pytest

pytest.importorskip("aiokafka")

import riprap
import riprap.deadletters
from riprap.connectors.kafka import KafkaDeadLetters
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

if TYPE_CHECKING:
    from pathlib import Path

    from .conftest import KafkaHelper

pytestmark = pytest.mark.kafka


@pytest.fixture
def dead_topic(kafka: KafkaHelper) -> str:
    """A 3-partition topic holding the failing pipeline's dead letters; its location."""

    async def fill() -> str:
        topic = await kafka.create_topic(3)
        sink = KafkaDeadLetters(topic, bootstrap_servers=kafka.bootstrap)
        report = await failing_pipeline(ORDERS, sink).run()
        assert len(FAILED) == sum(report.dead_lettered.values())
        return f"kafka://{kafka.bootstrap}/{topic}"

    return anyio.run(fill)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A directory holding the fixed pipeline, ``fix.py``."""
    return with_fix(tmp_path)


def test_inspect_counts_a_topic(dead_topic: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Counts by stage and reason cover every letter on every partition."""
    assert 0 == run_dlq("inspect", dead_topic, "--json", "--show", "3")
    report = orjson.loads(capsys.readouterr().out)
    assert (len(FAILED), dead_topic) == (report["total"], report["path"])
    assert {"parse": len(bad_amounts(ORDERS)), "check": len(bad_quantities(ORDERS))} == (
        report["by_stage"]
    )
    assert {"bad_amount", "validation"} == set(report["by_reason"])
    assert 3 == len(report["latest"])


def test_inspect_filters_and_text(dead_topic: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Filters narrow the counts; the text report starts with the location."""
    assert 0 == run_dlq("inspect", dead_topic, "--reason", "validation")
    out = capsys.readouterr().out.splitlines()
    assert f"{dead_topic}: {len(bad_quantities(ORDERS))} dead letters (0 repeats folded)" == out[0]
    assert ["by stage:", f"  check  {len(bad_quantities(ORDERS))}"] == out[1:3]


def test_inspect_of_a_missing_topic_exits_2(
    kafka: KafkaHelper, capsys: pytest.CaptureFixture[str]
) -> None:
    """A topic that does not exist holds no dead letters: exit 2, as for a missing file."""
    location = f"kafka://{kafka.bootstrap}/no-such-topic"
    assert 2 == run_dlq("inspect", location)
    assert f"riprap dlq: {location}: no dead letters stored there" in capsys.readouterr().err


def test_purge_of_a_topic_is_refused(dead_topic: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Purging a topic is not supported: retention.ms does it."""
    assert 1 == run_dlq("purge", dead_topic, "--older-than", "1s")
    assert "retention.ms" in capsys.readouterr().err


@pytest.mark.slow
def test_replay_sends_each_failed_record_once(dead_topic: str, workdir: Path) -> None:
    """The fix gets every failed record once; replaying again sends nothing."""
    check_replay_sends_each_record_once([dead_topic], workdir)


@pytest.mark.slow
def test_replay_with_a_filter(dead_topic: str, workdir: Path) -> None:
    """``--stage parse`` replays only the letters of that stage."""
    replay([dead_topic], workdir, "--stage", "parse")
    assert dict.fromkeys(bad_amounts(ORDERS), 1) == replayed(workdir)


@pytest.mark.slow
def test_records_failing_again_go_to_failed_to(dead_topic: str, workdir: Path) -> None:
    """Letters the fix still rejects land in the local --failed-to file, not on the topic."""
    (workdir / "fix.py").write_text(STILL_BROKEN)
    replay([dead_topic], workdir, "--failed-to", "again.jsonl")
    assert dict.fromkeys(FAILED - STILL_FAILING, 1) == replayed(workdir)
    letters = list(riprap.deadletters.read_dead_letters(workdir / "again.jsonl"))
    assert STILL_FAILING == {orjson.loads(letter.original_value())["id"] for letter in letters}
    assert {dead_topic.rpartition("/")[2]} == {
        (letter.partition or "").split(":")[2] for letter in letters
    }


@pytest.mark.slow
def test_a_stopped_replay_resumes_without_resending(dead_topic: str, workdir: Path) -> None:
    """SIGTERM stops a rate-limited replay; the next one sends only the rest, each once."""
    check_stopped_replay_resumes([dead_topic], workdir)
