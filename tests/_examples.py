"""The scripts under ``examples/``, imported from their files by the tests that run them."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping
    from types import ModuleType

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
"""Where the examples live (they are scripts, not a package)."""


def load_example(file_name: str) -> ModuleType:
    """``examples/<file_name>``, imported as ``examples_<stem>`` and kept in ``sys.modules``.

    It is registered as an import would register it, before it runs: dataclasses
    and pickling look a class's module up there.
    """
    name = f"examples_{Path(file_name).stem}"
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / file_name)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def with_consumer_options(module: ModuleType, options: Mapping[str, Any]) -> None:
    """Have the example's ``KafkaSource`` take ``options`` over its own consumer options.

    For short group timeouts in tests: the test broker holds a group join for
    half the session timeout, so an example's production settings would make
    each join take seconds.
    """
    make = module.KafkaSource

    def source(*args: Any, consumer_options: Mapping[str, Any] | None = None, **kwargs: Any) -> Any:
        return make(*args, consumer_options={**(consumer_options or {}), **options}, **kwargs)

    module.__dict__["KafkaSource"] = source
