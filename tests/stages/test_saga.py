"""The saga stage: ordered steps, reverse compensation, retries, a log that survives restarts."""

from __future__ import annotations

import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import orjson
import pytest

import riprap
import riprap.checkpoints
import riprap.lowlevel
from riprap.connectors.memory import IterableSource, MemorySink
from riprap.connectors.sqlite import read_table_sync
from riprap.lowlevel import SourceOrigin
from riprap.policies import Retry
from riprap.stages.saga import Saga, SagaError, SagaStep
from riprap.testing import VirtualClock, run_pipeline

from ..engine._subprocesses import DEADLINE, load_checkpoint, query, spawn, wait_for_child
from ._saga_worker import BREAK_ENV
from ._saga_worker import ORDERS as WORKER_ORDERS

if TYPE_CHECKING:
    from collections.abc import Sequence
    from contextlib import AbstractContextManager
    from subprocess import Popen

pytestmark = pytest.mark.anyio

NAMES = ("reserve", "charge", "ship")


@dataclass
class Services:
    """Fake steps that journal every call and raise scripted errors per idempotency key."""

    journal: list[str] = field(default_factory=list)
    errors: dict[str, list[Exception]] = field(default_factory=dict)

    async def call(self, key: str) -> None:
        self.journal.append(key)
        await anyio.lowlevel.checkpoint()
        scripted = self.errors.get(key)
        if scripted:
            raise scripted.pop(0)

    def step(self, name: str, **options: Any) -> SagaStep:
        async def action(value: Any, key: str) -> dict[str, Any]:
            await self.call(key)
            return {"step": name, "value": value}

        async def compensate(value: Any, result: Any, key: str) -> None:
            assert {"step": name, "value": value} == result
            await self.call(key)

        return SagaStep(name, action, compensate, **options)

    def saga(self, names: Sequence[str] = NAMES, **options: Any) -> Saga:
        step_options = options.pop("step_options", {})
        steps = [self.step(name, **step_options.get(name, {})) for name in names]
        return Saga("order", steps, key=lambda v: f"o{v}", **options)

    def calls(self, saga_key: str) -> list[str]:
        """The journal of one saga, without the saga key prefix."""
        prefix = f"{saga_key}:"
        return [entry.removeprefix(prefix) for entry in self.journal if entry.startswith(prefix)]


def build(
    saga: Saga, values: list[Any], backend: riprap.checkpoints.CheckpointBackend
) -> riprap.Pipeline:
    """A source of ``values`` -> ``saga`` -> a memory sink."""
    return (
        riprap.Pipeline("p", checkpoint=backend)
        .source(IterableSource("orders", values))
        .stage(saga)
        .sink(MemorySink())
    )


async def run(
    saga: Saga, values: list[Any], backend: riprap.checkpoints.CheckpointBackend | None = None
) -> list[Any]:
    """Run the pipeline in virtual time; return what reached the sink."""
    pipeline = build(saga, values, backend or riprap.checkpoints.MemoryCheckpoints())
    sink = pipeline.sink_
    assert isinstance(sink, MemorySink)
    try:
        await run_pipeline(pipeline, clock=VirtualClock())
    except ExceptionGroup as group:  # the virtual clock's driver wraps what the run raised
        (error,) = group.exceptions
        raise error from error.__cause__
    return list(sink.values)


def outcome(key: str, kind: str, done: Sequence[str], value: int, **failure: Any) -> dict[str, Any]:
    """The outcome a saga of ``value`` emits when the steps ``done`` completed."""
    return {
        "key": key,
        "outcome": kind,
        "results": {name: {"step": name, "value": value} for name in done},
        "failed_step": failure.get("failed_step"),
        "reason": failure.get("reason"),
        "error": failure.get("error"),
    }


async def test_steps_run_in_order_and_every_saga_completes() -> None:
    """Each record runs every step in order with its idempotency key and emits ``completed``."""
    services = Services()
    values = await run(services.saga(), [1, 2, 3])
    assert [outcome(f"o{v}", "completed", NAMES, v) for v in (1, 2, 3)] == values
    for v in (1, 2, 3):
        assert list(NAMES) == services.calls(f"o{v}")


