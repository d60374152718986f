"""Every code block the README and the guides mark ``python runnable`` runs as written."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from tests._snippets import DOCUMENTS, ROOT, code_blocks

if TYPE_CHECKING:
    from pathlib import Path

    from tests._snippets import Block

TIMEOUT = 60.0
"""Seconds one block may take; they all run in well under a second."""

RUNNABLE = [block for path in DOCUMENTS for block in code_blocks(path) if block.runnable]


def test_the_readme_and_the_guides_have_runnable_blocks() -> None:
    """The marking is found: the README's first pipeline, embedding, and the testing guide."""
    marked = {str(block.path.relative_to(ROOT)) for block in RUNNABLE}
    assert {"README.md", "docs/testing.md"} <= marked
    readme = [block for block in RUNNABLE if block.path.name == "README.md"]
    assert len(readme) >= 2


def test_the_first_pipeline_is_the_shipped_example() -> None:
    """The README shows ``examples/orders.py`` exactly, so a copy of either behaves the same."""
    first = next(block for block in RUNNABLE if block.path.name == "README.md")
    assert (ROOT / "examples" / "orders.py").read_text() == first.code


@pytest.mark.parametrize("block", RUNNABLE, ids=str)
def test_runnable_block_runs(block: Block, tmp_path: Path) -> None:
    """The block, saved as a script in an empty directory, exits 0 (within a bounded time)."""
    script = tmp_path / "snippet.py"
    script.write_text(block.code)
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, f"{block} failed:\n{result.stdout}\n{result.stderr}"


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda path: str(path.relative_to(ROOT)))
def test_python_blocks_compile(path: Path) -> None:
    """Every Python block compiles: a whole script, top-level ``await`` allowed, or a
    fragment of a pipeline starting with ``.`` (steps to add to one)."""
    for block in code_blocks(path):
        if block.info[:1] != ("python",):
            continue
        code = block.code
        if code.lstrip().startswith("."):
            code = f"(pipeline\n{code})"
        compile(code, str(block), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """The anchor GitHub and MyST give a heading: lower case, no punctuation, ``-`` for spaces."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_readme_links_resolve() -> None:
    """Every relative link of the README names a file that exists, and a heading in it.

    The guides' links are checked by the docs build; the README is not part of it.
    """
    readme = ROOT / "README.md"
    links = _LINK.findall(readme.read_text())
    assert len(links) >= 10
    for link in links:
        if link.startswith(("http://", "https://")):
            continue
        path, _, anchor = link.partition("#")
        target = (readme.parent / path) if path else readme
        assert target.is_file(), f"README.md links to {link}, which does not exist"
        if anchor:
            headings = [
                _slug(line.lstrip("#"))
                for line in target.read_text().splitlines()
                if line.startswith("#")
            ]
            assert anchor in headings, f"README.md links to {link}: no such heading"
