"""Black-box tests of mrad's settings: --help and --version, environment
variables with flags taking precedence, bad flags, and JSON logs."""
import json
import subprocess

from mrad_server import MradServer, mrad_binary

FLAGS = ["host", "port", "backend", "devices", "threads", "max-queue",
         "max-batch-requests", "max-batch-tokens", "batch-window-us",
         "max-body-bytes", "max-json-bytes", "request-timeout-ms", "api-key-file",
         "drain-timeout-ms", "log-format", "log-level", "max-batch", "max-heads",
         "max-tokens", "max-head-dim", "max-elements"]


def run(*args, env=None):
    return subprocess.run([mrad_binary(), *args], capture_output=True, text=True,
                          timeout=20, env=env)


def test_help_documents_every_flag_and_its_variable():
    r = run("--help")
    assert r.returncode == 0
    for flag in FLAGS:
        assert f"--{flag}" in r.stdout, flag
        assert "MRAD_" + flag.upper().replace("-", "_") in r.stdout, flag
    assert "default" in r.stdout
    r = run("--version")
    assert r.returncode == 0 and r.stdout.startswith("mrad ")


def test_bad_flags_are_refused():
    assert run("--no-such-flag").returncode == 2
    assert run("--max-queue", "many").returncode == 2
    assert run("--backend", "tpu").returncode == 2
    assert run("--log-format", "xml").returncode == 2
    assert run("--api-key-file", "/nonexistent/key").returncode == 2


def test_environment_sets_flags_and_flags_win():
    env = {"MRAD_MAX_QUEUE": "7", "MRAD_BATCH_WINDOW_US": "1234",
           "MRAD_MAX_TOKENS": "999", "MRAD_LOG_FORMAT": "json"}
    with MradServer(["--max-queue", "9"], env=env, threads=1) as srv:
        info = json.loads(srv.get("/v1/info")[2])
        assert info["batching"]["max_queue"] == 9  # the flag wins
        assert info["batching"]["batch_window_us"] == 1234
        assert info["limits"]["max_tokens"] == 999
        srv.get("/nope")
    # --log-format json (from the environment): every line is an object.
    lines = [l for l in srv.log_lines if l.strip()]
    assert lines
    for line in lines:
        obj = json.loads(line)
        assert {"ts", "level", "msg"} <= set(obj)
    access = [json.loads(l) for l in lines if '"access"' in l]
    assert any(a["path"] == "/nope" and a["status"] == 404 for a in access)


def test_a_port_in_use_is_an_error(mrad):
    """The error names the port asked for and why, with and without
    --host (never "Failed to bind to port 0")."""
    for host in (["--host", "127.0.0.1"], []):
        r = run(*host, "--port", str(mrad.port), "--backend", "cpu", "--threads", "1")
        assert r.returncode == 1
        assert (f"cannot listen on 127.0.0.1:{mrad.port} (--port): Address already in use"
                in r.stderr), r.stderr
        assert "port 0" not in r.stderr
    assert mrad.get("/healthz")[0] == 200


def test_an_unavailable_backend_is_an_error():
    r = run("--port", "0", "--backend", "cuda", "--devices", "63")
    assert r.returncode == 1
    assert "backend" in r.stderr


def test_isa_amx_is_a_known_path():
    """--isa amx and MRAD_ISA=amx name the CPU backend's AMX path: a CPU
    with AMX serves with it (/v1/info's device says so), any other stops
    at startup with a message naming amx; neither calls it an unknown
    value."""
    for args, env in ((["--isa", "amx"], None), ([], {"MRAD_ISA": "amx"})):
        srv = MradServer(args, env=env, threads=1)
        try:
            srv.start()
        except RuntimeError:
            rc = srv.wait(10)
            log = srv.log_text()
            assert rc != 0, log
            assert "--isa amx" in log and "cannot run" in log, log
            assert "expected" not in log and "unknown" not in log, log
            continue
        with srv:
            device = json.loads(srv.get("/v1/info")[2])["device"]
            assert "amx kernels" in device, device
