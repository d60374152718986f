"""Builders of dead letters shared by the DLQ tests."""

from __future__ import annotations

from typing import Any

from riprap import DataError, Record
from riprap.deadletters import DeadLetter
from riprap.observability import Redactor

T0 = 1_700_000_000.0
"""A fixed failure time (2023-11-14T22:13:20Z)."""


def make_letter(
    offset: int = 10,
    *,
    value: Any = b'{"order": 1}',
    key: Any = b"order-1",
    headers: tuple[tuple[str, Any], ...] = (("content-type", b"application/json"),),
    stage: str = "parse",
    error: BaseException | None = None,
    reason: str | None = None,
    at: float = T0,
    partition: str = "orders.jsonl",
    pipeline: str = "orders",
) -> DeadLetter:
    """A dead letter for the record at ``offset`` that failed once at ``at``."""
    record = Record(
        value, key=key, headers=headers, timestamp=T0 - 60, partition=partition, offset=offset
    )
    return DeadLetter.create(
        pipeline=pipeline,
        stage=stage,
        error=error if error is not None else DataError("bad order"),
        reason=reason,
        record=record,
        source="orders-file",
        attempts=1,
        first_failure_at=at,
        last_failure_at=at,
        config_hash="cafe",
        redactor=Redactor(),
    )
