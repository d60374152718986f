"""How the CDC source sizes its fetches by bytes: the heaviest row seen, forgotten slowly."""

from __future__ import annotations

from riprap.connectors.postgres._weight import PROBE, FetchSizer, text_sizes


def rows(*sizes: int) -> list[tuple[str, int, bytes]]:
    """Fetched rows (``lsn, xid, data``) whose messages weigh ``sizes``."""
    return [("0/0", 1, b"x" * size) for size in sizes]


def test_without_a_limit_a_fetch_asks_for_the_batch() -> None:
    sizer = FetchSizer(None)
    assert 500 == sizer.size(500)
    assert (3, 30) == sizer.cut(sizer.weigh(rows(10, 10, 10)))


def test_the_first_fetch_probes_then_fetches_follow_the_heaviest_message() -> None:
    sizer = FetchSizer(1000)
    assert PROBE == sizer.size(500)
    assert 3 == sizer.size(3)
    sizer.weigh(rows(20, 100, 20))  # begin, a change, commit: the change counts
    assert 10 == sizer.size(500)
    sizer.weigh(rows(2000))  # heavier than the limit: one message a fetch
    assert 1 == sizer.size(500)


def test_a_heavy_message_is_forgotten_a_quarter_per_fetch() -> None:
    """After one message of 4,000 bytes among ones of 100, fetches grow back to 10 messages."""
    sizer = FetchSizer(1000)
    sizer.weigh(rows(4000))
    seen = []
    for _ in range(16):
        seen.append(sizer.size(500))
        sizer.weigh(rows(*[100] * seen[-1]))
    assert 1 == seen[0]
    assert seen == sorted(seen)  # never shrinks while messages stay light
    assert 10 == seen[-1]


def test_a_batch_ends_with_the_message_that_reaches_the_limit() -> None:
    sizer = FetchSizer(100)
    assert (2, 100) == sizer.cut([50, 50, 50])  # exactly at the limit
    assert (2, 110) == sizer.cut([60, 50, 50])  # the one that passes it, included
    assert (1, 500) == sizer.cut([500, 1])  # a message heavier than the limit goes alone
    assert (3, 90) == sizer.cut([30, 30, 30])  # under the limit: all of them


def test_a_snapshot_row_weighs_its_texts_and_one_a_column() -> None:
    """A NULL still weighs one, so a row of NULLs is never free and sums stay ordered."""
    assert [3 + 1 + 0 + 1 + 1, 3] == text_sizes([("abc", "", None), (None, None, None)])


def test_snapshot_fetches_follow_the_heaviest_row() -> None:
    sizer = FetchSizer(1000, text_sizes)
    assert PROBE == sizer.size(500)
    sizer.weigh([("x" * 99,), ("x" * 9,)])
    assert 10 == sizer.size(500)
