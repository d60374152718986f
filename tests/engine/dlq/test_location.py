"""Dead-letter locations: files, ``kafka://`` and ``s3://``; bad ones are clear usage errors."""

from __future__ import annotations

import re
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from riprap.cli import main
from riprap.cli._locations import (
    FileLocation,
    KafkaLocation,
    S3Location,
    default_failed_to,
    parse_location,
    same_store,
)

from ._replay import run_dlq

if TYPE_CHECKING:
    from pathlib import Path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("dlq/orders.jsonl", FileLocation("dlq/orders.jsonl")),
        ("/var/dlq.db", FileLocation("/var/dlq.db")),
        ("kafka://127.0.0.1:9092/orders.dlq", KafkaLocation(("127.0.0.1:9092",), "orders.dlq")),
        ("kafka://a:1,b:2/t", KafkaLocation(("a:1", "b:2"), "t")),
        ("KAFKA://[::1]:9092/t", KafkaLocation(("[::1]:9092",), "t")),
        ("s3://my-bucket/dlq/orders/", S3Location("my-bucket", "dlq/orders/")),
        ("s3://my-bucket", S3Location("my-bucket", "")),
    ],
)
def test_parse_location(text: str, expected: object) -> None:
    """Paths stay paths; kafka:// and s3:// split into their parts."""
    assert expected == parse_location(text)


def test_locations_print_as_written() -> None:
    """A location prints back in the form it was given (scheme lower-cased)."""
    for text in ("dlq.jsonl", "kafka://a:1,b:2/t", "s3://bucket/p/"):
        assert text == str(parse_location(text))


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "empty dead-letter location"),
        ("kafka://", "no broker"),
        ("kafka:///topic", "no broker"),
        ("kafka://host/topic", "broker 'host' is not HOST:PORT"),
        ("kafka://host:0/t", "broker 'host:0' has an invalid port '0'"),
        ("kafka://host:99999/t", "has an invalid port '99999'"),
        ("kafka://h:1,/t", "broker '' is not HOST:PORT"),
        ("kafka://host:9092", "no topic"),
        ("kafka://host:9092/", "no topic"),
        ("kafka://host:9092/a/b", "'a/b' is not a Kafka topic name"),
        ("kafka://host:9092/bad topic", "'bad topic' is not a Kafka topic name"),
        ("s3://", "no bucket"),
        ("s3:///prefix", "no bucket"),
        ("s3://ab/p", "'ab' is not an S3 bucket name"),
        ("s3://-bucket/p", "'-bucket' is not an S3 bucket name"),
        ("ftp://host/file", "unknown scheme 'ftp'"),
    ],
)
def test_bad_locations_name_the_problem(text: str, problem: str) -> None:
    """Each malformed location is refused with a message saying what is wrong."""
    with pytest.raises(ValueError, match=re.escape(problem)):
        parse_location(text)


@pytest.mark.parametrize("command", ["inspect", "purge", "replay"])
def test_a_bad_location_is_a_usage_error(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Every dlq command refuses a malformed location before contacting anything: exit 2."""
    extra = {"inspect": [], "purge": ["--older-than", "1d"], "replay": ["--pipeline", "f.py"]}
    with pytest.raises(SystemExit) as exited:
        main(["dlq", command, "kafka://broker/dlq", *extra[command]])
    assert 2 == exited.value.code
    assert "argument path: 'kafka://broker/dlq': broker 'broker' is not HOST:PORT" in (
        capsys.readouterr().err
    )


def test_purging_a_topic_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """Kafka deletes old letters by retention: purge says so and exits 1, contacting nothing."""
    assert 1 == run_dlq("purge", "kafka://127.0.0.1:1/dlq", "--older-than", "1d")
    err = capsys.readouterr().err
    assert "purge is not supported for Kafka topics" in err
    assert "retention.ms" in err


def test_same_store_and_default_failed_to() -> None:
    """A replay's failures never go back to the store replayed; defaults are local files."""
    assert same_store(FileLocation("dlq.jsonl"), FileLocation("./dlq.jsonl"))
    assert same_store(parse_location("kafka://a:1/t"), parse_location("kafka://b:2/t"))
    assert not same_store(parse_location("s3://bucket/a/"), parse_location("s3://bucket/b/"))
    assert FileLocation("dlq.jsonl.replay-failed.jsonl") == default_failed_to(
        FileLocation("dlq.jsonl")
    )
    assert FileLocation("orders.dlq.replay-failed.jsonl") == default_failed_to(
        parse_location("kafka://a:1/orders.dlq")
    )
    assert FileLocation("bucket-dlq-orders.replay-failed.jsonl") == default_failed_to(
        parse_location("s3://bucket/dlq/orders/")
    )


@pytest.mark.parametrize(
    ("location", "blocked", "extra"),
    [
        ("kafka://127.0.0.1:1/dlq", "aiokafka", "kafka"),
        ("s3://bucket/dlq/", "aiobotocore", "s3"),
    ],
)
def test_a_missing_extra_names_the_install(
    tmp_path: Path, location: str, blocked: str, extra: str
) -> None:
    """Without the connector's library, inspect fails with the pip command that fixes it."""
    code = (
        f"import sys; sys.modules[{blocked!r}] = None\n"  # as if it were not installed
        "from riprap.cli import main\n"
        f"sys.exit(main(['dlq', 'inspect', {location!r}]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert 1 == done.returncode, done.stderr
    assert f"needs the {extra} extra ({blocked}): pip install 'riprap[{extra}]'" in done.stderr
    assert "Traceback" not in done.stderr
