#!/usr/bin/env bash
# deps.sh - installs what building, running and testing mrad needs and is
# missing: Debian packages through apt-get (as root, or through sudo), and
# a project-local Python virtual environment (.venv) for the test tooling
# and the Python client.  Idempotent and quick when nothing is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the build and the tests need.
pkgs=(build-essential pkg-config clang libmsgpack-dev libcmocka-dev
      libmicrohttpd-dev libuv1-dev libcurl4-openssl-dev libgnutls28-dev
      prometheus gnuplot-nox python3 python3-venv python3-pip curl ca-certificates
      systemd strace valgrind openssl)
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
