"""summarize.py - turns the raw measurements of bench/30-cpu.sh into
bench-out/cpu.json: describes the machine, picks the GEMM peak, prints the
tables and the target checks, and draws the plots.

    python summarize.py --raw bench-out/cpu-raw --out bench-out/cpu.json
                        [--plots bench-out] [--threads 2] [--seconds S]

The raw folder holds JSON lines: gemm.jsonl (one per library and thread
count), sdpa.jsonl (PyTorch) and mrad.jsonl (bench-cpu's "backend" and
"result" records), and the half-precision part's files (half.py).  Plots need matplotlib (in .venv-bench); without it they
are skipped with a note.  Needs nothing else beyond the standard library.
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys

ISA_FLAGS = ["sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512dq",
             "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
             "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8"]

# Server cores whose model name a hypervisor may hide ("Intel(R) Xeon(R)
# Processor"): (vendor, family, model) as lscpu prints them.
CODENAMES = {
    ("GenuineIntel", "6", "85"): "Skylake-SP / Cascade Lake",
    ("GenuineIntel", "6", "106"): "Ice Lake-SP",
    ("GenuineIntel", "6", "143"): "Sapphire Rapids",
    ("GenuineIntel", "6", "207"): "Emerald Rapids",
    ("GenuineIntel", "6", "173"): "Granite Rapids",
    ("AuthenticAMD", "25", "1"): "Zen 3 (Milan)",
    ("AuthenticAMD", "25", "17"): "Zen 4 (Genoa)",
}

# The targets: (id, sentence, threshold).  All are "at least" except
# mra2-linear, an upper bound on growth.
TARGETS = [
    ("exact-peak", "exact N=4096 >= 60% of GEMM peak", 0.60),
    ("exact-vs-sdpa", "exact N=4096 not slower than PyTorch SDPA", 1.0),
    ("mra2-peak", "mra2 (bpr 16) N=4096 >= 50% of GEMM peak (its FLOPs)",
     0.50),
    ("mra2-vs-sdpa", "mra2 (bpr 16) N=16384 >= 25x faster than PyTorch SDPA",
     25.0),
    ("mra2-linear", "mra2 (bpr 16) time per token grows <= 1.3x "
     "from N=4096 to N=16384", 1.3),
    ("mra2-threads", "mra2 (bpr 16) N=16384: all cores >= 1.8x 1 thread",
     1.8),
    ("exact-threads", "exact N=16384: all cores >= 1.8x 1 thread", 1.8),
]


def read_jsonl(path):
    out = []
    if not os.path.exists(path):
        return out
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    print("summarize: bad line in %s: %s" % (path, line),
                          file=sys.stderr)
    return out


def run(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True,
                              timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def machine():
    """What the page says about the machine: from lscpu and /proc."""
    info = {}
    for line in run(["lscpu"]).splitlines():
        key, _, val = line.partition(":")
        info[key.strip()] = val.strip()
    flags = set(info.get("Flags", "").split())
    mem = 0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    cc = run(["cc", "--version"]).splitlines()
    fam, mod = info.get("CPU family"), info.get("Model")
    return {
        "model": info.get("Model name", platform.processor()),
        "family_model_stepping": "%s/%s/%s" % (fam, mod,
                                               info.get("Stepping")),
        "codename": CODENAMES.get((info.get("Vendor ID"), fam, mod)),
        "bogomips": info.get("BogoMIPS"),
        "cpus": os.cpu_count(),
        "threads_per_core": info.get("Thread(s) per core"),
        "cores_per_socket": info.get("Core(s) per socket"),
        "sockets": info.get("Socket(s)"),
        "hypervisor": info.get("Hypervisor vendor"),
        "l1d": info.get("L1d cache"), "l2": info.get("L2 cache"),
        "l3": info.get("L3 cache"),
        "isa": [f for f in ISA_FLAGS if f in flags],
        "memory_bytes": mem,
        "kernel": platform.release(),
        "compiler": cc[0] if cc else None,
    }


def git_commit():
    out = run(["git", "rev-parse", "--short", "HEAD"]).strip()
    dirty = run(["git", "status", "--porcelain", "--untracked-files=no",
                 "attention"]).strip()
    return out + ("+dirty attention/" if dirty else "")


def find(rows, **kw):
    for r in rows:
        if all(r.get(k) == v for k, v in kw.items()) and "error" not in r:
            return r
    return None


def best_time(r):
    """The fastest call of a measurement (its time_s without a list of
    calls).  On a shared machine other work only ever adds time, so the
    fastest call is the closest to what the code itself costs; the rounds
    judge both sides of every ratio the same way."""
    times = [t for t in r.get("times") or [] if t and t > 0]
    return min(times) if times else r.get("time_s")


def one_thread(rows, **kw):
    """The one-thread side of a thread-scaling ratio in a round: a record
    whose time is the harmonic mean of the fastest calls of every
    one-thread measurement (30-cpu.sh runs one per core, pinned), so that
    its rate is the cores' mean single-thread rate.  None if there are
    none."""
    ones = [r for r in rows if r.get("threads") == 1 and best_time(r) and
            all(r.get(k) == v for k, v in kw.items()) and "error" not in r]
    if not ones:
        return None
    if len(ones) == 1:
        return {"time_s": best_time(ones[0]), "cores": 1}
    rate = statistics.mean(1.0 / best_time(r) for r in ones)
    return {"time_s": 1.0 / rate, "cores": len(ones)}


def paired_ratios(paired, nproc, n=16384, small=4096):
    """Per-round ratios of the back-to-back rounds (30-cpu.sh): for each
    round with all its measurements, SDPA over exact at N=small and over
    mra2 (bpr 16) at N=n on all cores, and one thread (one_thread(): the
    mean rate of the cores) over all cores for mra2 and for exact at N=n,
    each side its fastest call (best_time()).
    Returns {target id: [(value, numerator, denominator) of each complete
    round]}."""
    out = {"exact-vs-sdpa": [], "mra2-vs-sdpa": [], "mra2-threads": [],
           "exact-threads": [], "mra2-linear": [], "exact-peak": [],
           "mra2-peak": []}
    if not paired:
        return out
    sdpa, mrad = paired.get("sdpa", []), paired.get("mrad", [])
    gemm = paired.get("gemm", [])
    rounds = sorted({r.get("round") for r in sdpa + mrad
                     if r.get("round") is not None})
    for rnd in rounds:
        # the round's peak: the best GEMM rate of any library on all cores
        rates = [g["gflops_best"] for g in gemm if g.get("round") == rnd and
                 g.get("threads") == nproc and g.get("gflops_best")]
        peak = max(rates) if rates else None
        theirs = [r for r in sdpa if r.get("round") == rnd]
        s = find(theirs, N=n)
        s_small = find(theirs, N=small)
        mine = [r for r in mrad if r.get("round") == rnd]
        e_small = find(mine, method="exact", N=small, threads=nproc)
        m_small = find(mine, method="mra2", N=small, bpr=16, threads=nproc)
        m_all = find(mine, method="mra2", N=n, bpr=16, threads=nproc)
        m_one = one_thread(mine, method="mra2", N=n, bpr=16)
        e_all = find(mine, method="exact", N=n, threads=nproc)
        e_one = one_thread(mine, method="exact", N=n)
        for tid, num, den in (("exact-vs-sdpa", s_small, e_small),
                              ("mra2-vs-sdpa", s, m_all),
                              ("mra2-threads", m_one, m_all),
                              ("exact-threads", e_one, e_all)):
            if num and den and best_time(num) and best_time(den):
                out[tid].append((best_time(num) / best_time(den),
                                 best_time(num), best_time(den)))
        # attention GFLOP/s of the fastest call over the round's peak
        for tid, r in (("exact-peak", e_small), ("mra2-peak", m_small)):
            if peak and r and r.get("flops") and best_time(r):
                rate = r["flops"] / best_time(r) * 1e-9
                out[tid].append((rate / peak, rate, peak))
        # time per token at N=n over time per token at N=small
        if m_all and m_small and best_time(m_all) and best_time(m_small):
            out["mra2-linear"].append((
                (best_time(m_all) / n) / (best_time(m_small) / small),
                best_time(m_small), best_time(m_all)))
    return out


def check_targets(peak, sdpa, mrad, nproc, paired=None):
    """Each target: measured value, threshold, PASS/FAIL/SKIP and the
    numbers it came from.  The ratio targets use the median of the
    back-to-back rounds in `paired` when there are any."""
    res = []
    p = peak.get(str(nproc), {}).get("gflops")

    def add(tid, value, detail, missing=None):
        text, thr = next((t[1], t[2]) for t in TARGETS if t[0] == tid)
        if value is None:
            res.append({"id": tid, "target": text, "status": "SKIP",
                        "detail": missing or "not measured"})
            return
        ok = value <= thr if tid == "mra2-linear" else value >= thr
        res.append({"id": tid, "target": text, "threshold": thr,
                    "value": value, "status": "PASS" if ok else "FAIL",
                    "detail": detail})

    ex4 = find(mrad, method="exact", N=4096, threads=nproc)
    m4 = find(mrad, method="mra2", N=4096, bpr=16, threads=nproc)
    m16 = find(mrad, method="mra2", N=16384, bpr=16, threads=nproc)
    ex16 = find(mrad, method="exact", N=16384, threads=nproc)
    m16_1 = find(mrad, method="mra2", N=16384, bpr=16, threads=1)
    ex16_1 = find(mrad, method="exact", N=16384, threads=1)
    s4 = find(sdpa, N=4096)
    s16 = find(sdpa, N=16384)
    pk = {"gflops": p} if p else None

    def missing(**need):
        """'no X, no Y' for the inputs of a target that were not measured,
        or None when all were."""
        gone = [name.replace("_", " ") for name, rec in need.items()
                if rec is None]
        return ", ".join("no " + g for g in gone) or None

    def target(tid, need, value_fn, detail_fn):
        why = missing(**need)
        if why:
            add(tid, None, None, why)
        else:
            add(tid, value_fn(), detail_fn())

    def best_rate(r):
        """GFLOP/s of a measurement's fastest call: the GEMM peak is the
        best rate of its runs, so the attention side is judged alike."""
        return r["flops"] / best_time(r) * 1e-9

    def vs_peak(tid, name, r):
        """A share of the GEMM peak: from the rounds, else the main run."""
        if by_rounds(tid, lambda g: "medians of the best calls: %.1f GFLOP/s"
                     " of a peak of %.1f" % (statistics.median(x[1] for x in g),
                                             statistics.median(x[2] for x in g)),
                     pct=True):
            return
        target(tid, {name: r, "GEMM_peak": pk},
               lambda: best_rate(r) / p,
               lambda: "%.1f GFLOP/s (fastest call; median %.1f) of %.1f = "
               "%.0f%%" % (best_rate(r), r["gflops"], p,
                          100 * best_rate(r) / p))

    rounds = paired_ratios(paired, nproc)

    def by_rounds(tid, what, pct=False):
        """The median of the per-round ratios, or False without rounds."""
        got = rounds[tid]
        if not got:
            return False
        med = statistics.median(v for v, _, _ in got)
        fmt = (lambda v: "%.0f%%" % (100 * v)) if pct else \
            (lambda v: "%.2f" % v)
        add(tid, med, "median of %d back-to-back rounds: %s (%s); %s" % (
            len(got), fmt(med) if pct else fmt(med) + "x",
            ", ".join(fmt(v) for v, _, _ in got), what(got)))
        return True

    def ms(got, i):
        return statistics.median(1e3 * g[i] for g in got)

    def vs_sdpa(tid, method, n, mine, theirs):
        """A speed-up over SDPA: from the rounds, else from the main run."""
        if by_rounds(tid, lambda g: "medians of the best calls: SDPA %.1f ms, %s %.1f ms" % (
                ms(g, 1), method, ms(g, 2))):
            return
        target(tid, {"%s_N=%d" % (method, n): mine, "SDPA_N=%d" % n: theirs},
               lambda: theirs["time_s"] / mine["time_s"],
               lambda: "%s %.1f ms, SDPA %.1f ms (%.2fx)" % (
                   method, 1e3 * mine["time_s"], 1e3 * theirs["time_s"],
                   theirs["time_s"] / mine["time_s"]))

    vs_peak("exact-peak", "exact_N=4096", ex4)
    vs_sdpa("exact-vs-sdpa", "exact", 4096, ex4, s4)
    vs_peak("mra2-peak", "mra2_N=4096", m4)
    vs_sdpa("mra2-vs-sdpa", "mra2", 16384, m16, s16)

    def growth():
        return (m16["time_s"] / 16384) / (m4["time_s"] / 4096)

    if not by_rounds("mra2-linear", lambda g: "medians of the best calls: %.2f us/token at "
                     "4096, %.2f at 16384" % (ms(g, 1) * 1e3 / 4096,
                                              ms(g, 2) * 1e3 / 16384)):
        target("mra2-linear", {"mra2_N=4096": m4, "mra2_N=16384": m16},
               growth,
               lambda: "%.2f us/token at 4096, %.2f at 16384 (%.2fx)" % (
                   1e6 * m4["time_s"] / 4096, 1e6 * m16["time_s"] / 16384,
                   growth()))
    for tid, many, one, name in (("mra2-threads", m16, m16_1, "mra2"),
                                 ("exact-threads", ex16, ex16_1, "exact")):
        if by_rounds(tid, lambda g: "medians of the best calls: 1 thread (mean rate of the cores, "
                     "each pinned) %.1f ms, %d threads "
                     "%.1f ms" % (ms(g, 1), nproc, ms(g, 2))):
            continue
        target(tid, {name + "_N=16384": many,
                     name + "_N=16384_1_thread": one},
               lambda: one["time_s"] / many["time_s"],
               lambda: "1 thread %.3f s, %d threads %.3f s (%.2fx)" % (
                   one["time_s"], nproc, many["time_s"],
                   one["time_s"] / many["time_s"]))
    return res


def sanity_checks(mrad):
    """Checks that the measurements measure the right thing: exact agrees
    with float64 (the spec's 1e-4), MRA-2 with every block selected equals
    exact, and the float64-row estimate of an error agrees with the full
    one where both exist (it is what stands in for it at N = 65536)."""
    out = []

    def add(ok, text):
        out.append({"status": "ok" if ok else "FAIL", "check": text})

    for r in mrad:
        if "error" in r:
            add(False, "%s bpr %s N=%d: %s" % (r["method"], r.get("bpr"),
                                                r["N"], r["error"]))
            continue
        for kind in ("local", "gauss"):
            full, rows = r.get("err_exact_" + kind), r.get("err_rows_" + kind)
            name = "%s%s N=%d %d thr, %s inputs" % (
                r["method"], " bpr %d" % r["bpr"] if r["method"] == "mra2"
                else "", r["N"], r["threads"], kind)
            if r["method"] == "exact" and rows is not None:
                add(rows < 1e-4, "%s: vs float64 %.1e (< 1e-4)" % (name, rows))
            if r["method"] == "mra2" and r.get("density") == 1.0 and \
                    full is not None:
                add(full < 1e-5, "%s, every block selected: vs exact %.1e "
                    "(< 1e-5)" % (name, full))
            if full is not None and rows is not None and full > 1e-3:
                add(0.5 < rows / full < 2.0, "%s: error on float64 rows %.2e "
                    "vs whole output %.2e (within 2x)" % (name, rows, full))
    return out


def pick_peak(gemm):
    """Per thread count, the best GEMM rate any library reached."""
    peak = {}
    for g in gemm:
        t = str(g["threads"])
        if t not in peak or g["gflops_best"] > peak[t]["gflops"]:
            peak[t] = {"gflops": g["gflops_best"], "source": g["source"],
                       "detail": g.get("detail") or g.get("core")}
    return peak


def error_of(r, kind):
    """Error against the backend's exact output, else against the float64
    rows (marked so).  Returns (value, 'exact'|'rows') or (None, None)."""
    if r.get("err_exact_" + kind) is not None:
        return r["err_exact_" + kind], "exact"
    if r.get("err_rows_" + kind) is not None:
        return r["err_rows_" + kind], "rows"
    return None, None


def fmt_err(r, kind):
    v, src = error_of(r, kind)
    if v is None:
        return "-"
    return "%.2e%s" % (v, "*" if src == "rows" else "")


def print_tables(doc):
    nproc = doc["threads"]
    print("\nGEMM f32 (best / median GFLOP/s over 5 runs, CPU share; pass 1 "
          "at the start, pass 2 at the end)")
    for g in doc["gemm"]:
        share = g.get("cpu_share")
        print("  pass %s %-16s %2d thr  n=%d  %7.1f / %7.1f  %4s  %s" % (
            g.get("pass", "-"), g["source"], g["threads"], g["n"],
            g["gflops_best"],
            g["gflops_median"],
            "%.0f%%" % (100 * share) if share is not None else "-",
            g.get("detail") or g.get("core", "")))
    for t, p in sorted(doc["peak"].items()):
        print("  peak, %s thread(s): %.1f GFLOP/s (%s)" % (
            t, p["gflops"], p["source"]))
    print("\nattention, B=1 H=12 D=64 f32 (time: median; cpu%: CPU time "
          "over wall time x threads while timed; errors: relative "
          "Frobenius vs exact, * = on float64 rows)")
    print("  %-6s %4s %6s %3s %10s %8s %6s %5s %8s %10s %10s" % (
        "method", "bpr", "N", "thr", "time ms", "GFLOP/s", "%peak", "cpu%",
        "density", "err local", "err gauss"))
    rows = sorted(doc["sdpa"], key=lambda r: r["N"]) + sorted(
        doc["mrad"], key=lambda r: (r["threads"] != nproc, r["N"],
                                    r["method"] != "exact", r.get("bpr", 0)))
    for r in rows:
        if "error" in r:
            print("  %-6s %4s %6d  failed: %s" % (r["method"], r.get("bpr"),
                                                  r["N"], r["error"]))
            continue
        pk = doc["peak"].get(str(r["threads"]), {}).get("gflops")
        pct = "%5.0f%%" % (100 * r["gflops"] / pk) if pk else "     -"
        share = r.get("cpu_share")
        print("  %-6s %4s %6d %3d %10.2f %8.1f %6s %5s %8s %10s %10s" % (
            r["method"], r.get("bpr") or "", r["N"], r["threads"],
            1e3 * r["time_s"], r["gflops"], pct,
            "%.0f%%" % (100 * share) if share is not None else "-",
            "%.4f" % r["density"] if "density" in r else "",
            fmt_err(r, "local"), fmt_err(r, "gauss")))
    if doc.get("half"):
        import half
        half.print_tables(doc["half"], nproc)
    bad = [c for c in doc["checks"] if c["status"] != "ok"]
    print("\nchecks of the measurements: %d ok, %d failed" % (
        len(doc["checks"]) - len(bad), len(bad)))
    for c in bad:
        print("  FAIL %s" % c["check"])
    print("\ntargets")
    for t in doc["targets"]:
        print("  %-4s %s: %s" % (t["status"], t["target"], t["detail"]))
    met = sum(t["status"] == "PASS" for t in doc["targets"])
    print("  %d of %d targets met" % (met, len(doc["targets"])))


def plots(doc, folder):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("summarize: matplotlib missing, no plots", file=sys.stderr)
        return []
    nproc = doc["threads"]
    mrad = [r for r in doc["mrad"] if r["threads"] == nproc and "error" not in r]
    made = []

    fig, ax = plt.subplots(figsize=(7, 5))
    series = [("mrad exact", [r for r in mrad if r["method"] == "exact"], "k-o"),
              ("PyTorch SDPA", doc["sdpa"], "r-s")]
    for b, st in zip((1, 4, 16, 32), ("-^", "-v", "-D", "-x")):
        series.append(("mrad mra2 bpr %d" % b, [r for r in mrad if
                       r["method"] == "mra2" and r["bpr"] == b], st))
    for label, rows, st in series:
        rows = sorted(rows, key=lambda r: r["N"])
        if rows:
            ax.plot([r["N"] for r in rows], [r["time_s"] for r in rows], st,
                    label=label)
    # Guides through the smallest N: linear (what MRA-2 should follow) and
    # quadratic (what exact attention must follow).
    ns = sorted({r["N"] for r in mrad} | {r["N"] for r in doc["sdpa"]})
    for power, method, label in ((1, "mra2", "~ N"), (2, "exact", "~ N^2")):
        base = sorted((r for r in mrad if r["method"] == method and
                       r.get("bpr") in (0, 16)), key=lambda r: r["N"])
        if base and len(ns) > 1:
            n0, t0 = base[0]["N"], base[0]["time_s"]
            ax.plot(ns, [t0 * (n / n0) ** power for n in ns], ":",
                    color="grey", linewidth=1)
            ax.annotate(label, (ns[-1], t0 * (ns[-1] / n0) ** power),
                        fontsize=7, color="grey")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length N")
    ax.set_ylabel("time per call (s), B=1 H=12 D=64 f32")
    ax.set_title("Attention time on %s, %d threads" % (
        doc["machine"]["model"], nproc), fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    path = os.path.join(folder, "cpu-time-vs-n.png")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    made.append(path)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=False)
    for ax, kind in zip(axes, ("local", "gauss")):
        for n in sorted({r["N"] for r in mrad}):
            rows = sorted((r for r in mrad if r["method"] == "mra2" and
                           r["N"] == n and error_of(r, kind)[0]),
                          key=lambda r: r["bpr"])
            if not rows:
                continue
            xs = [r["time_s"] for r in rows]
            ys = [error_of(r, kind)[0] for r in rows]
            rowsrc = error_of(rows[0], kind)[1] == "rows"
            ax.plot(xs, ys, "-o", label="N=%d%s" % (
                n, " (float64 rows)" if rowsrc else ""))
            for r, x, y in zip(rows, xs, ys):
                ax.annotate(str(r["bpr"]), (x, y), fontsize=7,
                            textcoords="offset points", xytext=(3, 3))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("time per call (s)")
        ax.set_ylabel("relative Frobenius error vs exact")
        ax.set_title("%s inputs (labels: block_per_row)" % (
            "smooth, local" if kind == "local" else "Gaussian"), fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    path = os.path.join(folder, "cpu-error-vs-time.png")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    made.append(path)
    return made


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--raw", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--plots")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--seconds", type=int)
    ap.add_argument("--quick", default="0")
    a = ap.parse_args()

    gemm = read_jsonl(os.path.join(a.raw, "gemm.jsonl"))
    sdpa = read_jsonl(os.path.join(a.raw, "sdpa.jsonl"))
    recs = read_jsonl(os.path.join(a.raw, "mrad.jsonl"))
    mrad = [r for r in recs if r.get("record") == "result"]
    backend = next((r for r in recs if r.get("record") == "backend"), {})
    peak = pick_peak(gemm)
    load = []
    for path in (os.path.join(a.raw, "loadavg-start"), "/proc/loadavg"):
        try:
            with open(path) as f:
                load.append(float(f.read().split()[0]))
        except (OSError, ValueError, IndexError):
            load.append(None)
    install = None
    try:
        with open(".venv-bench/.install-seconds") as f:
            install = int(f.read().strip())
    except (OSError, ValueError):
        pass
    doc = {
        "date": datetime.datetime.now(datetime.timezone.utc)
                .strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git_commit(),
        "quick": a.quick == "1",
        "threads": a.threads,
        "machine": machine(),
        "backend": backend.get("device"),
        "bench_seconds": a.seconds,
        "loadavg_start_end": load,
        "torch_install_seconds": install,
        "torch": sdpa[0].get("torch") if sdpa else None,
        "gemm": gemm,
        "peak": peak,
        "sdpa": sdpa,
        "mrad": mrad,
    }
    paired = {"sdpa": read_jsonl(os.path.join(a.raw, "paired-sdpa.jsonl")),
              "mrad": read_jsonl(os.path.join(a.raw, "paired-mrad.jsonl")),
              "gemm": read_jsonl(os.path.join(a.raw, "paired-gemm.jsonl"))}
    doc["paired"] = paired
    doc["targets"] = check_targets(peak, sdpa, mrad, a.threads, paired)
    doc["checks"] = sanity_checks(mrad)
    import half  # here: half.py imports this module's helpers
    doc["half"] = half.summarize(a.raw, a.threads)
    if doc["half"]:
        doc["targets"] += doc["half"]["targets"]
        doc["checks"] += half.checks(doc["half"])
        if not doc["backend"]:
            doc["backend"] = doc["half"]["backend"]
    print_tables(doc)
    h = doc.get("half") or {}
    shares = [r.get("cpu_share") for r in mrad + sdpa + h.get("mrad", []) +
              h.get("sdpa", []) if r.get("cpu_share") is not None]
    low = sum(x < 0.9 for x in shares)
    if low:
        print("  warning: %d of %d timed measurements had under 90%% of their "
              "cores (cpu%% column): other processes were running" % (
                  low, len(shares)))
    if load[0] is not None and load[1] is not None:
        print("  load average (1 min) before / after: %.2f / %.2f on %d "
              "cores" % (load[0], load[1], a.threads))
    if a.plots:
        doc["plots"] = [os.path.basename(p) for p in plots(doc, a.plots)]
    with open(a.out, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
