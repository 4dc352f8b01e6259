#!/usr/bin/env bash
# gpu-verify.sh - verifies mrad's CUDA backend on a machine with a GPU in
# one command, in under 9 minutes on one H200: everything that the
# development machines (no GPU) cannot check.
#
#     tools/gpu-verify.sh                 (from anywhere in the tree)
#     OUT=/some/dir tools/gpu-verify.sh   (OUT defaults to ./gpu-out)
#
# Everything lands in $OUT: one log per step, JSON of the timings, and
# summary.txt (also printed at the end).  Each step runs under `timeout`
# inside an overall budget (GPU_VERIFY_SECONDS, default 500 s); a step
# that does not fit is skipped, a step that fails does not stop the
# others.  The exit status is 0 only when every step passed.
#
# Steps: nvidia-smi, driver and toolkit versions (a driver older than the
# runtime is named); missing build packages (GPU_VERIFY_DEPS=full runs
# tools/deps.sh); `make CUDA=1 WERROR=1` of everything, the SASS/PTX
# architectures of the objects, `make cuda-resources` in the background;
# gpu-probe; `make test-cuda` (MRAD_REQUIRE_GPU=1: a GPU on which the
# backend does not open fails); the harness of tools/gpu-verify/harness.c:
# `check` (every method x dtype x shapes with odd N and D, masks, query
# masks, causal, cross, grouped heads, priors, sessions, against the CPU
# backend; bitwise repeatability; a mixed batch against each problem
# alone; device pointers; NaN input), `contain` (ENOTSUP and ENOMEM inside
# a batch, memory given back by trim(), a real fault the backend heals
# from), `bench` (kernel times, H=12 D=64 N=4096/16384/65536, bf16 and
# f32, and the host path end to end); the daemon with --backend cuda
# driven by bin/mractl (requests checked against `mractl run --local
# --backend cpu`, 8 concurrent ones bitwise equal to the single answer, a
# session, then two workers on the one GPU); compute-sanitizer memcheck,
# racecheck, initcheck and synccheck (the toolkit's, or fetched from PyPI);
# PyTorch SDPA (flash) as the peer when torch can be had
# (tools/bench-venv.sh in the background; GPU_VERIFY_TORCH=0 skips it):
# bench/cuda/bench.py --quick and tools/gpu-verify/sdpa.py.
#
# Without a GPU: GV_FAKE_GPU=1 runs the plumbing with the CPU backend
# standing in for the CUDA one (GPU-only steps skipped); GV_BUILD and
# GV_BIN name other build and binary folders than build/ and bin/.
# Record the figures in docs/PERFORMANCE-GPU.md with the date and the GPU.
set -u
set +e
export LC_ALL=C
cd "$(dirname "$0")/.." || exit 2
set +e
export LC_ALL=C

T_LIMIT=${GPU_VERIFY_SECONDS:-500}
GV_FAKE=${GV_FAKE_GPU:-0}
B=${GV_BUILD:-build}
BN=${GV_BIN:-bin}
MK=(make BUILD="$B" BIN="$BN")
GV_BE=cuda
[ "$GV_FAKE" = 1 ] && GV_BE=cpu
ROOT=$(pwd)
if [ ! -f Makefile ] || [ ! -d attention/cuda ]; then
    echo "gpu-verify: run me from the mrad repository root" >&2
    exit 2
fi
OUT=${OUT:-./gpu-out}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
WORK=$OUT/work
mkdir -p "$WORK"
export PATH=$PATH:/usr/local/cuda/bin
JOBS=$(nproc 2>/dev/null || echo 8)
SUMMARY=$OUT/summary.txt
: > "$SUMMARY"
STEPS=()
BG_PIDS=()

