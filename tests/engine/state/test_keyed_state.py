"""Keyed state: per-key get/set/delete, TTL in virtual time, refused values, the cut rule."""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Any

import pytest

import riprap
from riprap.lowlevel import Ack, SourceOrigin
from riprap.state import (
    KeyedState,
    MemoryStore,
    MissingKeyError,
    State,
    StateStoreError,
    StateValueError,
)
from riprap.testing import VirtualClock

if TYPE_CHECKING:
    from collections.abc import Mapping

    from riprap import Batch as BatchType


class Harness:
    """A keyed state opened on a hand-made context whose positions the test sets."""

    def __init__(self, restored: Any = None) -> None:
        self.clock = VirtualClock()
        self.positions: dict[str, int] = {}
        self.saved = 0
        self.keyed = KeyedState(MemoryStore())
        if restored is not None:
            self.keyed.restore(restored)
        context = riprap.StageContext(
            pipeline="p",
            clock=self.clock,
            dead_letter=lambda batch, index, error, reason: None,
            positions=self.current_positions,
            checkpoints_saved=lambda: self.saved,
        )
        self.keyed.open(context, "count")

    def current_positions(self) -> Mapping[str, int]:
        return dict(self.positions)

    def state(self, key: Any, offset: int = 0, partition: str = "p0") -> State:
        """The state of ``key`` as the record at ``offset`` of ``partition`` sees it."""
        return self.keyed.state(batch_of(key, offset, partition), 0)


def batch_of(key: Any, offset: int, partition: str = "p0") -> BatchType:
    """A one-record batch whose source record has ``key`` at ``offset``."""
    source = riprap.SourceBatch(partition, [None], start=offset, keys=[key])
    return riprap.Batch([None], Ack(lambda: None), SourceOrigin(source))


def test_get_set_delete_per_key() -> None:
    """A key reads its default until set, its value after, its default again once deleted."""
    harness = Harness()
    assert 0 == harness.state("a").get(0)
    harness.state("a").set({"n": 1, "tags": ["x"]})
    harness.state("b").set(7)
    assert {"n": 1, "tags": ["x"]} == harness.state("a", 1).get()
    assert 7 == harness.state("b", 2).get()
    harness.state("a", 3).delete()
    assert None is harness.state("a", 4).get()
    assert 7 == harness.state("b", 5).get()


def test_partitions_and_key_types_are_separate() -> None:
    """The same key in two partitions, and "1", b"1" and 1, are four different states."""
    harness = Harness()
    for number, key in enumerate(("1", b"1", 1)):
        harness.state(key).set(number)
    harness.state("1", partition="p1").set("other")
    found = [harness.state(key, 9).get() for key in ("1", b"1", 1)]
    assert [0, 1, 2, "other"] == [*found, harness.state("1", 9, "p1").get()]


def test_a_value_is_copied_when_set() -> None:
    """Changing a dict after setting it does not change the stored state."""
    harness = Harness()
    value = {"n": 1}
    harness.state("a").set(value)
    value["n"] = 2
    assert {"n": 1} == harness.state("a", 1).get()


def test_ttl_expires_in_virtual_time() -> None:
    """A value set with a TTL is there until the clock passes it, then reads as absent."""
    harness = Harness()
    harness.state("a").set("fresh", ttl=10)
    harness.clock.advance(9.5)
    assert "fresh" == harness.state("a", 1).get()
    harness.clock.advance(1)
    assert "gone" == harness.state("a", 2).get("gone")


def test_expired_values_leave_the_checkpoint() -> None:
    """An expired value is not saved; one without TTL is."""
    harness = Harness()
    harness.state("short").set(1, ttl=5)
    harness.state("long").set(2)
    harness.positions["p0"] = 1
    harness.clock.advance(6)
    snapshot = harness.keyed.snapshot()
    assert {"p0": {"s:long": ["2", None]}} == snapshot["partitions"]


@pytest.mark.parametrize("ttl", [0, -1.0, True])
def test_a_ttl_must_be_positive(ttl: float) -> None:
    """A TTL of zero, below zero or a bool is a configuration error naming the step."""
    harness = Harness()
    with pytest.raises(riprap.ConfigError, match=r"state\('count'\)\.ttl"):
        harness.state("a").set(1, ttl=ttl)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (float("nan"), "NaN or infinity"),
        ({"deep": [1.0, float("inf")]}, "NaN or infinity"),
        (2**70, "cannot be stored as JSON"),
        ({1: "int key"}, "cannot be stored as JSON"),
        ({1, 2}, "cannot be stored as JSON"),
        (datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC), "cannot be stored as JSON"),
    ],
)
def test_a_value_json_cannot_hold_is_refused(value: object, problem: str) -> None:
    """NaN, huge integers, non-string dict keys, sets and datetimes fail naming step and key."""
    harness = Harness()
    with pytest.raises(StateValueError, match=problem) as caught:
        harness.state("customer-7").set(value)
    assert "step 'count', key 'customer-7'" in str(caught.value)
    assert "bad_state_value" == caught.value.reason
    assert None is harness.state("customer-7", 1).get()