async def test_saga_key_defaults_to_the_record_key_then_the_source_position() -> None:
    """Without ``key=`` the record key names the saga, and without one its source position."""
    journal: list[str] = []

    async def action(value: Any, key: str) -> None:
        journal.append(key)
        await anyio.lowlevel.checkpoint()

    for keys, expected in ((["a", "b"], ["a:only", "b:only"]), (None, ["m@0:only", "m@1:only"])):
        journal.clear()
        pipeline = (
            riprap.Pipeline("p", checkpoint=riprap.checkpoints.MemoryCheckpoints())
            .source(IterableSource("orders", [1, 2], partition="m", keys=keys))
            .stage(Saga("s", [SagaStep("only", action)]))
            .sink(MemorySink())
        )
        await run_pipeline(pipeline, clock=VirtualClock())
        assert expected == journal


async def test_failure_at_step_k_compensates_steps_k_minus_1_to_1_in_reverse() -> None:
    """A DataError at step 3 of 4 compensates steps 2 and 1, in that order; step 4 never runs."""
    services = Services(errors={"o1:c": [riprap.DataError("no stock", reason="no_stock")]})
    values = await run(services.saga(("a", "b", "c", "d")), [0, 1])
    expected_calls = ["a", "b", "c", "b:compensate", "a:compensate"]
    assert expected_calls == services.calls("o1")
    assert ["a", "b", "c", "d"] == services.calls("o0")
    failure = {"failed_step": "c", "reason": "no_stock", "error": "DataError"}
    assert outcome("o1", "compensated", ("a", "b"), 1, **failure) == values[1]


async def test_failure_at_the_first_step_compensates_nothing() -> None:
    """When step 1 fails there is nothing to undo: the outcome is compensated with no results."""
    services = Services(errors={"o1:reserve": [riprap.DataError("bad order")]})
    values = await run(services.saga(), [1])
    assert ["reserve"] == services.calls("o1")
    failure = {"failed_step": "reserve", "reason": "data_error", "error": "DataError"}
    assert [outcome("o1", "compensated", (), 1, **failure)] == values


async def test_transient_step_failures_are_retried_by_the_step_policy() -> None:
    """A step that fails transiently twice succeeds at the third attempt; nothing is compensated."""
    flaky: list[Exception] = [riprap.TransientError("busy"), riprap.TransientError("busy")]
    services = Services(errors={"o1:charge": flaky})
    retry = Retry(attempts=3, wait_initial=1.0, wait_max=10.0)
    saga = services.saga(step_options={"charge": {"retry": retry}})
    values = await run(saga, [1])
    assert ["reserve", "charge", "charge", "charge", "ship"] == services.calls("o1")
    assert [outcome("o1", "completed", NAMES, 1)] == values


async def test_a_step_whose_retries_run_out_is_compensated() -> None:
    """When the retry policy gives up, the earlier steps are compensated (``retries_exhausted``)."""
    services = Services(errors={"o1:charge": [riprap.TransientError("down")] * 3})
    saga = services.saga(step_options={"charge": {"retry": Retry(attempts=3)}})
    values = await run(saga, [1])
    expected_calls = ["reserve", "charge", "charge", "charge", "reserve:compensate"]
    assert expected_calls == services.calls("o1")
    failure = {"failed_step": "charge", "reason": "retries_exhausted", "error": "TransientError"}
    assert [outcome("o1", "compensated", ("reserve",), 1, **failure)] == values


async def test_compensations_are_retried_by_their_own_policy() -> None:
    """A compensation that fails transiently is retried under ``compensation_retry``."""
    services = Services(
        errors={
            "o1:ship": [riprap.DataError("no carrier")],
            "o1:reserve:compensate": [riprap.TransientError("busy")] * 2,
        }
    )
    saga = services.saga(step_options={"reserve": {"compensation_retry": Retry(attempts=3)}})
    values = await run(saga, [1])
    expected_calls = [
        *NAMES,
        "charge:compensate",
        "reserve:compensate",
        "reserve:compensate",
        "reserve:compensate",
    ]
    assert expected_calls == services.calls("o1")
    expected_outcome = ("compensated", "ship")
    assert expected_outcome == (values[0]["outcome"], values[0]["failed_step"])


