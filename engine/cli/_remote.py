"""``riprap dlq`` on every kind of location: files here, Kafka and S3 through their connectors.

This is CLI support: the one place besides the demo where the engine reaches
into ``riprap.connectors``, always lazily, so that ``import riprap`` needs no
extra. A location whose extra is not installed is a :class:`ConfigError`
naming the ``pip install`` that fixes it.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
from typing import TYPE_CHECKING

from riprap._core.errors import ConfigError
from riprap.cli._locations import FileLocation, KafkaLocation, S3Location
from riprap.deadletters._ids import LetterIds
from riprap.deadletters._source import DeadLetterSource
from riprap.deadletters._stores import JsonLinesDeadLetters, purge_dead_letters, read_dead_letters

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Callable

    from riprap._core.pipeline import Pipeline
    from riprap._core.protocols import Source
    from riprap.cli._locations import DeadLetterLocation
    from riprap.deadletters._envelope import DeadLetter
    from riprap.deadletters._stores import DeadLetterFilter, DeadLetterSink

_EXTRAS = {"kafka": "aiokafka", "s3": "aiobotocore"}


def _require(extra: str, location: DeadLetterLocation) -> None:
    """Fail with the install hint when the extra for ``location`` is missing."""
    module = _EXTRAS[extra]
    if importlib.util.find_spec(module) is None:
        raise ConfigError(
            str(location), f"needs the {extra} extra ({module}): pip install 'riprap[{extra}]'"
        )


def scan_dead_letters(
    location: DeadLetterLocation,
    visit: Callable[[DeadLetter], None],
    *,
    endpoint_url: str | None = None,
) -> int:
    """Call ``visit`` with every letter stored at ``location``, one per id, in store order.

    Blocking. A topic is read up to the end observed at the start. Every
    reader gives the first copy of each id and folds the repeats (a letter
    written again after the failing run crashed).

    Returns:
        How many repeats were folded.

    Raises:
        ConfigError: The location's extra is not installed.
        FileNotFoundError: Nothing is stored there.
        OSError: The store cannot be read.
        ValueError: A stored letter is corrupt; the message says where.
    """
    with LetterIds() as seen:
        if isinstance(location, FileLocation):
            for letter in read_dead_letters(location.path, seen=seen):
                visit(letter)
            return seen.repeats
        import anyio

        async def scan() -> None:
            remote = _remote_letters(location, endpoint_url, seen)
            async with contextlib.aclosing(remote) as letters:
                async for letter in letters:
                    visit(letter)

        anyio.run(scan)
        return seen.repeats


def _remote_letters(
    location: KafkaLocation | S3Location, endpoint_url: str | None, seen: LetterIds
) -> AsyncGenerator[DeadLetter, None]:
    if isinstance(location, KafkaLocation):
        _require("kafka", location)
        from riprap.connectors.kafka import iter_kafka_dead_letters

        return iter_kafka_dead_letters(
            location.topic, bootstrap_servers=list(location.bootstrap_servers), seen=seen
        )
    _require("s3", location)
    from riprap.connectors.s3 import iter_s3_dead_letters

    return iter_s3_dead_letters(
        location.bucket, location.prefix, endpoint_url=endpoint_url, seen=seen
    )


def replay_source(
    location: DeadLetterLocation,
    *,
    filter: DeadLetterFilter,
    rate_limit: float | None,
    endpoint_url: str | None = None,
    id_header: str | None = None,
) -> Source:
    """The source a replay of ``location`` reads: positions resume where the last one stopped.

    With ``id_header``, each record carries its letter's id in a header of that name.

    Raises:
        ConfigError: The location's extra is not installed, or the rate is impossible.
    """
    if isinstance(location, FileLocation):
        return DeadLetterSource(
            location.path, filter=filter, rate_limit=rate_limit, id_header=id_header
        )
    if isinstance(location, KafkaLocation):
        _require("kafka", location)
        from riprap.connectors.kafka import KafkaDeadLetterSource

        return KafkaDeadLetterSource(
            location.topic,
            bootstrap_servers=list(location.bootstrap_servers),
            filter=filter,
            rate_limit=rate_limit,
            id_header=id_header,
        )
    _require("s3", location)
    from riprap.connectors.s3 import S3DeadLetterSource

    return S3DeadLetterSource(
        location.bucket,
        location.prefix,
        filter=filter,
        rate_limit=rate_limit,
        endpoint_url=endpoint_url,
        id_header=id_header,
    )


def dead_letter_sink(
    location: DeadLetterLocation, *, endpoint_url: str | None = None
) -> DeadLetterSink:
    """A sink writing letters to ``location`` (a file is JSON Lines).

    Raises:
        ConfigError: The location's extra is not installed.
    """
    if isinstance(location, FileLocation):
        return JsonLinesDeadLetters(location.path)
    if isinstance(location, KafkaLocation):
        _require("kafka", location)
        from riprap.connectors.kafka import KafkaDeadLetters

        return KafkaDeadLetters(location.topic, bootstrap_servers=list(location.bootstrap_servers))
    _require("s3", location)
    from riprap.connectors.s3 import S3DeadLetters

    return S3DeadLetters(location.bucket, location.prefix, endpoint_url=endpoint_url)


def topic_replay(location: KafkaLocation, *, checkpoint: str) -> tuple[Pipeline, str]:
    """The pipeline producing letters' original records to ``location``, and its id header.

    ``checkpoint`` is the SQLite file the replay records its progress in.

    Raises:
        ConfigError: The kafka extra is not installed.
    """
    _require("kafka", location)
    from riprap.checkpoints import SqliteCheckpoints
    from riprap.connectors.kafka import LETTER_ID_HEADER, topic_replay_pipeline

    pipeline = topic_replay_pipeline(
        location.topic,
        bootstrap_servers=list(location.bootstrap_servers),
        checkpoint=SqliteCheckpoints(checkpoint),
    )
    return pipeline, LETTER_ID_HEADER


def purge(
    location: DeadLetterLocation, *, before: float, endpoint_url: str | None = None
) -> tuple[str, str]:
    """Delete the letters at ``location`` last failed before ``before``.

    Letters are judged by id, as readers see them, and repeats are folded
    (see :func:`~riprap.deadletters.purge_dead_letters` and the S3 purge).

    Returns:
        What was removed (``"removed 3 dead letters (1 repeat folded)"``) and
        what was kept despite its age (``"; kept ..."``, or ``""``).

    Raises:
        ConfigError: The location's extra is not installed.
        FileNotFoundError: Nothing is stored there.
        OSError: The store cannot be changed, or it is a Kafka topic: topics
            are purged by their ``retention.ms``, not letter by letter.
        ValueError: A stored letter is corrupt (nothing after it is removed).
    """
    if isinstance(location, FileLocation):
        with LetterIds() as seen:
            count = purge_dead_letters(location.path, before=before, seen=seen)
            return f"removed {_letters(count)} {_folded(seen.repeats)}", ""
    if isinstance(location, KafkaLocation):
        raise OSError(
            f"{location}: purge is not supported for Kafka topics: set the topic's"
            " retention.ms and Kafka deletes old letters itself"
        )
    _require("s3", location)
    import anyio

    from riprap.connectors.s3 import purge_s3_dead_letters

    report = anyio.run(
        functools.partial(
            purge_s3_dead_letters,
            location.bucket,
            location.prefix,
            before=before,
            endpoint_url=endpoint_url,
        )
    )
    removed = (
        f"removed {_letters(report.removed_letters)} {_folded(report.repeats_folded)}"
        f" in {_objects(report.removed_objects)}"
    )
    kept = ""
    if report.kept_objects:
        kept += (
            f"; kept {_letters(report.kept_letters)} as old in {_objects(report.kept_objects)}"
            " that also hold newer letters (objects are deleted whole)"
        )
    if report.changed_objects:
        kept += f"; kept {_objects(report.changed_objects)} rewritten while purging"
    return removed, kept


def _letters(count: int) -> str:
    return f"{count} dead letter{'s' if count != 1 else ''}"


def _folded(count: int) -> str:
    return f"({count} repeat{'s' if count != 1 else ''} folded)"


def _objects(count: int) -> str:
    return f"{count} object{'s' if count != 1 else ''}"
