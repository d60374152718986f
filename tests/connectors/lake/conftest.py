"""The moto S3 server and a bucket per test, shared with the S3 connector's tests."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

pytest.importorskip("pyarrow")
pytest.importorskip("deltalake")

from riprap.connectors.lake import LakeS3Options
from tests.connectors.s3.conftest import bucket as bucket
from tests.connectors.s3.conftest import moto_endpoint as moto_endpoint

if TYPE_CHECKING:
    import pyarrow.fs


def s3_options(endpoint: str) -> LakeS3Options:
    """Options for the moto server (it takes any keys)."""
    return LakeS3Options(
        endpoint_url=endpoint, access_key_id="testing", secret_access_key="testing"
    )


@pytest.fixture
def s3(moto_endpoint: str) -> LakeS3Options:
    """:class:`LakeS3Options` for the test run's moto server."""
    return s3_options(moto_endpoint)


@pytest.fixture
def s3_files(s3: LakeS3Options) -> pyarrow.fs.S3FileSystem:
    """A pyarrow file system on the moto server, to read what the sinks wrote."""
    return s3.filesystem()
