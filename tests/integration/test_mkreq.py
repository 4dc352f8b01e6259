"""tools/mkreq.py as the README runs it: by a python3 that has no numpy
(here: the base interpreter without site-packages), it runs itself again
with the project's .venv/bin/python and writes the same body."""
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
MKREQ = ROOT / "tools" / "mkreq.py"
VENV_PY = ROOT / ".venv" / "bin" / "python"


@pytest.mark.skipif(not VENV_PY.exists(), reason="no .venv (make deps)")
def test_runs_without_numpy_in_the_calling_python(tmp_path):
    args = ["--shape", "1,2,5,4", "--mask", "random", "--json"]
    want = subprocess.run([str(VENV_PY), str(MKREQ), *args], capture_output=True,
                          timeout=60, check=True).stdout
    base = pathlib.Path(sys.base_prefix) / "bin" / "python3"
    no_numpy = [str(base), "-S"]  # no site-packages: numpy cannot import
    assert subprocess.run([*no_numpy, "-c", "import numpy"], capture_output=True,
                          timeout=60).returncode != 0
    got = subprocess.run([*no_numpy, str(MKREQ), *args], capture_output=True, timeout=60,
                         cwd=tmp_path, env={"PATH": os.environ["PATH"]})
    assert got.returncode == 0, got.stderr.decode()
    assert got.stdout == want and want.startswith(b'{"q"')
