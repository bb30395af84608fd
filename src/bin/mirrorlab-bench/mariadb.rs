//! The MariaDB side of the comparison: the same row shape inserted by `sysbench` into a MariaDB
//! primary with semi-synchronous replication to a replica.
//!
//! `bench/run.sh` starts the two servers on loopback — the primary with the binary log synced
//! at every commit (`sync_binlog = 1`), InnoDB's log flushed at every commit
//! (`innodb_flush_log_at_trx_commit = 1`) and `rpl_semi_sync_master_enabled` with the wait point
//! `AFTER_SYNC`, so a commit is answered only once it is durable here and the replica has it in
//! its relay log; the replica with `rpl_semi_sync_slave_enabled` — and passes the primary's
//! address here. By default the replica syncs its relay log only now and then
//! (`sync_relay_log`), so what it acknowledged may still be in its page cache, where mirrorlab's
//! backup and PostgreSQL's synchronous standby (`synchronous_commit = on`) have it on disk;
//! `bench/run.sh` can sync it at every event instead (see there). This module creates the table, writes a sysbench Lua script with one autocommitted
//! `INSERT` per event (a company row as `POST /api/apps/companies` makes it), runs `sysbench`
//! once per client count, and reads the commits and the latency histogram from its report, so
//! p50 and p99 come from every transaction's latency (to the histogram's resolution, about 1 %).
//!
//! Left out: sysbench speaks MariaDB's text protocol over one connection per client, while
//! mirrorlab's clients speak HTTP + JSON; each system is driven the way its users drive it.

use std::path::Path;
use std::time::Duration;

use tokio::process::Command;

use super::{StepResult, peer};
use mirrorlab::error::{Error, Result};

/// The table, shaped like COMPANY's `Company` (install/schema/company.sql).
const TABLE: &str = "CREATE TABLE IF NOT EXISTS company (\
    id BIGINT AUTO_INCREMENT PRIMARY KEY, \
    name VARCHAR(200) NOT NULL CHECK (CHAR_LENGTH(name) BETWEEN 1 AND 200), \
    mission TEXT NOT NULL DEFAULT '', \
    revenue BIGINT, \
    tax_id VARCHAR(64) NOT NULL DEFAULT '', \
    created_at VARCHAR(32) NOT NULL, \
    KEY company_name (name)) ENGINE=InnoDB";

/// One event: the row the benchmark's API clients insert, committed on its own.
const SCRIPT: &str = r#"function thread_init()
    con = sysbench.sql.driver():connect()
end
function thread_done()
    con:disconnect()
end
function event()
    con:query(string.format("INSERT INTO company (name, mission, created_at) VALUES " ..
        "('bench %d-%d', 'benchmark row', DATE_FORMAT(UTC_TIMESTAMP(), '%%Y-%%m-%%d %%H:%%i:%%s'))",
        sysbench.tid, math.random(1, 1000000000)))
end
"#;

/// Where the primary answers: `host:port`, user `bench`, database `bench`.
fn split(address: &str) -> Result<(&str, &str)> {
    address
        .rsplit_once(':')
        .ok_or_else(|| Error::InvalidInput(format!("--mariadb {address:?}: host:port expected")))
}

/// Creates the table on the primary (the `mariadb` client), which the replica receives.
pub async fn prepare(address: &str) -> Result<()> {
    let (host, port) = split(address)?;
    let mut client = Command::new("mariadb");
    client
        .args(["--host", host, "--port", port, "--user", "bench", "bench"])
        .args(["--execute", TABLE]);
    peer::run(client, "mariadb (creating the table)").await?;
    Ok(())
}

/// One step: `clients` sysbench threads for `duration`.
pub async fn step(address: &str, clients: usize, duration: Duration) -> Result<StepResult> {
    peer::in_scratch_folder("sysbench", async |dir| {
        run_sysbench(dir, address, clients, duration).await
    })
    .await
}