def test_a_record_without_key_is_a_data_error() -> None:
    """No key: a MissingKeyError (a DataError) naming the step, partition and offset."""
    harness = Harness()
    with pytest.raises(MissingKeyError, match="partition 'p0', offset 4") as caught:
        harness.state(None, 4)
    assert isinstance(caught.value, riprap.DataError)
    assert "missing_key" == caught.value.reason


def test_a_key_of_another_type_is_a_data_error() -> None:
    """A float key has no exact text form: refused as a data error."""
    harness = Harness()
    with pytest.raises(StateValueError, match="must be str, bytes or int, not float"):
        harness.state(1.5)


def test_an_item_without_source_record_is_a_config_error() -> None:
    """An item with no origin (after a batch step) cannot find its key: a ConfigError."""
    harness = Harness()
    batch = riprap.Batch([[1, 2]], Ack(lambda: None), None)
    with pytest.raises(riprap.ConfigError, match="no source record"):
        harness.keyed.state(batch, 0)


def test_a_cut_holds_only_changes_below_the_positions() -> None:
    """Changes of records at or past a partition's position stay out of the checkpoint."""
    harness = Harness()
    for offset in range(5):
        state = harness.state("a", offset)
        state.set(state.get(0) + 1)
    harness.state("b", 0, "p1").set("untracked partition")
    harness.positions["p0"] = 3  # records 3 and 4 are not done yet
    assert {"p0": {"s:a": ["3", None]}} == harness.keyed.snapshot()["partitions"]
    assert 5 == harness.state("a", 5).get()  # the step still sees every change
    harness.positions["p0"] = 5
    assert {"p0": {"s:a": ["5", None]}} == harness.keyed.snapshot()["partitions"]


def test_a_restored_snapshot_is_the_state() -> None:
    """Restoring what a cut saved gives the values back."""
    first = Harness()
    first.state("a").set([1, 2])
    first.positions["p0"] = 1
    restored = Harness(first.keyed.snapshot())
    assert [1, 2] == restored.state("a", 1).get()


def test_state_of_another_store_is_refused() -> None:
    """A checkpoint holding SQLite state is not taken by a memory store."""
    with pytest.raises(StateStoreError, match="'sqlite' store"):
        Harness({"store": "sqlite", "partitions": {}})


def test_state_of_another_kind_of_step_is_refused() -> None:
    """A window's state under the step id (the step was another kind before) is refused."""
    with pytest.raises(StateStoreError, match="other state under this step id"):
        Harness({"windows": []})


def test_records_out_of_order_are_refused() -> None:
    """A change of an earlier offset after a later one stops the run: no cut could be right."""
    harness = Harness()
    harness.state("a", 5).set(1)
    with pytest.raises(riprap.ConfigError, match=r"out of order \(offset 3 after 5\)"):
        harness.state("a", 3).set(2)


def test_a_state_is_not_made_directly() -> None:
    """State objects come from riprap, bound to a record; constructing one is a TypeError."""
    with pytest.raises(TypeError, match="not made directly"):
        State()


def test_an_unchanged_state_hands_out_the_same_snapshot() -> None:
    """Without new changes below the positions, a cut returns the very same object."""
    harness = Harness()
    harness.state("a").set(1)
    harness.positions["p0"] = 1
    first = harness.keyed.snapshot()
    harness.state("a", 1).set(2)  # not done yet: position 1 does not cover it
    assert first is harness.keyed.snapshot()
    harness.positions["p0"] = 2
    assert first is not harness.keyed.snapshot()


def test_changes_of_done_records_fold_to_one_per_key() -> None:
    """Memory follows the keys and the records in flight, not the records between two cuts."""
    harness = Harness()
    for offset in range(60_000):
        harness.positions["p0"] = max(0, offset - 100)  # the sink is 100 records behind
        state = harness.state(f"k{offset % 10}", offset)
        state.set(state.get(0) + 1)
    held = len(harness.keyed._logs["p0"].offsets)
    assert held < 10_000, f"{held} changes held for 10 keys and 100 records in flight"
    harness.positions["p0"] = 59_950  # the cut is still exact
    cut = harness.keyed.snapshot()["partitions"]["p0"]
    expected = {f"s:k{k}": [str(len(range(k, 59_950, 10))), None] for k in range(10)}
    assert expected == cut
    assert 6_000 == harness.state("k0", 60_000).get()  # the step sees its newest changes
