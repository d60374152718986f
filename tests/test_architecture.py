"""The architecture holds: no import cycles, plug-ins on public names, exact public namespaces."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIRS = {"engine": "riprap", "stages": "riprap.stages", "connectors": "riprap.connectors"}
PLUG_IN_DIRS = ("connectors", "stages", "examples", "benchmarks")

PUBLIC_NAMESPACES = (
    "riprap",
    "riprap.checkpoints",
    "riprap.cli",
    "riprap.connectors.files",
    "riprap.connectors.http",
    "riprap.connectors.json_codec",
    "riprap.connectors.kafka",
    "riprap.connectors.lake",
    "riprap.connectors.memory",
    "riprap.connectors.s3",
    "riprap.connectors.sqlite",
    "riprap.deadletters",
    "riprap.lowlevel",
    "riprap.observability",
    "riprap.policies",
    "riprap.stages.dedupe",
    "riprap.stages.quality",
    "riprap.stages.saga",
    "riprap.stages.validate",
    "riprap.stages.window",
    "riprap.state",
    "riprap.testing",
)


def module_name(path: Path) -> str:
    """The dotted name of ``path``: ``engine/_core/records.py`` is ``riprap._core.records``."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    parts[0] = PACKAGE_DIRS[parts[0]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules() -> dict[str, Path]:
    """Every module of the installed package, by dotted name."""
    return {module_name(path): path for top in PACKAGE_DIRS for path in (ROOT / top).rglob("*.py")}


def imported_modules(path: Path, name: str, known: set[str]) -> set[str]:
    """Package modules ``path`` imports anywhere: top level, in functions, for type checking."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, name, is_package)
            for alias in node.names:
                child = f"{base}.{alias.name}"
                found.add(child if child in known else base)
    return found & known


def _absolute(node: ast.ImportFrom, name: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    parts = name.split(".")
    keep = len(parts) - node.level + (1 if is_package else 0)
    base = ".".join(parts[:keep])
    return f"{base}.{node.module}" if node.module else base


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_itself_back() -> None:
    """No import cycle among riprap's modules, counting deferred and type-checking imports."""
    modules = package_modules()
    known = set(modules)
    graph = {name: imported_modules(path, name, known) - {name} for name, path in modules.items()}
    assert [] == cycles(graph)


def test_cycle_finder_finds_a_cycle() -> None:
    """The cycle check is able to fail: a two-module loop is reported."""
    assert [["a", "b"]] == cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}})


def is_private(module: str) -> bool:
    """``riprap._core.x`` or ``riprap.checkpoints._file``: any part after ``riprap`` is private."""
    return module.startswith("riprap") and any(p.startswith("_") for p in module.split(".")[1:])


def private_imports(path: Path) -> list[str]:
    """Private riprap modules ``path`` imports, other than its own package's private modules."""
    own_package = ""
    if path.parts[len(ROOT.parts)] in PACKAGE_DIRS:
        name = module_name(path)
        own_package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names = [node.module]
        else:
            continue
        for module in names:
            inside_own = own_package.startswith("riprap.connectors.") and module.startswith(
                own_package + "."
            )
            if is_private(module) and not inside_own:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {module}")
    return found


@pytest.mark.parametrize("top", PLUG_IN_DIRS)
def test_plug_ins_import_only_public_names(top: str) -> None:
    """Connectors, stages, examples and benchmarks are written from riprap's public API alone."""
    found = [line for path in sorted((ROOT / top).rglob("*.py")) for line in private_imports(path)]
    assert [] == found


def test_private_import_check_can_fail(tmp_path: Path) -> None:
    """The plug-in check reports a private engine import."""
    probe = ROOT / "connectors" / "_probe_private_import.py"
    probe.write_text("from riprap._core.records import Batch\n")
    try:
        assert [f"connectors/{probe.name}:1: riprap._core.records"] == private_imports(probe)
    finally:
        probe.unlink()


