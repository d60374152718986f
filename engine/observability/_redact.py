"""Redaction of secrets and personal data in error messages and tracebacks.

Error text ends up in logs and dead-letter envelopes, which are read by more
people, and kept longer, than the records themselves. A :class:`Redactor`
replaces what looks like a secret with ``[REDACTED:<kind>]`` before any of that
text is stored. Redaction is best effort: it catches the common shapes (emails,
bearer tokens, ``Authorization`` and ``Cookie`` values, API keys, tokens,
passwords and signatures in headers and ``key=value`` pairs, DSN passwords, AWS
keys, card numbers) and whatever
the user adds; it is no substitute for keeping payloads out of messages.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import final
from urllib.parse import unquote_plus, urlsplit, urlunsplit

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


# The last word of a header or key whose value is a secret: "X-Api-Key", "api_key",
# "access_token", "client_secret", "password", "X-Amz-Signature", "session_id"...
_SECRET_WORD = (
    r"(?:api[-_]?key|apikey|access[-_]?key|private[-_]?key|secret|token|password|passwd"
    r"|pwd|signature|sig|session[-_]?id|credentials?)"
)
# A key made of words joined by "-" or "_" that ends with a secret word. The
# lookbehind starts a match only where the key starts: "a-a-a-...-a" would
# otherwise be tried from every word, in quadratic time.
_SECRET_KEY = rf"(?<![A-Za-z0-9_\-])(?:[A-Za-z0-9]+[-_])*{_SECRET_WORD}"
_SECRET_KEY_NAME = re.compile(rf"(?i)(?:[a-z0-9]+[-_])*{_SECRET_WORD}")

# Order matters: "Authorization: Bearer x" is one authorization value, not a
# bearer token, and a DSN's password is taken before its "@host" looks like an email.
_DEFAULTS: tuple[tuple[str, str | _Replace], ...] = (
    (
        r"(?i)\b((?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?)"
        r"(?:(?:bearer|basic|digest|token|negotiate)\s+)?[^\s\"',;]+",
        _keep_prefix("authorization"),
    ),
    # "Cookie: a=1; b=2" and "Set-Cookie: ...": the rest of the line.
    (r"(?i)(?<![A-Za-z0-9_\-])((?:set-)?cookie[\"']?\s*[:=]\s*)[^\r\n]+", _keep_prefix("cookie")),
    # scheme://user:password@host: the password (userinfo may hold "@").
    (
        r"(?i)(?<![A-Za-z0-9+.\-])([a-z][a-z0-9+.\-]*://[^\s/:@\[\]]*:)[^\s/]+(?=@)",
        _keep_prefix("password"),
    ),
    (r"(?i)\b(bearer\s+)[A-Za-z0-9\-._~+/]+=*", _keep_prefix("token")),
    (
        r"(?i)(aws_?secret\w*[\"']?\s*[:=]\s*[\"']?)[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])",
        _keep_prefix("aws_secret"),
    ),
    (r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b", "[REDACTED:aws_access_key_id]"),
    # "X-Api-Key: v", "api_key=v", "?access_token=v&", '"password": "v"'.
    (
        rf"(?i)({_SECRET_KEY}[\"']?\s*[:=]\s*[\"']?)(?!\[REDACTED)[^\s\"'&,;]+",
        _keep_prefix("secret"),
    ),
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

    Kinds: ``authorization`` (``Authorization:`` and ``Proxy-Authorization:``
    values), ``cookie`` (``Cookie:``/``Set-Cookie:`` values), ``password`` (the
    password of a ``scheme://user:password@host`` URL or DSN), ``secret`` (the
    value of a header or ``key=value``/``key: value`` pair whose key ends with
    ``api_key``, ``apikey``, ``access_key``, ``private_key``, ``secret``,
    ``token``, ``password``, ``passwd``, ``pwd``, ``signature``, ``sig``,
    ``session_id`` or ``credential``, so ``X-Api-Key:``, ``client_secret=``,
    ``?access_token=``), ``token`` (``Bearer`` tokens), ``aws_secret``,
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


def redact_url(url: str) -> str:
    """``url`` with its userinfo and the values of secret query parameters redacted.

    ``https://user:pw@host/p?api_key=k&page=2`` becomes
    ``https://[REDACTED:userinfo]@host/p?api_key=[REDACTED:secret]&page=2``. A
    parameter is secret when its name ends with a secret word (``key``-like,
    ``token``, ``secret``, ``password``, ``signature``, ``sig``, ``session_id``,
    ``credential``); the fragment is treated like the query. Connectors call it
    before a URL enters any message, error or dead letter.

    .. versionadded:: 0.1
    """
    try:
        parts = urlsplit(url)
    except ValueError:  # not a URL at all (an unbalanced "[", say): redact it as text
        return DEFAULT_REDACTOR.redact(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "[REDACTED:userinfo]@" + netloc.rpartition("@")[2]
    query, fragment = _redact_pairs(parts.query), _redact_pairs(parts.fragment)
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


def _redact_pairs(text: str) -> str:
    """``a=1&api_key=k`` with the values of secret keys redacted, everything else as it was."""
    if not text:
        return text
    pairs = []
    for pair in text.split("&"):
        key, sep, _ = pair.partition("=")
        if sep and _SECRET_KEY_NAME.fullmatch(unquote_plus(key)):
            pair = f"{key}=[REDACTED:secret]"
        pairs.append(pair)
    return "&".join(pairs)


DEFAULT_REDACTOR = Redactor()
"""The redactor with the built-in patterns only."""
