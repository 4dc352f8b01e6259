"""test_half.py - checks the arithmetic of the half-precision part of the
CPU benchmark (half.py): which bf16 rate becomes the peak, which way each
target's ratio points, that rounds decide over the main run, the accuracy
checks, and that the summary and the results page carry the part.

    .venv/bin/python -m pytest -q bench/cpu
"""
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))
import half  # noqa: E402

NPROC = 2


def mrad(dtype, method, n, t, threads=NPROC, bpr=0, flops=1e9, **extra):
    r = {"record": "result", "dtype": dtype, "method": method, "N": n,
         "threads": threads, "bpr": bpr if method == "mra2" else 0,
         "time_s": t, "flops": flops, "gflops": flops / t * 1e-9,
         "density": 1.0}
    r.update(extra)
    return r


def status(targets, tid):
    return next(t for t in targets if t["id"] == tid)


def main_run(bex=0.05, sdpa=0.2, bm=0.06, fm=0.17, fex=0.15, f32ex=0.3,
             f16m=0.1, peak=800.0):
    """A main run: bf16 exact 4096 (51.5 GFLOP), SDPA bf16, mra2 16384 in
    bf16, f16 and f32, exact 4096 in f16 and f32, the torch bf16 peak."""
    return {
        "mrad": [mrad("bf16", "exact", 4096, bex, flops=51.5e9),
                 mrad("bf16", "mra2", 16384, bm, bpr=16),
                 mrad("f32", "mra2", 16384, fm, bpr=16),
                 mrad("f16", "mra2", 16384, f16m, bpr=16),
                 mrad("f16", "exact", 4096, fex),
                 mrad("f32", "exact", 4096, f32ex)],
        "sdpa": [{"N": 4096, "time_s": sdpa, "dtype": "bf16"}],
        "gemm": [{"source": "torch", "threads": NPROC, "gflops_best": peak},
                 {"source": "amx-ceiling", "threads": NPROC,
                  "gflops_best": 4000.0}],
    }


def test_targets_pass_and_fail_on_their_thresholds():
    t = half.check_targets(main_run(), {}, NPROC)
    # 51.5 GFLOP in 0.05 s = 1030 GFLOP/s of 800: 129%
    s = status(t, "bf16-exact-peak")
    assert s["status"] == "PASS" and abs(s["value"] - 1030.0 / 800.0) < 1e-9
    assert status(t, "bf16-exact-vs-sdpa")["value"] == 4.0
    assert abs(status(t, "bf16-mra2-vs-f32")["value"] - 0.17 / 0.06) < 1e-9
    assert status(t, "f16-exact-vs-f32")["status"] == "PASS"   # 2x
    assert status(t, "f16-mra2-vs-f32")["status"] == "PASS"    # 1.7x
    assert "main run" in status(t, "bf16-exact-vs-sdpa")["detail"]
    t = half.check_targets(main_run(bex=0.2, sdpa=0.5, bm=0.1, fex=0.31,
                                    f16m=0.2), {}, NPROC)
    for tid in ("bf16-exact-peak", "bf16-exact-vs-sdpa", "bf16-mra2-vs-f32",
                "f16-exact-vs-f32", "f16-mra2-vs-f32"):
        assert status(t, tid)["status"] == "FAIL", tid


