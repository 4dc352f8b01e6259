"""half.py - the half-precision part of the CPU benchmark (bench/30-cpu.sh):
bf16 and f16 requests, which the CPU backend computes on the AMX tiles
where the CPU has them.  summarize.py calls summarize() on the raw files
of the step and adds the result to bench-out/cpu.json ("half") and its
targets to the others; report.py writes its section of the results page
with page().  Standard library only.

Raw files (JSON lines, in the raw folder of the step):
  gemm-half.jsonl         PyTorch's bf16 product (source "torch") and the
                          AMX tile ceiling (source "amx-ceiling"), per
                          thread count, in two passes
  sdpa-half.jsonl         PyTorch bf16 SDPA (sdpa.py --dtype bf16)
  mrad-half.jsonl         bench-cpu --dtype bf16|f16 records
  paired-*-half.jsonl     the same, tagged with their back-to-back round
"""
import os
import statistics

from summarize import best_time, find, read_jsonl

SMALL, BIG = 4096, 16384

# (id, sentence, threshold): all "at least".
TARGETS = [
    ("bf16-exact-peak", "bf16 exact N=4096 >= 50% of the bf16 GEMM peak "
     "(PyTorch, oneDNN)", 0.50),
    ("bf16-exact-vs-sdpa", "bf16 exact N=4096 >= 3x faster than PyTorch bf16 "
     "SDPA", 3.0),
    ("bf16-mra2-vs-f32", "bf16 mra2 (bpr 16) N=16384 >= 2.5x faster than f32 "
     "mra2", 2.5),
    ("f16-exact-vs-f32", "f16 exact N=4096 not slower than f32 exact", 1.0),
    ("f16-mra2-vs-f32", "f16 mra2 (bpr 16) N=16384 not slower than f32 mra2",
     1.0),
]


def peaks(gemm):
    """Per source ("torch", "amx-ceiling") and thread count, the best rate
    over the passes: {source: {threads: gflops}}."""
    out = {}
    for g in gemm:
        if not g.get("gflops_best"):
            continue
        by = out.setdefault(g["source"], {})
        t = str(g["threads"])
        by[t] = max(by.get(t, 0.0), g["gflops_best"])
    return out


def _rate(r):
    return r["flops"] / best_time(r) * 1e-9


def _sides(mrad, sdpa, gemm, nproc, small, big):
    """The two sides of every target in one set of records (a round, or
    the main run): {id: (value, text)} for the targets whose sides are
    there.  Runs on a forced kernel path ("isa") are not the backend's
    own and take no part."""
    out = {}
    mrad = [r for r in mrad if not r.get("isa")]
    torch = [g["gflops_best"] for g in gemm if g.get("source") == "torch" and
             g.get("threads") == nproc and g.get("gflops_best")]
    peak = max(torch) if torch else None
    bex = find(mrad, dtype="bf16", method="exact", N=small, threads=nproc)
    sd = find(sdpa, N=small)
    if bex and peak:
        out["bf16-exact-peak"] = (_rate(bex) / peak, _rate(bex), peak)
    if bex and sd:
        out["bf16-exact-vs-sdpa"] = (best_time(sd) / best_time(bex),
                                     best_time(sd), best_time(bex))
    for tid, dt, method, n, bpr in (
            ("bf16-mra2-vs-f32", "bf16", "mra2", big, 16),
            ("f16-exact-vs-f32", "f16", "exact", small, 0),
            ("f16-mra2-vs-f32", "f16", "mra2", big, 16)):
        kw = {"method": method, "N": n, "threads": nproc}
        if method == "mra2":
            kw["bpr"] = bpr
        half, f32 = find(mrad, dtype=dt, **kw), find(mrad, dtype="f32", **kw)
        if half and f32:
            out[tid] = (best_time(f32) / best_time(half), best_time(f32),
                        best_time(half))
    return out


def _describe(tid, got):
    """What the numbers behind a target were, as medians over `got`
    [(value, a, b)]."""
    a = statistics.median(g[1] for g in got)
    b = statistics.median(g[2] for g in got)
    if tid == "bf16-exact-peak":
        return "medians of the best calls: %.1f GFLOP/s of a bf16 peak of " \
               "%.1f" % (a, b)
    if tid == "bf16-exact-vs-sdpa":
        return "medians of the best calls: SDPA bf16 %.1f ms, exact bf16 " \
               "%.1f ms" % (1e3 * a, 1e3 * b)
    dt = tid.split("-")[0]
    return "medians of the best calls: f32 %.1f ms, %s %.1f ms" % (
        1e3 * a, dt, 1e3 * b)


