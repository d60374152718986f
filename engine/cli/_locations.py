"""Where ``riprap dlq`` finds dead letters: a file, a Kafka topic or an S3 prefix.

A location is written as one of::

    dlq/orders.jsonl                         a JSON Lines or SQLite file (as before)
    kafka://HOST:PORT[,HOST:PORT...]/TOPIC   a dead-letter topic (KafkaDeadLetters)
    s3://BUCKET[/PREFIX]                     objects under a prefix (S3DeadLetters)

Parsing is pure: it checks the syntax (ports, topic and bucket names) and
imports no connector, so a typo is reported before anything is contacted.
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass
from typing import final

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")
_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,61}[A-Za-z0-9]")
_FORMS = "use a file path, kafka://HOST:PORT[,HOST:PORT]/TOPIC or s3://BUCKET/PREFIX"


@final
@dataclass(frozen=True, slots=True)
class FileLocation:
    """A JSON Lines or SQLite dead-letter file, as given on the command line."""

    path: str

    def __str__(self) -> str:
        return self.path


@final
@dataclass(frozen=True, slots=True)
class KafkaLocation:
    """A dead-letter topic and the brokers to bootstrap from."""

    bootstrap_servers: tuple[str, ...]
    topic: str

    def __str__(self) -> str:
        return f"kafka://{','.join(self.bootstrap_servers)}/{self.topic}"


@final
@dataclass(frozen=True, slots=True)
class S3Location:
    """Dead-letter objects under ``prefix`` in ``bucket`` (``prefix`` may be empty)."""

    bucket: str
    prefix: str

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


DeadLetterLocation = FileLocation | KafkaLocation | S3Location
"""Any place ``riprap dlq`` reads dead letters from."""


def parse_location(text: str) -> DeadLetterLocation:
    """The location ``text`` names (see the module docstring for the forms).

    Raises:
        ValueError: ``text`` is empty, has an unknown scheme, or a malformed
            host, port, topic or bucket; the message names the problem.
    """
    if not text.strip():
        raise ValueError(f"empty dead-letter location: {_FORMS}")
    match = _SCHEME.match(text)
    if match is None:
        return FileLocation(text)
    scheme, rest = match[1].lower(), text[match.end() :]
    if scheme == "kafka":
        return _kafka(text, rest)
    if scheme == "s3":
        return _s3(text, rest)
    raise ValueError(f"{text!r}: unknown scheme {match[1]!r}: {_FORMS}")


def location_argument(text: str) -> DeadLetterLocation:
    """:func:`parse_location` as an argparse ``type`` (bad locations are usage errors)."""
    try:
        return parse_location(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _kafka(text: str, rest: str) -> KafkaLocation:
    hosts, slash, topic = rest.partition("/")
    if not hosts:
        raise ValueError(f"{text!r}: no broker: use kafka://HOST:PORT[,HOST:PORT]/TOPIC")
    servers = tuple(_server(text, server) for server in hosts.split(","))
    if not slash or not topic:
        raise ValueError(f"{text!r}: no topic: use kafka://HOST:PORT[,HOST:PORT]/TOPIC")
    if _TOPIC.fullmatch(topic) is None or topic in (".", ".."):
        raise ValueError(
            f"{text!r}: {topic!r} is not a Kafka topic name"
            " (1 to 249 of the characters a-z A-Z 0-9 . _ -)"
        )
    return KafkaLocation(servers, topic)


def _server(text: str, server: str) -> str:
    host, colon, port = server.rpartition(":")
    if not colon or not host:
        raise ValueError(f"{text!r}: broker {server!r} is not HOST:PORT")
    if not port.isdigit() or not 0 < int(port) < 65_536:
        raise ValueError(f"{text!r}: broker {server!r} has an invalid port {port!r}")
    return server


def _s3(text: str, rest: str) -> S3Location:
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise ValueError(f"{text!r}: no bucket: use s3://BUCKET/PREFIX")
    if _BUCKET.fullmatch(bucket) is None:
        raise ValueError(
            f"{text!r}: {bucket!r} is not an S3 bucket name"
            " (3 to 63 letters, digits, dots, hyphens; starting and ending with a letter or digit)"
        )
    return S3Location(bucket, prefix)


def same_store(a: DeadLetterLocation, b: DeadLetterLocation) -> bool:
    """Whether two locations name the same store (files compared by absolute path)."""
    if isinstance(a, FileLocation) and isinstance(b, FileLocation):
        return os.path.abspath(a.path) == os.path.abspath(b.path)
    if isinstance(a, KafkaLocation) and isinstance(b, KafkaLocation):
        return a.topic == b.topic  # the brokers may be listed differently
    return a == b


def default_failed_to(location: DeadLetterLocation) -> FileLocation:
    """Where a replay sends letters that fail again unless told: a local JSON Lines file.

    ``<file>.replay-failed.jsonl`` next to a file store; for a topic or a
    prefix, ``<topic>.replay-failed.jsonl`` or ``<bucket>-<prefix parts>...``
    in the current directory.
    """
    if isinstance(location, FileLocation):
        return FileLocation(f"{location.path}.replay-failed.jsonl")
    if isinstance(location, KafkaLocation):
        return FileLocation(f"{location.topic}.replay-failed.jsonl")
    parts = [location.bucket, *(part for part in location.prefix.split("/") if part)]
    return FileLocation("-".join(parts) + ".replay-failed.jsonl")
