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
pyclient=clients/python/tests
if find tests/integration $pyclient -name 'test_*.py' 2>/dev/null | grep -q .; then
    run_one pytest .venv/bin/python -m pytest -q -p no:cacheprovider tests/integration \
        $( [ -d $pyclient ] && echo $pyclient --ignore=$pyclient/hf \
            --ignore=$pyclient/test_packaging.py ) bench/cpu
fi

# The Python client as its users get it: its wheel in a fresh environment,
# its type check, and its torch tensors and transformers drop-in in the
# environment with PyTorch that tools/hf-venv.sh prepares once per machine.
# They check Python code, not the daemon, so a sanitizer run leaves them out.
# Each step has a time limit, far above what it takes on 2 cores: the
# wheel's tests about 1 min, the first install of the environment about
# 2 min (then none), a cold type check 1.5 min (then seconds), the torch
# and transformers tests about 1 min.  MRA_CLIENT_HF_REQUIRED makes a
# missing package or a skipped test a failure.
if [ -z "${SANITIZE:-}" ] && [ -d $pyclient ]; then
    run_one pytest-mra-client-wheel timeout 900 .venv/bin/python -m pytest -q \
        -p no:cacheprovider $pyclient/test_packaging.py
    t0=$SECONDS
    if hfpy=$(timeout 1200 bash tools/hf-venv.sh); then
        passed=$((passed + 1)); echo "ok   hf-venv ($((SECONDS - t0))s)"
        run_one mypy-mra-client timeout 600 "$hfpy" -m mypy --strict \
            --config-file clients/python/pyproject.toml \
            --cache-dir "$(dirname "$hfpy")/../mypy-cache" clients/python/mra_client
        run_one pytest-mra-client-hf env PYTHONPATH="$PWD/clients/python" \
            MRA_CLIENT_HF_REQUIRED=1 timeout 900 "$hfpy" -m pytest -q -p no:cacheprovider \
            $pyclient/hf
    else
        failed=$((failed + 1)); failures+=(hf-venv); echo "FAIL hf-venv ($((SECONDS - t0))s)"
    fi
fi

echo
[ "$failed" -eq 0 ] || printf 'failed: %s\n' "${failures[*]}"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
