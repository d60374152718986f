"""The lake examples run end to end: files -> Parquet (local and S3), Kafka -> Delta."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow.dataset as ds
import pytest
from deltalake import DeltaTable

from riprap.deadletters import read_dead_letters
from tests._examples import load_example
from tests.connectors.kafka.conftest import kafka_bootstrap as kafka_bootstrap
from tests.connectors.s3.conftest import FAKE_ENV

if TYPE_CHECKING:
    from pathlib import Path

    import pyarrow.fs as pafs

ORDERS = 2_000


def test_files_to_parquet_writes_each_order_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every good order lands in Parquet once; bad lines are dead letters; a rerun adds nothing."""
    example = load_example("files_to_parquet.py")
    args = [
        "unused",
        str(tmp_path / "out"),
        "--data-dir",
        str(tmp_path / "data"),
        "--generate",
        str(ORDERS),
    ]
    assert 0 == example.main(args)
    assert 0 == example.main([str(tmp_path / "data" / "orders.jsonl"), *args[1:4]])
    table = ds.dataset(tmp_path / "out", format="parquet").to_table()
    letters = list(read_dead_letters(tmp_path / "data" / "dlq.jsonl"))
    ids = table.column("id").to_pylist()
    assert (ORDERS, len(ids)) == (len(ids) + len(letters), len(set(ids)))
    assert "completed" in capsys.readouterr().out


@pytest.mark.s3
def test_files_to_parquet_on_s3(
    tmp_path: Path,
    bucket: str,
    moto_endpoint: str,
    s3_files: pafs.S3FileSystem,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same example writes to an ``s3://`` location."""
    for name, value in FAKE_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("RIPRAP_S3_ENDPOINT", moto_endpoint)
    example = load_example("files_to_parquet.py")
    out = f"s3://{bucket}/orders"
    assert 0 == example.main(["unused", out, "--data-dir", str(tmp_path), "--generate", "300"])
    table = ds.dataset(f"{bucket}/orders", format="parquet", filesystem=s3_files).to_table()
    letters = list(read_dead_letters(tmp_path / "dlq.jsonl"))
    assert 300 == table.num_rows + len(letters)


@pytest.mark.kafka
@pytest.mark.anyio
async def test_kafka_to_delta_commits_each_event_once(tmp_path: Path, kafka_bootstrap: str) -> None:
    """Every decodable event is in the table once, with the column some events added."""
    example = load_example("kafka_to_delta.py")
    report = await example.main(kafka_bootstrap, str(tmp_path / "table"), 400, tmp_path)
    table = DeltaTable(str(tmp_path / "table")).to_pyarrow_table()
    ids = table.column("id").to_pylist()
    assert "completed" == report.outcome
    assert (400, len(ids)) == (len(ids) + sum(report.dead_lettered.values()), len(set(ids)))
    assert "referrer" in table.column_names
