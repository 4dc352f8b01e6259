"""test_summarize.py - checks the arithmetic of the CPU benchmark's
summary: which GEMM rate becomes the peak, which way each target's
threshold points, when a target is skipped, the checks of the
measurements, and that the results page is written from the JSON.

    .venv/bin/python -m pytest -q bench/cpu
"""
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))
import summarize  # noqa: E402

NPROC = 2


def mrad(method, n, t, threads=NPROC, bpr=0, flops=None, **extra):
    r = {"record": "result", "method": method, "N": n, "threads": threads,
         "bpr": bpr, "time_s": t, "flops": flops or 1e9,
         "gflops": (flops or 1e9) / t * 1e-9, "density": 1.0}
    r.update(extra)
    return r


def status(targets, tid):
    return next(t for t in targets if t["id"] == tid)


def full_set(exact4=0.5, sdpa4=0.6, mra4=0.05, mra16=0.2, sdpa16=6.0,
             mra16_1=0.38, ex16=10.0, ex16_1=19.0):
    rows = [
        mrad("exact", 4096, exact4, flops=51.5e9),
        mrad("mra2", 4096, mra4, bpr=16, flops=6.4e9),
        mrad("mra2", 16384, mra16, bpr=16),
        mrad("exact", 16384, ex16),
        mrad("mra2", 16384, mra16_1, bpr=16, threads=1),
        mrad("exact", 16384, ex16_1, threads=1),
    ]
    sdpa = [{"N": 4096, "time_s": sdpa4}, {"N": 16384, "time_s": sdpa16}]
    return rows, sdpa


def test_peak_is_best_library_per_thread_count():
    gemm = [
        {"source": "a", "threads": 1, "gflops_best": 90.0},
        {"source": "b", "threads": 1, "gflops_best": 120.0},
        {"source": "a", "threads": 2, "gflops_best": 200.0},
        {"source": "b", "threads": 2, "gflops_best": 150.0},
    ]
    peak = summarize.pick_peak(gemm)
    assert peak["1"]["gflops"] == 120.0 and peak["1"]["source"] == "b"
    assert peak["2"]["gflops"] == 200.0 and peak["2"]["source"] == "a"


def test_targets_pass_and_fail_on_their_thresholds():
    peak = {"2": {"gflops": 150.0}}
    rows, sdpa = full_set()
    t = summarize.check_targets(peak, sdpa, rows, NPROC)
    # exact: 51.5 GFLOP / 0.5 s = 103 GFLOP/s = 69% of 150: pass.
    assert status(t, "exact-peak")["status"] == "PASS"
    assert abs(status(t, "exact-peak")["value"] - 103.0 / 150.0) < 1e-9
    assert status(t, "exact-vs-sdpa")["status"] == "PASS"
    # mra2: 6.4 GFLOP / 0.05 s = 128 GFLOP/s = 85%: pass.
    assert status(t, "mra2-peak")["status"] == "PASS"
    assert status(t, "mra2-vs-sdpa")["value"] == 30.0
    assert status(t, "mra2-vs-sdpa")["status"] == "PASS"
    # per token: (0.2 / 16384) / (0.05 / 4096) = 1.0 <= 1.3: pass.
    assert abs(status(t, "mra2-linear")["value"] - 1.0) < 1e-12
    assert status(t, "mra2-linear")["status"] == "PASS"
    assert status(t, "mra2-threads")["status"] == "PASS"  # 1.9x
    assert status(t, "exact-threads")["status"] == "PASS"  # 1.9x

    rows, sdpa = full_set(exact4=0.7, mra16=0.3, mra16_1=0.5, ex16_1=17.0)
    t = summarize.check_targets(peak, sdpa, rows, NPROC)
    assert status(t, "exact-peak")["status"] == "FAIL"      # 49%
    assert status(t, "exact-vs-sdpa")["status"] == "FAIL"   # slower
    assert status(t, "mra2-vs-sdpa")["status"] == "FAIL"    # 20x
    assert status(t, "mra2-linear")["status"] == "FAIL"     # 1.5x growth
    assert status(t, "mra2-threads")["status"] == "FAIL"    # 1.67x
    assert status(t, "exact-threads")["status"] == "FAIL"   # 1.7x


