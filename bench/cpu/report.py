"""report.py - writes the CPU results page (docs/PERFORMANCE.md) from the
JSON that bench/30-cpu.sh leaves in bench-out/cpu.json, so the page can be
refreshed after any change to the kernels:

    make bench BENCH_ONLY=30
    python3 bench/cpu/report.py bench-out/cpu.json --out docs/PERFORMANCE.md

Standard library only.
"""
import argparse
import json
import os

import half


def gib(b):
    return "%.0f GiB" % (b / 2**30) if b else "?"


def err_cell(r, kind):
    if r.get("err_exact_" + kind) is not None:
        return "%.2e" % r["err_exact_" + kind]
    if r.get("err_rows_" + kind) is not None:
        return "%.2e&nbsp;*" % r["err_rows_" + kind]
    return "–"


def pct_of_peak(doc, r):
    """A rate as a share of the GEMM peak with the same thread count."""
    p = doc["peak"].get(str(r["threads"]), {}).get("gflops")
    return "%.0f%%" % (100 * r["gflops"] / p) if p else "–"


def machine_section(doc):
    m = doc["machine"]
    cores = "%s core(s) per socket x %s socket(s), %s thread(s) per core" % (
        m.get("cores_per_socket"), m.get("sockets"), m.get("threads_per_core"))
    lines = [
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        "| CPU | %s (family/model/stepping %s%s) |" % (
            m.get("model"), m.get("family_model_stepping"),
            ", " + m["codename"] if m.get("codename") else ""),
        "| logical CPUs | %s (%s) |" % (m.get("cpus"), cores),
        "| virtualisation | %s |" % (m.get("hypervisor") or "none reported"),
        "| caches | L1d %s, L2 %s, L3 %s |" % (m.get("l1d"), m.get("l2"),
                                           m.get("l3")),
        "| vector ISA | %s |" % " ".join(m.get("isa", [])),
        "| memory | %s |" % gib(m.get("memory_bytes")),
        "| kernel, compiler | Linux %s, %s |" % (m.get("kernel"),
                                               m.get("compiler")),
        "| mrad CPU backend | %s |" % doc.get("backend"),
        "",
    ]
    return lines


