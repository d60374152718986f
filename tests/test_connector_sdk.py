"""The connector of docs/architecture.md, written from public names alone, works as documented."""

from __future__ import annotations

import datetime
import importlib.util
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pytest

import riprap
import riprap.lowlevel
from riprap.checkpoints import MemoryCheckpoints

if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import ModuleType

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "custom_connector.py"

pytestmark = pytest.mark.anyio


@pytest.fixture
def connector() -> Iterator[ModuleType]:
    """The ``examples/custom_connector.py`` module, imported from its file."""
    name = "examples_custom_connector"
    spec = importlib.util.spec_from_file_location(name, EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[name]


def written(path: Path) -> list[dict[str, Any]]:
    """The JSON lines the sink wrote."""
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_the_plug_ins_satisfy_the_protocols(connector: ModuleType, tmp_path: Path) -> None:
    """The example's source and sink implement riprap's Source and Sink protocols."""
    assert isinstance(connector.LinesSource(tmp_path / "in.txt"), riprap.Source)
    assert isinstance(connector.JsonLinesAppendSink(tmp_path / "out.jsonl"), riprap.Sink)


async def test_a_second_run_resumes_after_the_checkpoint(
    connector: ModuleType, tmp_path: Path
) -> None:
    """Lines added after a run are the only ones the next run writes, each with its position."""
    source, output = tmp_path / "in.txt", tmp_path / "out.jsonl"
    checkpoints = MemoryCheckpoints()
    source.write_text("a\nb\n")
    first = await connector.build(str(source), str(output), checkpoints).run()
    source.write_text("a\nb\nc\n")
    second = await connector.build(str(source), str(output), checkpoints).run()
    expected = [
        {"partition": "lines:in.txt", "offset": 0, "value": "A"},
        {"partition": "lines:in.txt", "offset": 1, "value": "B"},
        {"partition": "lines:in.txt", "offset": 2, "value": "C"},
    ]
    assert expected == written(output)
    assert (2, 1) == (first.records_out, second.records_out)
    assert {"lines:in.txt": 3} == dict(second.positions)


@pytest.mark.parametrize(
    ("check", "value", "expected"),
    [
        (riprap.lowlevel.optional_limit, None, None),
        (riprap.lowlevel.optional_limit, 5, 5),
        (riprap.lowlevel.optional_seconds, None, None),
        (riprap.lowlevel.optional_seconds, 2, 2.0),
        (riprap.lowlevel.optional_seconds, datetime.timedelta(minutes=1), 60.0),
    ],
)
def test_option_checks_pass_good_values(check: Any, value: Any, expected: Any) -> None:
    """A plug-in's option checks hand back what they accept, seconds as float."""
    assert expected == check("opt", value)


@pytest.mark.parametrize(
    ("check", "value"),
    [
        (riprap.lowlevel.optional_limit, 0),
        (riprap.lowlevel.optional_limit, True),
        (riprap.lowlevel.optional_limit, 1.5),
        (riprap.lowlevel.optional_seconds, 0),
        (riprap.lowlevel.optional_seconds, float("nan")),
        (riprap.lowlevel.optional_seconds, float("inf")),
        (riprap.lowlevel.optional_seconds, "5"),
    ],
)
def test_option_checks_name_the_option(check: Any, value: Any) -> None:
    """Anything else is a ConfigError naming the plug-in's option."""
    with pytest.raises(riprap.ConfigError) as info:
        check("MySink.max_age", value)
    assert "MySink.max_age" == info.value.option
