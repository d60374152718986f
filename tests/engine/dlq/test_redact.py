"""The redactor: each built-in pattern, user patterns, and what must stay readable."""

from __future__ import annotations

import pytest

from riprap import ConfigError
from riprap.observability import Redactor


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("customer jane.doe+vip@example.co.uk rejected", "customer [REDACTED:email] rejected"),
        ("Authorization: Basic dXNlcjpwYXNz", "Authorization: [REDACTED:authorization]"),
        (
            '{"authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig"}',
            '{"authorization": "[REDACTED:authorization]"}',
        ),
        (
            "retried with bearer abc.DEF-123_x~y+z/== today",
            "retried with bearer [REDACTED:token] today",
        ),
        ("key AKIAIOSFODNN7EXAMPLE denied", "key [REDACTED:aws_access_key_id] denied"),
        ("temp key ASIAY34FZKBOKMUTVV7A expired", "temp key [REDACTED:aws_access_key_id] expired"),
        (
            "aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "aws_secret_access_key=[REDACTED:aws_secret]",
        ),
        ("card 4111 1111 1111 1111 declined", "card [REDACTED:card] declined"),
        ("card 5500-0000-0000-0004 declined", "card [REDACTED:card] declined"),
        ("amex 378282246310005.", "amex [REDACTED:card]."),
        ("sent X-Api-Key: k-123 upstream", "sent X-Api-Key: [REDACTED:secret] upstream"),
        (
            "GET /v1?page=2&access_token=abc.def&q=x",
            "GET /v1?page=2&access_token=[REDACTED:secret]&q=x",
        ),
        ('{"client_secret": "s3cr3t", "id": 7}', '{"client_secret": "[REDACTED:secret]", "id": 7}'),
        ("login password=hunter2, retrying", "login password=[REDACTED:secret], retrying"),
        ("Cookie: sid=abc; theme=dark", "Cookie: [REDACTED:cookie]"),
        (
            "connect postgres://app:pw@db.internal:5432/orders",
            "connect postgres://app:[REDACTED:password]@db.internal:5432/orders",
        ),
        ("Proxy-Authorization: Basic dXNlcg==", "Proxy-Authorization: [REDACTED:authorization]"),
        ("3 tokens left, token_count=4", "3 tokens left, token_count=4"),
    ],
    ids=[
        "email",
        "authorization",
        "authorization-json",
        "bearer",
        "akia",
        "asia",
        "aws-secret",
        "card-spaces",
        "card-dashes",
        "card-15-digits",
        "api-key-header",
        "token-query",
        "secret-json",
        "password-pair",
        "cookie",
        "dsn-password",
        "proxy-authorization",
        "token-words-kept",
    ],
)
def test_default_patterns(text: str, expected: str) -> None:
    """Every built-in kind of secret is replaced by its marker and the rest is kept."""
    assert expected == Redactor().redact(text)


def test_order_id_failing_luhn_is_kept() -> None:
    """A 16-digit order id that fails the Luhn check is not mistaken for a card."""
    text = "order 1234567812345678 failed validation"
    assert text == Redactor().redact(text)


def test_long_digit_runs_are_kept() -> None:
    """Digits inside a longer run (here 23 digits) are never partly redacted."""
    text = "trace 41111111111111111234567"
    assert text == Redactor().redact(text)


def test_user_pattern() -> None:
    """A pattern from the configuration is redacted as ``custom`` after the defaults."""
    redactor = Redactor(extra=(r"\bSSN-\d{3}-\d{2}-\d{4}\b",))
    expected = "holder [REDACTED:custom] <[REDACTED:email]>"
    assert expected == redactor.redact("holder SSN-123-45-6789 <a@b.io>")


def test_defaults_can_be_switched_off() -> None:
    """With ``defaults=False`` only the user's patterns apply."""
    redactor = Redactor(extra=("secret",), defaults=False)
    assert "a@b.io [REDACTED:custom]" == redactor.redact("a@b.io secret")


def test_invalid_user_pattern_names_it() -> None:
    """A broken regular expression is a configuration error naming its index."""
    with pytest.raises(ConfigError, match=r"Redactor\.extra\[1\]"):
        Redactor(extra=("fine", "(unclosed"))


def test_redactor_is_frozen_and_comparable() -> None:
    """Two redactors with the same configuration are equal; neither can be changed."""
    assert Redactor(extra=("x",)) == Redactor(extra=("x",))
    with pytest.raises(AttributeError):
        Redactor().defaults = False  # type: ignore[misc]


@pytest.mark.parametrize(
    "text",
    ["x" * 300_000, "a@" + "b" * 300_000, "1 " * 150_000, "@." * 150_000],
    ids=["word", "at-word", "spaced-digits", "at-dots"],
)
def test_long_text_without_secrets_is_kept(text: str) -> None:
    """Long text goes through unchanged (and in linear time: a quadratic pattern would time out)."""
    assert text == Redactor().redact(text)