log() { printf '[%4ds] %s\n' "$SECONDS" "$*" | tee -a "$OUT/progress.log"; }
record() { # name status detail
    STEPS+=("$(printf '%-22s %-8s %s' "$1" "$2" "$3")")
    log "-- $1: $2 $3"
}
# step NAME CAP MIN cmd...: runs cmd with a timeout of min(CAP, time left),
# output to $OUT/NAME.log; skipped when less than MIN seconds are left.
step() {
    local name=$1 cap=$2 min=$3
    shift 3
    local rem=$((T_LIMIT - SECONDS - 20))
    if [ "$rem" -lt "$min" ]; then
        record "$name" SKIP "(${rem}s left, needs ${min}s)"
        return 99
    fi
    local t=$((cap < rem ? cap : rem))
    log "== $name (timeout ${t}s)"
    local t0=$SECONDS
    timeout -k 10 "$t" "$@" > "$OUT/$name.log" 2>&1 < /dev/null
    local rc=$?
    local st=PASS
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then st=TIMEOUT; elif [ "$rc" -ne 0 ]; then st=FAIL; fi
    record "$name" "$st" "rc=$rc $((SECONDS - t0))s"
    return "$rc"
}
# bg NAME CAP cmd...: starts cmd in its own session (killed at the end).
bg() {
    local name=$1 cap=$2
    shift 2
    log "== $name started in the background (timeout ${cap}s)"
    setsid timeout -k 10 "$cap" "$@" > "$OUT/$name.log" 2>&1 < /dev/null &
    BG_PIDS+=("$!")
    eval "BG_${name//-/_}=$!"
}
cleanup() {
    for p in "${BG_PIDS[@]}"; do
        kill -0 "$p" 2>/dev/null && kill -TERM -- "-$p" 2>/dev/null
    done
    if [ -n "${MRAD_PID:-}" ] && kill -0 "$MRAD_PID" 2>/dev/null; then kill -KILL "$MRAD_PID"; fi
}
trap cleanup EXIT
show() { # prints selected lines of a step's log to the console
    [ -f "$OUT/$1.log" ] && grep -E "$2" "$OUT/$1.log" | head -n "${3:-40}" | sed 's/^/    /'
}

# The helpers of tools/gpu-verify/ (the harness is built from the tree's
# libattn.a once it is built).
write_sources() {
    cp tools/gpu-verify/compare.py "$WORK/gv-compare.py"
    cp tools/gpu-verify/sdpa.py "$WORK/gv-sdpa.py"
    cp tools/gpu-verify/fatbin-archs.py "$WORK/fatbin-archs.py"
}
# ---------------------------------------------------------------------------
# Steps that are more than one command (run through `bash -c` under timeout).
env_info() {
    echo "== date: $(date -u +%FT%TZ)  host: $(hostname)  cores: $(nproc)"
    uname -a
    free -g | head -2
    df -h . | tail -1
    echo "== nvidia-smi"
    if command -v nvidia-smi >/dev/null; then
        timeout 30 nvidia-smi
        timeout 20 nvidia-smi --query-gpu=name,driver_version,pci.bus_id,memory.total,memory.used,clocks.sm,clocks.max.sm,power.limit,temperature.gpu,compute_mode,mig.mode.current --format=csv
        timeout 20 nvidia-smi --query-compute-apps=pid,name,used_memory --format=csv
    else
        echo "nvidia-smi: not found"
    fi
    echo "== nvcc"
    command -v nvcc && nvcc --version
    echo "== CUDA libraries the loader sees"
    ldconfig -p | grep -E 'libcudart\.so|libcublas\.so|libcublasLt\.so|libcuda\.so' | head
    ls /usr/local/cuda/bin 2>/dev/null | tr '\n' ' '; echo
}

deps_min() {
    local missing=() p
    for p in libmsgpack-dev libcmocka-dev libmicrohttpd-dev libuv1-dev libcurl4-openssl-dev libgnutls28-dev; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    for p in cc c++ make python3 objcopy; do
        command -v "$p" >/dev/null || missing+=("$( [ "$p" = python3 ] && echo python3 || echo build-essential)")
    done
    if [ "${#missing[@]}" -eq 0 ]; then echo "deps: every build package is present"; return 0; fi
    echo "deps: missing ${missing[*]}"
    if [ "${GPU_VERIFY_DEPS:-min}" = full ]; then
        bash tools/deps.sh && return 0
    fi
    export DEBIAN_FRONTEND=noninteractive
    if apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null; then
        echo "deps: installed ${missing[*]}"; return 0
    fi
    echo "deps: apt-get failed; trying tools/deps.sh"
    dpkg --configure -a
    bash tools/deps.sh
}