def test_ratio_targets_take_the_median_of_back_to_back_rounds():
    peak = {"2": {"gflops": 150.0}}
    rows, sdpa = full_set(mra16=0.3)  # 20x from the main run alone
    paired = {"sdpa": [], "mrad": []}
    # three rounds: SDPA / mra2 = 24, 26, 30; mra2 1 / all = 1.5, 1.9, 2.0
    for rnd, (s16, m_all, m_one) in enumerate(
            [(4.8, 0.2, 0.3), (5.2, 0.2, 0.38), (6.0, 0.2, 0.4)], 1):
        paired["sdpa"] += [{"round": rnd, "N": 16384, "time_s": s16},
                           {"round": rnd, "N": 4096, "time_s": 0.3 * rnd}]
        paired["mrad"] += [
            dict(mrad("exact", 4096, 0.4), round=rnd),  # 0.75x, 1.5x, 2.25x
            # per token 0.2 / 16384 against m4 / 4096: 1.25, 1.0, 0.8
            dict(mrad("mra2", 4096, (0.04, 0.05, 0.0625)[rnd - 1], bpr=16),
                 round=rnd),
            dict(mrad("mra2", 16384, m_all, bpr=16), round=rnd),
            dict(mrad("mra2", 16384, m_one, bpr=16, threads=1), round=rnd),
            dict(mrad("exact", 16384, 10.0), round=rnd),
            dict(mrad("exact", 16384, 17.0, threads=1), round=rnd),
        ]
    # a round without its SDPA time does not count
    paired["mrad"].append(dict(mrad("mra2", 16384, 0.01, bpr=16), round=4))
    t = summarize.check_targets(peak, sdpa, rows, NPROC, paired)
    s = status(t, "mra2-vs-sdpa")
    assert abs(s["value"] - 26.0) < 1e-9 and s["status"] == "PASS"
    assert "median of 3 back-to-back rounds" in s["detail"]
    assert abs(status(t, "mra2-threads")["value"] - 1.9) < 1e-9
    assert status(t, "mra2-threads")["status"] == "PASS"
    assert abs(status(t, "mra2-linear")["value"] - 1.0) < 1e-9
    assert status(t, "mra2-linear")["status"] == "PASS"
    assert abs(status(t, "exact-vs-sdpa")["value"] - 1.5) < 1e-9
    assert status(t, "exact-vs-sdpa")["status"] == "PASS"
    assert abs(status(t, "exact-threads")["value"] - 1.7) < 1e-9
    assert status(t, "exact-threads")["status"] == "FAIL"
    # without rounds the main run decides
    t = summarize.check_targets(peak, sdpa, rows, NPROC, {"sdpa": [], "mrad": []})
    assert status(t, "mra2-vs-sdpa")["status"] == "FAIL"


def test_growth_bound_is_an_upper_bound():
    peak = {"2": {"gflops": 150.0}}
    rows, sdpa = full_set(mra16=0.26)  # 1.3x exactly: still met
    t = summarize.check_targets(peak, sdpa, rows, NPROC)
    assert abs(status(t, "mra2-linear")["value"] - 1.3) < 1e-9
    assert status(t, "mra2-linear")["status"] == "PASS"