def test_rounds_decide_and_take_each_sides_fastest_call():
    paired = {"mrad": [], "sdpa": [], "gemm": []}
    # SDPA / bf16 exact per round: 2, 3.5, 4 -> median 3.5
    for rnd, (sd, ex) in enumerate([(0.2, 0.1), (0.35, 0.1), (0.4, 0.1)], 1):
        paired["sdpa"].append({"round": rnd, "N": 4096, "time_s": sd,
                               "times": [sd * 1.5, sd]})
        paired["mrad"].append(dict(mrad("bf16", "exact", 4096, ex * 1.2,
                                        flops=51.5e9), round=rnd,
                                   times=[ex * 2, ex]))
        paired["gemm"].append({"round": rnd, "source": "torch",
                               "threads": NPROC, "gflops_best": 1000.0})
    t = half.check_targets(main_run(sdpa=0.01), paired, NPROC)
    s = status(t, "bf16-exact-vs-sdpa")
    assert abs(s["value"] - 3.5) < 1e-9 and s["status"] == "PASS"
    assert "median of 3 back-to-back rounds" in s["detail"]
    # the peak of each round: 515 GFLOP/s of 1000
    assert abs(status(t, "bf16-exact-peak")["value"] - 0.515) < 1e-9
    # targets without rounds fall back to the main run
    assert "main run" in status(t, "f16-exact-vs-f32")["detail"]


def test_missing_sides_skip():
    run = main_run()
    run["mrad"] = [r for r in run["mrad"] if r["dtype"] != "f16"]
    t = half.check_targets(run, {}, NPROC)
    assert status(t, "f16-exact-vs-f32")["status"] == "SKIP"
    assert status(t, "bf16-mra2-vs-f32")["status"] == "PASS"


def test_accuracy_checks_hold_each_dtype_to_its_limit():
    h = {"mrad": [mrad("bf16", "exact", 1024, 1.0, err_rows_local=5e-3,
                       err_rows_gauss=2e-2),
                  mrad("f16", "exact", 1024, 1.0, err_rows_local=1e-3,
                       err_rows_gauss=3e-3),
                  mrad("bf16", "mra2", 1024, 1.0, bpr=16,
                       err_rows_local=0.5)]}
    got = [c["status"] for c in half.checks(h)]
    assert got == ["ok", "FAIL", "ok", "FAIL"]


def test_peaks_take_the_best_pass():
    g = [{"source": "torch", "threads": 2, "gflops_best": 700.0},
         {"source": "torch", "threads": 2, "gflops_best": 800.0},
         {"source": "amx-ceiling", "threads": 1, "gflops_best": 2000.0}]
    assert half.peaks(g) == {"torch": {"2": 800.0},
                             "amx-ceiling": {"1": 2000.0}}


def test_summary_and_page_carry_the_half_part(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    run = main_run()
    for name, recs in (("gemm-half", [dict(g, n=4096, gflops_median=1.0,
                                           dtype="bf16", **{"pass": 1})
                                      for g in run["gemm"]]),
                       ("sdpa-half", [dict(s, method="sdpa", threads=2,
                                           gflops=1.0) for s in run["sdpa"]]),
                       ("mrad-half", [{"record": "backend",
                                       "device": "test cpu, amx kernels"}] +
                        [dict(r, err_rows_local=1e-3) for r in run["mrad"]])):
        with open(raw / (name + ".jsonl"), "w") as f:
            f.write("".join(json.dumps(r) + "\n" for r in recs))
    out = tmp_path / "cpu.json"
    here = os.path.dirname(__file__)
    subprocess.run([sys.executable, os.path.join(here, "summarize.py"),
                    "--raw", str(raw), "--out", str(out), "--threads", "2"],
                   check=True, capture_output=True)
    doc = json.loads(out.read_text())
    assert doc["half"]["peak"]["torch"]["2"] == 800.0
    ids = [t["id"] for t in doc["targets"]]
    assert all(t[0] in ids for t in half.TARGETS)
    assert doc["backend"] == "test cpu, amx kernels"
    page = tmp_path / "PERF.md"
    subprocess.run([sys.executable, os.path.join(here, "report.py"),
                    str(out), "--out", str(page)], check=True,
                   capture_output=True)
    text = page.read_text()
    assert "### Half precision: bf16 and f16" in text
    assert "| bf16 exact |  | 4096 | 50.0 | 1030.0 | 129% |" in text
    assert "bf16 exact N=4096 >= 3x faster than PyTorch bf16 SDPA | **PASS**" \
        in text
