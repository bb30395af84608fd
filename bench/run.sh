#!/usr/bin/env bash
# The comparison benchmark, in one run on this machine:
#   - mirrorlab, one standalone member and a mirrored pair (primary + active backup);
#   - PostgreSQL from Debian's packages as primary + synchronous standby on loopback
#     (fsync = on, synchronous_commit = on, synchronous_standby_names = 'standby'), driven by
#     pgbench inserting the same row shape;
# at 1, 4, 16 and 64 clients, one table with the ratios; then idle memory, the Mirror Monitor
# under load, catchup and copy rates (`mirrorlab-bench --mode all`), and the failover time
# distribution (`mirrorlab-bench --mode failover`).
#
#   bench/run.sh                 the full run (about 5 minutes; numbers for the README)
#   bench/run.sh --smoke         seconds, not minutes: checks that the harness still works
#   options: --seconds N  --clients 1,4,16,64  --kills N  --rows N
#
# Installs postgresql with apt when it is missing and this runs as root. PostgreSQL's servers
# live in a temporary folder and are stopped and removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=10 clients=1,4,16,64 kills=10 rows=1000000
while [ $# -gt 0 ]; do
    case "$1" in
        --smoke) seconds=1 clients=1,4 kills=1 rows=20000 ;;
        --seconds) seconds="$2"; shift ;;
        --clients) clients="$2"; shift ;;
        --kills) kills="$2"; shift ;;
        --rows) rows="$2"; shift ;;
        *) echo "bench/run.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

pg_bin() { compgen -G '/usr/lib/postgresql/*/bin/initdb' | sort -V | tail -1 | xargs -r dirname; }
if [ -z "$(pg_bin)" ] || ! command -v pgbench >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "bench/run.sh: installing postgresql"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    else
        echo "bench/run.sh: PostgreSQL is missing (Debian/Ubuntu: sudo apt-get install postgresql)" >&2
        exit 1
    fi
fi
bin="$(pg_bin)"

# The benchmark program and the member program it starts (MIRRORLAB_BENCH_BIN and
# MIRRORLAB_BIN when set: both, or neither, are release builds of this checkout).
bench="${MIRRORLAB_BENCH_BIN:-}"
if [ -z "$bench" ]; then
    cargo build --release --locked --quiet --bin mirrorlab --bin mirrorlab-bench
    bench=target/release/mirrorlab-bench
    export MIRRORLAB_BIN="${MIRRORLAB_BIN:-target/release/mirrorlab}"
fi

# PostgreSQL refuses to run as root: as root, its servers run as the postgres user.
as_pg() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
# A port nothing listens on (a connection to it is refused).
free_port() {
    local port
    while :; do
        port=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
    done
}

work="$(mktemp -d)"
[ "$(id -u)" = 0 ] && chown postgres "$work"
primary_port="$(free_port)"
standby_port="$(free_port)"
while [ "$standby_port" = "$primary_port" ]; do standby_port="$(free_port)"; done
cleanup() {
    as_pg "$bin/pg_ctl" -D "$work/standby" -m fast stop >/dev/null 2>&1 || true
    as_pg "$bin/pg_ctl" -D "$work/primary" -m fast stop >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

echo "bench/run.sh: PostgreSQL $("$bin/postgres" --version | awk '{print $3}'): primary on $primary_port, synchronous standby on $standby_port"
as_pg "$bin/initdb" -D "$work/primary" -U postgres --auth=trust -E UTF8 >"$work/initdb.log"
cat >>"$work/primary/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $primary_port
unix_socket_directories = '$work'
fsync = on
synchronous_commit = on
synchronous_standby_names = 'standby'
wal_level = replica
max_wal_senders = 4
max_connections = 200
CONF
as_pg "$bin/pg_ctl" -D "$work/primary" -l "$work/primary.log" -w start >/dev/null
as_pg "$bin/pg_basebackup" -h 127.0.0.1 -p "$primary_port" -U postgres -D "$work/standby" \
    -X stream --checkpoint=fast
cat >>"$work/standby/postgresql.conf" <<CONF
port = $standby_port
primary_conninfo = 'host=127.0.0.1 port=$primary_port user=postgres application_name=standby'
CONF
as_pg touch "$work/standby/standby.signal"
as_pg "$bin/pg_ctl" -D "$work/standby" -l "$work/standby.log" -w start >/dev/null
conninfo="host=127.0.0.1 port=$primary_port user=postgres dbname=postgres"
for _ in $(seq 1 100); do
    state="$(psql "$conninfo" -Atc "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'standby'")"
    [ "$state" = sync ] && break
    sleep 0.1
done
if [ "$state" != sync ]; then
    echo "bench/run.sh: the standby never became synchronous (state: '$state')" >&2
    exit 1
fi

"$bench" --mode all --seconds "$seconds" --clients "$clients" --rows "$rows" \
    --postgres "$conninfo"
echo
"$bench" --mode failover --kills "$kills"