def method_section(doc):
    install = doc.get("torch_install_seconds")
    return [
        "## Method",
        "",
        "One run of `make bench BENCH_ONLY=30` (bench/30-cpu.sh) measures "
        "everything on the same machine, one thing at a time.  All "
        "attention problems are B = 1, H = 12 heads (12 KV heads), D = 64, "
        "f32, no mask, scale 1/sqrt(D).",
        "",
        "- **GEMM peak**: C = A B with 4096 x 4096 f32 matrices, best of 5 "
        "runs after a warm-up, in two passes (at the start and at the end "
        "of the step), through Debian's OpenBLAS from C "
        "(bench/cpu/gemm-peak.c, core type forced to SkylakeX because "
        "0.3.21 does not recognise this CPU), numpy's bundled OpenBLAS and "
        "PyTorch's MKL (bench/cpu/peak.py), with one thread and with all "
        "cores.  The peak is the best of the three over both passes; "
        "percentages of peak below compare with the peak of the same "
        "thread count.",
        "- **PyTorch**: `torch.nn.functional.scaled_dot_product_attention` "
        "(torch %s from PyPI in .venv-bench, installed by "
        "tools/bench-venv.sh%s), all threads, N in {1024, 4096, 16384}, "
        "timed like mrad below (median after a warm-up, at least 2 calls)."
        % (doc.get("torch") or "?",
           "; a fresh install took %d s" % install if install else ""),
        "- **mrad**: bin/bench-cpu (bench/bench-cpu.c) through the C API "
        "(`attn_backend_new(\"cpu\")`, `attn_backend_compute`).  Times are "
        "the median of the repetitions that fit a time budget after one "
        "warm-up call (at least 2 at N = 16384, at most 7).  GFLOP/s are "
        "`attn_flops()`, the spec's count: 4 N^2 D per head for exact, "
        "4 k b^2 D + 2 nb^2 D for MRA-2, so MRA-2's rate counts only the "
        "work it does.  The tables give the median.",
        "- **Errors**: relative Frobenius norm of (out - exact) over the "
        "whole output, against mrad's exact output on the same inputs.  At "
        "N = 65536 exact is not run (13 TFLOP); errors marked * are "
        "instead against float64 exact attention of 32 rows per head "
        "spread over the sequence (at smaller N both are measured and "
        "agree in magnitude).  Two kinds of inputs: *local*: queries and "
        "keys follow a smooth random curve (sums of sinusoids with random "
        "low frequencies, a Gaussian kernel with a 64-token length scale) "
        "plus Gaussian noise, so attention is mostly local, as in trained "
        "models; *gauss*: every element N(0, 1), no structure at all.  "
        "Times are measured on the local inputs.",
        "- **Thread scaling**: exact and MRA-2 (block_per_row 16) at "
        "N = 16384 with `attn_config.threads` = 1 against all cores.  The "
        "cores of a virtual machine need not be equally fast: pinned with "
        "taskset, one thread of MRA-2 took 0.41-0.43 s on one core of this "
        "machine and 0.28-0.30 s on the other in the same minute, and all "
        "cores together can at best add up their single-thread rates.  So "
        "the rounds below run one thread pinned on each core in turn, and "
        "the scaling targets set the all-cores rate against the cores' mean "
        "single-thread rate.",
        "- **Back-to-back rounds**: every target is a ratio (of rates "
        "against the GEMM peak, exact and MRA-2 against SDPA, MRA-2's time "
        "per token at N = 16384 against N = 4096, all cores against one "
        "thread), and the main run takes its two sides minutes apart, while "
        "the speed of a shared machine drifts by tens of percent over "
        "minutes.  So the step also runs rounds of the GEMM peak on all "
        "cores (every library, best of 3), SDPA at N = 4096 and 16384, mrad "
        "(exact and MRA-2) at N = 4096, then each thread-scaling pair right "
        "after each other: MRA-2 at N = 16384 on all cores and on one "
        "thread, then exact likewise, one thread first in even rounds (up "
        "to 3 calls that fit in a second after a warm-up; at least 2 for "
        "SDPA).  Each "
        "side of a ratio is its fastest call in the round, since other work "
        "on the cores only ever adds time, and those targets are judged on "
        "the median of the per-round ratios (their line in the table gives "
        "every round).  The tables below keep the figures of the main run.",
        "- **Half precision** (bf16 and f16 inputs and outputs, which the "
        "CPU backend computes on the AMX tiles where the CPU has them: "
        "attention/README.md): the bf16 peak is PyTorch's bf16 matrix "
        "product (oneDNN on the AMX tiles, 4096 x 4096, best of 5, in two "
        "passes, one thread and all cores) beside the AMX tile ceiling "
        "(bench/cpu/amx-peak.c); PyTorch SDPA runs on bf16 tensors; mrad "
        "runs bf16 and f16 problems made by rounding the same inputs "
        "(bench-cpu --dtype), exact and MRA-2 (block_per_row 16), with "
        "errors against float64 attention of 64 rows per head computed "
        "from the rounded inputs.  Its targets are ratios too, judged on "
        "the median of 7 back-to-back rounds: the bf16 peak on all cores, "
        "bf16 SDPA and mrad bf16 exact at N = 4096, then MRA-2 at "
        "N = 16384 in bf16 and f32, exact at N = 4096 and MRA-2 at "
        "N = 16384 in f16 and f32, each half-precision call right after "
        "its f32 counterpart (before it in even rounds).",
        "",
    ]


def results_section(doc):
    nproc = doc["threads"]
    out = ["## Results", "", "Measured %s at commit %s%s." % (
        doc["date"], doc["commit"],
        ", **quick mode: sizes and budgets too small for the figures to "
        "mean anything**" if doc.get("quick") else ""), ""]
    out += ["### GEMM f32", "", "Pass 1 ran at the start of the step, "
            "pass 2 at the end.", "",
            "| pass | library | threads | best GFLOP/s | "
            "median GFLOP/s | CPU share | detail |",
            "|---:|---|---:|---:|---:|---:|---|"]
    for g in doc["gemm"]:
        share = g.get("cpu_share")
        out.append("| %s | %s | %d | %.1f | %.1f | %s | %s |" % (
            g.get("pass", "–"), g["source"], g["threads"], g["gflops_best"],
            g["gflops_median"],
            "%.0f%%" % (100 * share) if share is not None else "–",
            g.get("detail") or g.get("core", "")))
    out.append("")
    for t, p in sorted(doc["peak"].items()):
        out.append("Peak with %s thread(s): **%.1f GFLOP/s** (%s)." % (
            t, p["gflops"], p["source"]))
    out += ["", "### Attention", "",
            "%d threads unless the column says otherwise.  CPU share: CPU "
            "time of the process over wall time x threads while it was "
            "timed; under 100%% means other processes had part of the "
            "cores.  Errors: relative Frobenius norm against exact "
            "(* = against float64 rows)." % nproc,
            "", "| method | block_per_row | N | threads | time (ms) | "
            "GFLOP/s | % of peak | CPU share | density | error, local | "
            "error, gauss |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    rows = [dict(r, method="PyTorch SDPA") for r in
            sorted(doc["sdpa"], key=lambda r: r["N"])]
    rows += sorted(doc["mrad"], key=lambda r: (
        r["threads"] != nproc, r["N"], r["method"] != "exact", r.get("bpr")))
    for r in rows:
        if "error" in r:
            out.append("| %s | %s | %d | %d | failed: %s | | | | | | |" % (
                r["method"], r.get("bpr") or "", r["N"], r["threads"],
                r["error"]))
            continue
        share = r.get("cpu_share")
        out.append("| %s | %s | %d | %d | %.1f | %.1f | %s | %s | %s | %s | "
                   "%s |"
                   % (r["method"], r.get("bpr") or "", r["N"], r["threads"],
                      1e3 * r["time_s"], r["gflops"],
                      pct_of_peak(doc, r),
                      "%.0f%%" % (100 * share) if share is not None else "–",
                      "%.4f" % r["density"] if "density" in r else "",
                      err_cell(r, "local") if "density" in r else "",
                      err_cell(r, "gauss") if "density" in r else ""))
    out.append("")
    out += half.page(doc.get("half"), nproc)
    if doc.get("plots"):
        out += ["Plots (written by the same run, not committed): " +
                ", ".join("`bench-out/%s`" % p for p in doc["plots"]) +
                " — time against N (log-log) per method, and error against "
                "time over the block_per_row sweep for both kinds of input.",
                ""]
    return out