# Tests use public names; these white-box tests reach private machinery with no public face.
# Test file -> the private modules it may import.
WHITE_BOX: dict[str, frozenset[str]] = {
    # Runtime machinery: completion tracking and the in-flight bound.
    "tests/engine/test_acks.py": frozenset({"riprap._runtime.acks"}),
    # The bounded batch channel between runner tasks.
    "tests/engine/test_channel.py": frozenset({"riprap._runtime.channel"}),
    # Where a stop may cancel a source's task.
    "tests/engine/test_read_stop.py": frozenset({"riprap._runtime.read_stop"}),
    # A timeout layer's shared timer, fired by hand on a moved clock.
    "tests/engine/policies/test_deadlines.py": frozenset({"riprap.policies._deadlines"}),
    # Aborts at awkward moments: a send into a channel closed by its own cancellation,
    # an abort during start-up (through the handle open_pipeline hands out before it),
    # signals caught before the run exists.
    "tests/engine/test_abort.py": frozenset(
        {"riprap._runtime.channel", "riprap._runtime.run", "riprap._runtime.runtime"}
    ),
    # Fused step loops, checked against the origins they build.
    "tests/engine/test_fuse.py": frozenset({"riprap._runtime.fuse", "riprap._core.records"}),
    # Which batches a run after a crash watches (the runtime builds the watch).
    "tests/engine/test_crash_guard.py": frozenset({"riprap.checkpoints._guard"}),
    # Canonical JSON in pieces, with its slice sizes shrunk.
    "tests/checkpoints/test_canonical.py": frozenset({"riprap.checkpoints._canonical"}),
    # The origins other than SourceOrigin, which only the runtime builds.
    "tests/engine/test_records.py": frozenset({"riprap._core.records"}),
    # Observers fed a hand-built snapshot: stall detector, readiness, alert evaluator,
    # metrics registry, report builder.
    "tests/engine/test_observability.py": frozenset({"riprap.observability._health"}),
    # The run's log lines: its rate limit in virtual time, its dead-letter lines.
    "tests/engine/test_run_log.py": frozenset({"riprap.observability._runlog"}),
    "tests/engine/test_statistics.py": frozenset(
        {
            "riprap.observability._alerts",
            "riprap.observability._exposition",
            "riprap.observability._health",
            "riprap.observability._metrics",
            "riprap.observability._report",
        }
    ),
    # The bound on riprap_position series, scraped through the registry.
    "tests/engine/test_position_series.py": frozenset(
        {
            "riprap.observability._exposition",
            "riprap.observability._metrics",
            "riprap.observability._partitions",
        }
    ),
    # Dedupe's copy-on-write key levels checked against an OrderedDict model.
    "tests/stages/test_timed_keys.py": frozenset({"riprap.stages._timed_keys"}),
    # The envelope's size limits.
    "tests/engine/dlq/test_deadletter.py": frozenset({"riprap.deadletters._envelope"}),
    # Store format sniffing: a store misread as JSON Lines reads as empty, so only it shows.
    "tests/engine/dlq/test_sqlite_sink.py": frozenset({"riprap.deadletters._stores"}),
    # The dlq command run in-process (riprap.cli.main would replace pytest's log handlers).
    "tests/engine/dlq/_replay.py": frozenset({"riprap.cli._dlq"}),
    # Dead-letter location parsing.
    "tests/engine/dlq/test_location.py": frozenset({"riprap.cli._locations"}),
    # The replay pipeline the CLI builds, run in-process on a virtual clock.
    "tests/engine/test_dlq_seed_scenario.py": frozenset({"riprap.cli._main"}),
    # Pipeline file loading, each error case without a child process.
    "tests/test_cli.py": frozenset({"riprap.cli._main"}),
    # The final checkpoint's bound, shortened so that a store that never answers is given up.
    "tests/engine/test_final_checkpoint.py": frozenset({"riprap._runtime"}),
    # The live progress printer of `riprap run`.
    "tests/engine/test_progress.py": frozenset({"riprap.cli._progress"}),
    # Kafka connector internals: dead-letter header codec, murmur2 partitioning, error
    # mapping, the rebalance listener.
    "tests/connectors/kafka/test_dlq_reader.py": frozenset(
        {"riprap.connectors.kafka._deadletters"}
    ),
    "tests/connectors/kafka/test_partition.py": frozenset({"riprap.connectors.kafka._partition"}),
    "tests/connectors/kafka/test_sink.py": frozenset({"riprap.connectors.kafka._sink"}),
    "tests/connectors/kafka/test_source.py": frozenset({"riprap.connectors.kafka._source"}),
    # The CDC source's fetch sizing by bytes, without a server.
    "tests/connectors/postgres/test_fetch_sizer.py": frozenset(
        {"riprap.connectors.postgres._weight"}
    ),
    # The offset-gap rule (below the earliest, beyond the latest offset) on its own.
    "tests/connectors/kafka/test_gaps.py": frozenset({"riprap.connectors.kafka._gaps"}),
    # S3 connector internals: its client setup for raw bucket access, the conditional delete.
    "tests/connectors/s3/conftest.py": frozenset({"riprap.connectors.s3._client"}),
    "tests/connectors/s3/test_dlq_reader.py": frozenset({"riprap.connectors.s3._dlq_reader"}),
    # The bounded gunzip's edge cases, below what a source shows.
    "tests/connectors/s3/test_object_limits.py": frozenset({"riprap.connectors.s3._formats"}),
}