fetch_sanitizer() {
    local c
    for c in /usr/local/cuda/bin/compute-sanitizer "$(command -v compute-sanitizer)"; do
        if [ -n "$c" ] && [ -x "$c" ]; then ln -sf "$c" "$WORK/compute-sanitizer"; "$c" --version; return 0; fi
    done
    local major pkg
    major=$(nvcc --version 2>/dev/null | sed -n 's/.*release \([0-9]*\)\..*/\1/p')
    if [ "${major:-13}" -ge 13 ]; then pkg='nvidia-cuda-sanitizer-api==13.0.85'; else pkg="nvidia-cuda-sanitizer-api-cu${major}"; fi
    python3 -m pip download -q --no-deps --disable-pip-version-check "$pkg" -d "$WORK/san-whl" ||
        python3 -m pip download -q --no-deps --disable-pip-version-check 'nvidia-cuda-sanitizer-api' -d "$WORK/san-whl" || return 1
    python3 -c "import glob, zipfile; [zipfile.ZipFile(w).extractall('$WORK/san') for w in glob.glob('$WORK/san-whl/*.whl')]" || return 1
    c=$(find "$WORK/san" -type f -name compute-sanitizer | head -1)
    [ -n "$c" ] || return 1
    chmod +x "$c" && ln -sf "$c" "$WORK/compute-sanitizer" && "$c" --version
}

install_torch() {
    for py in .venv-bench/bin/python python3; do
        if "$py" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
            echo "torch already usable in $py"; echo "$py" > "$WORK/torch-python"; return 0
        fi
    done
    bash tools/bench-venv.sh || true
    if .venv-bench/bin/python -c 'import sys, torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available()); sys.exit(0 if torch.cuda.is_available() else 1)'; then
        echo ".venv-bench/bin/python" > "$WORK/torch-python"
    else
        echo "torch-install: no torch that sees the GPU"
    fi
}

dstart() { # LOG ARGS...: starts bin/mrad, prints "PID PORT" (PORT empty on failure)
    local logf=$1 pid port i
    shift
    ./"$BN"/mrad --host 127.0.0.1 --port 0 "$@" > "$logf" 2>&1 &
    pid=$!
    for i in $(seq 1 60); do
        port=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$logf" | head -1)
        [ -n "$port" ] && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    echo "$pid $port"
}

dstop() { # PID LOG
    local i
    kill -TERM "$1" 2>/dev/null
    for i in $(seq 1 40); do kill -0 "$1" 2>/dev/null || break; sleep 0.25; done
    if kill -0 "$1" 2>/dev/null; then echo "FAIL daemon ignored SIGTERM: killed"; kill -KILL "$1"; return 1; fi
    tail -2 "$2"
}

