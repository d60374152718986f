"""Kafka source and sink (needs the ``kafka`` extra: ``pip install riprap[kafka]``).

:class:`KafkaSource` names partitions ``"topic:partition"`` and hands over raw
bytes; decode in a step with :func:`json_value` or :func:`str_value` so that
one bad message is dead-lettered instead of stopping the source.
:class:`KafkaSink` waits for every acknowledgement and is at-least-once.
:class:`KafkaChangelog` logs a pipeline's keyed state to a compacted topic, so
that a partition's state follows it to whichever group member reads it.
:class:`KafkaDeadLetters` writes dead letters to a topic;
:func:`iter_kafka_dead_letters` and :class:`KafkaDeadLetterSource` read them back
(``riprap dlq inspect|replay kafka://...``); :func:`topic_replay_pipeline`
produces dead letters' original records back to a topic (``riprap dlq replay
--to-topic``), each marked with ``LETTER_ID_HEADER``.
"""

from __future__ import annotations

from riprap.lowlevel import fixup_module_metadata

try:
    import aiokafka  # noqa: F401  # fail early with an actionable message
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the environment
    raise ModuleNotFoundError(
        "riprap.connectors.kafka needs aiokafka: pip install 'riprap[kafka]'", name=exc.name
    ) from exc

from ._changelog import KafkaChangelog as KafkaChangelog
from ._checkpoints import KafkaCheckpoints as KafkaCheckpoints
from ._codecs import Serializer as Serializer
from ._codecs import json_value as json_value
from ._codecs import lag_by_partition as lag_by_partition
from ._codecs import parse_partition as parse_partition
from ._codecs import partition_lag as partition_lag
from ._codecs import partition_name as partition_name
from ._codecs import str_value as str_value
from ._deadletters import HEADER_PREFIX as HEADER_PREFIX
from ._deadletters import KafkaDeadLetters as KafkaDeadLetters
from ._deadletters import letter_from_message as letter_from_message
from ._dlq_reader import KafkaDeadLetterSource as KafkaDeadLetterSource
from ._dlq_reader import iter_kafka_dead_letters as iter_kafka_dead_letters
from ._gaps import OffsetGapError as OffsetGapError
from ._replay_topic import LETTER_ID_HEADER as LETTER_ID_HEADER
from ._replay_topic import topic_replay_pipeline as topic_replay_pipeline
from ._sink import KafkaSink as KafkaSink
from ._source import KafkaSource as KafkaSource

__all__ = (
    "HEADER_PREFIX",
    "LETTER_ID_HEADER",
    "KafkaChangelog",
    "KafkaCheckpoints",
    "KafkaDeadLetterSource",
    "KafkaDeadLetters",
    "KafkaSink",
    "KafkaSource",
    "OffsetGapError",
    "Serializer",
    "iter_kafka_dead_letters",
    "json_value",
    "lag_by_partition",
    "letter_from_message",
    "parse_partition",
    "partition_lag",
    "partition_name",
    "str_value",
    "topic_replay_pipeline",
)

fixup_module_metadata(__name__, globals())
