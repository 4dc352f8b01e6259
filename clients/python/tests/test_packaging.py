"""The package as users get it: `python -m build` makes an sdist and a
wheel that carry the project's version and type information; the wheel
installs in a fresh virtual environment, where the client's tests pass
against a live bin/mrad; `pip install ./clients/python` leaves nothing in
the tree that git does not ignore; mrad, mractl, mra-load, the service's
/v1/info and mra_client agree on the version."""
import os
import pathlib
import subprocess
import sys
import zipfile

import pytest

from mra_client import Client, __version__
from mrad_server import MradServer

ROOT = pathlib.Path(__file__).resolve().parents[3]
PKG = ROOT / "clients" / "python"
BIN = pathlib.Path(os.environ.get("MRAD_BIN_DIR") or ROOT / "bin")
VERSION = (ROOT / "VERSION").read_text().strip()


def run(*cmd, **kw):
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                       timeout=kw.pop("timeout", 600), **kw)
    assert p.returncode == 0, f"{cmd}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


def untracked():
    """What git shows as new under clients/python (ignored paths left out)."""
    p = run("git", "-C", ROOT, "status", "--porcelain", "--untracked-files=all",
            "--", "clients/python")
    return {line[3:] for line in p.stdout.splitlines() if line.startswith("??")}


def test_versions_agree():
    for tool in ("mrad", "mractl", "mra-load"):
        out = run(BIN / tool, "--version").stdout
        assert out == f"{tool} {VERSION}\n"
    assert __version__ == VERSION
    with MradServer(threads=1) as srv:
        assert Client(srv.url).info()["version"] == VERSION


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    before = untracked()
    run(sys.executable, "-m", "build", "--outdir", out, PKG)
    assert untracked() == before, "python -m build left files git does not ignore"
    return out


def test_wheel_and_sdist_contents(dist):
    wheels = list(dist.glob("mra_client-*.whl"))
    sdists = list(dist.glob("mra_client-*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1
    assert wheels[0].name.startswith(f"mra_client-{VERSION}-py3-none-any")
    with zipfile.ZipFile(wheels[0]) as z:
        names = set(z.namelist())
        for f in ("VERSION", "py.typed", "__init__.py", "client.py", "aio.py",
                  "hf.py", "tensors.py", "wire.py", "_core.py", "errors.py"):
            assert f"mra_client/{f}" in names, f
        assert z.read("mra_client/VERSION").decode().strip() == VERSION
        meta = z.read(f"mra_client-{VERSION}.dist-info/METADATA").decode()
    assert f"Version: {VERSION}\n" in meta
    for dep in ("numpy", "msgpack", "httpx"):
        assert f"Requires-Dist: {dep}" in meta


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A fresh virtual environment (without pip of its own: this one's pip
    installs into it, which saves seconds)."""
    path = tmp_path_factory.mktemp("venv")
    run(sys.executable, "-m", "venv", "--without-pip", path)
    return path


def pip_install(venv, *args):
    run(sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install",
        "-q", "--disable-pip-version-check", *args, timeout=900)


def test_wheel_in_a_fresh_venv(dist, venv, tmp_path):
    """The wheel alone (no tree on the path) passes the client's tests."""
    py = venv / "bin" / "python"
    pip_install(venv, next(dist.glob("mra_client-*.whl")), "pytest")
    where = run(py, "-c", "import mra_client; print(mra_client.__file__, "
                "mra_client.__version__)", cwd=tmp_path).stdout.split()
    assert where[0].startswith(str(venv)) and where[1] == VERSION
    tests = PKG / "tests"
    run(py, "-m", "pytest", "-q", "-p", "no:cacheprovider", tests,
        f"--ignore={tests / 'hf'}", f"--ignore={tests / 'test_packaging.py'}",
        cwd=tmp_path, env=dict(os.environ, MRAD_BIN_DIR=str(BIN)))


def test_pip_install_leaves_no_build_files(venv):
    before = untracked()
    pip_install(venv, "--no-deps", "--force-reinstall", PKG)
    assert untracked() == before
