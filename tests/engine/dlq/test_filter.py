"""``DeadLetterFilter``: every criterion alone, and all of them together."""

from __future__ import annotations

import pytest

from riprap import DecodeError
from riprap.deadletters import DeadLetterFilter

from ._letters import T0, make_letter

LETTER = make_letter(stage="parse", error=DecodeError("bad"), at=T0)


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        (DeadLetterFilter(), True),
        (DeadLetterFilter(stage="parse"), True),
        (DeadLetterFilter(stage="enrich"), False),
        (DeadLetterFilter(error_type="DecodeError"), True),
        (DeadLetterFilter(error_type=LETTER.error_type), True),
        (DeadLetterFilter(error_type="Error"), False),
        (DeadLetterFilter(reason="decode_error"), True),
        (DeadLetterFilter(reason="late"), False),
        (DeadLetterFilter(since=T0), True),
        (DeadLetterFilter(since=T0 + 1), False),
        (DeadLetterFilter(until=T0 + 1), True),
        (DeadLetterFilter(until=T0), False),
        (DeadLetterFilter("parse", "DecodeError", "decode_error", T0 - 1, T0 + 1), True),
        (DeadLetterFilter("parse", "DecodeError", "late", T0 - 1, T0 + 1), False),
    ],
)
def test_matches(selector: DeadLetterFilter, expected: bool) -> None:
    """A letter matches when every set criterion holds (``since`` inclusive, ``until`` not)."""
    assert expected == selector.matches(LETTER)
