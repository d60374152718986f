"""Field access shared by the validation and quality stages."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from riprap import ConfigError

MISSING: Any = object()
"""What :func:`get` returns for an absent field."""


def get(value: Any, name: str) -> Any:
    """``value[name]`` for mappings, ``value.name`` otherwise; ``MISSING`` when absent."""
    if isinstance(value, dict):
        return value.get(name, MISSING)
    if isinstance(value, Mapping):
        return value.get(name, MISSING)
    return getattr(value, name, MISSING)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_field(option: str, name: object) -> str:
    if not isinstance(name, str) or not name:
        raise ConfigError(option, f"a field name must be a non-empty string, got {name!r}")
    return name
