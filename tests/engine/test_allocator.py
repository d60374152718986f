"""keep_freed_memory: applies on glibc, defers to MALLOC_TRIM_THRESHOLD_, refuses nonsense;
every entry point applies the pipeline's threshold, so an embedded run does not fault per batch."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap

import pytest

import riprap
import riprap.lowlevel
from riprap import ConfigError

_DEFAULT = riprap.PipelineOptions().malloc_trim_threshold
assert _DEFAULT is not None
DEFAULT_MALLOC_TRIM_THRESHOLD: int = _DEFAULT

glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not glibc, reason="the trim threshold is a glibc setting")
def test_sets_the_trim_threshold_on_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    assert riprap.lowlevel.keep_freed_memory(DEFAULT_MALLOC_TRIM_THRESHOLD)


def test_an_explicit_environment_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert not riprap.lowlevel.keep_freed_memory()


def test_a_negative_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="must not be negative, got -1"):
        riprap.lowlevel.keep_freed_memory(-1)


def test_the_option_must_be_a_positive_number_of_bytes() -> None:
    with pytest.raises(ConfigError, match="malloc_trim_threshold"):
        riprap.Pipeline("p", malloc_trim_threshold=0)


# One embedded run (asyncio.run(pipeline.run()), nothing else called) of
# records whose results hold 4 KiB each (orjson.dumps), in a fresh process:
# prints the minor page faults of the measured run.
_EMBEDDED_RUN = textwrap.dedent(
    """
    import asyncio, json, resource, sys
    import orjson
    import riprap
    from riprap.checkpoints import MemoryCheckpoints
    from riprap.connectors.memory import IterableSource

    threshold = json.loads(sys.argv[1])
    records = [{"id": i, "email": f"user{i}@example.com"} for i in range(60_000)]

    class CountSink:
        name = "count"
        idempotent = True
        count = 0
        async def open(self): pass
        async def write(self, batch): self.count += len(batch.items)
        async def flush(self): pass
        async def aclose(self): pass

    def run(values):
        sink = CountSink()
        pipeline = (
            riprap.Pipeline("w1", checkpoint=MemoryCheckpoints(), malloc_trim_threshold=threshold)
            .source(IterableSource("records", values))
            .map("serialize", orjson.dumps)
            .sink(sink)
        )
        asyncio.run(pipeline.run())
        return sink.count

    run(records[:2_000])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    assert run(records) == len(records)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


def _embedded_faults(threshold: int | None) -> int:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}
    done = subprocess.run(
        [sys.executable, "-c", _EMBEDDED_RUN, json.dumps(threshold)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=True,
    )
    return int(done.stdout.strip())


@pytest.mark.skipif(not glibc, reason="the trim threshold is a glibc setting")
def test_an_embedded_run_reuses_batch_memory_at_the_defaults() -> None:
    # Without the setting every batch's 4 MiB of results goes back to the OS and
    # is faulted in again by the next batch (about 0.5 faults per record).
    assert _embedded_faults(None) > 10_000
    assert _embedded_faults(DEFAULT_MALLOC_TRIM_THRESHOLD) < 2_000
