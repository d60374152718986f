"""What stopped a run: the failing step, the record's position and the user's line of code.

A run that fails on a bug in the user's code should point at that code, not at
riprap's machinery around it. The *user's frame* is the innermost traceback
frame that belongs neither to riprap nor to the standard library or an
installed package: the line of the pipeline file (or the user's module) that
raised, or that called the library that raised. Everything here is redacted
with the pipeline's redactor before it is kept, the source line included.
"""

from __future__ import annotations

import os
import sysconfig
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from riprap._core.errors import PipelineError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from types import TracebackType

_LIBRARY_ROOTS = tuple(
    {
        str(Path(path).resolve())
        for name in ("stdlib", "platstdlib", "purelib", "platlib")
        if (path := sysconfig.get_paths().get(name))
    }
)
"""Where the standard library and installed packages live: never the user's code."""


@dataclass(frozen=True, slots=True)
class UserFrame:
    """One traceback frame of the user's code: where and what (redacted)."""

    file: str
    line: int
    function: str
    code: str

    def format(self) -> str:
        """The frame as Python prints it: ``File "...", line N, in fn`` and the source line."""
        head = f'File "{self.file}", line {self.line}, in {self.function}'
        return f"{head}\n  {self.code}" if self.code else head


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a run failed, for its report.

    Attributes:
        step: The step that raised (a stage or the sink), when known.
        partition: The source partition of the record being processed, when known.
        offset: That record's offset in its partition.
        error_type: The type of the original exception (``ZeroDivisionError``).
        frame: The innermost frame of the user's code, when the traceback has one.
        traceback: The whole chain of exceptions, redacted (shown with ``-v``).
    """

    step: str | None
    partition: str | None
    offset: int | None
    error_type: str
    frame: UserFrame | None
    traceback: str

    @property
    def position(self) -> str | None:
        """``partition@offset`` of the record that failed, when one did."""
        if self.partition is None:
            return None
        return f"{self.partition}@{self.offset}"

    def to_dict(self, *, verbose: bool = False) -> dict[str, Any]:
        """JSON-ready form; the whole traceback only when ``verbose``."""
        frame = self.frame
        described: dict[str, Any] = {
            "step": self.step,
            "partition": self.partition,
            "offset": self.offset,
            "error_type": self.error_type,
            "frame": None
            if frame is None
            else {
                "file": frame.file,
                "line": frame.line,
                "function": frame.function,
                "code": frame.code,
            },
        }
        if verbose:
            described["traceback"] = self.traceback
        return described


def describe_failure(error: BaseException, redact: Callable[[str], str]) -> Failure:
    """The :class:`Failure` behind ``error`` (a :class:`PipelineError` names step and record)."""
    located = error if isinstance(error, PipelineError) else None
    original = error if located is None else located.error
    frame = user_frame(original)
    return Failure(
        step=None if located is None else located.stage,
        partition=None if located is None else located.partition,
        offset=None if located is None else located.offset,
        error_type=type(original).__name__,
        frame=None
        if frame is None
        else UserFrame(
            redact(frame.filename), frame.lineno or 0, frame.name, redact(frame.line or "")
        ),
        traceback=redact("".join(traceback.format_exception(error))),
    )


def user_frame(error: BaseException) -> traceback.FrameSummary | None:
    """The innermost frame of the user's code in ``error``'s traceback, else in its causes."""
    for link in _chain(error):
        found = None
        tb = link.__traceback__
        while tb is not None:
            if _is_user_code(tb):
                found = tb
            tb = tb.tb_next
        if found is not None:
            summary = traceback.extract_tb(found, limit=1)
            return summary[0] if summary else None
    return None


def _chain(error: BaseException) -> Iterator[BaseException]:
    """``error``, then its cause or context, and so on (each once)."""
    seen: set[int] = set()
    link: BaseException | None = error
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__ or link.__context__


def _is_user_code(tb: TracebackType) -> bool:
    """Whether ``tb``'s frame runs code outside riprap, the standard library and packages."""
    frame = tb.tb_frame
    module = frame.f_globals.get("__name__")
    if isinstance(module, str) and (module == "riprap" or module.startswith("riprap.")):
        return False
    filename = frame.f_code.co_filename
    if filename.startswith("<") or not os.path.isfile(filename):
        return False  # generated code (riprap's fused step loops), frozen or compiled modules
    path = str(Path(filename).resolve())
    return not any(path.startswith(root + os.sep) for root in _LIBRARY_ROOTS)
