"""The public face: __all__ matches what riprap exports, and names look public."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import riprap
import riprap.policies
import riprap.testing


@pytest.mark.parametrize("module", [riprap, riprap.policies, riprap.testing])
def test_all_lists_exactly_the_public_names(module: object) -> None:
    """Every public attribute is in __all__, and everything in __all__ exists."""
    public = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and getattr(value, "__module__", "").startswith("riprap")
    }
    exported = set(module.__all__)  # type: ignore[attr-defined]
    assert public <= exported
    assert all(hasattr(module, name) for name in exported)


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


def test_version_comes_from_package_metadata() -> None:
    """The version is read from the installed distribution."""
    metadata = importlib.import_module("importlib.metadata")
    assert metadata.version("riprap") == riprap.__version__
