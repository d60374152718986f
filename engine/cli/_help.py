"""Help text from module docstrings: reStructuredText markup turned into plain text.

The command modules' docstrings describe each command for the API reference
and for ``--help``; the terminal should not show ``literal`` quotes or
``:role:`target``` markup.
"""

from __future__ import annotations

import argparse
import re

HELP_FORMAT = argparse.RawDescriptionHelpFormatter
"""Keeps a description's paragraphs and line breaks as the docstring has them."""

_ROLE = re.compile(r":[a-z]+(?::[a-z]+)?:`(~?)([^`<]*?)(?:\s*<[^>]*>)?`")
_LITERAL = re.compile(r"``(.+?)``", re.DOTALL)
_INTERPRETED = re.compile(r"(?<![`\w])`([^`]+)`(?![`\w])")


def plain(text: str) -> str:
    """``text`` without reStructuredText roles, literals or directives (``.. x::`` lines)."""
    text = _ROLE.sub(_role_text, text)
    text = _LITERAL.sub(r"\1", text)
    text = _INTERPRETED.sub(r"\1", text)
    kept = [line for line in text.splitlines() if not line.lstrip().startswith(".. ")]
    return "\n".join(kept).strip()


def _role_text(match: re.Match[str]) -> str:
    """A role's text as Sphinx shows it: ``~`` keeps only the last dotted part."""
    tilde, target = match.groups()
    return target.rpartition(".")[2] if tilde else target
