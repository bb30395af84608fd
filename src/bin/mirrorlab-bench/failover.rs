//! `mirrorlab-bench --mode failover`: how long a mirror is without a primary.
//!
//! It starts an arbiter and a mirrored pair (COMPANY mirrored, arbiter controlled), then kills
//! the primary again and again — first its instance only (the agent stays and confirms the
//! crash), then its whole host (agent and instance: only the arbiter can approve a takeover),
//! then a host that goes silent (agent and instance frozen with SIGSTOP: no connection is
//! closed, as when a machine loses power or its network, so everyone must wait for timeouts) —
//! and measures, from the kill, the time until a company insert is accepted by the other member.
//! After each kill the victim is started again and must rejoin as the active backup before the
//! next round, so the two members take turns. It prints the distribution of each kind.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::process::Command;

use mirrorlab::agent::{self, AgentRequest};
use mirrorlab::error::{Error, Result};
use mirrorlab::os::{Signal, send_signal};

use super::{TemporaryMember, free_port, mirrored_pair_with};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kill {
    /// SIGKILL of the instance; the agent lives.
    Instance,
    /// SIGKILL of agent and instance.
    Host,
    /// SIGSTOP of agent and instance: a silent host.
    Silent,
}

/// Runs `kills` rounds of each kind and prints the figures.
pub async fn run(client: &reqwest::Client, kills: usize, qos_ms: u64) -> Result<u8> {
    let arbiter_address = format!("127.0.0.1:{}", free_port()?);
    let arbiter_log = std::env::temp_dir().join(format!(
        "mirrorlab-bench-arbiter-{}.log",
        mirrorlab::util::random_hex(6)
    ));
    let log = std::fs::File::create(&arbiter_log)?;
    let mut arbiter = Command::new(super::member_binary()?)
        .args(["arbiter", "--agent", &arbiter_address])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()?;
    let result = rounds(client, kills, qos_ms, &arbiter_address).await;
    let _ = arbiter.kill().await;
    let _ = std::fs::remove_file(&arbiter_log);
    result
}

async fn rounds(client: &reqwest::Client, kills: usize, qos_ms: u64, arbiter: &str) -> Result<u8> {
    let (a, b) = mirrored_pair_with(client, Some(arbiter), Some(qos_ms), false).await?;
    let mut members = [a, b];
    let outcome = measure(client, &mut members, kills, qos_ms).await;
    let [a, b] = members;
    a.stop().await;
    b.stop().await;
    let [crashes, hosts, silent] = outcome?;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "mirrorlab-bench --mode failover: kill → first company accepted by the new primary; QoS {qos_ms} ms, \
         arbiter controlled, {cores} CPU cores"
    );
    println!(
        "{:>16} {:>6} {:>9} {:>9} {:>9} {:>9}",
        "kill", "kills", "min ms", "p50 ms", "p90 ms", "max ms"
    );
    for (name, times) in [
        ("instance crash", crashes),
        ("host killed", hosts),
        ("host silent", silent),
    ] {
        let mut sorted = times.clone();
        sorted.sort_unstable();
        let at = |p: f64| {
            sorted[((p * (sorted.len() - 1) as f64).round() as usize).min(sorted.len() - 1)]
        };
        println!(
            "{name:>16} {:>6} {:>9} {:>9} {:>9} {:>9}",
            sorted.len(),
            sorted[0],
            at(0.5),
            at(0.9),
            sorted[sorted.len() - 1]
        );
    }
    Ok(0)
}

/// Whether a member's view is that of the active backup in arbiter-controlled mode.
fn ready_backup(view: &Value) -> bool {
    view["status"] == "Backup" && view["failover_mode"] == "Arbiter Controlled"
}

async fn measure(
    client: &reqwest::Client,
    members: &mut [TemporaryMember; 2],
    kills: usize,
    qos_ms: u64,
) -> Result<[Vec<u64>; 3]> {
    let mut times: [Vec<u64>; 3] = Default::default();
    let mut primary = 0;
    let mut n = 0u64;
    for round in 0..3 * kills {
        let kind = match round / kills {
            0 => Kill::Instance,
            1 => Kill::Host,
            _ => Kill::Silent,
        };
        let backup = 1 - primary;
        members[backup]
            .wait_for(client, "the active backup", ready_backup)
            .await?;
        members[primary]
            .wait_for(client, "arbiter controlled", |v| {
                v["failover_mode"] == "Arbiter Controlled"
            })
            .await?;
        let pid = agent::call(&members[primary].agent, AgentRequest::Status)
            .await?
            .instance
            .pid
            .ok_or_else(|| Error::Unavailable("the primary's instance is not running".into()))?;
        let agent_pid = members[primary].child.id();
        let killed = Instant::now();
        let signal = if kind == Kill::Silent {
            Signal::Stop
        } else {
            Signal::Kill
        };
        if kind != Kill::Instance
            && let Some(agent_pid) = agent_pid
        {
            send_signal(agent_pid, signal)?;
        }
        send_signal(pid, signal)?;
        // Writes to the other member until one is accepted.
        let deadline = killed + Duration::from_millis(10 * qos_ms + 30_000);
        loop {
            n += 1;
            let accepted = client
                .post(format!("{}/api/apps/companies", members[backup].url))
                .basic_auth("superuser", Some("SYS"))
                .json(&json!({ "name": format!("failover {n}") }))
                .timeout(Duration::from_secs(5))
                .send()
                .await
                .is_ok_and(|r| r.status().as_u16() == 201);
            if accepted {
                break;
            }
            if Instant::now() > deadline {
                return Err(Error::Unavailable(format!(
                    "round {round}: the backup never accepted a write after the kill"
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        times[kind as usize].push(killed.elapsed().as_millis() as u64);
        // The victim comes back and must rejoin as the active backup.
        match kind {
            Kill::Instance => {
                agent::call(&members[primary].agent, AgentRequest::Start).await?;
            }
            Kill::Host | Kill::Silent => {
                if kind == Kill::Silent {
                    // The silent host is switched off for good, then started again.
                    if let Some(agent_pid) = agent_pid {
                        send_signal(agent_pid, Signal::Kill)?;
                    }
                    send_signal(pid, Signal::Kill)?;
                }
                let _ = members[primary].child.wait().await;
                // The killed instance is no child of ours: wait until it has really exited (and
                // so let go of its data directory) before a new one starts on the same folder.
                wait_exited(pid).await?;
                members[primary].respawn()?;
            }
        }
        members[primary].wait_ready(client).await?;
        primary = backup;
    }
    Ok(times)
}

/// Waits (up to 10 s) until process `pid` has exited: gone, or a zombie whose files are closed.
async fn wait_exited(pid: u32) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                let after_name = stat.rsplit_once(')')?.1.trim_start().to_string();
                after_name.chars().next()
            });
        if matches!(state, None | Some('Z') | Some('X')) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::Unavailable(format!(
                "the killed instance (pid {pid}) did not exit"
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