def test_missing_measurements_skip_and_say_what_is_missing():
    rows, _ = full_set()
    t = summarize.check_targets({}, [], rows, NPROC)
    s = status(t, "exact-vs-sdpa")
    assert s["status"] == "SKIP" and "SDPA N=4096" in s["detail"]
    assert status(t, "exact-peak")["status"] == "SKIP"
    assert status(t, "mra2-linear")["status"] == "PASS"
    failed = [dict(r, error="out of memory") if r["method"] == "exact" and
              r["threads"] == 1 else r for r in rows]
    t = summarize.check_targets({"2": {"gflops": 1.0}}, [], failed, NPROC)
    assert status(t, "exact-threads")["status"] == "SKIP"


def test_checks_catch_a_wrong_exact_and_a_bad_row_estimate():
    good = [mrad("exact", 1024, 1.0, err_rows_local=3e-7, err_exact_local=0),
            mrad("mra2", 1024, 1.0, bpr=32, density=1.0, err_exact_local=0.0),
            mrad("mra2", 1024, 1.0, bpr=4, density=0.125,
                 err_exact_local=0.05, err_rows_local=0.06)]
    checks = summarize.sanity_checks(good)
    assert len(checks) == 3 and all(c["status"] == "ok" for c in checks)
    bad = [mrad("exact", 1024, 1.0, err_rows_local=3e-3),
           mrad("mra2", 1024, 1.0, bpr=32, density=1.0, err_exact_local=1e-3),
           mrad("mra2", 1024, 1.0, bpr=4, density=0.125,
                err_exact_local=0.05, err_rows_local=0.2)]
    checks = summarize.sanity_checks(bad)
    assert [c["status"] for c in checks].count("FAIL") == 3


