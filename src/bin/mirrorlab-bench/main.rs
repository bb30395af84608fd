//! `mirrorlab-bench`: N concurrent clients inserting companies through the API for T seconds;
//! prints commits per second, median and 99th-percentile latency, and how many commits each
//! journal fsync carried (group commit at work).
//!
//! A program of its own, beside the member's: the member does not ship the benchmark (nor its
//! PostgreSQL driver). It drives members only from outside, through their API, their agents and
//! signals, as a user's client would.
//!
//! Without `--url` it starts temporary members (agent + instance: the `mirrorlab` binary next to
//! this one, or `MIRRORLAB_BIN`) on free loopback ports in temporary folders and removes them
//! afterwards: a standalone member, and a mirrored
//! pair — primary and active backup set up exactly as a person would (Create, Join as Failover,
//! Add to Mirror, a copy of the database file, Catchup), so the backup stores, acknowledges and
//! dejournals every batch during the run. Both run the same steps; the table shows both and the
//! ratio. Timing targets live here, never in tests.
//!
//! `--postgres CONNINFO` adds a third system to the same run: PostgreSQL with a synchronous
//! standby, driven by `pgbench` (see `postgres.rs`); `--mariadb HOST:PORT` a fourth: MariaDB with
//! semi-synchronous replication, driven by `sysbench` (see `mariadb.rs`). `bench/run.sh` sets
//! their servers up; `report.rs` prints the tables.
//! `--mode all` adds the figures of `extras.rs` (idle memory, the Mirror Monitor under load,
//! catchup and copy rates). `--mode failover` measures takeovers instead (see `failover.rs`).

mod cpu;
mod extras;
mod failover;
mod mariadb;
mod peer;
mod postgres;
mod report;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use std::process::ExitCode;

use clap::Parser;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

use mirrorlab::error::{Error, Result};
use mirrorlab::os::{Signal, send_signal};

/// mirrorlab-bench: write throughput and latency of mirrorlab members through their API, beside
/// PostgreSQL's synchronous replication; takeover times.
#[derive(Debug, Parser)]
#[command(name = "mirrorlab-bench", version, about)]
struct BenchArgs {
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
    /// What to measure without `--url`: `both`, `standalone`, `mirrored`, `all` (both, then
    /// idle memory, the monitor page under load, catchup and copy rates), or `failover` (time
    /// from a kill to the first write accepted by the new primary).
    #[arg(long, default_value = "both")]
    mode: String,
    /// Also measure PostgreSQL with a synchronous standby through `pgbench` at this primary
    /// (a libpq connection string; `bench/run.sh` starts both servers).
    #[arg(long)]
    postgres: Option<String>,
    /// Also measure MariaDB with semi-synchronous replication through `sysbench` at this
    /// primary (`host:port`, user and database `bench`; `bench/run.sh` starts both servers).
    #[arg(long)]
    mariadb: Option<String>,
    /// `--mode all`: rows in the backlog the backup catches up on.
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// `--mode failover`: kills of each kind (instance crash, host loss).
    #[arg(long, default_value_t = 10)]
    kills: usize,
    /// `--mode failover`: the mirror's QoS timeout (ms).
    #[arg(long, default_value_t = 2000)]
    qos_ms: u64,
    /// The mirrored pair's mirror requires SSL/TLS (the backup is authorized on the primary).
    #[arg(long)]
    tls: bool,
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
    /// Commits per journal fsync during the step (group commit at work).
    pub commits_per_fsync: f64,
    /// Acknowledged commits during the step.
    pub commits: u64,
    /// Where the CPU time went, when the step's processes were accounted for.
    pub cpu: Option<cpu::CpuUse>,
}

