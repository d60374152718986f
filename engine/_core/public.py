"""One helper for every public namespace: show ``riprap.x.Name``, not the private module.

Reprs, tracebacks, pickles and the API docs then name the path a user imports
from, and a private module can move without anyone noticing.
"""

from __future__ import annotations

import contextlib
from typing import Any


def fixup_module_metadata(namespace: str, exported: dict[str, Any]) -> None:
    """Set ``__module__`` of every name in ``exported["__all__"]`` that lives under ``riprap._``.

    Args:
        namespace: The public module's ``__name__``.
        exported: That module's ``globals()``.
    """
    for name in exported["__all__"]:
        obj = exported[name]
        module = getattr(obj, "__module__", "") or ""
        if _is_private(module):
            with contextlib.suppress(AttributeError, TypeError):  # e.g. type aliases
                obj.__module__ = namespace


def _is_private(module: str) -> bool:
    """A module path with any ``_``-prefixed part (``riprap._core.records``, ``riprap.x._y``)."""
    return any(part.startswith("_") for part in module.split("."))
