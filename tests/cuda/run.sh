#!/usr/bin/env bash
# run.sh - `make test-cuda`: the attention unit tests with the CUDA backend
# (ATTN_TEST_BACKEND=cuda), then the GPU-specific tests of tests/cuda/.
# Without a GPU it says so and succeeds: there is nothing to run them on.
set -uo pipefail
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build}

if ! "$BUILD/tests/cuda/gpu-probe"; then
    echo "test-cuda: no GPU present, the CUDA kernels were not run"
    exit 0
fi
passed=0 failed=0 failures=()
run_one() { # name, command...
    local name=$1; shift
    if "$@"; then passed=$((passed + 1)); echo "ok   $name"
    else failed=$((failed + 1)); failures+=("$name"); echo "FAIL $name"; fi
}
for t in $(find "$BUILD/tests/attention" -maxdepth 1 -type f -name 'test-*' -perm -u+x 2>/dev/null | sort); do
    run_one "$(basename "$t") [cuda]" env ATTN_TEST_BACKEND=cuda "$t"
done
for t in $(find "$BUILD/tests/cuda" -maxdepth 1 -type f -name 'test-*' -perm -u+x | sort); do
    run_one "$(basename "$t")" "$t"
done
echo
[ "$failed" -eq 0 ] || printf 'failed: %s\n' "${failures[*]}"
echo "test-cuda: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