def check_targets(main, paired, nproc, small=SMALL, big=BIG):
    """Each target as summarize.check_targets() gives them: from the median
    of the back-to-back rounds where there are any, else from the main
    run.  main and paired: {"mrad", "sdpa", "gemm"} lists of records."""
    rounds = sorted({r.get("round") for k in ("mrad", "sdpa", "gemm")
                     for r in paired.get(k, []) if r.get("round") is not None})
    per = {t[0]: [] for t in TARGETS}
    for rnd in rounds:
        sel = {k: [r for r in paired.get(k, []) if r.get("round") == rnd]
               for k in ("mrad", "sdpa", "gemm")}
        for tid, v in _sides(sel["mrad"], sel["sdpa"], sel["gemm"], nproc,
                             small, big).items():
            per[tid].append(v)
    once = _sides(main.get("mrad", []), main.get("sdpa", []),
                  main.get("gemm", []), nproc, small, big)
    res = []
    for tid, text, thr in TARGETS:
        pct = tid.endswith("-peak")
        fmt = (lambda v: "%.0f%%" % (100 * v)) if pct else \
            (lambda v: "%.2fx" % v)
        got = per[tid]
        if got:
            med = statistics.median(v for v, _, _ in got)
            detail = "median of %d back-to-back rounds: %s (%s); %s" % (
                len(got), fmt(med), ", ".join(fmt(v) for v, _, _ in got),
                _describe(tid, got))
        elif tid in once:
            med = once[tid][0]
            detail = "main run (no rounds): %s; %s" % (
                fmt(med), _describe(tid, [once[tid]]))
        else:
            res.append({"id": tid, "target": text, "status": "SKIP",
                        "detail": "not measured"})
            continue
        res.append({"id": tid, "target": text, "threshold": thr, "value": med,
                    "status": "PASS" if med >= thr else "FAIL",
                    "detail": detail})
    return res


def ceiling_share(paired, main, nproc, small=SMALL):
    """bf16 exact N=small as a share of the AMX tile ceiling (not a
    target): the median over the rounds, else the main run; None if not
    measured."""
    def one(mrad, gemm):
        ceil = [g["gflops_best"] for g in gemm if g.get("source") ==
                "amx-ceiling" and g.get("threads") == nproc]
        r = find([m for m in mrad if not m.get("isa")], dtype="bf16",
                 method="exact", N=small, threads=nproc)
        return _rate(r) / max(ceil) if ceil and r else None

    vals = []
    for rnd in sorted({g.get("round") for g in paired.get("gemm", [])
                       if g.get("round") is not None}):
        v = one([r for r in paired.get("mrad", []) if r.get("round") == rnd],
                [g for g in paired.get("gemm", []) if g.get("round") == rnd])
        if v is not None:
            vals.append(v)
    if vals:
        return statistics.median(vals)
    return one(main.get("mrad", []), main.get("gemm", []))


def summarize(raw, nproc):
    """The half-precision section of cpu.json from the raw folder; None
    when the step did not run its half-precision part."""
    main = {"gemm": read_jsonl(os.path.join(raw, "gemm-half.jsonl")),
            "sdpa": read_jsonl(os.path.join(raw, "sdpa-half.jsonl")),
            "mrad": [r for r in read_jsonl(os.path.join(raw, "mrad-half.jsonl"))
                     if r.get("record") == "result"]}
    paired = {k: read_jsonl(os.path.join(raw, "paired-%s-half.jsonl" % k))
              for k in ("gemm", "sdpa", "mrad")}
    if not any(main.values()) and not any(paired.values()):
        return None
    backend = next((r for r in read_jsonl(os.path.join(raw, "mrad-half.jsonl"))
                    if r.get("record") == "backend"), {})
    return {"gemm": main["gemm"], "peak": peaks(main["gemm"] +
                                                paired["gemm"]),
            "sdpa": main["sdpa"], "mrad": main["mrad"], "paired": paired,
            "backend": backend.get("device"),
            "targets": check_targets(main, paired, nproc),
            "ceiling_share": ceiling_share(paired, main, nproc)}


# The accuracy the half-precision paths promise against float64 on the
# rounded inputs (attention/README.md, "Accuracy").
LIMITS = {"bf16": 1e-2, "f16": 2e-3}


def checks(half):
    """Checks of the measurements in summarize.sanity_checks()'s form:
    every half-precision exact run within its dtype's limit of float64."""
    out = []
    for r in (half or {}).get("mrad", []):
        lim = LIMITS.get(r.get("dtype"))
        if "error" in r or r["method"] != "exact" or lim is None:
            continue
        for kind in ("local", "gauss"):
            e = r.get("err_rows_" + kind)
            if e is None:
                continue
            out.append({"status": "ok" if e < lim else "FAIL",
                        "check": "%s exact N=%d, %s inputs: vs float64 on "
                        "the rounded inputs %.1e (< %.0e)" % (
                            r["dtype"], r["N"], kind, e, lim)})
    return out


def _err(r, kind):
    v = r.get("err_rows_" + kind)
    return "%.2e" % v if v is not None else "-"