@pytest.mark.parametrize(
    "errors",
    [
        pytest.param([RuntimeError("bug in refund")], id="bug"),
        pytest.param([riprap.TransientError("refunds down")] * 2, id="retries-exhausted"),
    ],
)
async def test_failing_compensation_stops_the_run_and_the_restart_resumes_it(
    errors: list[Exception],
) -> None:
    """A compensation that fails for good stops the run; the next run finishes the compensations."""
    backend = riprap.checkpoints.MemoryCheckpoints()
    services = Services(
        errors={"o1:ship": [riprap.DataError("no carrier")], "o1:charge:compensate": errors}
    )
    retry = {"compensation_retry": Retry(attempts=2)}
    with pytest.raises(SagaError) as caught:
        await run(services.saga(step_options={"charge": retry}, concurrency=1), [1], backend)
    expected_error = ("o1", "charge", "compensation", "memory", 0)
    actual_error = (
        caught.value.key,
        caught.value.step,
        caught.value.phase,
        caught.value.partition,
        caught.value.offset,
    )
    assert expected_error == actual_error
    saved = await backend.load("p")
    assert saved is not None
    entry = saved.state["order"]["sagas"]["memory@0"]
    expected_entry: tuple[str, list[str], None] = ("ship", [], None)
    assert expected_entry == (entry["failed"], entry["compensated"], entry["outcome"])

    services.journal.clear()
    values = await run(services.saga(step_options={"charge": retry}), [1], backend)
    assert ["charge:compensate", "reserve:compensate"] == services.calls("o1")
    failure = {"failed_step": "ship", "reason": "data_error", "error": "DataError"}
    assert [outcome("o1", "compensated", ("reserve", "charge"), 1, **failure)] == values


async def test_restart_resumes_a_saga_without_rerunning_logged_steps() -> None:
    """A bug in step 2 stops the run; the next run starts at step 2, never calling step 1 again."""
    backend = riprap.checkpoints.MemoryCheckpoints()
    services = Services(errors={"o1:charge": [RuntimeError("bug")]})
    with pytest.raises(SagaError, match="action of step 'charge'"):
        await run(services.saga(), [0, 1, 2], backend)
    assert ["reserve", "charge"] == services.calls("o1")

    services.journal.clear()
    values = await run(services.saga(), [0, 1, 2], backend)
    assert ["charge", "ship"] == services.calls("o1")
    assert [outcome(f"o{v}", "completed", NAMES, v) for v in (0, 1, 2)] == values
    for v in (0, 2):  # cancelled mid-saga by the failure: resumed, no logged step repeated
        calls = services.calls(f"o{v}")
        assert list(NAMES[len(NAMES) - len(calls) :]) == calls


async def test_a_finished_saga_in_the_log_is_re_emitted_without_calls() -> None:
    """A saga logged as finished (its outcome not yet done) is re-emitted from the log on replay."""
    services = Services()
    saga = services.saga()
    logged = {
        "key": "o7",
        "results": {"reserve": {"step": "reserve", "value": 7}},
        "failed": "charge",
        "reason": "card_declined",
        "error": "DataError",
        "compensated": ["reserve"],
        "outcome": "compensated",
    }
    saga.restore({"version": 1, "sagas": {"memory@0": logged}})
    values = await run(saga, [7, 8])
    assert [] == services.calls("o7")
    failure = {"failed_step": "charge", "reason": "card_declined", "error": "DataError"}
    assert outcome("o7", "compensated", ("reserve",), 7, **failure) == values[0]
    expected_stats = (1, 1, 0, 0)
    stats = saga.statistics()
    assert expected_stats == (stats.completed, stats.resumed, stats.compensated, stats.in_log)


def source_batch(values: list[Any], start: int, done: list[int]) -> riprap.Batch:
    """A batch from partition ``p`` whose ack appends ``start`` to ``done`` when done."""
    source = riprap.SourceBatch("p", values, start=start)
    return riprap.Batch(
        values, riprap.lowlevel.Ack(lambda: done.append(start)), SourceOrigin(source)
    )


async def test_log_and_input_ack_are_kept_until_the_outcomes_are_done() -> None:
    """Entries leave the log, and inputs are released, only once outcomes are done, in order."""
    saga = Services().saga()
    emitted: list[riprap.Batch] = []

    async def emit(batch: riprap.Batch) -> None:
        emitted.append(batch)

    done: list[int] = []
    await saga.process(source_batch([1, 2], 0, done), emit)
    await saga.process(source_batch([3], 2, done), emit)
    assert {"p@0", "p@1", "p@2"} == set(saga.snapshot()["sagas"])

    emitted[1].ack.release()  # the later batch first: its entry stays until the earlier is done
    assert ([2], {"p@0", "p@1", "p@2"}) == (done, set(saga.snapshot()["sagas"]))
    emitted[0].ack.release()
    assert ([2, 0], {}) == (done, saga.snapshot()["sagas"])


