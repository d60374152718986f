"""The ``riprap`` command: run a pipeline file, run the demo, dead letters and checkpoints.

.. versionadded:: 0.1
"""

from __future__ import annotations

from riprap._core.public import fixup_module_metadata
from riprap.cli._main import main as main

__all__ = ("main",)

fixup_module_metadata(__name__, globals())
