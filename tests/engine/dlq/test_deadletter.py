"""The dead-letter envelope: encodings, round trips, ids, defaults and bad input."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import orjson
import pytest

from riprap import DataError, DecodeError, Record
from riprap.deadletters import DeadLetter
from riprap.deadletters._envelope import MAX_TRACEBACK_CHARS
from riprap.observability import Redactor

from ._letters import T0, make_letter


def test_utf8_bytes_round_trip_as_text() -> None:
    """UTF-8 bytes are stored as text and come back as the same bytes."""
    letter = make_letter(value="naïve ☃".encode())
    back = DeadLetter.from_json(letter.to_json())
    assert ("utf-8", "naïve ☃") == (letter.value_encoding, letter.value)
    assert letter == back
    assert "naïve ☃".encode() == back.original_value()


def test_non_utf8_bytes_round_trip_as_base64() -> None:
    """Bytes that are not UTF-8 are stored as base64 and come back unchanged."""
    raw = b"\xff\xfe\x00binary\x80"
    letter = make_letter(value=raw, key=b"\xc3\x28")
    back = DeadLetter.from_json(letter.to_json())
    assert ("base64", "base64") == (back.value_encoding, back.key_encoding)
    assert (raw, b"\xc3\x28") == (back.original_value(), back.original_key())
    assert len(raw) == back.value_size()


def test_decoded_values_round_trip_as_json() -> None:
    """An already-decoded value is stored as JSON text and decodes to an equal object."""
    value = {"order": 7, "items": [1, 2], "note": None}
    letter = make_letter(value=value, key="k-7")
    back = DeadLetter.from_json(letter.to_json())
    assert ("json", "json") == (back.value_encoding, back.key_encoding)
    assert (value, "k-7") == (back.original_value(), back.original_key())


def test_headers_and_missing_key_round_trip() -> None:
    """Headers keep their order and encodings; a record without key has none."""
    headers = (("trace", b"abc"), ("blob", b"\xff"), ("retries", 3))
    letter = DeadLetter.from_json(make_letter(key=None, headers=headers).to_json())
    assert (None, None, None) == (letter.key, letter.key_encoding, letter.original_key())
    assert [("trace", b"abc"), ("blob", b"\xff"), ("retries", 3)] == letter.original_headers()
    assert ("blob", "base64", "/w==") == letter.headers[1]


def test_to_json_is_one_line_with_version_first() -> None:
    """The serialised envelope is a single line, no newline, starting with its version."""
    data = make_letter(error=DataError("multi\nline")).to_json()
    assert b"\n" not in data
    assert data.startswith(b'{"version":1,')


def test_id_is_deterministic() -> None:
    """The same failure twice has the same id; another offset or stage has another."""
    first = make_letter(11, at=T0)
    again = make_letter(11, at=T0 + 3600, error=ValueError("different message"))
    digest = hashlib.sha256(orjson.dumps(["orders", "orders.jsonl", 11, "parse"])).hexdigest()
    assert digest == first.id == again.id
    assert first.id != make_letter(12).id
    assert first.id != make_letter(11, stage="enrich").id
    joined_left = make_letter(1, pipeline="a:b", partition="c", stage="s")
    joined_right = make_letter(1, pipeline="a", partition="b:c", stage="s")
    assert joined_left.id != joined_right.id  # the parts are kept apart, not just concatenated


def test_record_metadata_and_defaults() -> None:
    """Source position, event time, version and idempotency key are filled in."""
    letter = make_letter(10)
    assert ("orders.jsonl", 10, T0 - 60) == (letter.partition, letter.offset, letter.timestamp)
    assert "orders:orders.jsonl:10" == letter.idempotency_key
    assert ("orders-file", "cafe", 1) == (letter.source, letter.config_hash, letter.attempts)
    assert letter.riprap_version


@pytest.mark.parametrize(
    ("error", "reason", "expected"),
    [
        (DataError("bad"), None, "data_error"),
        (DecodeError("bad json", source="f.jsonl", line=3), None, "decode_error"),
        (DataError("too old", reason="late"), None, "late"),
        (ValueError("bug"), None, "error"),
        (TimeoutError("slow"), "retries_exhausted", "retries_exhausted"),
    ],
)
def test_reason_defaults_to_the_data_error_reason(
    error: BaseException, reason: str | None, expected: str
) -> None:
    """The reason comes from a ``DataError`` unless given; anything else is ``error``."""
    assert expected == make_letter(error=error, reason=reason).reason


def test_error_type_is_qualified() -> None:
    """Builtins are named bare, riprap errors with their module."""
    assert "ValueError" == make_letter(error=ValueError("x")).error_type
    assert make_letter(error=DecodeError("x")).error_type.endswith(".DecodeError")


def test_message_and_traceback_are_redacted() -> None:
    """Secrets in the message and in the traceback are replaced before storing."""

    def fail() -> None:
        raise DataError("customer bob@example.com, card 4111111111111111")

    try:
        fail()
    except DataError as error:
        letter = make_letter(error=error)
    assert "customer [REDACTED:email], card [REDACTED:card]" == letter.message
    assert "bob@example.com" not in letter.traceback
    assert "in fail" in letter.traceback


def test_traceback_is_trimmed_to_a_bound() -> None:
    """A huge traceback keeps its tail, with a note of how much was cut."""
    error = DataError("x" * (3 * MAX_TRACEBACK_CHARS))
    letter = make_letter(error=error)
    assert letter.traceback.startswith("[... ")
    assert letter.traceback.endswith("x" * 100 + "\n")
    assert len(letter.traceback) < MAX_TRACEBACK_CHARS + 100


def test_create_without_record() -> None:
    """A failure with no known record still makes a valid envelope with no payload."""
    letter = DeadLetter.create(
        pipeline="p",
        stage="s",
        error=RuntimeError("crash"),
        reason="crash_loop",
        record=None,
        source="src",
        attempts=3,
        first_failure_at=T0,
        last_failure_at=T0 + 1,
        config_hash="h",
        redactor=Redactor(),
        trace_id="t-1",
    )
    assert letter == DeadLetter.from_json(letter.to_json())
    assert (None, 0, "p:None:None") == (
        letter.original_value(),
        letter.value_size(),
        letter.idempotency_key,
    )


def test_record_value_none_is_json_null() -> None:
    """A tombstone (value ``None``) is kept as JSON ``null``, not as a missing value."""
    letter = make_letter(value=None)
    assert ("json", "null") == (letter.value_encoding, letter.value)
    assert Record(None).value == letter.original_value()


class Opaque:
    """A value type JSON knows nothing about."""

    def __str__(self) -> str:
        return "opaque!"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (2**70, 2**70),
        (
            {"blob": b"\xff", "text": b"ok", "tags": {"x"}, 1: "one"},
            {"blob": "/w==", "text": "ok", "tags": ["x"], "1": "one"},
        ),
        (Opaque(), "opaque!"),
        ([Opaque(), 2**70], ["opaque!", 2**70]),
    ],
    ids=["big-int", "nested", "object", "object-and-big-int"],
)
def test_values_json_cannot_hold_are_converted(value: object, expected: object) -> None:
    """Building an envelope never fails on a strange value; it is converted as documented."""
    letter = DeadLetter.from_json(make_letter(value=value).to_json())
    assert expected == letter.original_value()


@pytest.mark.parametrize(
    "value",
    [10**30 + 1, {"id": -(10**25) - 7, "tags": [2**64]}, "caf\udce9", {"k": ["x\udc80y"]}],
    ids=["big-int", "big-ints-inside", "lone-surrogate", "lone-surrogate-inside"],
)
@pytest.mark.parametrize("as_key", [False, True], ids=["value", "key"])
def test_what_orjson_refuses_comes_back_exactly(value: object, as_key: bool) -> None:
    """An integer beyond 64 bits comes back as the same int (not a float that rounds it), and
    text with a lone surrogate (bytes a decoder escaped) as the same text; the envelope
    itself is valid UTF-8, so every store can hold it.
    """
    letter = make_letter(key=value) if as_key else make_letter(value=value)
    data = letter.to_json()
    back = DeadLetter.from_json(data)
    got = back.original_key() if as_key else back.original_value()
    assert (value, repr(value)) == (got, repr(got))
    data.decode("utf-8")


def test_a_message_with_a_lone_surrogate_is_stored_escaped() -> None:
    """An error message quoting undecodable text keeps it as an escape: the letter stays
    writable (a lone surrogate would fail every store's UTF-8 encoding).
    """
    letter = make_letter(error=DataError("bad key caf\udce9"), headers=(("h\udce9", b"1"),))
    back = DeadLetter.from_json(letter.to_json())
    assert ("bad key caf\\udce9", "h\\udce9") == (back.message, back.headers[0][0])


def test_bytes_header_names_become_text() -> None:
    """A header name given as bytes is stored as text, so the envelope stays valid."""
    letter = make_letter(headers=((b"x-id", b"1"),))  # type: ignore[arg-type]
    assert [("x-id", b"1")] == DeadLetter.from_json(letter.to_json()).original_headers()


def test_whole_number_times_read_back_as_floats() -> None:
    """Times written as JSON integers by another writer read back as floats."""
    raw = orjson.loads(make_letter().to_json())
    raw["first_failure_at"] = 1_700_000_000
    assert isinstance(DeadLetter.from_dict(raw).first_failure_at, float)


def _broken(**changes: object) -> bytes:
    raw = orjson.loads(make_letter().to_json())
    for name, value in changes.items():
        if value is KeyError:
            del raw[name]
        else:
            raw[name] = value
    return orjson.dumps(raw)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "expected a JSON object, got list"),
        (_broken(version=2), "unsupported envelope version 2"),
        (_broken(stage=KeyError), "field 'stage' is missing"),
        (_broken(attempts="3"), "field 'attempts' is '3', expected int"),
        (_broken(offset=True), "field 'offset' is True"),
        (_broken(value_encoding="rot13"), "'value_encoding' is unknown: 'rot13'"),
        (_broken(key_encoding=None), "'key' and 'key_encoding' must both be null"),
        (_broken(headers=[["a", "utf-8"]]), "headers[0] is ['a', 'utf-8']"),
    ],
    ids=["json", "object", "version", "missing", "type", "bool", "encoding", "pair", "header"],
)
def test_bad_input_names_the_problem(data: bytes, problem: str) -> None:
    """Malformed envelopes raise ``ValueError`` saying what is wrong."""
    with pytest.raises(ValueError, match=r"^dead letter: ") as info:
        DeadLetter.from_json(data)
    assert problem in str(info.value)


def test_bad_base64_payload_is_reported_on_decode() -> None:
    """A corrupt stored payload fails when it is decoded, naming the encoding."""
    letter = replace(make_letter(value=b"\xff"), value="***")
    with pytest.raises(ValueError, match="dead letter value: invalid base64 data"):
        letter.original_value()
