#!/usr/bin/env bash
# Runs every test of mirrorlab. Installs what the tests need when it is missing and this
# machine can (Debian/Ubuntu as root):
#   - libclang, which the SQLite session extension's bindings are generated with;
#   - Chromium and chromedriver, for the portal's browser test;
# starts the Docker engine when it is installed but not running, and builds the image
# mirrorlab:latest without a registry (tests/docker/build-offline.sh) and, for the lab's
# monitoring profile, prom/prometheus:latest from Debian's prometheus package
# (tests/docker/build-prometheus-offline.sh) and, for its haproxy profile, haproxy:latest from
# Debian's haproxy package (tests/docker/build-haproxy-offline.sh) for the compose test,
# which runs once with each Compose (v2 and 1.29), and for the Swarm stack's test; and
# kubernetes-validate (Python, in a virtual environment under target/) for the Kubernetes
# manifests' test.
# A test whose tool is missing fails; nothing is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; }
apt_updated=no
apt_install() {
    if [ "$apt_updated" = no ]; then
        apt-get update -qq
        apt_updated=yes
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# libclang itself (libclang.so, libclang-14.so.1), not libclang-cpp, which other packages bring.
have_libclang() {
    ldconfig -p 2>/dev/null | grep -Eq 'libclang(-[0-9.]+)?\.so' \
        || compgen -G '/usr/lib/llvm-*/lib/libclang.so*' >/dev/null
}

if ! have_libclang; then
    if as_root; then
        echo "tests/run.sh: installing libclang-dev (needed to build rusqlite's session bindings)"
        apt_install libclang-dev
    else
        echo "tests/run.sh: libclang is missing; install it first (Debian/Ubuntu: sudo apt-get install libclang-dev)" >&2
        exit 1
    fi
fi

if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    if as_root; then
        echo "tests/run.sh: installing chromium and chromium-driver (the portal's browser test)"
        apt_install chromium chromium-driver
    else
        echo "tests/run.sh: chromium and chromedriver are missing; the browser test will fail" >&2
        echo "  (Debian/Ubuntu: sudo apt-get install chromium chromium-driver)" >&2
    fi
fi

# The Kubernetes manifests are validated offline against the API's schemas by the Python
# package kubernetes-validate (tests/kubernetes.rs), kept in a virtual environment of its own.
if [ -z "${MIRRORLAB_KUBERNETES_VALIDATE:-}" ] && ! command -v kubernetes-validate >/dev/null; then
    venv=target/python-tools
    if [ ! -x "$venv/bin/kubernetes-validate" ]; then
        if ! python3 -c 'import ensurepip, venv' 2>/dev/null && as_root; then
            echo "tests/run.sh: installing python3-venv (for kubernetes-validate)"
            apt_install python3-venv
        fi
        echo "tests/run.sh: installing kubernetes-validate in $venv"
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check 'kubernetes-validate==1.37.0'
    fi
    export MIRRORLAB_KUBERNETES_VALIDATE="$PWD/$venv/bin/kubernetes-validate"
fi

if command -v docker >/dev/null && ! docker info >/dev/null 2>&1 \
    && [ "$(id -u)" = 0 ] && command -v dockerd >/dev/null; then
    echo "tests/run.sh: starting the Docker engine"
    (dockerd >/var/log/mirrorlab-dockerd.log 2>&1 &)
    for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
fi
if docker info >/dev/null 2>&1; then
    tests/docker/build-offline.sh
    tests/docker/build-prometheus-offline.sh
    tests/docker/build-haproxy-offline.sh
else
    echo "tests/run.sh: no Docker engine answers; the compose test will fail" >&2
fi

# The compose lab publishes fixed host ports (52775 to 52780) that lie inside Linux's ephemeral
# range: a port the kernel hands out to another test (a member on port 0, Chromium's debugging
# port, a client's connection) could hold one just when the lab starts. Reserved ports are never
# handed out automatically. (Without root, free_port in tests/common skips them all the same.)
reserved=/proc/sys/net/ipv4/ip_local_reserved_ports
if [ "$(id -u)" = 0 ] && [ -w "$reserved" ]; then
    current=$(cat "$reserved")
    echo "${current:+$current,}52775-52780" > "$reserved"
fi

cargo test --locked "$@"

# The lab must work with Compose v2 and with docker-compose 1.29: the compose test ran with
# the first of `docker compose` / `docker-compose` it found; run it again with the other one
# (Compose v2 comes from Debian's packages when this machine has none: tests/docker/compose-v2.sh).
if [ $# -eq 0 ]; then
    if docker compose version >/dev/null 2>&1; then
        if docker-compose version 2>/dev/null | grep -q 'version 1\.'; then
            MIRRORLAB_COMPOSE=docker-compose cargo test --locked --test compose
        fi
    else
        compose_v2=$(tests/docker/compose-v2.sh)
        MIRRORLAB_COMPOSE="$compose_v2" cargo test --locked --test compose
    fi
fi

# The fault tests again, with fresh seeds: their faults land at other moments of the write
# stream each time (tests/common/mod.rs, before_fault). MIRRORLAB_FAULT_REPEATS sets how often.
if [ $# -eq 0 ]; then
    for _ in $(seq 1 "${MIRRORLAB_FAULT_REPEATS:-1}"); do
        cargo test --locked --test failover --test sequences
    done
fi

# The deterministic simulation, optimised and with many more seeds than `cargo test`'s run of
# it: each seed is one long run of faults and healing (see src/simulation). MIRRORLAB_SIM_SEEDS
# sets how many.
if [ $# -eq 0 ]; then
    # The same static release build as the image's (tests/docker/build-offline.sh), so nothing
    # is compiled again here.
    target="$(rustc -vV | sed -n 's/^host: //p')"
    MIRRORLAB_SIM_SEEDS="${MIRRORLAB_SIM_SEEDS:-10000}" RUSTFLAGS='-C target-feature=+crt-static' \
        cargo test --release --locked --target "$target" --test simulation
fi