async def test_records_of_one_key_never_overlap_and_keys_run_concurrently() -> None:
    """With ``concurrency`` > 1 sagas of different keys overlap; one key's run one at a time."""
    active: dict[str, int] = {}
    overlaps: list[str] = []
    peak = 0
    order: list[tuple[str, int]] = []

    async def action(value: tuple[str, int], key: str) -> None:
        nonlocal peak
        active[value[0]] = active.get(value[0], 0) + 1
        overlaps.extend([value[0]] if active[value[0]] > 1 else [])
        peak = max(peak, sum(active.values()))
        await anyio.sleep(0.001 * (value[1] % 3))
        active[value[0]] -= 1
        order.append(value)

    values = [(f"k{i % 4}", i) for i in range(40)]
    # Real sleeps under the virtual clock: no attempt timeout, or autojump would time them out.
    step = SagaStep("only", action, attempt_timeout=None)
    saga = Saga("s", [step], key=lambda v: v[0], concurrency=8)
    await run(saga, values)
    assert [] == overlaps
    assert peak > 1
    for key in ("k0", "k1", "k2", "k3"):
        assert [v for v in values if v[0] == key] == [v for v in order if v[0] == key]


async def test_snapshot_is_json_and_restore_checks_the_steps() -> None:
    """The log round-trips through JSON; a log naming a removed step is a ConfigError."""
    services = Services(errors={"o1:ship": [RuntimeError("bug")]})
    saga = services.saga()
    with pytest.raises(SagaError):
        await run(saga, [1])
    state = orjson.loads(orjson.dumps(saga.snapshot()))
    expected = {
        "reserve": {"step": "reserve", "value": 1},
        "charge": {"step": "charge", "value": 1},
    }
    assert expected == state["sagas"]["memory@0"]["results"]

    services.saga().restore(state)
    with pytest.raises(riprap.ConfigError, match="charge"):
        services.saga(("reserve", "ship")).restore(state)
    with pytest.raises(riprap.ConfigError, match="format"):
        services.saga().restore({"version": 99})


async def test_a_result_that_is_not_json_stops_the_run() -> None:
    """Results go into the checkpoint, so a result JSON cannot hold is a bug of the action."""

    async def action(value: Any, key: str) -> object:
        await anyio.lowlevel.checkpoint()
        return object()

    saga = Saga("s", [SagaStep("opaque", action)])
    with pytest.raises(SagaError, match="opaque"):
        await run(saga, [1])


@pytest.mark.parametrize(
    ("build_saga", "option"),
    [
        pytest.param(lambda s: Saga("s", []), "steps", id="no-steps"),
        pytest.param(lambda s: Saga("s", [s.step("a"), s.step("a")]), "steps", id="duplicates"),
        pytest.param(lambda s: Saga("s", [s.step("a")], concurrency=0), "concurrency", id="conc"),
        pytest.param(lambda s: s.step("a:b"), "name", id="colon"),
    ],
)
async def test_invalid_configuration_is_a_config_error(build_saga: Any, option: str) -> None:
    """Missing or repeated steps, a colon in a name and a concurrency below 1 are refused."""
    with pytest.raises(riprap.ConfigError, match=option):
        build_saga(Services())


# -- fault injection: SIGKILL between steps, a compensation bug, restarts ------------------

WORKER = Path(__file__).with_name("_saga_worker.py")
SERVICE_OF = {"reserve": "inventory", "charge": "payments", "ship": "shipping"}
KILLS = 6
BREAK_AT = 2
PIPELINE = "saga-orders"
"""The run (counting kills) that hits the compensation bug instead of being killed."""
SEED = 4242


def attempts(directory: Path) -> dict[tuple[str, str], int]:
    """Calls each service saw, by ``(service, idempotency key)``."""
    rows = query(
        directory / "services.db", "SELECT service, key, count(*) FROM attempts GROUP BY 1, 2"
    )
    return {(service, key): n for service, key, n in rows}


def saga_log(directory: Path) -> tuple[int, dict[str, Any]]:
    """The checkpointed position of the orders and the saga log, as a restart loads them."""
    checkpoint = load_checkpoint(directory / "checkpoints.db", PIPELINE)
    if checkpoint is None:
        return 0, {}
    state = checkpoint.state.get("order", {})
    sagas: dict[str, Any] = state.get("sagas", {})
    for partition in state.get("partitions", {}).values():  # kept as keyed state
        sagas |= {token: orjson.loads(text) for token, (text, _) in partition.items()}
    return checkpoint.positions.get("orders", 0), sagas


