#!/usr/bin/env bash
# 30-cpu.sh - the CPU performance benchmark: how fast the CPU backend's
# exact and MRA-2 attention run on this machine, against the machine's
# measured single-precision GEMM peak and PyTorch's
# scaled_dot_product_attention, and how far MRA-2 lands from exact.
#
# One run measures everything on the same machine (B = 1, H = 12, D = 64,
# f32): GEMM peak (Debian's OpenBLAS from C, numpy's OpenBLAS, PyTorch's
# MKL; one thread and all cores), PyTorch SDPA for N in {1024, 4096,
# 16384}, mrad exact and MRA-2 with block_per_row in {1, 4, 16, 32} for the
# same N and N = 65536 (MRA-2 only), errors on smooth ("local") and
# Gaussian inputs, and thread scaling at N = 16384.  It then prints the
# tables and the target checks (PASS/FAIL), writes bench-out/cpu.json, the
# plots bench-out/cpu-*.png and bench-out/PERFORMANCE.md.  About 5-10
# minutes on a 2-core machine; the first run also installs PyTorch
# (tools/bench-venv.sh).
#
# Refresh the committed results page afterwards with
#   python3 bench/cpu/report.py bench-out/cpu.json --out docs/PERFORMANCE.md
#
# Half precision (bf16 and f16 requests, which the CPU backend computes on
# the AMX tiles where the CPU has them): PyTorch's bf16 matrix product
# (oneDNN) as the bf16 peak, the tile ceiling (bench/cpu/amx-peak.c),
# PyTorch's bf16 SDPA, mrad bf16 and f16 exact and MRA-2 with their errors
# against float64 on the rounded inputs, and rounds that time each
# half-precision target's two sides back to back (bench/cpu/half.py).
#
# Knobs (environment): BIN (where bench-cpu is), CPU_BENCH_QUICK=1 (small
# sizes and short budgets: checks that the harness works, figures are not
# meaningful), CPU_BENCH_PARTS ("f32 half" by default; "half" runs the
# half-precision part alone, its f32 targets then show as not measured).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin}
OUT=bench-out
RAW=$OUT/cpu-raw
NPROC=$(nproc)
QUICK=${CPU_BENCH_QUICK:-0}
PARTS=${CPU_BENCH_PARTS:-f32 half}
part() { [[ " $PARTS " == *" $1 "* ]]; }
mkdir -p "$RAW" build/bench
rm -f "$RAW"/*
t_start=$(date +%s)

if [ ! -x "$BIN/bench-cpu" ]; then
    echo "30-cpu: $BIN/bench-cpu is missing (make $BIN/bench-cpu)" >&2
    exit 1
fi

step() { echo "-- $* ($(($(date +%s) - t_start))s)"; }

# Other processes on these cores skew every figure: keep the load average
# with the results, and say so up front.
cp /proc/loadavg "$RAW/loadavg-start" 2>/dev/null || true
read -r load1 _ </proc/loadavg || load1=0
if awk -v l="$load1" -v n="$NPROC" 'BEGIN { exit !(l > 0.25 * n) }'; then
    echo "30-cpu: warning: load average $load1 on $NPROC cores before starting; figures will be noisy"
fi

step "bench-only dependencies"
bash tools/bench-venv.sh || echo "30-cpu: bench environment incomplete; parts are skipped"
PY=.venv-bench/bin/python
[ -x "$PY" ] || PY=

if [ "$QUICK" = 1 ]; then
    NS="256 1024" BIG=2048 SCALE_N=1024 GEMM_N=1024 BUDGET=0.5 PAIR_ROUNDS=1 PAIR_SMALL=256
    HALF_NS="256 1024" HALF_ROUNDS=1
else
    NS="1024 4096 16384" BIG=65536 SCALE_N=16384 GEMM_N=4096 BUDGET=6 PAIR_ROUNDS=7 PAIR_SMALL=4096
    HALF_NS="1024 4096 16384" HALF_ROUNDS=7
fi

# GEMM through Debian's OpenBLAS.  Its 0.3.21 does not know recent Intel
# cores and falls back to a generic SSE kernel, so name the core type that
# matches the ISA; the name it runs is recorded with the result.
gemm_built=0
if cc -O2 -std=c11 -D_GNU_SOURCE -o build/bench/gemm-peak bench/cpu/gemm-peak.c -lopenblas 2>"$RAW/gemm-build.log"; then
    gemm_built=1
else
    echo "30-cpu: gemm-peak does not build (libopenblas-dev missing?); see $RAW/gemm-build.log"
fi
core=
grep -qw avx2 /proc/cpuinfo && core=Haswell
grep -qw avx512f /proc/cpuinfo && core=SkylakeX

# One pass of every GEMM measurement, tagged with its pass number.  It runs
# at the start and again at the end: the peak is the best rate seen, so a
# burst of other work on the machine during one pass does not lower it.
# gemm_pass TAG [THREADS [REPS [FILE]]]: every library once, each record
# tagged with TAG (a JSON member: "pass": 1, "round": 3, ...).
gemm_pass() {
    local tag=$1 threads=${2:-1 $NPROC} reps=${3:-5} file=${4:-$RAW/gemm.jsonl}
    if [ $gemm_built = 1 ]; then
        for t in $threads; do
            OPENBLAS_CORETYPE=$core OPENBLAS_NUM_THREADS=$t build/bench/gemm-peak "$GEMM_N" "$reps" |
                sed "s/^{/{$tag, \"source\": \"openblas-debian\", /" >>"$file" ||
                echo "30-cpu: gemm-peak failed ($t threads)"
        done
    fi
    if [ -n "$PY" ]; then
        # numpy bundles a current OpenBLAS: the core-type override for
        # Debian's older one would slow it down, so it runs without.
        env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "$PY" bench/cpu/peak.py \
            --n "$GEMM_N" --reps "$reps" --threads "${threads// /,}" |
            sed "s/^{/{$tag, /" >>"$file" ||
            echo "30-cpu: peak.py failed"
    fi
}
if part f32; then
step "GEMM peak, pass 1: Debian OpenBLAS, numpy, torch"
gemm_pass '"pass": 1'

if [ -n "$PY" ]; then
    step "PyTorch scaled_dot_product_attention"
    "$PY" bench/cpu/sdpa.py --n "${NS// /,}" --threads "$NPROC" \
        --budget "$BUDGET" --min-reps 2 --max-reps 5 >"$RAW/sdpa.jsonl" ||
        echo "30-cpu: sdpa.py failed"
fi

# mrad: exact and MRA-2 for each N; errors against exact (and float64 rows).
for n in $NS; do
    step "mrad N=$n"
    extra=()
    [ "$n" -ge 16384 ] && extra=(--min-reps 2 --budget 20 --max-reps 5)
    "$BIN/bench-cpu" --n "$n" --threads "$NPROC" --exact --bpr 1,4,16,32 \
        --ref-rows 64 --budget "$BUDGET" "${extra[@]}" >>"$RAW/mrad.jsonl"
done
# Exact attention is 13 TFLOP at N = 65536: only MRA-2 runs, and its error
# is measured on 32 rows per head against float64 exact attention.
step "mrad N=$BIG (mra2 only)"
"$BIN/bench-cpu" --n "$BIG" --threads "$NPROC" --bpr 1,4,16,32 \
    --ref-rows 32 --budget "$BUDGET" --max-reps 5 >>"$RAW/mrad.jsonl"

step "mrad thread scaling N=$SCALE_N, 1 thread"
"$BIN/bench-cpu" --n "$SCALE_N" --threads 1 --exact --bpr 16 --inputs local \
    --budget "$BUDGET" --max-reps 3 >>"$RAW/mrad.jsonl"

# Ratios between two measurements taken minutes apart carry the drift of a
# shared machine in them.  Every target is a ratio (a rate against the
# GEMM peak, exact and MRA-2 against SDPA, MRA-2's time per token at two
# N, all cores against one thread), so they are also measured in
# back-to-back rounds.  Each round times the GEMM peak on all cores (every
# library, best of 3), SDPA at both N, mrad exact and MRA-2 at the small N,
# then each thread-scaling pair right after each other: MRA-2 at the large
# N on all cores and on one thread, then exact likewise.  Even rounds time
# one thread first, so neither side always comes second.  mrad makes up to
# 3 calls that fit in a second after a warm-up (at least 1; SDPA at least
# 2), each side of a ratio is its fastest call (other work on the cores
# only ever adds time), and the targets take the median of the per-round
# ratios.
#
# One thread runs once on each core, pinned (taskset): the cores of a
# virtual machine need not be equally fast (on the 2-core machine of
# docs/PERFORMANCE.md one ran a single thread about 1.4x faster than the
# other), and all cores together can at best add their single-thread
# rates, so the scaling targets set the all-cores rate against the mean
# single-thread rate of the cores.
ones=("-")
if command -v taskset >/dev/null && [ "$NPROC" -gt 1 ]; then
    ones=()
    for c in $(seq 0 $((NPROC - 1))); do ones+=("$c"); done
fi
for r in $(seq "$PAIR_ROUNDS"); do
    runs=("$PAIR_SMALL $NPROC - --exact --bpr 16")
    for m in "--bpr 16" "--exact --bpr none"; do
        one=()
        for c in "${ones[@]}"; do one+=("$SCALE_N 1 $c $m"); done
        if [ $((r % 2)) = 1 ]; then
            runs+=("$SCALE_N $NPROC - $m" "${one[@]}")
        else
            runs+=("${one[@]}" "$SCALE_N $NPROC - $m")
        fi
    done
    step "paired round $r of $PAIR_ROUNDS: GEMM, SDPA, then mrad (N threads core method):$(printf ' [%s]' "${runs[@]}")"
    gemm_pass "\"round\": $r" "$NPROC" 3 "$RAW/paired-gemm.jsonl"
    if [ -n "$PY" ]; then
        "$PY" bench/cpu/sdpa.py --n "$PAIR_SMALL,$SCALE_N" --threads "$NPROC" \
            --budget 1 --min-reps 2 --max-reps 3 | sed "s/^{/{\"round\": $r, /" \
            >>"$RAW/paired-sdpa.jsonl" || echo "30-cpu: sdpa.py failed"
    fi
    for run in "${runs[@]}"; do
        set -- $run
        n=$1 t=$2 cpu=$3
        shift 3
        pin=() tag="\"round\": $r"
        if [ "$cpu" != - ]; then
            pin=(taskset -c "$cpu") tag="$tag, \"cpu\": $cpu"
        fi
        "${pin[@]}" "$BIN/bench-cpu" --n "$n" --threads "$t" "$@" \
            --inputs local --budget 1 --min-reps 1 --max-reps 3 | grep '"record": "result"' |
            sed "s/^{/{$tag, /" >>"$RAW/paired-mrad.jsonl" ||
            echo "30-cpu: bench-cpu failed (paired round $r: $run)"
    done
done

step "GEMM peak, pass 2: Debian OpenBLAS, numpy, torch"
gemm_pass '"pass": 2'

fi

# ---- half precision --------------------------------------------------------
# The bf16 peak: PyTorch's bf16 product (oneDNN; best of its runs) and the
# tile ceiling.  half_peak TAG THREADS REPS FILE.
amx_built=0
if part half; then
    if cc -O2 -std=c11 -D_GNU_SOURCE -mamx-tile -mamx-bf16 -pthread -o build/bench/amx-peak \
        bench/cpu/amx-peak.c 2>"$RAW/amx-build.log"; then
        amx_built=1
    else
        echo "30-cpu: amx-peak does not build (compiler without AMX?); see $RAW/amx-build.log"
    fi
fi
half_peak() {
    local tag=$1 threads=$2 reps=$3 file=$4
    if [ -n "$PY" ]; then
        "$PY" bench/cpu/peak.py --dtype bf16 --n "$GEMM_N" --reps "$reps" \
            --threads "${threads// /,}" | sed "s/^{/{$tag, /" >>"$file" ||
            echo "30-cpu: peak.py --dtype bf16 failed"
    fi
    if [ $amx_built = 1 ]; then
        for t in $threads; do
            build/bench/amx-peak "$GEMM_N" "$reps" "$t" | sed "s/^{/{$tag, /" >>"$file" ||
                echo "30-cpu: amx-peak failed ($t threads; no AMX here?)"
        done
    fi
}
if part half; then
    step "bf16 peak, pass 1: PyTorch (oneDNN) bf16 GEMM, AMX tile ceiling"
    half_peak '"pass": 1' "1 $NPROC" 5 "$RAW/gemm-half.jsonl"
    if [ -n "$PY" ]; then
        step "PyTorch scaled_dot_product_attention, bf16"
        "$PY" bench/cpu/sdpa.py --dtype bf16 --n "${HALF_NS// /,}" --threads "$NPROC" \
            --budget "$BUDGET" --min-reps 2 --max-reps 5 >"$RAW/sdpa-half.jsonl" ||
            echo "30-cpu: sdpa.py --dtype bf16 failed"
    fi
    # mrad bf16 and f16: exact and MRA-2 (bpr 16), errors against float64
    # rows computed from the rounded inputs
    for dt in bf16 f16; do
        for n in $HALF_NS; do
            step "mrad $dt N=$n"
            "$BIN/bench-cpu" --dtype "$dt" --n "$n" --threads "$NPROC" --exact --bpr 16 \
                --ref-rows 64 --budget "$BUDGET" --min-reps 2 --max-reps 5 >>"$RAW/mrad-half.jsonl"
        done
    done
    # f16 on the f32 path (AVX-512 conversion, f32 arithmetic): the other
    # way f16 could go, beside the split AMX path it takes
    step "mrad f16 N=$PAIR_SMALL on the avx512 path"
    "$BIN/bench-cpu" --dtype f16 --isa avx512 --n "$PAIR_SMALL" --threads "$NPROC" --exact \
        --bpr 16 --ref-rows 64 --budget "$BUDGET" --min-reps 2 --max-reps 5 \
        >>"$RAW/mrad-half.jsonl" || echo "30-cpu: no avx512 path here"
    # Back-to-back rounds for the half-precision targets: the bf16 peak on
    # all cores, bf16 SDPA and mrad bf16 exact at N = PAIR_SMALL, then each
    # half-precision measurement right after (or before, in even rounds)
    # its f32 counterpart: mra2 at N = SCALE_N in bf16 and f32, exact at
    # PAIR_SMALL and mra2 at SCALE_N in f16 and f32.
    for r in $(seq "$HALF_ROUNDS"); do
        pairs=("bf16 $SCALE_N --bpr 16|f32 $SCALE_N --bpr 16"
               "f16 $PAIR_SMALL --exact --bpr none|f32 $PAIR_SMALL --exact --bpr none"
               "f16 $SCALE_N --bpr 16|f32 $SCALE_N --bpr 16")
        runs=("bf16 $PAIR_SMALL --exact --bpr none")
        for pr in "${pairs[@]}"; do
            if [ $((r % 2)) = 1 ]; then runs+=("${pr%%|*}" "${pr##*|}"); else runs+=("${pr##*|}" "${pr%%|*}"); fi
        done
        step "half-precision round $r of $HALF_ROUNDS: bf16 peak, bf16 SDPA, then mrad (dtype N options):$(printf ' [%s]' "${runs[@]}")"
        half_peak "\"round\": $r" "$NPROC" 3 "$RAW/paired-gemm-half.jsonl"
        if [ -n "$PY" ]; then
            "$PY" bench/cpu/sdpa.py --dtype bf16 --n "$PAIR_SMALL" --threads "$NPROC" \
                --budget 1 --min-reps 2 --max-reps 3 | sed "s/^{/{\"round\": $r, /" \
                >>"$RAW/paired-sdpa-half.jsonl" || echo "30-cpu: sdpa.py failed"
        fi
        for run in "${runs[@]}"; do
            set -- $run
            dt=$1 n=$2
            shift 2
            "$BIN/bench-cpu" --dtype "$dt" --n "$n" --threads "$NPROC" "$@" \
                --inputs local --budget 1 --min-reps 1 --max-reps 3 | grep '"record": "result"' |
                sed "s/^{/{\"round\": $r, /" >>"$RAW/paired-mrad-half.jsonl" ||
                echo "30-cpu: bench-cpu failed (half-precision round $r: $run)"
        done
    done
    step "bf16 peak, pass 2"
    half_peak '"pass": 2' "1 $NPROC" 5 "$RAW/gemm-half.jsonl"
fi

step "summary"
t_end=$(date +%s)
sumpy=${PY:-python3}
"$sumpy" bench/cpu/summarize.py --raw "$RAW" --out "$OUT/cpu.json" \
    --plots "$OUT" --threads "$NPROC" --seconds $((t_end - t_start)) \
    ${QUICK:+--quick "$QUICK"}
python3 bench/cpu/report.py "$OUT/cpu.json" --out "$OUT/PERFORMANCE.md"
echo "30-cpu: done in $(($(date +%s) - t_start))s; $OUT/cpu.json, $OUT/cpu-*.png, $OUT/PERFORMANCE.md"
