"""Fixtures of the mra_client tests: makes tests/integration (the
mrad_server helper, which starts bin/mrad on a free loopback port) and
tests/pyref (the float64 reference) importable, and provides a shared
daemon."""
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]
for p in (ROOT / "tests" / "integration", ROOT / "tests" / "pyref"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from mrad_server import MradServer  # noqa: E402


@pytest.fixture(scope="module")
def server():
    """A daemon with default settings, shared by the tests of one module."""
    with MradServer(threads=2) as srv:
        yield srv