daemon_step() {
    local port url pid i ok=0 fail=0 t0 t1 t2 shape dt m extra
    read -r pid port < <(dstart "$OUT/mrad.log" --backend "$GV_BE" --max-batch-requests 16 --batch-window-us 3000 --log-level info)
    if [ -z "$port" ]; then echo "FAIL daemon did not start:"; cat "$OUT/mrad.log"; kill -KILL "$pid" 2>/dev/null; return 1; fi
    url=http://127.0.0.1:$port
    head -3 "$OUT/mrad.log"
    ./"$BN"/mractl health --url "$url"; echo
    ./"$BN"/mractl info --url "$url" > "$WORK/info.json"; cat "$WORK/info.json"; echo
    grep -q "\"$GV_BE\"" "$WORK/info.json" && echo "PASS /v1/info names the $GV_BE backend" && ok=$((ok+1)) ||
        { echo "FAIL /v1/info does not name the $GV_BE backend"; fail=$((fail+1)); }
    # shape;dtype;method;extra
    local reqs=("1,4,2048,64;bf16;mra2;" "1,4,2048,64;f32;mra2;" "2,2,1000,128;f16;mra2_sparse;--hkv 1"
                "1,2,4100,64;bf16;exact;" "1,12,8192,64;bf16;mra2;--block-per-row 16" "1,2,777,40;f32;exact;"
                "1,8,16384,64;bf16;mra2;--hkv 2" "1,8,512,64;bf16;mra2;--kv-len 4096 --causal --hkv 2"
                "2,4,1000,72;f16;exact;--kv-len 333 --causal" "1,4,300,64;f32;mra2_sparse;--kv-len 2100")
    for i in "${!reqs[@]}"; do
        IFS=';' read -r shape dt m extra <<< "${reqs[$i]}"
        # shellcheck disable=SC2086
        ./"$BN"/mractl random --shape "$shape" --dtype "$dt" --method "$m" --seed $((i + 11)) $extra -o "$WORK/req$i.mp" || { fail=$((fail+1)); continue; }
        t0=$(date +%s.%N)
        if ! ./"$BN"/mractl run --url "$url" --timeout 60 "$WORK/req$i.mp" > "$WORK/gpu$i.mp" 2> "$WORK/gpu$i.err"; then
            echo "FAIL req$i $shape $dt $m: server error: $(cat "$WORK/gpu$i.err")"; fail=$((fail+1)); continue
        fi
        t1=$(date +%s.%N)
        ./"$BN"/mractl run --local --backend cpu "$WORK/req$i.mp" > "$WORK/cpu$i.mp" 2> "$WORK/cpu$i.err"
        t2=$(date +%s.%N)
        awk -v a="$t0" -v b="$t1" -v c="$t2" -v s="$shape $dt $m" \
            'BEGIN { printf "%s: http+gpu %.3f s, local cpu %.3f s\n", s, b - a, c - b }'
        if python3 "$WORK/gv-compare.py" "$WORK/gpu$i.mp" "$WORK/cpu$i.mp" --want-backend "$GV_BE"; then ok=$((ok+1)); else fail=$((fail+1)); fi
    done
    # 8 identical requests at once: they share batches; every answer must
    # carry the bits of the single answer.
    local cpids=()
    for i in $(seq 1 8); do
        ./"$BN"/mractl run --url "$url" --timeout 60 "$WORK/req0.mp" > "$WORK/conc$i.mp" 2> "$WORK/conc$i.err" &
        cpids+=("$!")
    done
    wait "${cpids[@]}"
    for i in $(seq 1 8); do
        if python3 "$WORK/gv-compare.py" "$WORK/conc$i.mp" "$WORK/gpu0.mp" --bitwise --want-backend "$GV_BE"; then ok=$((ok+1)); else fail=$((fail+1)); fi
    done
    # A session: keys and values resident on the device, the last token
    # appended with the decoding step; against the whole problem locally.
    local sess=(--shape 1,8,1,64 --kv-len 3000 --hkv 2 --dtype bf16 --causal --method mra2 --seed 77)
    local kvid
    kvid=$(./"$BN"/mractl kv create --url "$url" "${sess[@]}" --tokens 0:2999 |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["kv"])')
    if [ -n "$kvid" ] &&
        ./"$BN"/mractl kv attend --url "$url" --kv "$kvid" "${sess[@]}" --append 2999:3000 > "$WORK/sess.mp" &&
        ./"$BN"/mractl random "${sess[@]}" -o "$WORK/sess-req.mp" &&
        ./"$BN"/mractl run --local --backend cpu "$WORK/sess-req.mp" > "$WORK/sess-cpu.mp"; then
        if python3 "$WORK/gv-compare.py" "$WORK/sess.mp" "$WORK/sess-cpu.mp" --want-backend "$GV_BE"; then
            ok=$((ok+1)); echo "PASS session of 3000 tokens, decoding step against the whole problem"
        else fail=$((fail+1)); echo "FAIL session: answer differs"; fi
        ./"$BN"/mractl kv delete --url "$url" --kv "$kvid" > /dev/null
    else
        fail=$((fail+1)); echo "FAIL session: create/attend failed"
    fi
    ./"$BN"/mractl health --url "$url"; echo
    grep -E 'VmRSS|VmHWM' "/proc/$pid/status" | tr -s ' \t' ' ' | sed 's/^/daemon host memory: /'
    ./"$BN"/mractl metrics --url "$url" > "$WORK/metrics.txt"
    grep -i -E 'device|batch|gpu|memory' "$WORK/metrics.txt" | grep -v '^#' | head -30
    dstop "$pid" "$OUT/mrad.log" || fail=$((fail+1))
    # Two workers (two backends, two threads) on the one GPU: --devices 0,0,
    # small batches so that both compute at once; same bits again.
    if [ "$GV_BE" = cuda ]; then
        read -r pid port < <(dstart "$OUT/mrad-2workers.log" --backend cuda --devices 0,0 --max-batch-requests 2 --batch-window-us 500 --log-level debug)
        if [ -z "$port" ]; then
            echo "FAIL daemon with --devices 0,0 did not start:"; cat "$OUT/mrad-2workers.log"; fail=$((fail+1))
            kill -KILL "$pid" 2>/dev/null
        else
            url=http://127.0.0.1:$port
            head -1 "$OUT/mrad-2workers.log"
            cpids=()
            for i in $(seq 1 16); do
                local r=$(( i % 2 ? 0 : 4 ))
                ./"$BN"/mractl run --url "$url" --timeout 60 "$WORK/req$r.mp" > "$WORK/two$i.mp" 2> "$WORK/two$i.err" &
                cpids+=("$!")
            done
            wait "${cpids[@]}"
            for i in $(seq 1 16); do
                local r=$(( i % 2 ? 0 : 4 ))
                if python3 "$WORK/gv-compare.py" "$WORK/two$i.mp" "$WORK/gpu$r.mp" --bitwise --want-backend cuda; then ok=$((ok+1)); else fail=$((fail+1)); fi
            done
            ./"$BN"/mractl metrics --url "$url" | grep -i -E 'device' | grep -v '^#' | head -10
            grep -o 'device [0-9]*: batch of [0-9]*' "$OUT/mrad-2workers.log" | sort | uniq -c
            dstop "$pid" "$OUT/mrad-2workers.log" || fail=$((fail+1))
        fi
    fi
    echo "daemon: $ok passed, $fail failed"
    [ "$fail" -eq 0 ]
}

