#!/usr/bin/env bash
# The comparison benchmark, in one run on this machine:
#   - mirrorlab, one standalone member and a mirrored pair (primary + active backup);
#   - PostgreSQL from Debian's packages as primary + synchronous standby on loopback
#     (fsync = on, synchronous_commit = on, synchronous_standby_names = 'standby'), driven by
#     pgbench inserting the same row shape;
#   - MariaDB from Debian's packages as primary + semi-synchronous replica on loopback
#     (sync_binlog = 1, innodb_flush_log_at_trx_commit = 1, rpl_semi_sync_master_enabled with
#     the wait point AFTER_SYNC), driven by sysbench inserting the same row shape
#     (MIRRORLAB_BENCH_MARIADB_SYNC_RELAY_LOG=1: the replica syncs its relay log at every event);
# at 1, 4, 16 and 64 clients, one table with the ratios; then idle memory, the Mirror Monitor
# under load, catchup and copy rates (`mirrorlab-bench --mode all`), and the failover time
# distribution (`mirrorlab-bench --mode failover`).
#
#   bench/run.sh                 the full run (about 5 minutes; numbers for the README)
#   bench/run.sh --smoke         seconds, not minutes: checks that the harness still works
#   options: --seconds N  --clients 1,4,16,64  --kills N  --rows N
#
# Installs postgresql, mariadb-server and sysbench with apt when they are missing and this runs
# as root. The servers live in temporary folders and are stopped and removed at the end.
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
maria_bin=/usr/sbin/mariadbd
if [ ! -x "$maria_bin" ] || ! command -v mariadb-install-db >/dev/null || ! command -v sysbench >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "bench/run.sh: installing mariadb-server and sysbench"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mariadb-server mariadb-client sysbench >/dev/null
    else
        echo "bench/run.sh: MariaDB or sysbench is missing (Debian/Ubuntu: sudo apt-get install mariadb-server sysbench)" >&2
        exit 1
    fi