def freeze_logged_calls(directory: Path, frozen: dict[tuple[str, str], int]) -> int:
    """Note the call counts of every call the checkpoint shows done; return sagas mid-way.

    A call is done for every order before the checkpointed position, and for
    each step and compensation the saga log records. None of them may be
    called again by a later run.
    """
    position, sagas = saga_log(directory)
    seen = attempts(directory)
    done = [(order, step) for order in range(position) for step in SERVICE_OF]
    calls = [(SERVICE_OF[step], f"{order}:{step}") for order, step in done]
    calls += [(service, f"{key}:compensate") for service, key in calls]
    for entry in sagas.values():
        calls += [(SERVICE_OF[step], f"{entry['key']}:{step}") for step in entry["results"]]
        calls += [
            (SERVICE_OF[step], f"{entry['key']}:{step}:compensate") for step in entry["compensated"]
        ]
    for call in calls:
        frozen.setdefault(call, seen.get(call, 0))
    return sum(1 for entry in sagas.values() if entry["outcome"] is None and entry["results"])


def start_worker(directory: Path, run: int) -> AbstractContextManager[Popen[bytes]]:
    """Start run number ``run`` of the worker; leaving the block kills it if still running."""
    return spawn([sys.executable, str(WORKER), str(directory)], directory, f"run-{run}")


def kill_mid_run(directory: Path, run: int, rng: random.Random) -> None:
    """Start a run, let the services see a seeded random number of calls, then SIGKILL it."""
    target = sum(attempts(directory).values()) + rng.randint(15, 70)
    with start_worker(directory, run) as proc:
        wait_for_child(lambda: sum(attempts(directory).values()) >= target, proc, f"{target} calls")
        time.sleep(rng.uniform(0, 0.005))  # land anywhere between two calls
        proc.kill()
        proc.wait(timeout=DEADLINE)
    expected = -signal.SIGKILL
    assert expected == proc.returncode, f"run {run} ended before it could be killed"