sanitize() { # tool
    local tool=$1 extra=()
    [ "$tool" = racecheck ] && extra=(--racecheck-report all)
    "$WORK/compute-sanitizer" --tool "$tool" --error-exitcode 9 --print-limit 30 "${extra[@]}" \
        "$WORK/gv-harness" check --small
}

export ROOT OUT WORK JOBS GV_BE B BN
export -f env_info deps_min fetch_sanitizer install_torch dstart dstop daemon_step sanitize

# ---------------------------------------------------------------------------
log "gpu-verify: $ROOT -> $OUT (budget ${T_LIMIT}s, $JOBS cores)"
write_sources

step env 60 5 bash -c env_info
show env 'NVIDIA H|Driver Version|CUDA Version|release|MiB \||^name|^NVIDIA|No devices|failed|not found' 12
GPU_SEEN=0
grep -q -E 'NVIDIA|Tesla|H100|H200' "$OUT/env.log" && grep -q 'Driver Version' "$OUT/env.log" && GPU_SEEN=1
DRV_CUDA=$(sed -n 's/.*CUDA Version: *\([0-9.]*\).*/\1/p' "$OUT/env.log" | head -1)
NVCC_REL=$(sed -n 's/.*release \([0-9.]*\),.*/\1/p' "$OUT/env.log" | head -1)
log "GPU seen by nvidia-smi: $GPU_SEEN; driver supports CUDA ${DRV_CUDA:-?}; nvcc ${NVCC_REL:-?}"
if [ -n "$DRV_CUDA" ] && [ -n "$NVCC_REL" ] &&
    [ "$(printf '%s\n%s\n' "$DRV_CUDA" "$NVCC_REL" | sort -V | head -1)" != "$NVCC_REL" ]; then
    log "WARNING: the driver (CUDA $DRV_CUDA) is older than the toolkit (CUDA $NVCC_REL): the CUDA $NVCC_REL runtime will not start and the backend will report ENODEV"
fi

step deps 200 30 bash -c deps_min
show deps 'deps:' 5

[ "$GV_FAKE" != 1 ] && bg sanitizer-fetch 150 bash -c fetch_sanitizer
if [ "${GPU_VERIFY_TORCH:-1}" != 0 ] && [ "$GV_FAKE" != 1 ]; then
    bg torch-install $((T_LIMIT - SECONDS - 120 > 60 ? T_LIMIT - SECONDS - 120 : 60)) bash -c install_torch
fi

step build 300 60 "${MK[@]}" -j"$JOBS" CUDA=1 WERROR=1 all tests-build "$B/libmrad-bench.so" "$BN/bench-attn"
grep -n -E 'warning:|error:|Error [0-9]' "$OUT/build.log" | head -20 | sed 's/^/    /'
step archs 30 5 bash -c 'python3 "$WORK/fatbin-archs.py" "$B"/attention/cuda/*.o; ldd "$BN/mrad" | grep -E "cuda|cublas"'
show archs 'sm_|cuda|cublas' 10
[ "$GV_FAKE" != 1 ] && bg cuda-resources 200 "${MK[@]}" CUDA=1 cuda-resources

