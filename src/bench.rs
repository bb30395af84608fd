//! `mirrorlab bench`: N concurrent clients inserting companies through the API for T seconds;
//! prints commits per second, median and 99th-percentile latency, and how many journal records
//! each fsync carried (group commit at work).
//!
//! Without `--url` it starts a temporary member (agent + instance, this binary) on free loopback
//! ports in a temporary folder and removes it afterwards, so `mirrorlab bench` alone measures a
//! fresh standalone member. Timing targets live here, never in tests.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::error::{Error, Result};
use crate::os::{Signal, send_signal};

/// `mirrorlab bench` arguments.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Portal URL of a running member; without it a temporary member is started.
    #[arg(long)]
    url: Option<String>,
    /// Client counts to run, one step each.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
    clients: Vec<usize>,
    /// Seconds per step.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// API user.
    #[arg(long, default_value = "superuser")]
    user: String,
    /// API password.
    #[arg(long, default_value = "SYS")]
    password: String,
}

/// The figures of one step.
#[derive(Debug, Clone)]
pub struct StepResult {
    /// Concurrent clients.
    pub clients: usize,
    /// Acknowledged commits per second.
    pub commits_per_s: f64,
    /// Median latency (ms).
    pub p50_ms: f64,
    /// 99th-percentile latency (ms).
    pub p99_ms: f64,
    /// Failed requests.
    pub errors: u64,
    /// Journal records per fsync during the step.
    pub records_per_fsync: f64,
}

/// A member started for the benchmark.
struct TemporaryMember {
    child: Child,
    dir: PathBuf,
    url: String,
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl TemporaryMember {
    async fn start(client: &reqwest::Client) -> Result<TemporaryMember> {
        let dir =
            std::env::temp_dir().join(format!("mirrorlab-bench-{}", crate::util::random_hex(6)));
        let web = format!("127.0.0.1:{}", free_port()?);
        let child = Command::new(std::env::current_exe()?)
            .arg("member")
            .arg("--data-dir")
            .arg(&dir)
            .args(["--web", &web])
            .args(["--superserver", &format!("127.0.0.1:{}", free_port()?)])
            .args(["--agent", &format!("127.0.0.1:{}", free_port()?)])
            .args(["--host-name", "bench", "--install", "/nonexistent"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()?;
        let member = TemporaryMember {
            child,
            dir,
            url: format!("http://{web}"),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = client
                .get(format!("{}/api/health", member.url))
                .send()
                .await
                && r.status().is_success()
            {
                return Ok(member);
            }
            if Instant::now() > deadline {
                return Err(Error::Unavailable(
                    "the temporary member did not start within 60 s".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = send_signal(pid, Signal::Term);
        }
        let _ = tokio::time::timeout(Duration::from_secs(40), self.child.wait()).await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn journal_counters(
    client: &reqwest::Client,
    url: &str,
    user: &str,
    password: &str,
) -> (u64, u64) {
    let answer: Option<Value> = async {
        client
            .get(format!("{url}/api/journal"))
            .basic_auth(user, Some(password))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()
    }
    .await;
    let get = |k: &str| answer.as_ref().and_then(|v| v[k].as_u64()).unwrap_or(0);
    (get("records_appended"), get("fsyncs"))
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)] as f64 / 1000.0
}

/// Runs one step: `clients` writers for `duration` against `url`.
pub async fn step(
    client: &reqwest::Client,
    url: &str,
    user: &str,
    password: &str,
    clients: usize,
    duration: Duration,
) -> StepResult {
    let (records_before, syncs_before) = journal_counters(client, url, user, password).await;
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::with_capacity(clients);
    for c in 0..clients {
        let (client, url, user, password) = (
            client.clone(),
            url.to_string(),
            user.to_string(),
            password.to_string(),
        );
        tasks.push(tokio::spawn(async move {
            let mut latencies_us = Vec::new();
            let mut errors = 0u64;
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                let sent = Instant::now();
                let response = client
                    .post(format!("{url}/api/apps/companies"))
                    .basic_auth(&user, Some(&password))
                    .json(&json!({ "name": format!("bench {c}-{n}"), "mission": "benchmark row" }))
                    .send()
                    .await;
                match response {
                    Ok(r) if r.status().as_u16() == 201 => {
                        latencies_us.push(sent.elapsed().as_micros() as u64)
                    }
                    _ => errors += 1,
                }
            }
            (latencies_us, errors)
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for task in tasks {
        if let Ok((l, e)) = task.await {
            latencies.extend(l);
            errors += e;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let (records_after, syncs_after) = journal_counters(client, url, user, password).await;
    let syncs = syncs_after.saturating_sub(syncs_before);
    StepResult {
        clients,
        commits_per_s: latencies.len() as f64 / elapsed,
        p50_ms: percentile(&latencies, 50.0),
        p99_ms: percentile(&latencies, 99.0),
        errors,
        records_per_fsync: if syncs == 0 {
            0.0
        } else {
            records_after.saturating_sub(records_before) as f64 / syncs as f64
        },
    }
}

/// Prints the table header.
pub fn print_header() {
    println!(
        "{:>8} {:>11} {:>8} {:>8} {:>7} {:>14}",
        "clients", "commits/s", "p50 ms", "p99 ms", "errors", "records/fsync"
    );
}

/// Prints one row.
pub fn print_row(r: &StepResult) {
    println!(
        "{:>8} {:>11.0} {:>8.2} {:>8.2} {:>7} {:>14.1}",
        r.clients, r.commits_per_s, r.p50_ms, r.p99_ms, r.errors, r.records_per_fsync
    );
}

/// Runs the benchmark.
pub async fn run(args: BenchArgs) -> Result<u8> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .map_err(|e| Error::Internal(e.to_string()))?;
    let (member, url) = match &args.url {
        Some(url) => (None, url.trim_end_matches('/').to_string()),
        None => {
            let member = TemporaryMember::start(&client).await?;
            let url = member.url.clone();
            (Some(member), url)
        }
    };
    let target = if member.is_some() {
        "a temporary standalone member"
    } else {
        url.as_str()
    };
    println!(
        "mirrorlab bench: POST /api/apps/companies on {target}, {} s per step, {} CPU cores",
        args.seconds,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    print_header();
    for &clients in &args.clients {
        let result = step(
            &client,
            &url,
            &args.user,
            &args.password,
            clients.max(1),
            Duration::from_secs(args.seconds),
        )
        .await;
        print_row(&result);
    }
    if let Some(member) = member {
        member.stop().await;
    }
    Ok(0)
}
