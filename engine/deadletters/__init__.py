"""Dead letters: the envelope, the stores that keep it, its reader source and the guard.

A record counts as done only when its dead-letter write is durable (I6).
:func:`encode_payload`, :func:`decode_payload`, :func:`letter_batch`,
:class:`TokenBucket` and :class:`LetterIds` (which folds repeated letters by
id, in bounded memory) are what a third-party store or replay source builds on.

.. versionadded:: 0.1
"""

from __future__ import annotations

from riprap._core.errors import PoisonPillError as PoisonPillError
from riprap._core.public import fixup_module_metadata
from riprap.deadletters._envelope import DeadLetter as DeadLetter
from riprap.deadletters._envelope import decode_payload as decode_payload
from riprap.deadletters._envelope import encode_payload as encode_payload
from riprap.deadletters._guard import DeadLetterGuard as DeadLetterGuard
from riprap.deadletters._guard import DeadLetterRateError as DeadLetterRateError
from riprap.deadletters._guard import DeadLetterWriteError as DeadLetterWriteError
from riprap.deadletters._ids import LetterIds as LetterIds
from riprap.deadletters._source import DeadLetterSource as DeadLetterSource
from riprap.deadletters._source import TokenBucket as TokenBucket
from riprap.deadletters._source import letter_batch as letter_batch
from riprap.deadletters._stores import DeadLetterFilter as DeadLetterFilter
from riprap.deadletters._stores import DeadLetterSink as DeadLetterSink
from riprap.deadletters._stores import DeadLetterStoreFullError as DeadLetterStoreFullError
from riprap.deadletters._stores import JsonLinesDeadLetters as JsonLinesDeadLetters
from riprap.deadletters._stores import SqliteDeadLetters as SqliteDeadLetters
from riprap.deadletters._stores import purge_dead_letters as purge_dead_letters
from riprap.deadletters._stores import read_dead_letters as read_dead_letters

__all__ = (
    "DeadLetter",
    "DeadLetterFilter",
    "DeadLetterGuard",
    "DeadLetterRateError",
    "DeadLetterSink",
    "DeadLetterSource",
    "DeadLetterStoreFullError",
    "DeadLetterWriteError",
    "JsonLinesDeadLetters",
    "LetterIds",
    "PoisonPillError",
    "SqliteDeadLetters",
    "TokenBucket",
    "decode_payload",
    "encode_payload",
    "letter_batch",
    "purge_dead_letters",
    "read_dead_letters",
)

fixup_module_metadata(__name__, globals())
