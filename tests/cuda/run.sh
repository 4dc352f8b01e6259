#!/usr/bin/env bash
# run.sh - `make test-cuda`: the attention unit tests with the CUDA backend
# (ATTN_TEST_BACKEND=cuda), then the tests of tests/cuda/ (the GPU tests
# and the host emulations of the device code).
#
# Whether the backend opens is asked first (gpu-probe).  When it does not:
# - and the machine shows a GPU (nvidia-smi lists one, or /dev/nvidia0 ..
#   exists), that is a failure, with the reason (a driver older than the
#   CUDA runtime, a device too old, ...): the kernels must run there;
# - and there is no GPU, only the host emulations run, and the run says
#   that no kernel ran on a GPU.  MRAD_REQUIRE_GPU=1 makes that a failure
#   too (a host that is meant to have a GPU, tools/gpu-verify.sh).
# MRAD_TEST_CUDA_EMUL=0 leaves the host emulations out where a GPU runs
# the rest (they need no GPU, and GPU time is short).
set -uo pipefail
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build}

gpu_present() {
    compgen -G '/dev/nvidia[0-9]*' > /dev/null && return 0
    command -v nvidia-smi > /dev/null 2>&1 &&
        timeout 20 nvidia-smi -L 2> /dev/null | grep -q '^GPU '
}

passed=0 failed=0 failures=()
run_one() { # name, command...
    local name=$1; shift
    if "$@"; then passed=$((passed + 1)); echo "ok   $name"
    else failed=$((failed + 1)); failures+=("$name"); echo "FAIL $name"; fi
}

if ! probe=$("$BUILD/tests/cuda/gpu-probe"); then
    echo "$probe"
    if gpu_present; then
        echo "test-cuda: FAILED: this machine has a GPU but the CUDA backend" \
             "does not open (reason above)" >&2
        exit 1
    fi
    if [ "${MRAD_REQUIRE_GPU:-0}" = 1 ]; then
        echo "test-cuda: FAILED: no GPU present and MRAD_REQUIRE_GPU=1" >&2
        exit 1
    fi
    echo "test-cuda: no GPU present: no kernel runs on a GPU; the host" \
         "emulations of the device code:"
    for t in $(find "$BUILD/tests/cuda" -maxdepth 1 -type f -name 'test-*-emul' -perm -u+x | sort); do
        run_one "$(basename "$t")" "$t"
    done
    echo
    [ "$failed" -eq 0 ] || printf 'failed: %s\n' "${failures[*]}"
    echo "test-cuda: $passed passed, $failed failed (emulations only, no GPU)"
    [ "$failed" -eq 0 ]
    exit
fi
echo "$probe"
for t in $(find "$BUILD/tests/attention" -maxdepth 1 -type f -name 'test-*' -perm -u+x 2>/dev/null | sort); do
    run_one "$(basename "$t") [cuda]" env ATTN_TEST_BACKEND=cuda "$t"
done
for t in $(find "$BUILD/tests/cuda" -maxdepth 1 -type f -name 'test-*' -perm -u+x | sort); do
    case "$t" in *-emul) [ "${MRAD_TEST_CUDA_EMUL:-1}" = 0 ] && continue ;; esac
    run_one "$(basename "$t")" "$t"
done
echo
[ "$failed" -eq 0 ] || printf 'failed: %s\n' "${failures[*]}"
echo "test-cuda: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