def test_tests_import_private_modules_only_where_white_box() -> None:
    """Tests import public namespaces, except the white-box tests listed in ``WHITE_BOX``."""
    found = {
        (str(path.relative_to(ROOT)), line.rpartition(" ")[2])
        for path in sorted((ROOT / "tests").rglob("*.py"))
        for line in private_imports(path)
    }
    allowed = {(test, module) for test, modules in WHITE_BOX.items() for module in modules}
    assert set() == found - allowed


def defined_public_names(module: ModuleType) -> set[str]:
    """Public names a module defines or re-exports (``import X as X``), read from its source."""
    assert module.__file__ is not None
    tree = ast.parse(Path(module.__file__).read_text())
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.ImportFrom | ast.Import):
            names.update(a.asname for a in node.names if a.asname and a.asname == a.name)
    return {name for name in names if not name.startswith("_")} - {"__all__"}


@pytest.mark.parametrize("namespace", PUBLIC_NAMESPACES)
def test_all_is_exactly_the_public_names(namespace: str) -> None:
    """``__all__`` lists every public name a namespace defines or re-exports, and nothing else."""
    module = importlib.import_module(namespace)
    exported = module.__all__
    assert isinstance(exported, tuple)
    assert sorted(defined_public_names(module)) == sorted(exported)


@pytest.mark.parametrize("namespace", PUBLIC_NAMESPACES)
def test_public_names_show_their_public_module(namespace: str) -> None:
    """Classes and functions exported from a namespace name a public module in reprs."""
    module = importlib.import_module(namespace)
    shown = {
        name: getattr(module, name).__module__
        for name in module.__all__
        if isinstance(getattr(module, name), type) or callable(getattr(module, name))
    }
    assert {} == {name: where for name, where in shown.items() if is_private(where)}


def test_each_public_object_has_one_home() -> None:
    """An object is exported by one engine namespace only, so its documented path is unique."""
    homes: dict[int, list[str]] = {}
    for namespace in PUBLIC_NAMESPACES:
        if namespace.startswith(("riprap.connectors", "riprap.stages")):
            continue
        module = importlib.import_module(namespace)
        for name in module.__all__:
            homes.setdefault(id(getattr(module, name)), []).append(f"{namespace}.{name}")
    assert [] == [paths for paths in homes.values() if len(paths) > 1]


def test_the_core_namespace_stays_small() -> None:
    """``riprap`` holds what a pipeline author needs; the rest lives in named namespaces."""
    import riprap

    assert len(riprap.__all__) <= 30