CUDA_HOME=$(dirname "$(dirname "$(command -v nvcc)")")
step harness-build 60 10 cc -std=c11 -O2 -Wall -Wextra -I. -I"$CUDA_HOME/include" -pthread \
    -o "$WORK/gv-harness" tools/gpu-verify/harness.c "$B/libattn.a" -L"$CUDA_HOME/lib64" \
    -lcublas -lcudart -lstdc++ -ldl -lrt -lm

if [ "$GV_FAKE" = 1 ]; then
    step gpu-probe 60 5 bash -c '"$B"/tests/cuda/gpu-probe || echo "(no GPU: expected in the plumbing test)"'
else
    step gpu-probe 60 5 "$B/tests/cuda/gpu-probe"
fi
GPU_OK=$?
if [ "$GV_FAKE" = 1 ]; then log "GV_FAKE_GPU=1: the CPU backend stands in for CUDA (plumbing test)"; GPU_OK=0; fi
show gpu-probe '.' 3
if [ "$GPU_OK" -ne 0 ] && [ "$GPU_SEEN" -eq 1 ]; then
    log "CRITICAL: nvidia-smi sees a GPU but the CUDA backend does not open (see gpu-probe.log for why): the GPU steps below cannot run"
    record gpu-opens FAIL "(a GPU is present, the backend does not open)"
fi

if [ "$GPU_OK" -eq 0 ]; then
    if [ "$GV_FAKE" = 1 ]; then
        step test-cuda 600 60 "${MK[@]}" CUDA=1 test-cuda
    else
        # the host emulations ran on the development machines already
        step test-cuda 240 60 env MRAD_REQUIRE_GPU=1 MRAD_TEST_CUDA_EMUL=0 "${MK[@]}" CUDA=1 test-cuda
    fi
    show test-cuda '^(ok|FAIL)|test-cuda:|full budget|vs cpu|rel diff' 40
    step check 150 30 "$WORK/gv-harness" check --gpu "$GV_BE"
    show check '^FAIL|check:|device memory|^backend' 30
    if [ "$GV_FAKE" != 1 ]; then
        step contain 90 30 "$WORK/gv-harness" contain
        show contain 'PASS|FAIL|contain:|memory' 10
    fi
    if [ "$GV_FAKE" != 1 ]; then
        bg dmon 400 nvidia-smi dmon -s pucm -d 1
        step bench 180 40 "$WORK/gv-harness" bench --n 4096,16384,65536 --h 12 --d 64 --dtypes bf16,f32 \
            --big 131072 --json "$OUT/bench-harness.jsonl"
        show bench '^(dtype|bf16|f32|FAIL)|health' 40
    fi
    step daemon 120 30 bash -c daemon_step
    show daemon '^(PASS|FAIL)|daemon:|http\+gpu' 40
    # compute-sanitizer, once it has been fetched
    for i in $(seq 1 30); do
        [ -x "$WORK/compute-sanitizer" ] && break
        kill -0 "${BG_sanitizer_fetch:-0}" 2>/dev/null || break
        sleep 1
    done
    if [ -x "$WORK/compute-sanitizer" ] && [ "$GV_FAKE" != 1 ]; then
        step memcheck 120 40 bash -c 'sanitize memcheck'
        show memcheck 'ERROR SUMMARY|Invalid|out of bounds|check:' 12
    else
        record memcheck SKIP "(compute-sanitizer not available: see sanitizer-fetch.log)"
    fi
    # PyTorch peer, when the background install has finished in time
    TPY=$(cat "$WORK/torch-python" 2>/dev/null)
    if [ -n "$TPY" ] && [ "$GV_FAKE" != 1 ]; then
        step bench-cuda-py 150 60 env MRAD_BENCH_SO="$B/libmrad-bench.so" "$TPY" bench/cuda/bench.py --quick --out "$OUT/bench-cuda.json"
        show bench-cuda-py 'device:|^D=|correctness|  D=|targets|ok$|MISSED|nothing|error|Error' 40
        step sdpa-peer 150 60 "$TPY" "$WORK/gv-sdpa.py" "$B/libmrad-bench.so" "$OUT/sdpa-peer.json"
        show sdpa-peer '.' 20
    else
        record torch-peer SKIP "(no torch with CUDA yet: see torch-install.log)"
    fi
    if [ -x "$WORK/compute-sanitizer" ] && [ "$GV_FAKE" != 1 ]; then
        step racecheck 150 60 bash -c 'sanitize racecheck'
        show racecheck 'ERROR SUMMARY|hazard|check:' 12
        step initcheck 90 40 bash -c 'sanitize initcheck'
        show initcheck 'ERROR SUMMARY|Uninitialized|check:' 12
        step synccheck 60 30 bash -c 'sanitize synccheck'
        show synccheck 'ERROR SUMMARY|check:' 8
    fi
    step bench-attn 60 30 ./"$BN"/bench-attn --backend "$GV_BE" --dtype bf16 --out "$OUT/bench-attn-cuda.json"
    show bench-attn '.' 14
    if [ "$GV_FAKE" != 1 ]; then
        step bench-d128 60 30 "$WORK/gv-harness" bench --n 16384,65536 --h 12 --d 128 --dtypes bf16 \
            --json "$OUT/bench-harness-d128.jsonl"
        show bench-d128 '^(dtype|bf16|FAIL)' 12
    fi
