"""The checkpoint name of a worker of a pipeline, and the pipeline a worker's name belongs to."""

from __future__ import annotations

import re

_WORKER = re.compile(r"(?P<name>.+)\.worker-\d+-of-\d+")


def worker_name(name: str, index: int, count: int) -> str:
    """The checkpoint name of worker ``index`` of ``count``: the pipeline's own for one worker."""
    return name if count == 1 else f"{name}.worker-{index}-of-{count}"


def pipeline_name(name: str) -> str:
    """The pipeline a worker's checkpoint name belongs to (what workers share, as a changelog)."""
    found = _WORKER.fullmatch(name)
    return name if found is None else found["name"]
