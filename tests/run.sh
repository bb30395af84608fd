#!/usr/bin/env bash
# Runs every test of mirrorlab. Installs what the build needs when it is missing and this
# machine can (Debian/Ubuntu as root): libclang, which the SQLite session extension's bindings
# are generated with.
set -euo pipefail
cd "$(dirname "$0")/.."

have_libclang() {
    ldconfig -p 2>/dev/null | grep -q 'libclang.*\.so' \
        || compgen -G '/usr/lib/llvm-*/lib/libclang*.so*' >/dev/null
}

if ! have_libclang; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "tests/run.sh: installing libclang-dev (needed to build rusqlite's session bindings)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libclang-dev >/dev/null
    else
        echo "tests/run.sh: libclang is missing; install it first (Debian/Ubuntu: sudo apt-get install libclang-dev)" >&2
        exit 1
    fi
fi

cargo test --locked "$@"
