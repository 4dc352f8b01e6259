#!/usr/bin/env bash
# run.sh - runs every test: the cmocka unit tests, then the shell and
# Python integration tests.  Prints one summary line and exits non-zero on
# any failure.  BUILD and BIN name the build and binary folders.
set -uo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
BIN=${BIN:-bin}
export MRAD_BIN_DIR=$PWD/$BIN
export MRAD_TESTHOOKS_BIN=$PWD/$BUILD/tests/server/mrad-testhooks
passed=0 failed=0 failures=()

run_one() { # name, command...
    local name=$1; shift
    local t0=$SECONDS
    if "$@"; then
        passed=$((passed + 1)); echo "ok   $name ($((SECONDS - t0))s)"
    else
        failed=$((failed + 1)); failures+=("$name"); echo "FAIL $name ($((SECONDS - t0))s)"
    fi
}

for t in $(find "$BUILD/tests" -maxdepth 3 -type f -name 'test-*' -perm -u+x 2>/dev/null | sort); do
    run_one "$(basename "$t")" "$t"
done
for t in $(find tests/integration -maxdepth 1 -name 'test-*.sh' 2>/dev/null | sort); do
    run_one "$(basename "$t")" bash "$t"
done
if find tests/integration clients/python/tests -name 'test_*.py' 2>/dev/null | grep -q .; then
    run_one pytest .venv/bin/python -m pytest -q -p no:cacheprovider tests/integration \
        $( [ -d clients/python/tests ] && echo clients/python/tests ) bench/cpu
fi

echo
[ "$failed" -eq 0 ] || printf 'failed: %s\n' "${failures[*]}"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
