"""pytest setup of the integration tests: makes tests/integration (the
mrad_server helper) and tests/pyref (the float64 reference) importable, and
provides a shared daemon for tests that need no special flags."""
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
for p in (HERE, os.path.join(os.path.dirname(HERE), "pyref")):
    if p not in sys.path:
        sys.path.insert(0, p)

from mrad_server import MradServer  # noqa: E402


@pytest.fixture(scope="module")
def mrad():
    """A daemon with default settings (CPU backend, two compute threads),
    shared by the tests of one module."""
    with MradServer(threads=2) as srv:
        yield srv
