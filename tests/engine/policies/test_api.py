"""The public face of riprap.policies: finality, events, lazy optional imports."""

from __future__ import annotations

import dataclasses
import enum
import subprocess
import sys

import pytest

import riprap.policies
from riprap.policies import (
    CallRejected,
    CircuitStateChanged,
    FallbackUsed,
    PolicyEvent,
    RetryGaveUp,
    RetryScheduled,
)

SUBCLASSABLE = {"PolicyEvent"}
"""Public classes designed for subclassing (every concrete event derives from PolicyEvent)."""


def test_public_classes_are_final() -> None:
    """Every exported concrete class is @final unless designed for subclassing."""
    checked = []
    for name in riprap.policies.__all__:
        obj = getattr(riprap.policies, name)
        if not isinstance(obj, type) or name in SUBCLASSABLE:
            continue
        if getattr(obj, "_is_protocol", False) or issubclass(obj, enum.Enum | BaseException):
            continue  # protocols are implemented, enums cannot be, errors are meant to be
        assert getattr(obj, "__final__", False), f"{name} is not @final"
        checked.append(name)
    assert len(checked) >= 15


@pytest.mark.parametrize(
    "event_type", [RetryScheduled, RetryGaveUp, CircuitStateChanged, CallRejected, FallbackUsed]
)
def test_events_are_frozen_slotted_dataclasses(event_type: type[PolicyEvent]) -> None:
    """Events are immutable, slotted, and carry stage, dependency and time."""
    assert dataclasses.is_dataclass(event_type)
    params = event_type.__dataclass_params__  # type: ignore[attr-defined]
    assert params.frozen
    assert hasattr(event_type, "__slots__")
    names = {f.name for f in dataclasses.fields(event_type)}
    assert {"stage", "dependency", "at"} <= names


def test_importing_riprap_does_not_import_botocore() -> None:
    """botocore stays optional: the classifier only looks at it when it is loaded."""
    code = "import sys, riprap, riprap.policies; sys.exit('botocore' in sys.modules)"
    assert 0 == subprocess.run([sys.executable, "-c", code], check=False).returncode
