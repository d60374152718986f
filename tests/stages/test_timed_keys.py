"""TimedKeys: copy-on-write levels behave like one OrderedDict, and frozen views never change."""

from __future__ import annotations

import random
import threading
from collections import OrderedDict

import pytest

from riprap.stages._timed_keys import MAX_LEVELS, FrozenKeys, TimedKeys


def check(keys: TimedKeys, model: OrderedDict[str, float]) -> None:
    """``keys`` holds what ``model`` holds, in the same order."""
    assert len(model) == len(keys)
    assert next(iter(model.items()), None) == keys.oldest()
    view = keys.freeze()
    assert (list(model), list(model.values())) == view.visible()
    assert list(model.items()) == list(view.merged().items())


@pytest.mark.parametrize("seed", range(8))
def test_levels_behave_like_one_ordered_dict(seed: int) -> None:
    """Random adds, discards, evictions, freezes and merges agree with an OrderedDict."""
    rng = random.Random(seed)
    model: OrderedDict[str, float] = OrderedDict()
    keys = TimedKeys()
    views: list[tuple[FrozenKeys, list[tuple[str, float]]]] = []
    for step in range(4_000):
        op = rng.random()
        key = f"k{rng.randrange(300)}"
        if op < 0.45:
            if key in model:
                del model[key]
                keys.discard(key)
            model[key] = float(step)
            keys.add(key, float(step))
        elif op < 0.6:
            model.pop(key, None)
            keys.discard(key)
        elif op < 0.75:
            expected = model.popitem(last=False) if model else None
            assert expected == keys.pop_oldest()
        elif op < 0.8:
            view = keys.freeze()
            views.append((view, list(model.items())))
            if rng.random() < 0.7:
                view.merged()  # as the encoding worker does when due; the next freeze installs it
            else:
                assert (list(model), list(model.values())) == view.visible()
            if rng.random() < 0.5:
                if views and rng.random() < 0.5:
                    views.pop(0)  # a view the checkpointer no longer holds
                view.dispose()  # must never empty a level still in use
        assert model.get(key) == keys.get(key)
        if step % 97 == 0:
            check(keys, model)
    check(keys, model)
    for view, items in views:
        hidden = {key for key, _ in items[::3]}
        shown = [(key, at) for key, at in items if key not in hidden]
        assert shown == list(zip(*view.visible(hidden), strict=True))
        assert items == list(view.merged().items())


def test_a_view_is_merged_in_a_thread_while_the_keys_change() -> None:
    """A view merged in another thread is the cut, whatever the owner does meanwhile."""
    keys = TimedKeys((f"k{i}", float(i)) for i in range(50_000))
    view = keys.freeze()
    expected = [(f"k{i}", float(i)) for i in range(50_000)]
    result: list[list[tuple[str, float]]] = []
    worker = threading.Thread(target=lambda: result.append(list(view.merged().items())))
    worker.start()
    for i in range(20_000):
        keys.pop_oldest()
        keys.add(f"n{i}", 1e6 + i)
    worker.join()
    assert [expected] == result
    assert 50_000 == len(keys)
    assert ("k20000", 20_000.0) == keys.oldest()


def test_views_never_encoded_are_merged_before_levels_pile_up() -> None:
    """Freezes whose views are never merged still leave a bounded number of levels."""
    keys = TimedKeys()
    for i in range(3 * MAX_LEVELS):
        keys.add(f"k{i}", float(i))
        keys.freeze()
    assert MAX_LEVELS >= len(keys.freeze().levels)
    assert [(f"k{i}", float(i)) for i in range(3 * MAX_LEVELS)] == list(
        keys.freeze().merged().items()
    )


def test_replaced_key_tables_are_emptied_once_no_view_holds_them() -> None:
    """After merges, dispose empties the replaced levels that no kept view refers to."""
    keys = TimedKeys((f"k{i}", float(i)) for i in range(10_000))
    for round_ in range(6):
        for i in range(5_000):
            keys.pop_oldest()
            keys.add(f"r{round_}-{i}", 1e6 + round_ * 10_000 + i)
        view = keys.freeze()
        view.merged()
        view.dispose()
        del view
    last = keys.freeze()
    last.dispose()
    assert 10_000 == len(last.merged())
    assert [] == keys._retired
