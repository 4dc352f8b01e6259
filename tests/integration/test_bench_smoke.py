"""Smoke runs of the session benchmarks (make bench's 40-decoder part
"session" and 50-session), of the v2 one (60-v2) and of the accuracy
controls' (70-accuracy) at small sizes: they run, check their answers
(bench-session exits non-zero when a session step's bits differ from the
same step sent whole) and print their targets.  The figures themselves
come from `make bench`, never from a test."""
import json
import os
import subprocess

from mrad_server import MradServer, mrad_binary

BIN = os.path.dirname(mrad_binary())


def test_bench_session_quick():
    with MradServer(threads=2) as s:
        r = subprocess.run([os.path.join(BIN, "bench-session"), "--port",
                            str(s.port), "--quick"], capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        lines = r.stdout.strip().splitlines()
        assert "target <= 1%: met" in r.stdout
        res = json.loads(lines[-1])
        assert res["exact"]["same"] and res["mra2"]["same"]
        assert res["body_ratio"] < 0.01
        assert "mrad_kv_sessions 0" in s.metrics()


def test_bench_decoder_session_quick(tmp_path):
    out = tmp_path / "decoder.json"
    r = subprocess.run([os.path.join(BIN, "bench-decoder"), "--part",
                        "session", "--quick", "--reps", "1", "--out",
                        str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    steps = [x for x in rows if x["part"] == "session"]
    assert len(steps) == 4
    for x in steps:
        assert x["exact_s"] > 0 and x["mra2_s"] > 0
    structured = [x for x in steps if x["inputs"] == "structured"]
    assert all(x["mra2_rel_err"] < 0.05 for x in structured)


def test_bench_v2_quick():
    with MradServer(["--allow-shm"], threads=2) as s:
        r = subprocess.run([os.path.join(BIN, "bench-v2"), "--port",
                            str(s.port), "--shape", "1,2,256,32",
                            "--seconds", "1.5"],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        res = json.loads(r.stdout.strip().splitlines()[-1])
        assert res["answers_match"]
        assert min(res["v1_rps"], res["v2_rps"], res["shm_rps"]) > 0
        assert "target >= 90%" in r.stdout and "target >= 95%" in r.stdout
        # the regions it registered are gone
        assert json.loads(s.get("/v2/systemsharedmemory/status")[2]) == []


def test_bench_accuracy_quick(tmp_path):
    out = tmp_path / "accuracy.json"
    r = subprocess.run([os.path.join(BIN, "bench-accuracy"), "--quick",
                        "--rounds", "1", "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    for target in ("target <= 10%", "target >= 90%", "target <= 1.5x"):
        assert target in r.stdout
    res = json.loads(out.read_text())
    assert [x["bpr"] for x in res["overhead"]] == [8, 16]
    assert all(x["plain_s"] > 0 and x["sampled_s"] > 0 for x in res["overhead"])
    assert 0 <= res["within_1_5"] <= 1 and res["heads"] > 0
    assert res["oracle_density"] > 0