else
    record gpu-steps SKIP "(the CUDA backend did not open: see gpu-probe.log)"
    # What still runs without a GPU: the host emulation of the kernels.
    step emul 240 30 bash -c 'for t in "$B"/tests/cuda/test-*-emul; do "$t" || exit 1; done'
fi

# cuda-resources finished in the background meanwhile (or not)
if [ -f "$OUT/cuda-resources.log" ]; then
    grep -E 'regs|cuda-resources' "$OUT/cuda-resources.log" > /dev/null && log "cuda-resources: $(tail -1 "$OUT/cuda-resources.log")"
fi

# ---------------------------------------------------------------------------
{
    echo "gpu-verify summary ($(date -u +%FT%TZ), ${SECONDS}s)"
    grep -m1 -E '^NVIDIA|^name' -A1 "$OUT/env.log" 2>/dev/null | tail -1
    echo "driver CUDA ${DRV_CUDA:-?}, nvcc ${NVCC_REL:-?}, GPU seen ${GPU_SEEN}, backend opens $([ "$GV_FAKE" = 1 ] && echo "n/a (GV_FAKE_GPU=1: the CPU backend stood in)" || { [ "$GPU_OK" -eq 0 ] && echo yes || echo NO; })"
    echo
    printf '%s\n' "${STEPS[@]}"
    echo
    for f in test-cuda check contain daemon memcheck racecheck initcheck synccheck; do
        [ -f "$OUT/$f.log" ] || continue
        echo "[$f]"
        grep -E 'test-cuda:|^check:|^contain:|^daemon:|ERROR SUMMARY|^FAIL|^failed:' "$OUT/$f.log" | head -15
    done
    [ -f "$OUT/bench.log" ] && { echo "[bench: B=1 H=12 D=64, kernel = device pointers + CUDA events; e2e = host buffers]"; grep -E '^(dtype|bf16|f32|f16)' "$OUT/bench.log"; }
    [ -f "$OUT/bench-d128.log" ] && { echo "[bench D=128]"; grep -E '^(bf16)' "$OUT/bench-d128.log"; }
    [ -f "$OUT/bench-cuda-py.log" ] && { echo "[bench/cuda/bench.py --quick]"; grep -E '^D=|  D=|speedup|speed  ' "$OUT/bench-cuda-py.log"; }
    [ -f "$OUT/sdpa-peer.log" ] && { echo "[SDPA peer, H=12 D=64]"; cat "$OUT/sdpa-peer.log"; }
    [ -f "$OUT/daemon.log" ] && { echo "[daemon timings and host memory]"; grep -E 'http\+gpu|host memory' "$OUT/daemon.log"; }
    [ -f "$OUT/dmon.log" ] && { echo "[nvidia-smi dmon during the benchmarks, last lines]"; head -2 "$OUT/dmon.log"; tail -4 "$OUT/dmon.log"; }
    [ -f "$OUT/cuda-resources.log" ] && { echo "[cuda-resources]"; tail -1 "$OUT/cuda-resources.log"; }
} > "$SUMMARY"
echo
cat "$SUMMARY"
FAILS=$(printf '%s\n' "${STEPS[@]}" | grep -c -E ' (FAIL|TIMEOUT) ')
log "done in ${SECONDS}s; $FAILS step(s) failed or timed out; everything is in $OUT"
[ "$FAILS" -eq 0 ]
