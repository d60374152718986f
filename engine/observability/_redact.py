"""Redaction of secrets and personal data in error messages and tracebacks.

Error text ends up in logs and dead-letter envelopes, which are read by more
people, and kept longer, than the records themselves. A :class:`Redactor`
replaces what looks like a secret with ``[REDACTED:<kind>]`` before any of that
text is stored. Redaction is best effort: it catches the common shapes (emails,
bearer tokens and ``Authorization`` values, AWS keys, card numbers) and whatever
the user adds; it is no substitute for keeping payloads out of messages.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import final

from riprap._core.errors import ConfigError

_Replace = Callable[[re.Match[str]], str]


def _keep_prefix(kind: str) -> _Replace:
    """Keep group 1 (the label, e.g. ``Authorization: ``) and redact the rest of the match."""
    marker = f"[REDACTED:{kind}]"
    return lambda match: match.group(1) + marker


def _luhn_valid(digits: str) -> bool:
    """The Luhn checksum every payment card number satisfies."""
    total = 0
    for i, char in enumerate(reversed(digits)):
        digit = ord(char) - 48
        if i % 2:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0


def _card(match: re.Match[str]) -> str:
    # Only Luhn-valid numbers are cards: ordinary order ids and timestamps of
    # the same length pass the check one time in ten at most.
    digits = re.sub(r"[ -]", "", match.group(0))
    return "[REDACTED:card]" if _luhn_valid(digits) else match.group(0)


# Order matters: "Authorization: Bearer x" is one authorization value, not a bearer token.
_DEFAULTS: tuple[tuple[str, str | _Replace], ...] = (
    (
        r"(?i)\b(authorization[\"']?\s*[:=]\s*[\"']?)"
        r"(?:(?:bearer|basic|digest|token|negotiate)\s+)?[^\s\"',;]+",
        _keep_prefix("authorization"),
    ),
    (r"(?i)\b(bearer\s+)[A-Za-z0-9\-._~+/]+=*", _keep_prefix("token")),
    (
        r"(?i)(aws_?secret\w*[\"']?\s*[:=]\s*[\"']?)[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])",
        _keep_prefix("aws_secret"),
    ),
    (r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b", "[REDACTED:aws_access_key_id]"),
    # The lookbehind starts a match only at the start of a word: without it, a
    # long run of word characters with no "@" would take quadratic time.
    (
        r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}",
        "[REDACTED:email]",
    ),
    # 13 to 19 digits, single spaces or dashes allowed between them.
    (r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d])", _card),
)


def _compile(pattern: str, replacement: str | _Replace) -> tuple[re.Pattern[str], str | _Replace]:
    return re.compile(pattern), replacement


@final
@dataclass(frozen=True, slots=True)
class Redactor:
    """Replaces secrets and personal data in text by ``[REDACTED:<kind>]``.

    Kinds: ``authorization``, ``token`` (``Bearer`` tokens), ``aws_secret``,
    ``aws_access_key_id``, ``email``, ``card`` (Luhn-checked), and ``custom``
    for the user's patterns. The default patterns run first, then ``extra``.

    Args:
        extra: More regular expressions to redact; each whole match is replaced
            by ``[REDACTED:custom]``.
        defaults: Whether to apply the built-in patterns.

    Raises:
        ConfigError: A pattern in ``extra`` is not a valid regular expression.

    .. versionadded:: 0.1
    """

    extra: tuple[str, ...] = ()
    defaults: bool = True
    _rules: tuple[tuple[re.Pattern[str], str | _Replace], ...] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        rules = [_compile(p, r) for p, r in _DEFAULTS] if self.defaults else []
        for i, pattern in enumerate(self.extra):
            try:
                rules.append(_compile(pattern, "[REDACTED:custom]"))
            except re.error as exc:
                raise ConfigError(f"Redactor.extra[{i}]", f"{pattern!r}: {exc}") from None
        object.__setattr__(self, "_rules", tuple(rules))

    def redact(self, text: str) -> str:
        """``text`` with every match of every pattern replaced."""
        for pattern, replacement in self._rules:
            text = pattern.sub(replacement, text)
        return text


DEFAULT_REDACTOR = Redactor()
"""The redactor with the built-in patterns only."""
