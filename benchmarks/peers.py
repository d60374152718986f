"""W1 written for other Python stream processors, each the way its documentation shows.

Peers are optional (``pip install -r benchmarks/peers.txt``, best in a
throwaway virtualenv, then ``python -m benchmarks.suite --peer-python
that-venv/bin/python``). A peer that is not installed, or that cannot run W1
at all, raises :class:`~benchmarks._child.Skipped` with the reason:

* **Bytewax** runs W1 as a dataflow: ``TestingSource`` over the record list
  (batches of 1,000, as riprap's), ``map``/``filter`` operators, a counting
  ``DynamicSink``, executed by ``bytewax.testing.run_main`` (one worker).
* **Quix Streams** has no in-memory application: ``Application`` refuses to
  start without ``broker_address`` (or a Quix Cloud token), and its sources
  produce into a Kafka topic. ``StreamingDataFrame.test()`` only pushes one
  value through the functions, which is not running the engine.
* **Faust** (faust-streaming) consumes Kafka topics only; agents cannot be fed
  from a list without a broker.

Both Kafka-bound peers run W2 (Kafka -> Kafka): see :mod:`benchmarks.w2_peers`.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import orjson

from benchmarks._child import Skipped
from benchmarks.bench_memory import add_cents, has_email


def require(module: str, package: str) -> None:
    """Raise :class:`Skipped` when ``module`` (from ``package``) cannot be imported here."""
    if importlib.util.find_spec(module) is None:
        raise Skipped(f"{package} is not installed (pip install -r benchmarks/peers.txt)")


def bytewax_flow(records: list[bytes], counter: list[int]) -> Any:
    """The W1 dataflow; the sink adds the records it gets to ``counter[0]``."""
    # The ignores cover type-checking without bytewax installed.
    import bytewax.operators as op  # type: ignore[import-not-found,unused-ignore]
    from bytewax.dataflow import Dataflow  # type: ignore[import-not-found,unused-ignore]
    from bytewax.outputs import (  # type: ignore[import-not-found,unused-ignore]
        DynamicSink,
        StatelessSinkPartition,
    )
    from bytewax.testing import TestingSource  # type: ignore[import-not-found,unused-ignore]

    class CountPartition(StatelessSinkPartition):  # type: ignore[misc,unused-ignore]
        def write_batch(self, items: list[bytes]) -> None:
            counter[0] += len(items)

    class CountSink(DynamicSink):  # type: ignore[misc,unused-ignore]
        def build(self, step_id: str, worker_index: int, worker_count: int) -> CountPartition:
            return CountPartition()

    flow = Dataflow("bench_memory")
    stream = op.input("records", flow, TestingSource(records, batch_size=1_000))
    stream = op.map("parse", stream, orjson.loads)
    stream = op.filter("has_email", stream, has_email)
    stream = op.map("add_cents", stream, add_cents)
    stream = op.map("serialize", stream, orjson.dumps)
    op.output("count", stream, CountSink())
    return flow


def run_bytewax(records: list[bytes]) -> int:
    """Run the W1 dataflow once with one worker; return the records counted by the sink."""
    require("bytewax", "bytewax")
    from bytewax.testing import run_main  # type: ignore[import-not-found,unused-ignore]

    counter = [0]
    run_main(bytewax_flow(records, counter))
    return counter[0]


def run_quixstreams(records: list[bytes]) -> int:
    """Quix Streams cannot run W1: its Application needs a Kafka broker."""
    require("quixstreams", "quixstreams")
    raise Skipped("quixstreams needs a Kafka broker (Application requires broker_address)")


def run_faust(records: list[bytes]) -> int:
    """Faust cannot run W1: its agents consume Kafka topics only."""
    require("faust", "faust-streaming")
    raise Skipped("faust-streaming needs a Kafka broker (agents read Kafka topics only)")


def peer_version(package: str) -> str | None:
    """The installed version of ``package``, ``None`` when it is missing."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None
