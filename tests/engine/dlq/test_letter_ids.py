"""``LetterIds``: first copies told from repeats, exactly, in memory and on disk."""

from __future__ import annotations

import hashlib

import pytest

from riprap import ConfigError
from riprap.deadletters import LetterIds


def ids(count: int) -> list[str]:
    """``count`` distinct ids shaped like riprap's (64 hex characters)."""
    return [hashlib.sha256(str(i).encode()).hexdigest() for i in range(count)]


def test_first_copy_is_new_and_repeats_are_counted() -> None:
    """``add`` is true once per id; every later copy is a repeat."""
    first, second = ids(2)
    with LetterIds() as seen:
        added = [seen.add(i) for i in (first, second, first, first, second)]
        assert ([True, True, False, False, False], 3, 2) == (added, seen.repeats, len(seen))
        assert (True, False) == (first in seen, ids(3)[2] in seen)


def test_ids_move_to_disk_past_the_memory_bound_and_stay_exact() -> None:
    """Past ``in_memory`` ids the set lives on disk and still answers exactly."""
    many = ids(5_000)
    with LetterIds(in_memory=100) as seen:
        assert all(seen.add(i) for i in many)
        assert (True, 5_000, 0) == (seen.on_disk, len(seen), seen.repeats)
        assert not any(seen.add(i) for i in many[::10])
        assert (500, True, False) == (seen.repeats, many[-1] in seen, ids(5_001)[-1] in seen)


def test_ids_of_any_shape_are_kept_apart() -> None:
    """An id that is not 64 lowercase hex characters is never confused with another one."""
    hexed = ids(1)[0]
    with LetterIds(in_memory=1) as seen:
        added = [seen.add(i) for i in (hexed, hexed.upper(), "hand-made", "hand-made")]
    assert [True, True, True, False] == added


def test_close_forgets_everything() -> None:
    """After ``close`` nothing is remembered and the temporary database is gone."""
    seen = LetterIds(in_memory=0)
    seen.add(ids(1)[0])
    seen.close()
    assert (0, False, False) == (len(seen), seen.on_disk, ids(1)[0] in seen)


@pytest.mark.parametrize(("option", "value"), [("in_memory", -1), ("cache_kib", 8)])
def test_impossible_bounds_are_config_errors(option: str, value: int) -> None:
    """A negative memory bound or a tiny cache is refused, naming the option."""
    with pytest.raises(ConfigError, match=option):
        LetterIds(**{option: value})
