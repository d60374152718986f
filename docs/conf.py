"""Sphinx configuration: the guides (Markdown) and the API reference of the public namespaces."""

from __future__ import annotations

import importlib.metadata

project = "riprap"
release = importlib.metadata.version("riprap")
extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build", "benchmarks/*.json"]
nitpicky = True
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
myst_heading_anchors = 3
# Names outside riprap (the standard library, anyio, aiohttp...) have no pages
# here: the build reads no inventory over the network. Type variables, type
# aliases (rendered as text in signatures) and private bases are not pages
# either. Every other name of riprap's own must resolve.
_OUTSIDE = (
    r"(_asyncio|builtins|typing|typing_extensions|collections|collections\.abc|asyncio|anyio|re|"
    r"contextlib|logging|os|pathlib|types|random|datetime|enum|dataclasses|sqlite3|aiohttp|"
    r"prometheus_client|aiokafka|aiobotocore|botocore|opentelemetry|web|pa|pyarrow|deltalake)"
    r"(\..*)?"
)
_ALIASES = (
    r"Emit|Headers|Header|Outcome|Signal|Jitter|GiveUpReason|RejectionReason|Verdict|Format|"
    r"Encryption|Decode|Partitioner|Serializer|FallbackFn|ProgressHook|QuarantineHook|"
    r"WindowKind|SagaPhase|SagaResult|TimeSource|LateHandler|OnError|PathSpec|MonitoredRun|"
    r"Runtime|Emitter|GapKind|DEFAULT_CLASSIFIER|NewColumns|Compression|Entry|Stored|StateLog|"
    r"Where a record's time comes from.*"
)
nitpick_ignore_regex = [
    (r"py:.*", _OUTSIDE),
    (r"py:.*", r"[A-Z]|[A-Z]\.(args|kwargs)"),  # type variables and parameter specs
    (r"py:.*", r".*\._.*"),  # private modules and names
    (r"py:.*", _ALIASES),
    (r"py:class", r"[A-Z][A-Za-z]*Error|Exception|BaseException|[a-z]+"),
    (r"py:class", r"AbstractAsyncContextManager|CollectorRegistry|TracebackType|Self"),
]
