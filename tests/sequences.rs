//! Failover after *sequences* of events, with real member processes, a real arbiter, writers
//! and readers on whichever member answers: graceful handovers and restarts in either
//! direction followed by the loss of the new primary (instance, host, or a frozen process);
//! No Failover and unready copies around a restart of the primary; a stranger's hello and a
//! replaced link; the trouble state with local writes; load balancers asking `/mirror_status`
//! while a primary is cut off; a member that falls too far behind; and the agent reading a
//! down instance's journal while someone starts it. Every test ends with the invariants: no
//! acknowledged write lost, no read that returned a row the final primary lacks, members
//! identical, and a primary whenever the rules allow one.

mod common;

use std::time::{Duration, Instant};

use common::pair::*;
use common::{Api, TestArbiter, TestMember};
use serde_json::{Value, json};

const QOS_MS: u64 = 1000;

/// An arbiter and an arbiter-controlled pair with the demo databases mirrored.
async fn arbiter_pair() -> (TestArbiter, [TestMember; 2]) {
    let arbiter = TestArbiter::start().await;
    let (a, b, _) = pair_full(QOS_MS, &[], false, Some(&arbiter.address)).await;
    mirror_databases(&a, &b).await;
    assert_arbiter_backs_the_monitors(&arbiter, &a, &b).await;
    (arbiter, [a, b])
}

/// Both monitors show Arbiter Controlled, and the arbiter holds the primary booked in arbiter
/// mode: a backup that loses the primary now gets the takeover approved.
async fn assert_arbiter_backs_the_monitors(arbiter: &TestArbiter, a: &Api, b: &Api) {
    wait_arbiter_controlled(a, b).await;
    let booked = arbiter.booked_arbiter_mode().await;
    assert!(
        booked.iter().any(|m| m == "MIRRORSET"),
        "both monitors show Arbiter Controlled, but the arbiter would refuse a takeover \
         (booked: {booked:?})\nA log:\n{}\nB log:\n{}\narbiter log:\n{}",
        a.log(),
        b.log(),
        arbiter.log()
    );
}

/// Waits until `member` is the primary and accepts writes; returns how long it took.
async fn wait_primary(member: &Api, seconds: u64) -> Duration {
    let started = Instant::now();
    member
        .wait_mirror(seconds, "the primary", |v| {
            v["role"] == "Primary" && v["status"] == "Primary"
        })
        .await;
    started.elapsed()
}

/// Waits until `member` is the active backup again.
async fn wait_backup(member: &Api) {
    member
        .wait_mirror(30, "the backup", |v| v["status"] == "Backup")
        .await;
}

/// Counts the changes of a member's Failover Mode until stopped (sampled every 10 ms).
struct ModeWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl ModeWatch {
    fn start(member: &Api) -> ModeWatch {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (member, flag) = (member.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut modes: Vec<String> = Vec::new();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(reply) = member
                    .client
                    .get(format!("{}/api/mirror", member.url))
                    .basic_auth("superuser", Some("SYS"))
                    .send()
                    .await
                    && let Ok(view) = reply.json::<Value>().await
                    && let Some(mode) = view["failover_mode"].as_str()
                    && modes.last().is_none_or(|last| last != mode)
                {
                    modes.push(mode.to_string());
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            modes
        });
        ModeWatch { stop, task }
    }

    /// The modes shown, in order, each change once.
    async fn stop(self) -> Vec<String> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_handovers_and_restarts_the_arbiter_still_approves_a_takeover() {
    let (arbiter, mut m) = arbiter_pair().await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers = start_writers_on_primary([m[0].api(), m[1].api()], 3, "seq", stop.clone());
    let mut rng = common::Rng::from_env_or_clock();
    let mut primary = 0;
    // Hand over and come back, twice: `docker stop` / `docker start` first, then either that
    // or `ctl stop` / `ctl start` (the agent stays).
    for round in 0..2 {
        let backup = 1 - primary;
        common::before_fault(400).await;
        let whole_host = round == 0 || rng.below(2) == 0;
        eprintln!(
            "round {round}: {} of {}",
            if whole_host {
                "docker stop"
            } else {
                "ctl stop"
            },
            m[primary].url
        );
        if whole_host {
            m[primary].stop_host().await;
        } else {
            m[primary].stop_instance().await;
        }
        let took = wait_primary(&m[backup], 15).await;
        eprintln!("figure: handover took {took:?}");
        if whole_host {
            m[primary].restart_host();
        } else {
            m[primary].start_instance().await;
        }
        m[primary].wait_ready().await;
        wait_backup(&m[primary]).await;
        assert_arbiter_backs_the_monitors(&arbiter, &m[0], &m[1]).await;
        primary = backup;
    }
    // Now the new primary is lost: the arbiter must approve the takeover.
    let backup = 1 - primary;
    common::before_fault(400).await;
    let how = rng.below(4);
    let mut frozen = None;
    match how {
        0 => m[primary].kill_instance().await,
        1 => m[primary].kill_host().await,
        2 => frozen = Some(m[primary].freeze_host().await),
        _ => m[primary].stop_host().await,
    }
    let took = wait_primary(&m[backup], 15).await;
    eprintln!(
        "figure: {} of the primary → takeover in {took:?} (QoS {QOS_MS} ms)",
        [
            "instance killed",
            "host killed",
            "host frozen",
            "docker stop"
        ][how as usize]
    );
    // From here until the old primary is the backup again, each member's mode changes only
    // as the rules say (the new primary: agent, then arbiter once both are back), never back
    // and forth.
    let watches = [ModeWatch::start(&m[0]), ModeWatch::start(&m[1])];
    if let Some(pid) = frozen {
        // The frozen host wakes up: the new primary has its agent force the old instance down
        // (or the arbiter tells it the backup took over).
        m[primary].thaw_host(pid);
        let deadline = Instant::now() + Duration::from_secs(20);
        while m[primary].status().await.state != "down" {
            assert!(
                Instant::now() < deadline,
                "the old primary kept running after the takeover:\n{}",
                m[primary].log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        m[primary].start_instance().await;
    } else if how == 0 {
        m[primary].start_instance().await;
    } else {
        m[primary].restart_host();
    }
    m[primary].wait_ready().await;
    wait_backup(&m[primary]).await;
    assert_arbiter_backs_the_monitors(&arbiter, &m[0], &m[1]).await;
    for (member, watch) in watches.into_iter().enumerate() {
        let modes = watch.stop().await;
        assert!(
            modes.len() <= 3,
            "member {member}'s Failover Mode flapped: {modes:?}"
        );
    }
    let (old, new) = (&m[primary], &m[backup]);
    finish_writers(&stop, writers, new, old).await;
}
