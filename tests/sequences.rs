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

use mirrorlab::journal::JournalPos;
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
        while m[primary].status().await.state != mirrorlab::agent::InstanceState::Down {
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

/// How many takeovers the arbiter has granted so far.
fn granted(arbiter: &TestArbiter) -> usize {
    arbiter
        .log()
        .matches("told the backup take_over = true")
        .count()
}

/// Stops `member`'s primary the way `how` says; returns whether the whole host went.
async fn stop_primary(member: &mut TestMember, how: &str) -> bool {
    match how {
        "ctl stop" => member.stop_instance().await,
        "kill -9" => member.kill_instance().await,
        "docker stop" => {
            member.stop_host().await;
            return true;
        }
        other => panic!("no way to stop {other}"),
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_no_failover_the_backup_books_nothing_and_the_old_primary_starts_again() {
    let (arbiter, mut m) = arbiter_pair().await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers = start_writers_on_primary([m[0].api(), m[1].api()], 2, "nofo", stop.clone());
    // Planned maintenance, each way the primary can go: No Failover, stop, start again.
    for how in ["ctl stop", "kill -9", "docker stop"] {
        common::before_fault(300).await;
        m[0].ok("/api/mirror/no-failover", json!({"set": true}))
            .await;
        m[1].wait_mirror(10, "No Failover", |v| v["no_failover"] == true)
            .await;
        let granted_before = granted(&arbiter);
        let host = stop_primary(&mut m[0], how).await;
        tokio::time::sleep(Duration::from_millis(3 * QOS_MS)).await;
        let view = m[1].get("/api/mirror").await.1;
        assert_eq!(
            view["role"], "Backup",
            "{how}: took over despite No Failover"
        );
        assert_eq!(
            granted(&arbiter),
            granted_before,
            "{how}: a backup that may not take over asked for a takeover:\n{}",
            arbiter.log()
        );
        // The primary comes back, resumes, and No Failover ends with that.
        if host {
            m[0].restart_host();
        } else {
            m[0].start_instance().await;
        }
        m[0].wait_ready().await;
        m[0].wait_mirror(20, "primary again, No Failover cleared", |v| {
            v["role"] == "Primary" && v["no_failover"] == false
        })
        .await;
        wait_backup(&m[1]).await;
        assert_arbiter_backs_the_monitors(&arbiter, &m[0], &m[1]).await;
    }
    // A person clears No Failover on the backup while the primary is down: the backup may
    // then take over (through the primary's agent, with its journal).
    m[0].ok("/api/mirror/no-failover", json!({"set": true}))
        .await;
    m[1].wait_mirror(10, "No Failover", |v| v["no_failover"] == true)
        .await;
    m[0].kill_instance().await;
    m[1].wait_mirror(10, "waiting", |v| v["status"] == "Waiting")
        .await;
    let cleared = m[1]
        .ok("/api/mirror/no-failover", json!({"set": false}))
        .await;
    assert!(
        cleared["message"].as_str().unwrap().contains("cleared"),
        "{cleared}"
    );
    let took = wait_primary(&m[1], 20).await;
    eprintln!("figure: after Clear No Failover the backup took over in {took:?}");
    m[0].start_instance().await;
    m[0].wait_ready().await;
    wait_backup(&m[0]).await;
    let (a, b) = (&m[0], &m[1]);
    finish_writers(&stop, writers, b, a).await;
}

/// Mirrors `dbs` on primary `a` and gives backup `b` caught-up copies of them.
async fn mirror_only(a: &TestMember, b: &TestMember, dbs: &[&str]) {
    a.ok("/api/mirror/add-databases", json!({"databases": dbs}))
        .await;
    for db in dbs {
        b.wait_mirror(10, &format!("aware of {db}"), |v| {
            v["missing_databases"]
                .as_array()
                .is_some_and(|m| m.iter().any(|d| d.as_str().unwrap().ends_with(db)))
        })
        .await;
        b.ok(&format!("/api/databases/{db}/dismount"), json!({}))
            .await;
        copy_frozen(a, b, &db.to_ascii_lowercase()).await;
        b.ok(&format!("/api/databases/{db}/mount"), json!({})).await;
        b.ok(&format!("/api/databases/{db}/activate"), json!({}))
            .await;
        b.ok(&format!("/api/databases/{db}/catchup"), json!({}))
            .await;
        wait_dejournaling(b, db).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_with_a_copy_not_ready_books_nothing_and_the_old_primary_starts_again() {
    let arbiter = TestArbiter::start().await;
    let (a, b, _) = pair_full(QOS_MS, &[], false, Some(&arbiter.address)).await;
    let mut m = [a, b];
    mirror_only(&m[0], &m[1], &["COMPANY", "CUSTOMER"]).await;
    assert_arbiter_backs_the_monitors(&arbiter, &m[0], &m[1]).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers = start_writers_on_primary([m[0].api(), m[1].api()], 2, "unready", stop.clone());
    // One more database is added to the healthy mirror; the backup has no copy yet.
    m[0].ok(
        "/api/mirror/add-databases",
        json!({"databases": ["PERSONAL"]}),
    )
    .await;
    m[1].wait_mirror(10, "missing PERSONAL", |v| {
        v["missing_databases"]
            .as_array()
            .is_some_and(|m| !m.is_empty())
    })
    .await;
    for how in ["kill -9", "docker stop"] {
        common::before_fault(300).await;
        let granted_before = granted(&arbiter);
        let host = stop_primary(&mut m[0], how).await;
        tokio::time::sleep(Duration::from_millis(3 * QOS_MS)).await;
        assert_eq!(
            m[1].get("/api/mirror").await.1["role"],
            "Backup",
            "{how}: took over without a copy"
        );
        assert_eq!(
            granted(&arbiter),
            granted_before,
            "{how}: a backup that cannot take over asked for a takeover:\n{}",
            arbiter.log()
        );
        if host {
            m[0].restart_host();
        } else {
            m[0].start_instance().await;
        }
        m[0].wait_ready().await;
        wait_primary(&m[0], 20).await;
        wait_backup(&m[1]).await;
    }
    // With the copy in place the mirror fails over again.
    let (a, b) = (&m[0], &m[1]);
    b.wait_mirror(10, "missing PERSONAL", |v| {
        v["missing_databases"]
            .as_array()
            .is_some_and(|m| !m.is_empty())
    })
    .await;
    b.ok("/api/databases/PERSONAL/dismount", json!({})).await;
    copy_frozen(a, b, "personal").await;
    for action in ["mount", "activate", "catchup"] {
        b.ok(&format!("/api/databases/PERSONAL/{action}"), json!({}))
            .await;
    }
    wait_dejournaling(b, "PERSONAL").await;
    assert_arbiter_backs_the_monitors(&arbiter, a, b).await;
    m[0].kill_instance().await;
    wait_primary(&m[1], 15).await;
    m[0].start_instance().await;
    m[0].wait_ready().await;
    wait_backup(&m[0]).await;
    let (a, b) = (&m[0], &m[1]);
    finish_writers(&stop, writers, b, a).await;
}

/// Waits (up to 10 s) until `member`'s log says `text`; fails with `why` and the log.
async fn wait_log(member: &Api, text: &str, why: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !member.log().contains(text) {
        assert!(Instant::now() < deadline, "{why}:\n{}", member.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A connection to `address` from the local address `from` (another loopback address plays
/// another host).
async fn connect_from(from: &str, address: &str) -> std::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let stream = socket.connect(address.parse().unwrap()).await.unwrap();
    let stream = stream.into_std().unwrap();
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// Says `first` on the superserver port of `address` from `from`; returns the connection and
/// the first answer.
async fn superserver_says(
    from: &str,
    address: &str,
    first: &mirrorlab::mirror::protocol::Control,
) -> (std::net::TcpStream, mirrorlab::mirror::protocol::Control) {
    use mirrorlab::mirror::protocol::{Message, read_message, write_control};
    let mut stream = connect_from(from, address).await;
    write_control(&mut stream, first).unwrap();
    match read_message(&mut stream) {
        Ok(Some(Message::Control(answer))) => (stream, *answer),
        other => panic!("{address} answered {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stranger_saying_hello_as_the_backup_is_refused_and_a_replaced_link_counts_as_lost() {
    use mirrorlab::mirror::protocol::{Control, Message, read_message, write_ack};
    let (a, b) = pair(QOS_MS).await;
    mirror_databases(&a, &b).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers = start_writers_on_primary([a.api(), b.api()], 2, "hello", stop.clone());
    // Anyone can learn the mirror's id and members without TLS, by asking.
    let (_, info) = superserver_says(
        "127.0.0.2",
        &a.superserver,
        &Control::Info {
            mirror_name: "MIRRORSET".into(),
        },
    )
    .await;
    let Control::InfoReply { description } = info else {
        panic!("no description: {info:?}");
    };
    let backup = description
        .members
        .iter()
        .find(|m| m.name == "MIRRORB/IRIS")
        .unwrap()
        .clone();
    let hello = |member| Control::Hello {
        mirror_name: "MIRRORSET".into(),
        mirror_id: description.mirror.id,
        member,
        journal_first: JournalPos(0),
        journal_end: JournalPos(0),
        last_epoch: mirrorlab::journal::Epoch(0),
    };
    // A stranger on another address claims to be the backup, with addresses of its own: refused,
    // and the real backup stays the active one.
    let forged = mirrorlab::config::mirror::MemberInfo {
        superserver_address: "127.0.0.2:1".into(),
        mirror_private_address: "127.0.0.2:1".into(),
        agent_address: "127.0.0.2".into(),
        ..backup.clone()
    };
    let (_, answer) = superserver_says("127.0.0.2", &a.superserver, &hello(forged)).await;
    let Control::Refused { reason, .. } = answer else {
        panic!("the stranger was welcomed: {answer:?}");
    };
    assert!(
        reason.contains("none of its configured addresses"),
        "{reason}"
    );
    let view = a.get("/api/mirror").await.1;
    let row = TestMember::member_row(&view, "MIRRORB/IRIS");
    assert_eq!(row["journal_transfer"], "Active", "{view}");
    let config = std::fs::read_to_string(a.data_dir().join("mirrorlab.cpf")).unwrap();
    assert!(
        !config.contains("127.0.0.2"),
        "the stranger's addresses were stored"
    );
    // From the backup's own address the primary cannot tell a stranger from the backup (see the
    // README): the hello replaces the backup's link — which counts as losing the active backup
    // — and the new link is not active. Acknowledging what was never sent ends it.
    common::before_fault(300).await;
    let (mut stream, answer) = superserver_says("127.0.0.1", &a.superserver, &hello(backup)).await;
    assert!(
        matches!(answer, Control::Welcome { .. }),
        "not welcomed: {answer:?}"
    );
    write_ack(&mut stream, JournalPos(u64::MAX / 2)).unwrap();
    let ended = loop {
        match read_message(&mut stream) {
            Ok(Some(Message::Control(c))) => {
                if let Control::Refused { reason, .. } = *c {
                    break reason;
                }
            }
            Ok(Some(_)) => {}
            other => panic!("the link did not end with a reason: {other:?}"),
        }
    };
    assert!(ended.contains("beyond what was sent"), "{ended}");
    wait_log(
        &b,
        "replaced by a new connection",
        "the backup's link was not replaced",
    )
    .await;
    wait_log(
        &a,
        "in trouble",
        "losing the active link to a replacement did not start the trouble state",
    )
    .await;
    // The real backup reconnects and becomes active again by catching up.
    a.wait_mirror(20, "B active again", |v| {
        TestMember::member_row(v, "MIRRORB/IRIS")["journal_transfer"] == "Active"
    })
    .await;
    finish_writers(&stop, writers, &a, &b).await;
}

/// An install folder like the project's, plus a namespace NOTES that maps only the PERSONAL
/// database (so that, with PERSONAL left out of the mirror, it is a purely local namespace).
fn install_with_notes(dir: &std::path::Path) -> String {
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("install");
    std::fs::create_dir_all(dir.join("schema")).unwrap();
    for entry in std::fs::read_dir(source.join("schema")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join("schema").join(entry.file_name())).unwrap();
    }
    let mut manifest: Value =
        serde_json::from_slice(&std::fs::read(source.join("manifest.json")).unwrap()).unwrap();
    manifest["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "NOTES", "default_database": "PERSONAL", "mapped": []}));
    std::fs::write(dir.join("manifest.json"), manifest.to_string()).unwrap();
    dir.to_string_lossy().into_owned()
}

/// Writes a contact in the local PERSONAL database through the NOTES namespace.
async fn local_write(member: &Api, text: &str) -> (u16, Value) {
    member
        .post(
            "/api/sql",
            json!({
                "namespace": "NOTES",
                "sql": "INSERT INTO Contact(name, company_id, created_at) VALUES (?1, 1, '2026-01-01')",
                "params": [text],
            }),
        )
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_trouble_nothing_mirrored_commits_while_local_writes_and_add_to_mirror_go_on() {
    let install = tempfile::tempdir().unwrap();
    let install = install_with_notes(install.path());
    let (a, b, proxy) = pair_full(2000, &["--install", &install], true, None).await;
    let proxy = proxy.unwrap();
    mirror_only(&a, &b, &["COMPANY"]).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers = start_writers_on_primary([a.api(), b.api()], 2, "trouble", stop.clone());
    common::before_fault(300).await;
    // Nothing reaches the backup any more: after the QoS timeout the primary revokes it and is
    // in trouble (agent controlled: until the backup stands down, or 2 × QoS).
    proxy.hold.store(true, std::sync::atomic::Ordering::Relaxed);
    a.wait_mirror(10, "in trouble", |v| v["status"] == "In Trouble")
        .await;
    let held = {
        let a = a.api();
        tokio::spawn(async move {
            a.post("/api/apps/companies", json!({"name": "held in trouble"}))
                .await
        })
    };
    let add = {
        let a = a.api();
        tokio::spawn(async move {
            a.post(
                "/api/mirror/add-databases",
                json!({"databases": ["CUSTOMER"]}),
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Local databases keep working, Add to Mirror or not.
    let started = Instant::now();
    let (status, body) = local_write(&a, "during the trouble").await;
    assert_eq!(status, 200, "{body}");
    eprintln!(
        "figure: a local write in trouble took {:?}",
        started.elapsed()
    );
    let view = a.get("/api/mirror").await.1;
    if view["status"] == "In Trouble" {
        // Still in trouble: the mirrored write has not begun — not visible, not answered.
        assert!(
            !held.is_finished(),
            "a mirrored write was answered in trouble"
        );
        assert!(!add.is_finished(), "Add to Mirror finished in trouble");
        assert!(!all_names(&a).await.contains("held in trouble"));
    }
    // The trouble ends (the backup stood down, or the timeout passed): they go through.
    proxy
        .hold
        .store(false, std::sync::atomic::Ordering::Relaxed);
    let (status, body) = held.await.unwrap().unwrap();
    assert_eq!(status, 201, "{body}");
    let (status, body) = add.await.unwrap().unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("CUSTOMER"),
        "{body}"
    );
    wait_backup(&b).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let outcome = stop_writers(&stop, writers).await;
    assert!(
        outcome.len() > 20,
        "the writers barely wrote: {}",
        outcome.len()
    );
    assert_identical_in(&a, &b, &["COMPANY"]).await;
    assert_all_present(&a, &outcome, "A").await;
    assert_all_present(&b, &outcome, "B").await;
}

/// Asks `member`'s `/mirror_status` until stopped; returns (when, status code) of each answer.
fn poll_mirror_status(
    member: &Api,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Vec<(Instant, u16)>> {
    let member = member.clone();
    tokio::spawn(async move {
        let mut answers = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let asked = member
                .client
                .get(format!("{}/mirror_status", member.url))
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if let Ok(reply) = asked {
                answers.push((Instant::now(), reply.status().as_u16()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        answers
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cut_off_primary_stops_saying_success_before_the_backup_takes_over() {
    let arbiter = TestArbiter::start().await;
    let arbiter_proxy = common::Proxy::start_by_member(&arbiter.address).await;
    let (a, b, data) = pair_full(QOS_MS, &[], true, Some(&arbiter_proxy.address)).await;
    let data = data.unwrap();
    mirror_databases(&a, &b).await;
    assert_arbiter_backs_the_monitors(&arbiter, &a, &b).await;
    let polled = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (on_a, on_b) = (
        poll_mirror_status(&a, polled.clone()),
        poll_mirror_status(&b, polled.clone()),
    );
    // Idle for a while (the backup only hears heartbeats), then busy.
    tokio::time::sleep(Duration::from_millis(2 * QOS_MS)).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers = start_writers_on_primary([a.api(), b.api()], 2, "balancer", stop.clone());
    common::before_fault(1000).await;
    // A is cut off from everyone (its portal stays reachable, as a load balancer's path would).
    let cut = Instant::now();
    data.blackhole
        .store(true, std::sync::atomic::Ordering::Relaxed);
    arbiter_proxy.cut_member("MIRRORA/IRIS");
    let took = wait_primary(&b, 15).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    polled.store(true, std::sync::atomic::Ordering::Relaxed);
    let (on_a, on_b) = (on_a.await.unwrap(), on_b.await.unwrap());
    // Before the cut: the primary says SUCCESS at every ask, idle or busy; the backup never.
    assert!(
        on_a.iter()
            .filter(|(at, _)| *at < cut)
            .all(|(_, code)| *code == 200),
        "a healthy primary said FAILED: {on_a:?}"
    );
    assert!(
        on_b.iter()
            .filter(|(at, _)| *at < cut)
            .all(|(_, code)| *code == 503)
    );
    let a_last_success = on_a
        .iter()
        .filter(|(_, code)| *code == 200)
        .map(|(at, _)| *at)
        .max()
        .expect("A never said SUCCESS");
    let b_first_success = on_b
        .iter()
        .filter(|(at, code)| *code == 200 && *at > cut)
        .map(|(at, _)| *at)
        .min()
        .expect("B never said SUCCESS");
    eprintln!(
        "figure: cut off, A said SUCCESS for {:?} more; B took over after {took:?} and said \
         SUCCESS {:?} after the cut",
        a_last_success.saturating_duration_since(cut),
        b_first_success - cut
    );
    assert!(
        a_last_success < b_first_success,
        "both members said SUCCESS: A until {:?} after the cut, B from {:?}",
        a_last_success.saturating_duration_since(cut),
        b_first_success - cut
    );
    // Healing: the old primary is forced down; started again, it follows.
    data.blackhole
        .store(false, std::sync::atomic::Ordering::Relaxed);
    arbiter_proxy.heal_member("MIRRORA/IRIS");
    let deadline = Instant::now() + Duration::from_secs(20);
    while a.status().await.state != mirrorlab::agent::InstanceState::Down {
        assert!(
            Instant::now() < deadline,
            "the old primary kept running:\n{}",
            a.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.start_instance().await;
    a.wait_ready().await;
    wait_backup(&a).await;
    finish_writers(&stop, writers, &b, &a).await;
}

/// Fills the file system of `dir` with a file there; returns the file (remove it to free the
/// space).
fn fill_disk(dir: &std::path::Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 256 * 1024];
    while file.write_all(&chunk).is_ok() {}
    let _ = file.sync_all();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dejournaling_stopped_by_a_full_disk_resumes_by_itself_and_the_monitors_say_so() {
    let segments = ["--journal-segment-bytes", "4194304"];
    let a = TestMember::start_with("mirrora", &segments).await;
    let b = TestMember::start_on_tmpfs("mirrorb", 64, &segments).await;
    let (a, b, _) = join_pair(a, b, QOS_MS, false, None).await;
    mirror_databases(&a, &b).await;
    let a = std::sync::Arc::new(a);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers = start_writers(&a, 2, "full", stop.clone());
    common::before_fault(300).await;
    let filler = fill_disk(&b.data_dir());
    // The backup's copies cannot take the changes any more: it says so, and so does the
    // primary's monitor about it (journal transfer goes on: its journal files are allocated
    // ahead).
    b.wait_mirror(20, "dejournaling stopped", |v| {
        v["databases"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["status"] == "Dejournaling Stopped")
    })
    .await;
    let view = a
        .wait_mirror(20, "B's dejournaling shown as needing attention", |v| {
            TestMember::member_row(v, "MIRRORB/IRIS")["dejournaling"]
                .as_str()
                .is_some_and(|d| d.starts_with("Warning"))
        })
        .await;
    eprintln!(
        "the primary shows: {}",
        TestMember::member_row(&view, "MIRRORB/IRIS")
    );
    // Space comes back: dejournaling resumes by itself, nobody clicks Catchup.
    std::fs::remove_file(filler).unwrap();
    for db in DATABASES {
        wait_dejournaling(&b, db).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let outcome = stop_writers(&stop, writers).await;
    assert!(
        outcome.len() > 20,
        "the writers barely wrote: {}",
        outcome.len()
    );
    assert_identical(&a, &b).await;
    assert_all_present(&a, &outcome, "A").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_monitor_tells_the_truth_about_a_lost_primary_and_a_restarted_former_primary() {
    let (a, b) = pair(QOS_MS).await;
    mirror_databases(&a, &b).await;
    let mut m = [a, b];
    created(&m[0], "/api/apps/companies", json!({"name": "before"})).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers = start_writers_on_primary([m[0].api(), m[1].api()], 2, "truth", stop.clone());
    common::before_fault(500).await;
    // The primary's host is lost (no arbiter): the backup waits for a person.
    m[0].kill_host().await;
    m[1].wait_mirror(10, "waiting", |v| v["status"] == "Waiting")
        .await;
    let (status, warning) = m[1]
        .post("/api/mirror/force-primary", json!({}))
        .await
        .unwrap();
    assert_eq!(status, 409, "{warning}");
    let warning = warning["error"].as_str().unwrap().to_string();
    assert!(
        warning.starts_with("This member was the active backup"),
        "it was the active backup when it lost the primary: {warning}"
    );
    assert!(!warning.contains("  "), "runs of spaces: {warning:?}");
    m[1].ok("/api/mirror/force-primary", json!({"confirm": true}))
        .await;
    wait_primary(&m[1], 10).await;
    created(
        &m[1],
        "/api/apps/companies",
        json!({"name": "after forcing"}),
    )
    .await;
    // The new primary's host goes too, and the old primary comes back: it cannot tell who is
    // primary, and its monitor lists each failover member once.
    m[1].kill_host().await;
    m[0].restart_host();
    m[0].wait_ready().await;
    let view = m[0]
        .wait_mirror(15, "waiting", |v| v["status"] == "Waiting")
        .await;
    let names: Vec<&str> = view["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["MIRRORB/IRIS", "MIRRORA/IRIS"], "{view}");
    assert_eq!(
        TestMember::member_row(&view, "MIRRORB/IRIS")["status"],
        "Down"
    );
    // Both back: the newer history wins, the other follows.
    m[1].restart_host();
    m[1].wait_ready().await;
    wait_primary(&m[1], 20).await;
    wait_backup(&m[0]).await;
    // Read on the primary: the backup may not have applied everything yet (finish_writers
    // below waits for the two to agree).
    let names = all_names(&m[1]).await;
    assert!(names.contains("before") && names.contains("after forcing"));
    // The old primary's host died at once, so it acknowledged nothing its active backup lacks:
    // forcing the backup lost nothing here.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (a, b) = (&m[0], &m[1]);
    finish_writers(&stop, writers, b, a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_async_that_falls_too_far_behind_is_cut_off_and_catches_up_from_the_files() {
    // A QoS of 5 s: the primary gives up writing to a member that reads nothing after that long
    // (at least 2 s), and the backlog must outgrow its bound before — on a loaded machine too.
    let (a, b) = pair(5000).await;
    mirror_databases(&a, &b).await;
    let c = join_async("dr", &a).await;
    a.wait_mirror(20, "C connected", |v| {
        TestMember::member_row(v, "MIRRORC/IRIS")["status"] == "Connected"
    })
    .await;
    a.sql(
        "COMPANY",
        "CREATE TABLE COMPANY.Big (id INTEGER PRIMARY KEY, b BLOB)",
    )
    .await;
    let a = std::sync::Arc::new(a);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers = start_writers(&a, 2, "backlog", stop.clone());
    // The async stops reading (its process is frozen): what the primary sends it piles up in
    // its outbox — until the bound, where the link is cut. Commits never wait for it.
    let pid = c.freeze().await;
    let started = Instant::now();
    let mut mib = 0;
    while !a.log().contains("falls behind by more than") {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the async's backlog was never cut off after {mib} MiB:\n{}",
            a.log()
        );
        a.sql("COMPANY", "INSERT INTO Big(b) VALUES (zeroblob(4194304))")
            .await;
        mib += 4;
    }
    eprintln!(
        "figure: cut off after {mib} MiB written in {:?}",
        started.elapsed()
    );
    assert!(mib >= 16, "cut off after only {mib} MiB");
    // The async wakes up, reconnects and catches up from the journal files.
    c.thaw(pid);
    a.sql("COMPANY", "DROP TABLE COMPANY.Big").await;
    created(
        &a,
        "/api/apps/companies",
        json!({"name": "after the backlog"}),
    )
    .await;
    let outcome = finish_writers(&stop, writers, &a, &b).await;
    assert_identical(&a, &c).await;
    assert_all_present(&c, &outcome, "the async").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_agent_serves_a_down_instances_journal_only_under_its_lock_and_start_waits() {
    use mirrorlab::agent::{self, AgentRequest};
    let (a, b) = pair(QOS_MS).await;
    mirror_databases(&a, &b).await;
    let view = a.get("/api/mirror").await.1;
    let mirror_id = {
        let (_, info) = superserver_says(
            "127.0.0.1",
            &a.superserver,
            &mirrorlab::mirror::protocol::Control::Info {
                mirror_name: "MIRRORSET".into(),
            },
        )
        .await;
        let mirrorlab::mirror::protocol::Control::InfoReply { description } = info else {
            panic!("{info:?}");
        };
        description.mirror.id
    };
    assert_eq!(view["role"], "Primary");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers = start_writers_on_primary([a.api(), b.api()], 2, "tail", stop.clone());
    let mut rng = common::Rng::from_env_or_clock();
    for round in 0..10 {
        created(
            &a,
            "/api/apps/companies",
            json!({"name": format!("round {round}")}),
        )
        .await;
        // A recent part of the journal: the whole of it outgrows one agent answer after a few
        // rounds of writers on a fast machine (the agent then refuses, rightly, to send it).
        let end = a.get("/api/journal").await.1["mirror"]["end_position"]
            .as_u64()
            .expect("the primary's mirror journal");
        let from = end.saturating_sub(100).max(1);
        a.kill_instance().await;
        // Someone reads the down instance's journal while someone else starts it.
        let reads: Vec<_> = (0..4)
            .map(|_| {
                let (agent, id) = (a.agent.clone(), mirror_id);
                tokio::spawn(async move {
                    agent::call(
                        &agent,
                        AgentRequest::JournalTail {
                            mirror_name: "MIRRORSET".into(),
                            mirror_id: id,
                            from,
                        },
                    )
                    .await
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(rng.below(30))).await;
        a.start_instance().await;
        for read in reads {
            let reply = read.await.unwrap().unwrap();
            assert!(
                reply.ok || reply.message.contains("running"),
                "round {round}: {}",
                reply.message
            );
        }
        // The instance started (it never found its files taken), and is primary again or
        // the other took over.
        a.wait_ready().await;
        assert!(
            !a.log()
                .contains("another process is already using the data directory"),
            "round {round}: the instance found its files taken:\n{}",
            a.log()
        );
        let ended = Instant::now() + Duration::from_secs(20);
        loop {
            let roles = (
                a.get("/api/mirror").await.1["status"].clone(),
                b.get("/api/mirror").await.1["status"].clone(),
            );
            if matches!(
                (roles.0.as_str(), roles.1.as_str()),
                (Some("Primary"), Some("Backup")) | (Some("Backup"), Some("Primary"))
            ) {
                break;
            }
            assert!(
                Instant::now() < ended,
                "round {round}: no pair again: {roles:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if b.get("/api/mirror").await.1["role"] == "Primary" {
            // The backup took over meanwhile: let A have the role back for the next round.
            b.kill_instance().await;
            wait_primary(&a, 15).await;
            b.start_instance().await;
            b.wait_ready().await;
            wait_backup(&b).await;
        }
    }
    finish_writers(&stop, writers, &a, &b).await;
}

/// Watches `member` for `ms`: true if it ever showed `status`.
async fn ever_shows(member: &Api, status: &str, ms: u64) -> bool {
    let until = Instant::now() + Duration::from_millis(ms);
    while Instant::now() < until {
        if member.get("/api/mirror").await.1["status"] == status {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_that_leaves_on_purpose_never_puts_the_primary_in_trouble() {
    let (a, b) = pair(QOS_MS).await;
    mirror_databases(&a, &b).await;
    let mut b = b;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers = start_writers_on_primary([a.api(), b.api()], 2, "leave", stop.clone());
    // `docker stop`, `ctl stop`, and Stop Mirror On This Member: each time the backup tells the
    // primary first that it stands down, so the primary does not wait for it in the trouble
    // state (agent controlled: it would, for 2 × QoS).
    for how in ["docker stop", "ctl stop", "Stop Mirror"] {
        common::before_fault(300).await;
        let watch = {
            let a = a.api();
            tokio::spawn(async move { ever_shows(&a, "In Trouble", 3 * QOS_MS).await })
        };
        match how {
            "docker stop" => b.stop_host().await,
            "ctl stop" => b.stop_instance().await,
            _ => drop(b.ok("/api/mirror/stop", json!({})).await),
        }
        assert!(
            !watch.await.unwrap(),
            "{how}: the primary went into trouble"
        );
        created(&a, "/api/apps/companies", json!({"name": how})).await;
        match how {
            "docker stop" => b.restart_host(),
            "ctl stop" => b.start_instance().await,
            _ => drop(b.ok("/api/mirror/start", json!({})).await),
        }
        b.wait_ready().await;
        wait_backup(&b).await;
    }
    finish_writers(&stop, writers, &a, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_that_stalled_returns_to_arbiter_control_and_the_arbiter_still_approves() {
    let (arbiter, [a, b]) = arbiter_pair().await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers = start_writers_on_primary([a.api(), b.api()], 3, "stall", stop.clone());
    common::before_fault(400).await;
    // The backup's process stalls for most of a QoS (a paused container, a starved host): its
    // connection to the arbiter stays up, and it starts its failover rules afresh.
    let pid = b.freeze().await;
    tokio::time::sleep(Duration::from_millis(QOS_MS * 7 / 10)).await;
    b.thaw(pid);
    wait_log(
        &b,
        "this member stalled",
        "the backup did not notice its own stall",
    )
    .await;
    wait_backup(&b).await;
    // It follows the primary into arbiter mode again, and the arbiter backs that mode.
    assert_arbiter_backs_the_monitors(&arbiter, &a, &b).await;
    // So when the primary's host is lost now, the arbiter approves the takeover.
    common::before_fault(400).await;
    let frozen = a.freeze_host().await;
    let took = wait_primary(&b, 15).await;
    eprintln!("figure: host of the primary frozen → takeover in {took:?} (QoS {QOS_MS} ms)");
    a.thaw_host(frozen);
    let deadline = Instant::now() + Duration::from_secs(20);
    while a.status().await.state != mirrorlab::agent::InstanceState::Down {
        assert!(
            Instant::now() < deadline,
            "the old primary kept running after the takeover:\n{}",
            a.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.start_instance().await;
    a.wait_ready().await;
    wait_backup(&a).await;
    finish_writers(&stop, writers, &b, &a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_told_the_primary_runs_asks_again_when_it_cannot_get_back_to_it() {
    let (a, b, data) = pair_full(QOS_MS, &[], true, None).await;
    let data = data.expect("a proxied data channel");
    mirror_databases(&a, &b).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers = start_writers_on_primary([a.api(), b.api()], 2, "told", stop.clone());
    common::before_fault(300).await;
    // The data channel goes silent both ways while the agents still answer: B loses A, asks
    // A's agent, hears that A runs, and stands down; it cannot get back to A.
    data.blackhole
        .store(true, std::sync::atomic::Ordering::Relaxed);
    wait_log(
        &b,
        "standing down as a non-active backup",
        "B never heard from A's agent that A runs",
    )
    .await;
    // Then A dies for good before B got back to it. Nothing on the data channel can tell B;
    // asking A's agent again does, and B takes over with A's journal.
    a.kill_instance().await;
    let took = wait_primary(&b, 30).await;
    eprintln!("figure: the primary killed after its backup stood down → takeover in {took:?}");
    data.blackhole
        .store(false, std::sync::atomic::Ordering::Relaxed);
    a.start_instance().await;
    a.wait_ready().await;
    wait_backup(&a).await;
    finish_writers(&stop, writers, &b, &a).await;
}