def _rows(half, nproc):
    """Table rows: (label, record, share of the bf16 peak or None)."""
    pk = half["peak"].get("torch", {}).get(str(nproc))
    out = [("PyTorch SDPA bf16", r, None) for r in
           sorted(half["sdpa"], key=lambda r: r["N"])]
    for r in sorted(half["mrad"], key=lambda r: (
            r.get("dtype"), r.get("isa") or "", r["N"],
            r["method"] != "exact")):
        label = "%s %s%s" % (r.get("dtype"), r["method"],
                             " (%s path)" % r["isa"] if r.get("isa") else "")
        if "error" in r:
            out.append((label, r, None))
            continue
        out.append((label, r, r["gflops"] / pk if pk and
                    r.get("dtype") == "bf16" else None))
    return out


def print_tables(half, nproc):
    print("\nbf16 GEMM peak (best / median GFLOP/s): PyTorch (oneDNN) and "
          "the AMX tile ceiling")
    for g in half["gemm"]:
        print("  pass %s %-12s %2d thr  n=%d  %8.1f / %8.1f  %s" % (
            g.get("pass", "-"), g["source"], g["threads"], g["n"],
            g["gflops_best"], g["gflops_median"], g.get("detail", "")))
    print("\nhalf-precision attention, B=1 H=12 D=64 (errors: relative "
          "Frobenius vs float64 rows on the rounded inputs)")
    print("  %-28s %4s %6s %10s %8s %6s %5s %10s %10s" % (
        "", "bpr", "N", "time ms", "GFLOP/s", "%bf16", "cpu%", "err local",
        "err gauss"))
    for label, r, share in _rows(half, nproc):
        if "error" in r:
            print("  %-28s %4s %6d  failed: %s" % (label, r.get("bpr") or "",
                                                  r["N"], r["error"]))
            continue
        cpu = r.get("cpu_share")
        print("  %-28s %4s %6d %10.2f %8.1f %6s %5s %10s %10s" % (
            label, r.get("bpr") or "", r["N"], 1e3 * r["time_s"],
            r["gflops"], "%.0f%%" % (100 * share) if share else "-",
            "%.0f%%" % (100 * cpu) if cpu is not None else "-",
            _err(r, "local"), _err(r, "gauss")))
    if half.get("ceiling_share") is not None:
        print("  bf16 exact N=%d: %.0f%% of the AMX tile ceiling (not a "
              "target)" % (SMALL, 100 * half["ceiling_share"]))


def page(half, nproc):
    """The results page's half-precision section (Markdown lines)."""
    if not half:
        return []
    out = ["### Half precision: bf16 and f16", "",
           "bf16 and f16 requests run on the AMX tiles on this machine "
           "(device: %s).  The bf16 peak is PyTorch's bf16 matrix product "
           "(oneDNN, 4096 x 4096, best of its runs over two passes); the "
           "AMX tile ceiling is bench/cpu/amx-peak.c, four accumulator "
           "tiles fed from tile registers (no memory traffic; random "
           "values), which no whole product reaches." % half.get("backend"),
           "", "| bf16 GEMM | threads | best GFLOP/s | median GFLOP/s | "
           "CPU share | pass |", "|---|---:|---:|---:|---:|---:|"]
    for g in half["gemm"]:
        share = g.get("cpu_share")
        out.append("| %s | %d | %.1f | %.1f | %s | %s |" % (
            "PyTorch (%s)" % g.get("detail") if g["source"] == "torch" else
            "AMX tile ceiling", g["threads"], g["gflops_best"],
            g["gflops_median"],
            "%.0f%%" % (100 * share) if share is not None else "–",
            g.get("pass", "–")))
    out += ["", "%d threads.  Errors: relative Frobenius norm against "
            "float64 exact attention of 64 rows per head computed from the "
            "same rounded inputs (so they measure the computation, not the "
            "rounding of the inputs; the outputs' own rounding is in "
            "them); MRA-2's include its approximation.  %% of bf16 peak: "
            "against PyTorch's bf16 GEMM with the same threads." % nproc, "",
            "| | block_per_row | N | time (ms) | GFLOP/s | % of bf16 peak | "
            "CPU share | density | error, local | error, gauss |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for label, r, share in _rows(half, nproc):
        if "error" in r:
            out.append("| %s | %s | %d | failed: %s | | | | | | |" % (
                label, r.get("bpr") or "", r["N"], r["error"]))
            continue
        cpu = r.get("cpu_share")
        out.append("| %s | %s | %d | %.1f | %.1f | %s | %s | %s | %s | %s |"
                   % (label, r.get("bpr") or "", r["N"], 1e3 * r["time_s"],
                      r["gflops"], "%.0f%%" % (100 * share) if share else "",
                      "%.0f%%" % (100 * cpu) if cpu is not None else "–",
                      "%.4f" % r["density"] if "density" in r else "",
                      _err(r, "local") if "density" in r else "",
                      _err(r, "gauss") if "density" in r else ""))
    if half.get("ceiling_share") is not None:
        out += ["", "bf16 exact at N = %d runs at %.0f%% of the AMX tile "
                "ceiling (median of the rounds; not a target)." % (
                    SMALL, 100 * half["ceiling_share"])]
    out.append("")
    return out
