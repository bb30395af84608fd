//! The PostgreSQL side of the comparison: the same row shape inserted by `pgbench` into a
//! PostgreSQL primary that waits for a synchronous standby.
//!
//! `bench/run.sh` starts the two PostgreSQL servers (loopback, `fsync = on`,
//! `synchronous_commit = on`, `synchronous_standby_names` naming the standby) and passes the
//! primary's connection string here. This module creates the table, writes a pgbench script
//! with one `INSERT` per transaction — a company row as `POST /api/apps/companies` makes it —
//! runs `pgbench -T` once per client count with per-transaction logs, and reads the latencies
//! from those logs, so its p50 / p99 are computed exactly as mirrorlab's are.
//!
//! Left out: pgbench speaks PostgreSQL's binary protocol over one connection per client, while
//! mirrorlab's clients speak HTTP + JSON; each system is driven the way its users drive it.

use std::path::Path;
use std::time::Duration;

use tokio::process::Command;

use super::{StepResult, peer, percentile};
use mirrorlab::error::Result;

/// The table, shaped like COMPANY's `Company` (install/schema/company.sql).
const TABLE: &str = "CREATE TABLE IF NOT EXISTS company (\
    id bigserial PRIMARY KEY, \
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200), \
    mission text NOT NULL DEFAULT '', \
    revenue bigint, \
    tax_id text NOT NULL DEFAULT '', \
    created_at text NOT NULL); \
    CREATE INDEX IF NOT EXISTS company_name ON company(name);";

/// One transaction: the row the benchmark's API clients insert.
const SCRIPT: &str = "\\set n random(1, 1000000000)\n\
    INSERT INTO company (name, mission, created_at) \
    VALUES ('bench ' || :client_id || '-' || :n, 'benchmark row', \
    to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'));\n";

/// Creates the table on the primary (`psql`), which the standby receives.
pub async fn prepare(conninfo: &str) -> Result<()> {
    let mut psql = Command::new("psql");
    psql.args([conninfo, "-v", "ON_ERROR_STOP=1", "-q", "-c", TABLE]);
    peer::run(psql, "psql (creating the table)").await?;
    Ok(())
}

/// One step: `clients` pgbench clients for `duration`.
pub async fn step(conninfo: &str, clients: usize, duration: Duration) -> Result<StepResult> {
    peer::in_scratch_folder("pgbench", async |dir| {
        run_pgbench(dir, conninfo, clients, duration).await
    })
    .await
}

async fn run_pgbench(
    dir: &Path,
    conninfo: &str,
    clients: usize,
    duration: Duration,
) -> Result<StepResult> {
    let script = dir.join("insert.sql");
    std::fs::write(&script, SCRIPT)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = clients.min(cores * 2).max(1);
    let mut pgbench = Command::new("pgbench");
    pgbench
        .arg("--no-vacuum")
        .arg(format!("--file={}", script.display()))
        .arg(format!("--client={clients}"))
        .arg(format!("--jobs={threads}"))
        .arg(format!("--time={}", duration.as_secs().max(1)))
        .arg("--log")
        .arg(format!("--log-prefix={}", dir.join("tx").display()))
        .arg(conninfo)
        .current_dir(dir);
    peer::run(pgbench, "pgbench").await?;
    // Per-transaction log lines: client, transaction, latency (µs), script, epoch s, epoch µs.
    let mut latencies_us = Vec::new();
    let mut errors = 0u64;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let is_log = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("tx."));
        if !is_log {
            continue;
        }
        for line in std::fs::read_to_string(&path)?.lines() {
            match line.split_whitespace().nth(2).map(str::parse::<u64>) {
                Some(Ok(us)) => latencies_us.push(us),
                _ => errors += 1,
            }
        }
    }
    latencies_us.sort_unstable();
    Ok(StepResult {
        clients,
        commits_per_s: latencies_us.len() as f64 / duration.as_secs_f64().max(1.0),
        p50_ms: percentile(&latencies_us, 50.0),
        p99_ms: percentile(&latencies_us, 99.0),
        errors,
        commits_per_fsync: 0.0,
        commits: latencies_us.len() as u64,
        cpu: None,
    })
}