async fn run_sysbench(
    dir: &Path,
    address: &str,
    clients: usize,
    duration: Duration,
) -> Result<StepResult> {
    let (host, port) = split(address)?;
    let script = dir.join("insert.lua");
    std::fs::write(&script, SCRIPT)?;
    let mut sysbench = Command::new("sysbench");
    sysbench
        .arg(&script)
        .args([
            "--db-driver=mysql",
            "--mysql-user=bench",
            "--mysql-db=bench",
        ])
        .arg(format!("--mysql-host={host}"))
        .arg(format!("--mysql-port={port}"))
        .arg(format!("--threads={clients}"))
        .arg(format!("--time={}", duration.as_secs().max(1)))
        .args(["--events=0", "--histogram=on", "--report-interval=0"])
        .arg("run")
        .current_dir(dir);
    let out = peer::run(sysbench, "sysbench").await?;
    let report = String::from_utf8_lossy(&out.stdout);
    let parsed = Report::parse(&report)
        .ok_or_else(|| Error::Unavailable(format!("sysbench's report unread: {report}")))?;
    Ok(StepResult {
        clients,
        commits_per_s: parsed.events as f64 / parsed.seconds.max(1e-9),
        p50_ms: parsed.percentile(50.0),
        p99_ms: parsed.percentile(99.0),
        errors: parsed.errors,
        commits_per_fsync: 0.0,
        commits: parsed.events,
        cpu: None,
    })
}

/// What a `sysbench … run` report says.
#[derive(Debug, PartialEq)]
struct Report {
    /// Events (one committed insert each).
    events: u64,
    /// The run's length as sysbench measured it.
    seconds: f64,
    /// Ignored errors (none are ignored by default: an error stops the run).
    errors: u64,
    /// The latency histogram: (latency in ms, transactions), by latency.
    histogram: Vec<(f64, u64)>,
}

impl Report {
    fn parse(text: &str) -> Option<Report> {
        let number_after = |label: &str| -> Option<&str> {
            let line = text.lines().find(|l| l.trim_start().starts_with(label))?;
            line.split_once(':')?.1.split_whitespace().next()
        };
        let events = number_after("transactions:")?.parse().ok()?;
        let errors = number_after("ignored errors:")?.parse().ok()?;
        let seconds = number_after("total time:")?
            .trim_end_matches('s')
            .parse()
            .ok()?;
        // "       1.234 |*****                                    42"
        let histogram = text
            .lines()
            .skip_while(|l| !l.starts_with("Latency histogram"))
            .filter_map(|l| {
                let (value, rest) = l.split_once('|')?;
                let count = rest.split_whitespace().last()?.parse().ok()?;
                Some((value.trim().parse().ok()?, count))
            })
            .collect::<Vec<(f64, u64)>>();
        (!histogram.is_empty()).then_some(Report {
            events,
            seconds,
            errors,
            histogram,
        })
    }

    /// The latency (ms) below which `p` percent of the transactions finished.
    fn percentile(&self, p: f64) -> f64 {
        let total: u64 = self.histogram.iter().map(|(_, n)| n).sum();
        let wanted = ((p / 100.0) * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (ms, n) in &self.histogram {
            seen += n;
            if seen >= wanted {
                return *ms;
            }
        }
        self.histogram.last().map_or(0.0, |(ms, _)| *ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
SQL statistics:
    queries performed:
        read:                            0
        write:                           1000
        other:                           0
        total:                           1000
    transactions:                        1000   (499.75 per sec.)
    queries:                             1000   (499.75 per sec.)
    ignored errors:                      0      (0.00 per sec.)
    reconnects:                          0      (0.00 per sec.)

General statistics:
    total time:                          2.0010s
    total number of events:              1000

Latency histogram (values are in milliseconds)
       value  ------------- distribution ------------- count
       1.000 |****************************************  500
       2.000 |********************************          480
       9.000 |*                                         20

Latency (ms):
         min:                                    0.98
";

    #[test]
    fn a_report_gives_the_commits_and_percentiles_from_its_histogram() {
        let report = Report::parse(SAMPLE).unwrap();
        assert_eq!(report.events, 1000);
        assert_eq!(report.errors, 0);
        assert!((report.seconds - 2.001).abs() < 1e-9);
        assert_eq!(report.histogram.len(), 3);
        assert_eq!(report.percentile(50.0), 1.0);
        assert_eq!(report.percentile(50.1), 2.0);
        assert_eq!(report.percentile(98.0), 2.0);
        assert_eq!(report.percentile(99.0), 9.0);
        assert!(Report::parse("no report").is_none());
    }
}