/// A member started for the benchmark.
struct TemporaryMember {
    child: Child,
    dir: PathBuf,
    url: String,
    web: String,
    superserver: String,
    agent: String,
    host: String,
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl TemporaryMember {
    async fn start(client: &reqwest::Client, host: &str) -> Result<TemporaryMember> {
        let dir = std::env::temp_dir().join(format!(
            "mirrorlab-bench-{}",
            mirrorlab::util::random_hex(6)
        ));
        let web = format!("127.0.0.1:{}", free_port()?);
        let superserver = format!("127.0.0.1:{}", free_port()?);
        let agent = format!("127.0.0.1:{}", free_port()?);
        let child = spawn_member(&dir, &web, &superserver, &agent, host)?;
        let member = TemporaryMember {
            child,
            dir,
            url: format!("http://{web}"),
            web,
            superserver,
            agent,
            host: host.to_string(),
        };
        if let Err(err) = member.wait_ready(client).await {
            member.stop().await;
            return Err(err);
        }
        Ok(member)
    }

    /// Waits until the portal answers.
    async fn wait_ready(&self, client: &reqwest::Client) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = client.get(format!("{}/api/health", self.url)).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::Unavailable(
                    "the temporary member did not start within 60 s".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A new `mirrorlab member` on the same folder and ports (after a host loss).
    fn respawn(&mut self) -> Result<()> {
        self.child = spawn_member(
            &self.dir,
            &self.web,
            &self.superserver,
            &self.agent,
            &self.host,
        )?;
        Ok(())
    }

    /// The process id of the member's agent (its instance runs below it); 0 once it exited.
    fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    fn agent_port(&self) -> u16 {
        self.agent
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or(2188)
    }

    async fn call(&self, client: &reqwest::Client, path: &str, body: Value) -> Result<Value> {
        let response = client
            .post(format!("{}{path}", self.url))
            .basic_auth("superuser", Some("SYS"))
            .json(&body)
            .send()
            .await
            .map_err(|e| Error::Unavailable(e.to_string()))?;
        let status = response.status();
        let value: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            return Err(Error::Conflict(format!("POST {path}: {value}")));
        }
        Ok(value)
    }

    async fn mirror_view(&self, client: &reqwest::Client) -> Value {
        let answer = client
            .get(format!("{}/api/mirror", self.url))
            .basic_auth("superuser", Some("SYS"))
            .send()
            .await;
        match answer {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        }
    }

    async fn wait_for(
        &self,
        client: &reqwest::Client,
        what: &str,
        check: impl Fn(&Value) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let view = self.mirror_view(client).await;
            if check(&view) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::Unavailable(format!(
                    "{} never became {what} (its log: {}); it shows: {}",
                    self.url,
                    log_path(&self.dir).display(),
                    serde_json::json!({
                        "status": view["status"],
                        "failover_mode": view["failover_mode"],
                        "arbiter": view["arbiter"],
                        "link_error": view["link_error"],
                        "failover_note": view["failover_note"],
                    })
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = send_signal(pid, Signal::Term);
        }
        let _ = tokio::time::timeout(Duration::from_secs(40), self.child.wait()).await;
        if std::env::var_os("MIRRORLAB_BENCH_KEEP").is_some() {
            eprintln!("kept {} and its log", self.dir.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(log_path(&self.dir));
    }
}

fn spawn_member(
    dir: &std::path::Path,
    web: &str,
    superserver: &str,
    agent: &str,
    host: &str,
) -> Result<Child> {
    // One file for both streams: two handles would each keep their own offset and overwrite
    // each other's lines. Appended to, so a restarted member keeps the earlier lines.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path(dir))?;
    Ok(Command::new(member_binary()?)
        .arg("member")
        .arg("--data-dir")
        .arg(dir)
        .args(["--web", web, "--superserver", superserver, "--agent", agent])
        .args(["--host-name", host, "--install", "/nonexistent"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        // The member's own log goes to a file beside its data: a process that inherited the
        // benchmark's output would hold it open after the benchmark ends.
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?)
}

fn main() -> ExitCode {
    let args = BenchArgs::parse();
    mirrorlab::server::init_logging(None);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("start the async runtime");
    match runtime.block_on(run(args)) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("mirrorlab-bench: {err}");
            ExitCode::from(1)
        }
    }
}

/// The member program the benchmark starts: `MIRRORLAB_BIN`, or `mirrorlab` in this program's
/// folder (both are built together: `cargo build --release`).
fn member_binary() -> Result<PathBuf> {
    let path = match std::env::var_os("MIRRORLAB_BIN") {
        Some(path) => PathBuf::from(path),
        None => std::env::current_exe()?.with_file_name("mirrorlab"),
    };
    if !path.is_file() {
        return Err(Error::InvalidInput(format!(
            "no member program at {} (build it with `cargo build --release`, or set MIRRORLAB_BIN)",
            path.display()
        )));
    }
    Ok(path)
}

fn log_path(dir: &std::path::Path) -> PathBuf {
    dir.with_extension("log")
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
    // Both journals: a mirrored pair writes its companies to the mirror journal.
    let get = |k: &str| {
        let local = answer.as_ref().and_then(|v| v[k].as_u64()).unwrap_or(0);
        let mirror = answer
            .as_ref()
            .and_then(|v| v["mirror"][k].as_u64())
            .unwrap_or(0);
        local + mirror
    };
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
    let (_, syncs_before) = journal_counters(client, url, user, password).await;
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
    let (_, syncs_after) = journal_counters(client, url, user, password).await;
    let syncs = syncs_after.saturating_sub(syncs_before);
    StepResult {
        clients,
        commits_per_s: latencies.len() as f64 / elapsed,
        p50_ms: percentile(&latencies, 50.0),
        p99_ms: percentile(&latencies, 99.0),
        errors,
        commits_per_fsync: if syncs == 0 {
            0.0
        } else {
            latencies.len() as f64 / syncs as f64
        },
        commits: latencies.len() as u64,
        cpu: None,
    }
}

/// Prints the table header.
pub fn print_header() {
    println!(
        "{:>8} {:>11} {:>8} {:>8} {:>7} {:>14}",
        "clients", "commits/s", "p50 ms", "p99 ms", "errors", "commits/fsync"
    );
}

/// Prints one row.
pub fn print_row(r: &StepResult) {
    println!(
        "{:>8} {:>11.0} {:>8.2} {:>8.2} {:>7} {:>14.1}",
        r.clients, r.commits_per_s, r.p50_ms, r.p99_ms, r.errors, r.commits_per_fsync
    );
}

/// The mirrored steps; with `extras`, the monitor page is timed during the step closest to 16
/// clients, and catchup and copy are measured afterwards. Returns the extras' lines.
async fn mirrored_steps(
    client: &reqwest::Client,
    args: &BenchArgs,
    a: &TemporaryMember,
    b: &TemporaryMember,
    extras: bool,
    results: &mut [Option<StepResult>],
) -> Result<Vec<String>> {
    let duration = Duration::from_secs(args.seconds);
    let probe_at = args
        .clients
        .iter()
        .copied()
        .min_by_key(|c| c.abs_diff(16))
        .unwrap_or(16);
    let mut notes = Vec::new();
    let mut probed = false;
    for (i, &clients) in args.clients.iter().enumerate() {
        let clock = cpu::CpuClock::start(vec![
            cpu::Group::Tree("primary", a.pid()),
            cpu::Group::Tree("backup", b.pid()),
            cpu::Group::ThisProcess("clients"),
        ]);
        let writers = step(client, &a.url, "superuser", "SYS", clients.max(1), duration);
        if extras && clients == probe_at && !probed {
            probed = true;
            let cookie = extras::portal_session(&a.url, "superuser", "SYS").await?;
            let monitor = extras::page_times(
                client,
                &a.url,
                "/portal/mirror/monitor",
                "Mirror Member Status",
                &cookie,
                duration,
            );
            let (mut r, times) = tokio::join!(writers, monitor);
            r.cpu = clock.stop(r.commits);
            let times = times?;
            notes.push(format!(
                "Mirror Monitor page on the primary during the {clients}-client mirrored step: \
                 {} loads, p50 {:.2} ms, p99 {:.2} ms",
                times.loads, times.p50_ms, times.p99_ms
            ));
            results[i] = Some(r);
        } else {
            let mut r = writers.await;
            r.cpu = clock.stop(r.commits);
            results[i] = Some(r);
        }
    }
    if extras {
        let caught = extras::catchup(client, a, b, args.rows).await?;
        notes.push(format!(
            "catchup of a {}-row backlog: {:.1} s, {:.0} rows/s; mirror journal {:.1} MB at {:.1} MB/s",
            caught.rows,
            caught.seconds,
            caught.rows as f64 / caught.seconds.max(1e-9),
            caught.journal_bytes as f64 / 1e6,
            caught.journal_bytes as f64 / 1e6 / caught.seconds.max(1e-9)
        ));
        let copy = extras::copy_database(client, a).await?;
        notes.push(format!(
            "copy of COMPANY's file under Freeze (fsynced): {:.1} MB in {:.2} s, {:.0} MB/s",
            copy.bytes as f64 / 1e6,
            copy.seconds,
            copy.bytes as f64 / 1e6 / copy.seconds.max(1e-9)
        ));
    }
    Ok(notes)
}

/// Sets up a mirrored pair: A primary of mirror BENCH with COMPANY mirrored, B its active backup
/// dejournaling a copy of COMPANY.
async fn mirrored_pair(
    client: &reqwest::Client,
    tls: bool,
) -> Result<(TemporaryMember, TemporaryMember)> {
    mirrored_pair_with(client, None, None, tls).await
}

/// [`mirrored_pair`] with an arbiter (`host:port`) and a QoS timeout.
async fn mirrored_pair_with(
    client: &reqwest::Client,
    arbiter: Option<&str>,
    qos_ms: Option<u64>,
    tls: bool,
) -> Result<(TemporaryMember, TemporaryMember)> {
    let a = TemporaryMember::start(client, "bencha").await?;
    let b = match TemporaryMember::start(client, "benchb").await {
        Ok(b) => b,
        Err(err) => {
            a.stop().await;
            return Err(err);
        }
    };
    match join_pair(client, &a, &b, arbiter, qos_ms, tls).await {
        Ok(()) => Ok((a, b)),
        Err(err) => {
            a.stop().await;
            b.stop().await;
            Err(err)
        }
    }
}

async fn join_pair(
    client: &reqwest::Client,
    a: &TemporaryMember,
    b: &TemporaryMember,
    arbiter: Option<&str>,
    qos_ms: Option<u64>,
    tls: bool,
) -> Result<()> {
    a.call(client, "/api/mirror/service", json!({"enabled": true}))
        .await?;
    let mut create = json!({
        "mirror_name": "BENCH",
        "superserver_address": a.superserver,
        "agent_address": "127.0.0.1",
        "agent_port": a.agent_port(),
        "require_tls": tls,
    });
    if let Some(qos) = qos_ms {
        create["qos_timeout_ms"] = qos.into();
    }
    if let Some(arbiter) = arbiter {
        create["use_arbiter"] = true.into();
        create["arbiter_address"] = arbiter.into();
    }
    a.call(client, "/api/mirror/create", create).await?;
    b.call(client, "/api/mirror/service", json!({"enabled": true}))
        .await?;
    b.call(
        client,
        "/api/mirror/join-failover",
        json!({
            "mirror_name": "BENCH",
            "agent_address": format!("127.0.0.1:{}", a.agent_port()),
            "superserver_address": b.superserver,
            "agent_address_local": "127.0.0.1",
            "agent_port_local": b.agent_port(),
        }),
    )
    .await?;
    if tls {
        // B waits in Pending New Members until the primary authorizes the certificate B shows
        // (listed once B's first hello reached the primary).
        let certificate = b.mirror_view(client).await["certificate"].clone();
        let request = json!({"member_name": "BENCHB/IRIS", "certificate": certificate});
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Err(err) = a
            .call(client, "/api/mirror/authorize", request.clone())
            .await
        {
            if Instant::now() > deadline {
                return Err(err);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    a.wait_for(client, "active", |v| {
        v["members"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|m| m["journal_transfer"] == "Active")
    })
    .await?;
    a.call(
        client,
        "/api/mirror/add-databases",
        json!({"databases": ["COMPANY"]}),
    )
    .await?;
    b.wait_for(client, "aware of COMPANY", |v| {
        v["missing_databases"]
            .as_array()
            .is_some_and(|m| !m.is_empty())
    })
    .await?;
    b.call(client, "/api/databases/COMPANY/dismount", json!({}))
        .await?;
    // Freeze: the primary's HEARTBEAT production may be writing.
    a.call(client, "/api/mirror/freeze", json!({})).await?;
    let copied = std::fs::copy(
        a.dir.join("mgr/company/database.sqlite"),
        b.dir.join("mgr/company/database.sqlite"),
    );
    a.call(client, "/api/mirror/thaw", json!({})).await?;
    copied?;
    b.call(client, "/api/databases/COMPANY/mount", json!({}))
        .await?;
    b.call(client, "/api/databases/COMPANY/activate", json!({}))
        .await?;
    b.call(client, "/api/databases/COMPANY/catchup", json!({}))
        .await?;
    b.wait_for(client, "dejournaling", |v| {
        v["databases"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|d| d["name"] == "COMPANY" && d["status"] == "Dejournaling")
    })
    .await?;
    Ok(())
}

/// Runs the benchmark.
async fn run(args: BenchArgs) -> Result<u8> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        // The portal closes connections silent for 10 s; drop idle ones before it does.
        .pool_idle_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| Error::Internal(e.to_string()))?;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let duration = Duration::from_secs(args.seconds);
    if let Some(url) = &args.url {
        let url = url.trim_end_matches('/');
        println!(
            "mirrorlab-bench: POST /api/apps/companies on {url}, {} s per step, {cores} CPU cores",
            args.seconds
        );
        print_header();
        for &clients in &args.clients {
            print_row(
                &step(
                    &client,
                    url,
                    &args.user,
                    &args.password,
                    clients.max(1),
                    duration,
                )
                .await,
            );
        }
        return Ok(0);
    }
    let (standalone, mirrored, extras) = match args.mode.as_str() {
        "failover" => return failover::run(&client, args.kills.max(1), args.qos_ms).await,
        "both" => (true, true, false),
        "all" => (true, true, true),
        "standalone" => (true, false, false),
        "mirrored" => (false, true, false),
        other => {
            return Err(Error::InvalidInput(format!(
                "--mode must be both, all, standalone, mirrored or failover, not {other:?}"
            )));
        }
    };
    println!(
        "mirrorlab-bench: POST /api/apps/companies, {} s per step, {cores} CPU cores; every commit fsynced{}",
        args.seconds,
        if mirrored {
            " (and, mirrored, acknowledged by the active backup)"
        } else {
            ""
        }
    );
    let steps = args.clients.len();
    let mut results: report::Results = std::array::from_fn(|_| vec![None; steps]);
    let mut notes: Vec<String> = Vec::new();
    if standalone {
        let member = TemporaryMember::start(&client, "bench").await?;
        if extras {
            let idle = extras::idle_memory(&member).await?;
            notes.push(format!(
                "idle RSS of a fresh member: agent {:.1} MiB, instance {:.1} MiB, together {:.1} MiB",
                idle.agent_kib as f64 / 1024.0,
                idle.instance_kib as f64 / 1024.0,
                (idle.agent_kib + idle.instance_kib) as f64 / 1024.0
            ));
        }
        for (i, &clients) in args.clients.iter().enumerate() {
            let clock = cpu::CpuClock::start(vec![
                cpu::Group::Tree("member", member.pid()),
                cpu::Group::ThisProcess("clients"),
            ]);
            let mut r = step(
                &client,
                &member.url,
                "superuser",
                "SYS",
                clients.max(1),
                duration,
            )
            .await;
            r.cpu = clock.stop(r.commits);
            results[0][i] = Some(r);
        }
        member.stop().await;
    }
    if mirrored {
        let (a, b) = mirrored_pair(&client, args.tls).await?;
        let outcome = mirrored_steps(&client, &args, &a, &b, extras, &mut results[1]).await;
        a.stop().await;
        b.stop().await;
        notes.extend(outcome?);
    }
    if let Some(conninfo) = &args.postgres {
        postgres::prepare(conninfo).await?;
        for (i, &clients) in args.clients.iter().enumerate() {
            results[2][i] = Some(postgres::step(conninfo, clients.max(1), duration).await?);
        }
    }
    if let Some(address) = &args.mariadb {
        mariadb::prepare(address).await?;
        for (i, &clients) in args.clients.iter().enumerate() {
            results[3][i] = Some(mariadb::step(address, clients.max(1), duration).await?);
        }
    }
    report::print_comparison(&args.clients, &results);
    report::print_cpu(&args.clients, &results, cores);
    for note in notes {
        println!("{note}");
    }
    Ok(0)
}
