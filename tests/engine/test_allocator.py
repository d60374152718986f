"""keep_freed_memory: applies on glibc, defers to MALLOC_TRIM_THRESHOLD_, refuses nonsense."""

from __future__ import annotations

import platform
import sys

import pytest

import riprap
import riprap.lowlevel
from riprap._runtime.allocator import DEFAULT_TRIM_THRESHOLD

glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not glibc, reason="the trim threshold is a glibc setting")
def test_sets_the_trim_threshold_on_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    assert riprap.lowlevel.keep_freed_memory(DEFAULT_TRIM_THRESHOLD)


def test_an_explicit_environment_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert not riprap.lowlevel.keep_freed_memory()


def test_a_negative_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="must not be negative, got -1"):
        riprap.lowlevel.keep_freed_memory(-1)
