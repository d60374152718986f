"""The public face: names look public, optional extras stay optional, the version is real."""

from __future__ import annotations

import importlib
import subprocess
import sys

import riprap
import riprap.policies
import riprap.testing


def test_public_classes_report_the_public_module() -> None:
    """Classes exported from riprap say ``riprap`` in reprs and tracebacks."""
    assert "riprap" == riprap.DataError.__module__
    assert "riprap" == riprap.Pipeline.__module__


def test_import_needs_no_optional_extras() -> None:
    """Importing riprap loads neither aiokafka, botocore nor uvloop."""
    code = (
        "import sys, riprap, riprap.policies, riprap.connectors.files\n"
        "print(sorted(m for m in ('aiokafka', 'botocore', 'aiobotocore', 'uvloop') "
        "if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert "[]" == done.stdout.strip()


def test_import_leaves_the_http_client_and_server_to_those_who_use_them() -> None:
    """A script, the CLI and every worker process import riprap; aiohttp alone took 0.14 s of it.

    The webhook alert sink and the health server import it when they are used.
    """
    code = (
        "import sys, riprap, riprap.cli, riprap.observability, riprap.checkpoints\n"
        "print('aiohttp' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert "False" == done.stdout.strip()


def test_version_comes_from_package_metadata() -> None:
    """The version is read from the installed distribution."""
    metadata = importlib.import_module("importlib.metadata")
    assert metadata.version("riprap") == riprap.__version__