fi

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
# MariaDB's servers run as the mysql user when this runs as root, in a folder of their own.
maria="$(mktemp -d)"
[ "$(id -u)" = 0 ] && chown mysql "$maria"
maria_primary_port="$(free_port)"
maria_replica_port="$(free_port)"
while [ "$maria_replica_port" = "$maria_primary_port" ]; do maria_replica_port="$(free_port)"; done
cleanup() {
    as_pg "$bin/pg_ctl" -D "$work/standby" -m fast stop >/dev/null 2>&1 || true
    as_pg "$bin/pg_ctl" -D "$work/primary" -m fast stop >/dev/null 2>&1 || true
    for role in replica primary; do
        mariadb-admin --socket="$maria/$role.sock" --user=root shutdown >/dev/null 2>&1 || true
    done
    rm -rf "$work" "$maria"
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

# MariaDB: the primary answers a commit once the replica has it in its relay log (AFTER_SYNC:
# after the primary's binary log fsync). The semi-synchronous timeout is an hour, so the
# primary never quietly goes on without its replica during the run (Rpl_semi_sync_master_no_tx
# is checked at the end).
maria_sql() { mariadb --socket="$maria/$1.sock" --user=root --batch --skip-column-names -e "$2"; }
# The value of one of the primary's status variables.
maria_status() { maria_sql primary "SHOW STATUS LIKE '$1'" | awk '{print $2}'; }
# As root: the servers run as mysql, and root logs in through the socket as root. Otherwise they
# run as this user, whose name is not MariaDB's root: root gets no password instead (the servers
# listen on loopback and live for this run only).
if [ "$(id -u)" = 0 ]; then
    user=(--user=mysql) auth=socket
else
    user=() auth=normal
fi
for role in primary replica; do
    if [ "$role" = primary ]; then
        server_id=1 port="$maria_primary_port"
        # Semi-synchronous from when the replica is connected (below): before, the setup's own
        # statements would wait for it.
        semisync_flags=(--rpl-semi-sync-master-wait-point=AFTER_SYNC
            --rpl-semi-sync-master-timeout=3600000)
    else
        server_id=2 port="$maria_replica_port"
        # The replica acknowledges an event once it is in its relay log, which MariaDB syncs
        # only every 10 000 events by default — PostgreSQL's standby and mirrorlab's backup make
        # what they acknowledge durable first. MIRRORLAB_BENCH_MARIADB_SYNC_RELAY_LOG=1 syncs it
        # at every event instead (sync_relay_log = 1), the same promise at MariaDB's price.
        semisync_flags=(--rpl-semi-sync-slave-enabled=ON --relay-log="$maria/$role-relay")
        if [ "${MIRRORLAB_BENCH_MARIADB_SYNC_RELAY_LOG:-0}" = 1 ]; then
            semisync_flags+=(--sync-relay-log=1)
        fi
    fi
    mariadb-install-db --no-defaults "${user[@]}" --datadir="$maria/$role" \
        --auth-root-authentication-method="$auth" --skip-test-db >"$maria/$role-install.log" 2>&1
    "$maria_bin" --no-defaults "${user[@]}" --datadir="$maria/$role" --socket="$maria/$role.sock" \
        --pid-file="$maria/$role.pid" --log-error="$maria/$role.err" \
        --bind-address=127.0.0.1 --port="$port" --skip-name-resolve --max-connections=200 \
        --server-id="$server_id" --log-bin="$maria/$role-bin" --sync-binlog=1 \
        --innodb-flush-log-at-trx-commit=1 --innodb-buffer-pool-size=256M \
        "${semisync_flags[@]}" >/dev/null 2>&1 &
    for _ in $(seq 1 300); do
        mariadb-admin --socket="$maria/$role.sock" --user=root ping >/dev/null 2>&1 && break
        sleep 0.1
    done
    if ! mariadb-admin --socket="$maria/$role.sock" --user=root ping >/dev/null 2>&1; then
        echo "bench/run.sh: MariaDB's $role did not start" >&2
        cat "$maria/$role-install.log" "$maria/$role.err" >&2 || true
        exit 1
    fi
done
maria_sql primary "SET SESSION sql_log_bin = 0;
    CREATE USER 'repl'@'127.0.0.1'; GRANT REPLICATION SLAVE ON *.* TO 'repl'@'127.0.0.1';
    CREATE USER 'bench'@'127.0.0.1'; GRANT ALL ON bench.* TO 'bench'@'127.0.0.1';
    SET SESSION sql_log_bin = 1; CREATE DATABASE bench;"
maria_sql replica "CHANGE MASTER TO MASTER_HOST = '127.0.0.1', MASTER_PORT = $maria_primary_port,
    MASTER_USER = 'repl', MASTER_USE_GTID = slave_pos; START SLAVE;"
# The replica's connection asks for semi-synchronous replication as it starts: connect again
# once the primary offers it.
maria_sql primary "SET GLOBAL rpl_semi_sync_master_enabled = ON"
maria_sql replica "STOP SLAVE IO_THREAD; START SLAVE IO_THREAD;"
for _ in $(seq 1 100); do
    semisync="$(maria_status Rpl_semi_sync_master_status)"
    replicas="$(maria_status Rpl_semi_sync_master_clients)"
    [ "$semisync" = ON ] && [ "$replicas" = 1 ] && break
    sleep 0.1
done
if [ "$semisync" != ON ] || [ "$replicas" != 1 ]; then
    echo "bench/run.sh: MariaDB's replica never became semi-synchronous (status '$semisync', replicas '$replicas')" >&2
    cat "$maria/primary.err" "$maria/replica.err" >&2
    exit 1
fi
echo "bench/run.sh: MariaDB $("$maria_bin" --version | awk '{print $3}'): primary on $maria_primary_port, semi-synchronous replica on $maria_replica_port"

"$bench" --mode all --seconds "$seconds" --clients "$clients" --rows "$rows" \
    --postgres "$conninfo" --mariadb "127.0.0.1:$maria_primary_port"
# Every MariaDB commit of the run waited for the replica: none went without it.
unacknowledged="$(maria_status Rpl_semi_sync_master_no_tx)"
acknowledged="$(maria_status Rpl_semi_sync_master_yes_tx)"
echo "MariaDB: $acknowledged commits acknowledged by the replica, $unacknowledged without it"
if [ "$unacknowledged" != 0 ]; then
    echo "bench/run.sh: MariaDB committed $unacknowledged transactions without its replica" >&2
    exit 1
fi
echo
"$bench" --mode failover --kills "$kills"
