"""Fixtures of the mra_client tests: the built binaries and running
bin/mrad daemons, started by tests/integration/mrad_server.py (the helper
the service's own black-box tests use) on free loopback ports."""
import os
import pathlib
import subprocess
import sys
import tempfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]
BIN = pathlib.Path(os.environ.get("MRAD_BIN_DIR") or ROOT / "bin")
for p in (ROOT / "tests" / "integration", ROOT / "tests" / "pyref"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from mrad_server import MradServer  # noqa: E402,F401


def mractl(*args, stdin=None):
    """Runs bin/mractl; returns the CompletedProcess (stdout as bytes)."""
    return subprocess.run([str(BIN / "mractl"), *map(str, args)], input=stdin,
                          capture_output=True, timeout=120)


def run_local(body):
    """The answer `mractl run --local` gives for a request body (bytes)."""
    with tempfile.NamedTemporaryFile(suffix=".msgpack") as f:
        f.write(body)
        f.flush()
        p = mractl("run", "--local", f.name)
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    return p.stdout


@pytest.fixture(scope="module")
def server():
    """A daemon with default settings, shared by the tests of one module."""
    with MradServer(threads=2) as srv:
        yield srv