def contention(doc):
    """(timed measurements that had under 90% of their cores, all timed
    measurements): other processes on the machine."""
    h = doc.get("half") or {}
    shares = [r.get("cpu_share") for r in doc["mrad"] + doc["sdpa"] +
              h.get("mrad", []) + h.get("sdpa", [])
              if r.get("cpu_share") is not None]
    return sum(x < 0.9 for x in shares), len(shares)


def targets_section(doc):
    met = sum(t["status"] == "PASS" for t in doc["targets"])
    low, total = contention(doc)
    note = []
    if low:
        note = ["**%d of %d timed attention measurements had less than 90%% "
                "of their cores** (column *CPU share* below): other "
                "processes were running on this machine, and those figures "
                "are low by up to that factor.  The targets are judged on "
                "the figures as measured; rerun on a quiet machine before "
                "drawing conclusions from them." % (low, total), ""]
    out = (["## Targets", "",
            "%d of %d met in this run." % (met, len(doc["targets"])), ""] +
           note + ["| target | result | measured |", "|---|---|---|"])
    for t in doc["targets"]:
        out.append("| %s | **%s** | %s |" % (t["target"], t["status"],
                                             t["detail"]))
    out.append("")
    checks = doc.get("checks", [])
    bad = [c for c in checks if c["status"] != "ok"]
    out.append("Checks of the measurements themselves (exact against "
               "float64, MRA-2 with every block selected against exact, "
               "row-sampled errors against whole-output errors, bf16 and "
               "f16 exact within their limits of float64): %d of %d "
               "ok%s" % (len(checks) - len(bad), len(checks),
                         "." if not bad else "; failed:"))
    out += ["- %s" % c["check"] for c in bad]
    out.append("")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("json", nargs="?", default="bench-out/cpu.json")
    ap.add_argument("--out", default="docs/PERFORMANCE.md")
    a = ap.parse_args()
    with open(a.json) as f:
        doc = json.load(f)
    lines = ["# CPU performance", "",
             "How fast mrad's CPU backend computes exact and MRA-2 attention "
             "on one machine, against that machine's measured GEMM peak and "
             "PyTorch, and how far MRA-2 lands from exact.  This page is "
             "generated by `bench/cpu/report.py` from `bench-out/cpu.json`; "
             "refresh it with:", "", "```",
             "make bench BENCH_ONLY=30",
             "python3 bench/cpu/report.py bench-out/cpu.json "
             "--out docs/PERFORMANCE.md", "```", ""]
    lines += targets_section(doc)
    lines += machine_section(doc)
    lines += method_section(doc)
    lines += results_section(doc)
    if doc.get("bench_seconds"):
        lines += ["The whole step took %d s." % doc["bench_seconds"], ""]
    load = doc.get("loadavg_start_end") or [None, None]
    if None not in load:
        lines += ["Load average (1 min) before and after the run: %.2f and "
                  "%.2f on %d cores.  Other processes on the same cores "
                  "slow every figure down, and thread scaling most; "
                  "compare runs on a quiet machine." % (
                      load[0], load[1], doc["threads"]), ""]
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as f:
        f.write("\n".join(lines))
    print("report: wrote %s" % a.out)


if __name__ == "__main__":
    main()