def break_a_compensation(directory: Path, run: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run whose first compensation raises a bug: it stops, logging the saga mid-compensation."""
    marker = directory / "compensation-broken"
    with monkeypatch.context() as patch:
        patch.setenv(BREAK_ENV, str(marker))
        with start_worker(directory, run) as proc:
            returncode = proc.wait(timeout=DEADLINE)
    stderr = (directory / f"run-{run}.err").read_text()
    expected = (1, True)
    assert expected == (returncode, "SagaError" in stderr), stderr
    # The saga whose compensation failed is in the log: charge failed, reserve not undone yet.
    broken_key = marker.read_text().split(":")[0]
    _, sagas = saga_log(directory)
    (entry,) = [entry for entry in sagas.values() if entry["key"] == broken_key]
    expected_entry: tuple[str, list[str], None] = ("charge", [], None)
    assert expected_entry == (entry["failed"], entry["compensated"], entry["outcome"])


def check_effects(directory: Path) -> None:
    """Every saga completed or was fully compensated, and no effect was applied twice."""
    database = directory / "services.db"
    outcomes = read_table_sync(directory / "outcomes.db", "outcomes", key_column="key")
    expected_outcomes = {
        str(i): "compensated" if i % 7 == 3 else "completed" for i in range(WORKER_ORDERS)
    }
    assert expected_outcomes == {key: value["outcome"] for key, value in outcomes.items()}
    doubles = "SELECT service, key FROM {} GROUP BY service, key HAVING count(*) > 1"
    assert [] == query(database, doubles.format("effects"))
    assert [] == query(database, doubles.format("undos"))
    effects = query(database, "SELECT service, key, id FROM effects")
    undone = dict(query(database, "SELECT effect_id, key FROM undos"))
    for service, key, effect_id in effects:
        order = int(key.split(":")[0])
        if order % 7 == 3:
            assert (service, f"{key}:compensate") == (service, undone.get(effect_id)), key
        else:
            assert effect_id not in undone, key
    expected_effects = {
        (SERVICE_OF[step], f"{i}:{step}")
        for i in range(WORKER_ORDERS)
        for step in (("reserve",) if i % 7 == 3 else SERVICE_OF)
    }
    assert expected_effects == {(service, key) for service, key, _ in effects}


@pytest.mark.slow
@pytest.mark.parametrize("store", ["", "memory"])
def test_sagas_survive_sigkill_and_a_failing_compensation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store: str
) -> None:
    """After SIGKILLs between steps and a compensation bug, restarts finish every saga:
    each is complete or fully compensated, no effect is applied twice, and no call the
    checkpointed saga log shows done is ever made again; the same with the log as keyed
    state.
    """
    monkeypatch.setenv("RIPRAP_SAGA_STORE", store)
    rng = random.Random(SEED)
    frozen: dict[tuple[str, str], int] = {}
    mid_saga = 0
    for run in range(KILLS + 1):
        if run == BREAK_AT:
            break_a_compensation(tmp_path, run, monkeypatch)
        else:
            kill_mid_run(tmp_path, run, rng)
        mid_saga += freeze_logged_calls(tmp_path, frozen)

    with start_worker(tmp_path, KILLS + 1) as proc:
        returncode = proc.wait(timeout=DEADLINE)
    expected_code = 0
    assert expected_code == returncode, (tmp_path / f"run-{KILLS + 1}.err").read_text()
    check_effects(tmp_path)
    seen = attempts(tmp_path)
    assert frozen == {call: seen.get(call, 0) for call in frozen}
    assert mid_saga > 0  # some restarts did resume sagas from the middle


# -- sagas that cannot hang ------------------------------------------------------------------


async def test_a_step_that_hangs_times_out_and_is_compensated() -> None:
    """A hung action times out (default attempt timeout), is retried, then compensated; the
    timed-out attempts are in the run report."""
    services = Services()

    async def hang(value: Any, key: str) -> None:
        services.journal.append(key)
        await anyio.sleep_forever()

    steps = [services.step("reserve"), SagaStep("charge", hang)]
    saga = Saga("order", steps, key=lambda v: f"o{v}")
    pipeline = build(saga, [1], riprap.checkpoints.MemoryCheckpoints())
    sink = pipeline.sink_
    assert isinstance(sink, MemorySink)
    with anyio.fail_after(10):  # real seconds; the run itself is in virtual time
        report = await run_pipeline(pipeline, clock=VirtualClock())
    failure = {"failed_step": "charge", "reason": "retries_exhausted", "error": "StageTimeout"}
    assert [outcome("o1", "compensated", ("reserve",), 1, **failure)] == sink.values
    timeouts = services.calls("o1").count("charge")
    assert timeouts >= 1
    assert {"saga_attempt_timeouts": timeouts} == dict(report.source_outcomes)
    assert timeouts == saga.statistics().attempt_timeouts


async def test_graceful_stop_ends_within_drain_timeout_and_the_log_resumes(
    tmp_path: Path,
) -> None:
    """A step that ignores cancellation cannot hold up a stop: the call is abandoned when the
    drain time is up, and the next run resumes the saga from its log."""
    store = tmp_path / "ckpt.db"
    entered = anyio.Event()
    let_go = anyio.Event()
    calls: list[str] = []

    async def stubborn(value: Any, key: str) -> str:
        calls.append(key)
        entered.set()
        with anyio.CancelScope(shield=True):  # ignores the stop's cancellation
            await let_go.wait()
        return "late"

    async def reserve(value: Any, key: str) -> str:
        calls.append(key)
        return "reserved"

    def saga(charge: Any) -> Saga:
        return Saga("order", [SagaStep("reserve", reserve), SagaStep("charge", charge)])

    def orders(step: Any) -> riprap.Pipeline:
        return (
            riprap.Pipeline(
                "p", checkpoint=riprap.checkpoints.SqliteCheckpoints(store), drain_timeout=0.05
            )
            .source(IterableSource("orders", [7]))
            .stage(saga(step))
            .sink(MemorySink())
        )

    async with orders(stubborn).open() as running:
        try:
            with anyio.fail_after(10):
                await entered.wait()
                running.stop()
                report = await running.wait()
        finally:
            let_go.set()  # the abandoned call ends (on a broken stop: the run can end at all)
    assert ("stopped", {"memory": 0}) == (report.outcome, dict(report.positions))
    assert {"drain_abandoned": 1} == dict(report.source_outcomes)
    saved = await anyio.to_thread.run_sync(load_checkpoint, store, "p")
    assert saved is not None
    log = saved.state["order"]["sagas"]["memory@0"]
    assert ({"reserve": "reserved"}, None) == (log["results"], log["outcome"])

    async def charge(value: Any, key: str) -> str:
        calls.append(key)
        return "charged"

    resumed = orders(charge)
    await resumed.run()
    sink = resumed.sink_
    assert isinstance(sink, MemorySink)
    assert ["memory@0:reserve", "memory@0:charge", "memory@0:charge"] == calls
    assert "completed" == sink.values[0]["outcome"]
