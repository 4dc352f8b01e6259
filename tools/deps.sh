#!/usr/bin/env bash
# deps.sh - installs what building, running and testing mrad needs and is
# missing: Debian packages through apt-get (as root, or through sudo), a
# project-local Python virtual environment (.venv) for the test tooling
# and the Python client, and Triton's perf_analyzer in .venv/perf-analyzer
# (run through tools/perf-analyzer).  Idempotent and quick when nothing is
# missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the build and the tests need.
pkgs=(build-essential pkg-config clang libmsgpack-dev libcmocka-dev
      libmicrohttpd-dev libuv1-dev libcurl4-openssl-dev libgnutls28-dev
      prometheus gnuplot-nox python3 python3-venv python3-pip curl ca-certificates
      systemd strace valgrind openssl libb64-0d)
[ -f tools/deps-extra.txt ] && mapfile -t -O "${#pkgs[@]}" pkgs < <(grep -v '^#' tools/deps-extra.txt | grep .)

missing=()
for p in "${pkgs[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "deps: installing Debian packages: ${missing[*]}"
    if [ "$(id -u)" -eq 0 ]; then SUDO=; elif command -v sudo >/dev/null; then SUDO=sudo; else
        echo "deps: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Project-local Python environment.
req=tests/requirements.txt
stamp=.venv/.deps-stamp
want=$( { cat "$req"; cat clients/python/pyproject.toml 2>/dev/null || true; } | sha256sum | cut -c1-16)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "deps: preparing .venv"
    [ -x .venv/bin/python ] || python3 -m venv .venv
    .venv/bin/python -m pip install -q --disable-pip-version-check -r "$req"
    if [ -f clients/python/pyproject.toml ]; then
        .venv/bin/python -m pip install -q --disable-pip-version-check -e clients/python
    fi
    echo "$want" > "$stamp"
fi

# perf_analyzer, Triton's load generator, for the /v2 API (tools/perf-analyzer
# runs it).  PyPI has it only inside tritonclient's manylinux wheels, up to
# 2.60.0, and from 2.52.0 on that binary needs glibc 2.38: 2.51.0 is the
# last one that runs on Debian 12.  It links libb64.so.0d (Debian's
# libb64-0d, above) and libcudart.so.12, which NVIDIA's runtime wheel
# brings; no GPU is needed for HTTP and system shared memory.  Only the
# binary is used, so both wheels go without their dependencies into a
# folder of their own, off the interpreter's path: the tests import the
# tritonclient of tests/requirements.txt, and 2.51.0 would pin numpy<2.
pa_pkgs=(tritonclient==2.51.0 nvidia-cuda-runtime-cu12==12.9.79)
pa_dir=.venv/perf-analyzer
pa_want=$(printf '%s\n' "${pa_pkgs[@]}" | sha256sum | cut -c1-16)
if [ "$(cat "$pa_dir/.stamp" 2>/dev/null)" != "$pa_want" ]; then
    echo "deps: installing perf_analyzer into $pa_dir"
    rm -rf "$pa_dir"
    .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps \
        --only-binary=:all: --target "$pa_dir" "${pa_pkgs[@]}"
    rm -f "$pa_dir/bin/perf_client"    # the same binary under its old name
    echo "$pa_want" > "$pa_dir/.stamp"
fi
