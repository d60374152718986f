"""Loading a pipeline from a Python file, as ``riprap run`` and ``riprap dlq replay`` do."""

from __future__ import annotations

import runpy
from typing import Any

from riprap._core.errors import ConfigError
from riprap._core.pipeline import Pipeline


def load_pipeline(spec: str) -> Pipeline:
    """Load ``path/to/file.py[:name]``; ``name`` (default ``pipeline``) may be a factory.

    Raises:
        ConfigError: The file or the name does not exist, or is not a pipeline.
    """
    path, _, attr = spec.partition(":")
    attr = attr or "pipeline"
    try:
        namespace = runpy.run_path(path, run_name="__riprap__")
    except FileNotFoundError:
        raise ConfigError("pipeline file", f"{path!r} does not exist") from None
    if attr not in namespace:
        raise ConfigError("pipeline", f"{path!r} defines no {attr!r}")
    obj = namespace[attr]
    if callable(obj) and not isinstance(obj, Pipeline):
        obj = obj()
    if not isinstance(obj, Pipeline):
        raise ConfigError("pipeline", f"{path}:{attr} is {type(obj).__name__}, not a Pipeline")
    return obj


def source_hook(pipeline: Pipeline, method: str, signature: str, example: str) -> Any:
    """The source's ``method``, a hook a command builds on (``backfill``, ``requeue``).

    Raises:
        ConfigError: The pipeline has no source, or its source has no such method;
            the message names the method and a source that has it (``example``).
    """
    source = pipeline.source_
    if source is None:
        raise ConfigError("source", f"pipeline {pipeline.name!r} has no source; call .source()")
    hook = getattr(source, method, None)
    if not callable(hook):
        raise ConfigError(
            "source",
            f"source {source.name!r} of pipeline {pipeline.name!r} cannot {method}: it has "
            f"no {signature} method ({example} has one)",
        )
    return hook
