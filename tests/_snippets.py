"""Code blocks of the README and the guides, read from their Markdown as a reader sees them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
"""The repository: where README.md and docs/ are."""

DOCUMENTS = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
"""Every Markdown page a reader may copy code from."""

_FENCE = re.compile(r"^(`{3,})(.*)$")


@dataclass(frozen=True)
class Block:
    """One fenced code block: where it is, its info string and its text."""

    path: Path
    line: int
    info: tuple[str, ...]
    section: str
    code: str

    @property
    def runnable(self) -> bool:
        """Marked to be run as written: the info string ``python runnable``."""
        return self.info[:1] == ("python",) and "runnable" in self.info[1:]

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def code_blocks(path: Path) -> list[Block]:
    """The top-level fenced code blocks of a Markdown file, in order."""
    blocks: list[Block] = []
    section = ""
    fence: str | None = None
    start = 0
    info: tuple[str, ...] = ()
    body: list[str] = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if fence is None:
            match = _FENCE.match(line)
            if match:
                fence, info, start, body = match.group(1), tuple(match.group(2).split()), number, []
            elif line.startswith("#"):
                section = line.lstrip("#").strip()
        elif line.startswith(fence) and not line.strip("`"):
            blocks.append(Block(path, start, info, section, "\n".join(body) + "\n"))
            fence = None
        else:
            body.append(line)
    assert fence is None, f"{path}:{start}: a code block is never closed"
    return blocks


def section_blocks(path: Path, section: str) -> list[Block]:
    """The code blocks under the heading ``section`` (up to the next heading)."""
    return [block for block in code_blocks(path) if block.section == section]
