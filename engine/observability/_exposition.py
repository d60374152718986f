"""The Prometheus text format of a registry, rendered in a fraction of the library's time.

A scrape runs on the pipeline's event loop, so its cost is taken from the
records: ``prometheus_client.generate_latest`` validates and escapes every
label name of every sample, about 15 µs a sample, and a run's histograms
are most of its samples. :func:`render` writes the same text for the metric
families riprap's collector yields (counters, gauges, histograms, label names
already valid) and hands anything else to the library, so its output is
byte-for-byte the library's (a test compares them).
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

from prometheus_client import generate_latest

if TYPE_CHECKING:
    from prometheus_client.registry import Collector

_PLAIN_TYPES = frozenset({"counter", "gauge", "histogram"})
_LABEL_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n", '"': '\\"'})
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def render(registry: Collector) -> bytes:
    """The registry's samples in the Prometheus text format (what ``generate_latest`` writes)."""
    output: list[str] = []
    label_names: set[str] = set()  # checked once per scrape, not once per sample
    for metric in registry.collect():
        kind = metric.type
        if kind not in _PLAIN_TYPES or not _NAME.fullmatch(metric.name):
            return generate_latest(registry)
        name = metric.name + "_total" if kind == "counter" else metric.name
        doc = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
        output.append(f"# HELP {name} {doc}\n# TYPE {name} {kind}\n")
        for sample in metric.samples:
            if sample.timestamp is not None or sample.name == metric.name + "_created":
                return generate_latest(registry)
            value = _number(sample.value)
            if not sample.labels:
                output.append(f"{sample.name} {value}\n")
                continue
            for key in sample.labels.keys() - label_names:
                if not _LABEL_NAME.fullmatch(key):
                    return generate_latest(registry)
                label_names.add(key)
            labels = ",".join(
                f'{key}="{str(text).translate(_LABEL_ESCAPES)}"'
                for key, text in sorted(sample.labels.items())
            )
            output.append(f"{sample.name}{{{labels}}} {value}\n")
    return "".join(output).encode()


def _number(value: float) -> str:
    """A sample value as the Go client writes it (``+Inf``, ``1e+07``), like the library."""
    value = float(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    text = repr(value)
    dot = text.find(".")
    if value > 0 and dot > 6:
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text