def test_summary_and_page_from_raw_files(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    rows, sdpa = full_set()
    gemm = [{"source": "numpy", "threads": t, "n": 4096,
             "gflops_best": 75.0 * t, "gflops_median": 70.0 * t}
            for t in (1, 2)]
    with open(raw / "gemm.jsonl", "w") as f:
        f.write("".join(json.dumps(g) + "\n" for g in gemm))
    with open(raw / "sdpa.jsonl", "w") as f:
        f.write("".join(json.dumps(dict(s, method="sdpa", threads=2,
                                        gflops=1.0)) + "\n" for s in sdpa))
    with open(raw / "mrad.jsonl", "w") as f:
        f.write(json.dumps({"record": "backend", "device": "test cpu"}) + "\n")
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "cpu.json"
    here = os.path.dirname(__file__)
    subprocess.run([sys.executable, os.path.join(here, "summarize.py"),
                    "--raw", str(raw), "--out", str(out), "--threads", "2"],
                   check=True, capture_output=True)
    doc = json.loads(out.read_text())
    assert doc["peak"]["2"]["gflops"] == 150.0
    assert doc["backend"] == "test cpu"
    assert len(doc["targets"]) == len(summarize.TARGETS)  # no half part
    page = tmp_path / "PERF.md"
    subprocess.run([sys.executable, os.path.join(here, "report.py"),
                    str(out), "--out", str(page)], check=True,
                   capture_output=True)
    text = page.read_text()
    met = sum(t["status"] == "PASS" for t in doc["targets"])
    assert "%d of %d met" % (met, len(doc["targets"])) in text
    assert "| exact |  | 16384 | 1 | 19000.0 |" in text
    assert "| 1.0000 |" in text  # density column
    assert "test cpu" in text


def test_rounds_take_each_measurements_fastest_call():
    """Within a round, each side of a ratio is its fastest call: a slow
    call (another job on the cores) does not move the ratio."""
    assert summarize.best_time({"time_s": 0.3, "times": [0.5, 0.2, 0.3]}) == 0.2
    assert summarize.best_time({"time_s": 0.3}) == 0.3
    assert summarize.best_time({"time_s": 0.3, "times": []}) == 0.3
    paired = {"sdpa": [{"round": 1, "N": 16384, "time_s": 6.0,
                        "times": [6.0, 5.0, 7.0]}],
              "mrad": [dict(mrad("mra2", 16384, 0.3, bpr=16), round=1,
                            times=[0.3, 0.2, 0.4]),
                       dict(mrad("mra2", 16384, 0.5, bpr=16, threads=1),
                            round=1, times=[0.5, 0.38])]}
    r = summarize.paired_ratios(paired, NPROC)
    assert r["mra2-vs-sdpa"] == [(5.0 / 0.2, 5.0, 0.2)]
    assert r["mra2-threads"] == [(0.38 / 0.2, 0.38, 0.2)]


def test_peak_targets_take_the_fastest_call():
    """The GEMM peak is its best run, so the attention rate set against it
    is the fastest call's; the median stays in the detail."""
    peak = {"2": {"gflops": 100.0}}
    rows, sdpa = full_set()
    ex4 = summarize.find(rows, method="exact", N=4096)
    ex4.update(flops=60e9, time_s=1.2, gflops=50.0, times=[1.2, 1.0, 1.3])
    t = summarize.check_targets(peak, sdpa, rows, NPROC)
    s = status(t, "exact-peak")
    assert abs(s["value"] - 0.6) < 1e-9 and s["status"] == "PASS"
    assert "median 50.0" in s["detail"]


def test_peak_targets_take_the_rounds_when_there_are_any():
    """With a GEMM peak in each round, the percent-of-peak targets are the
    median of the per-round shares (fastest calls on both sides)."""
    peak = {"2": {"gflops": 100.0}}
    rows, sdpa = full_set()
    paired = {"sdpa": [], "mrad": [], "gemm": []}
    for rnd, gem in enumerate((200.0, 250.0, 100.0), 1):
        paired["gemm"] += [
            {"round": rnd, "source": "torch", "threads": NPROC,
             "gflops_best": gem},
            {"round": rnd, "source": "numpy", "threads": NPROC,
             "gflops_best": gem / 2},
            # one thread is not the all-cores peak
            {"round": rnd, "source": "torch", "threads": 1,
             "gflops_best": 10 * gem}]
        paired["mrad"] += [
            dict(mrad("exact", 4096, 1.0, flops=150e9), round=rnd,
                 times=[1.0, 1.5]),
            dict(mrad("mra2", 4096, 1.0, flops=100e9, bpr=16), round=rnd)]
    t = summarize.check_targets(peak, sdpa, rows, NPROC, paired)
    s = status(t, "exact-peak")  # 0.75, 0.6, 1.5
    assert abs(s["value"] - 0.75) < 1e-9 and s["status"] == "PASS"
    assert "median of 3 back-to-back rounds: 75% (75%, 60%, 150%)" in s["detail"]
    s = status(t, "mra2-peak")  # 0.5, 0.4, 1.0
    assert abs(s["value"] - 0.5) < 1e-9 and s["status"] == "PASS"


def test_one_thread_is_the_mean_rate_of_the_cores():
    """One thread pinned to each core: the scaling target divides by the
    cores' mean single-thread rate, not by the faster core's alone."""
    paired = {"sdpa": [], "mrad": [
        dict(mrad("mra2", 16384, 0.17, bpr=16), round=1),
        dict(mrad("mra2", 16384, 0.42, bpr=16, threads=1), round=1, cpu=0),
        dict(mrad("mra2", 16384, 0.28, bpr=16, threads=1), round=1, cpu=1,
             times=[0.30, 0.28])]}
    r = summarize.paired_ratios(paired, NPROC)
    (value, one, many), = r["mra2-threads"]
    assert abs(one - 1.0 / ((1 / 0.42 + 1 / 0.28) / 2)) < 1e-12
    assert many == 0.17 and abs(value - one / 0.17) < 1e-12
    # a single unpinned measurement is used as it is
    paired["mrad"] = paired["mrad"][:1] + [
        dict(mrad("mra2", 16384, 0.3, bpr=16, threads=1), round=1)]
    (value, one, _), = summarize.paired_ratios(paired, NPROC)["mra2-threads"]
    assert one == 0.3
