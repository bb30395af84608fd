//! Automatic failover between real member processes on loopback: the backup taking over when
//! the primary's instance dies, hangs or its host is lost (with an arbiter), the old primary
//! rejoining (its divergent tail undone and quarantined), a restarted primary that resumes, the
//! arbiter's comings and goings, a backup getting back to a primary whose agent does not
//! answer, and the monitor's No Failover, Stop Mirror and Force actions.
//! Every test runs writers and ends with the mirror's invariants: every acknowledged write is on
//! the primary, and the members converge row by row.

mod common;

use std::time::Duration;

use common::pair::*;
use common::{Api, TestMember};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_primary_resumes_when_the_backup_could_not_take_over() {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    let (a, b) = pair(1000).await;
    // Mirrored on A, but B has no copies: it may not take over.
    a.ok("/api/mirror/add-databases", json!({"databases": DATABASES}))
        .await;
    let a = Arc::new(a);
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers(&a, 4, "akill", stop.clone());
    for _ in 0..2 {
        common::before_fault(400).await;
        let fault = common::now_ms();
        a.kill_instance().await;
        b.wait_mirror(10, "disconnected", |v| v["status"] == "Waiting")
            .await;
        a.start_instance().await;
        a.wait_ready().await;
        // A asks B who is primary before it resumes.
        a.wait_mirror(15, "primary again", |v| v["role"] == "Primary")
            .await;
        a.api()
            .wait_event_since(fault, A, "role_changed", "primary again")
            .await;
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let acked = stop_writers(&stop, writers).await;
    assert!(
        acked.len() > 20,
        "the writers barely wrote: {}",
        acked.len()
    );
    let view = b
        .wait_mirror(20, "a backup again", |v| v["status"] == "Backup")
        .await;
    assert_eq!(view["role"], "Backup");
    // B said why it did not take over (when it lost A the first time: the second time A was
    // killed before B got back to it).
    b.api()
        .wait_event(B, "takeover_refused", "not activated and caught up")
        .await;
    assert_all_present(&a, &acked, "A").await;
    assert_eq!(b.get("/api/mirror").await.1["role"], "Backup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_backup_takes_over_when_the_primary_dies_and_the_old_primary_rejoins() {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    let (a, b) = pair(1000).await;
    mirror_databases(&a, &b).await;
    let (a, b) = (Arc::new(a), Arc::new(b));
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers_on_primary([a.api(), b.api()], 4, "takeover", stop.clone());
    // The kill lands at a different moment of the writers' stream on every run.
    let mut rng = common::Rng::from_env_or_clock();
    tokio::time::sleep(Duration::from_millis(200 + rng.below(800))).await;

    // What the primary's /metrics says before the kill: its role, the link to its backup, and
    // what the writer counted.
    let text = a.api().metrics().await;
    let metric = |text: &str, series: &str| {
        Api::metric(text, series).unwrap_or_else(|| panic!("no {series} in:\n{text}"))
    };
    assert_eq!(
        metric(&text, r#"mirrorlab_mirror_role{role="primary"}"#),
        1.0
    );
    assert_eq!(
        metric(&text, r#"mirrorlab_mirror_role{role="backup"}"#),
        0.0
    );
    assert_eq!(
        metric(&text, r#"mirrorlab_member_link_up{member="MIRRORB/IRIS"}"#),
        1.0
    );
    assert!(metric(&text, "mirrorlab_commits_total") > 0.0, "{text}");
    assert!(metric(&text, "mirrorlab_commit_seconds_count") > 0.0);
    assert!(metric(&text, "mirrorlab_journal_fsync_seconds_count") > 0.0);
    assert!(metric(&text, r#"mirrorlab_group_commit_size_bucket{le="+Inf"}"#) > 0.0);
    assert!(metric(&text, "mirrorlab_journal_end_position") > 0.0);
    assert_eq!(
        metric(&text, r#"mirrorlab_failover_mode{mode="agent"}"#),
        1.0
    );
    assert_eq!(metric(&text, "mirrorlab_arbiter_connected"), 0.0);
    assert_eq!(metric(&text, "mirrorlab_frozen"), 0.0);
    assert!(
        metric(
            &text,
            r#"mirrorlab_backup_lag_bytes{member="MIRRORB/IRIS"}"#
        ) >= 0.0
    );
    let backup_text = b.api().metrics().await;
    assert_eq!(
        metric(&backup_text, r#"mirrorlab_mirror_role{role="backup"}"#),
        1.0
    );
    assert_eq!(
        metric(
            &backup_text,
            r#"mirrorlab_member_link_up{member="MIRRORA/IRIS"}"#
        ),
        1.0
    );

    // Step 10 of the walk-through: kill the primary's instance (its agent stays).
    let killed = std::time::Instant::now();
    a.kill_instance().await;
    let view = b
        .wait_mirror(10, "the primary", |v| {
            v["role"] == "Primary" && v["status"] == "Primary"
        })
        .await;
    eprintln!("B took over {:?} after the kill", killed.elapsed());
    assert!(
        view["failover_note"].as_str().unwrap().contains("epoch 2"),
        "{view}"
    );
    let text = b.api().metrics().await;
    assert_eq!(
        metric(&text, r#"mirrorlab_mirror_role{role="primary"}"#),
        1.0
    );
    assert_eq!(metric(&text, "mirrorlab_mirror_epoch"), 2.0);
    assert_eq!(
        metric(
            &text,
            r#"mirrorlab_failovers_total{reason="agent_controlled"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(&text, r#"mirrorlab_member_link_up{member="MIRRORA/IRIS"}"#),
        0.0
    );
    // B's events say why it took over; A's (its instance down, its agent answering from its
    // files) say what it saw before it died.
    let events = b.api().events().await;
    let event = |member: &str, kind: &str| {
        Api::event(&events, member, kind)
            .unwrap_or_else(|| panic!("no {kind} event of {member} in {events:#}"))
            .clone()
    };
    assert_eq!(events["members"][1]["member"], "MIRRORA/IRIS", "{events}");
    let (status, refused) = b.get("/api/mirror/events?since=yesterday").await;
    assert_eq!(status, 400, "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("milliseconds since the Unix epoch"),
        "{refused}"
    );
    assert_eq!(events["members"][1]["reachable"], true, "{events}");
    let lost = event("MIRRORB/IRIS", "member_lost");
    let takeover = event("MIRRORB/IRIS", "takeover");
    assert!(
        takeover["reason"]
            .as_str()
            .unwrap()
            .contains("the primary's agent confirmed its instance down"),
        "{takeover}"
    );
    assert_eq!(takeover["epoch"], 2, "{takeover}");
    assert!(lost["time_ms"].as_i64() <= takeover["time_ms"].as_i64());
    event("MIRRORA/IRIS", "backup_activated");
    let status = b
        .client
        .get(format!("{}/mirror_status", b.url))
        .send()
        .await
        .unwrap();
    assert_eq!(status.status().as_u16(), 200);
    // The primary's background job (the HEARTBEAT production) starts by itself on B.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let rows = b
            .sql(
                "COMPANY",
                "SELECT count(*) FROM Heartbeat WHERE member = 'MIRRORB/IRIS'",
            )
            .await;
        if rows["rows"][0][0].as_i64().unwrap() > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the HEARTBEAT production never ran on B"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let productions = b.get("/api/mirror").await.1["productions"].clone();
    assert_eq!(productions[0]["name"], "HEARTBEAT", "{productions}");
    assert_eq!(productions[0]["running"], true, "{productions}");
    // The applications keep working on B.
    let (created, _) = b
        .post("/api/apps/companies", json!({"name": "written on B"}))
        .await
        .unwrap();
    assert_eq!(created, 201);
    common::before_fault(500).await;

    // A comes back, learns that B took over, and follows it.
    a.start_instance().await;
    a.wait_ready().await;
    let view = a
        .wait_mirror(20, "B's backup", |v| {
            v["role"] == "Backup" && v["status"] == "Backup"
        })
        .await;
    assert_eq!(
        TestMember::member_row(&view, "MIRRORB/IRIS")["status"],
        "Primary"
    );
    b.wait_mirror(20, "with A as active backup", |v| {
        TestMember::member_row(v, "MIRRORA/IRIS")["journal_transfer"] == "Active"
    })
    .await;
    let status = a
        .client
        .get(format!("{}/mirror_status", a.url))
        .send()
        .await
        .unwrap();
    assert_eq!(status.status().as_u16(), 503);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let acked = stop_writers(&stop, writers).await;
    assert!(
        acked.len() > 20,
        "the writers barely wrote: {}",
        acked.len()
    );
    // No acknowledged write is lost, and both members converge.
    assert_all_present(&b, &acked, "B").await;
    assert_identical(&a, &b).await;
    for db in DATABASES {
        assert_eq!(a.db_status(db).await, "Dejournaling", "{db}");
        assert_eq!(b.db_status(db).await, "Normal", "{db}");
    }
    // The write outage B measured (the old primary's last write it holds to its own first)
    // is the one the writers saw; A's events tell its restart.
    let events = a.api().events().await;
    let resumed = Api::event(&events, "MIRRORB/IRIS", "writes_resumed")
        .unwrap_or_else(|| panic!("no writes_resumed in {events:#}"));
    let shown = resumed["outage_ms"].as_i64().unwrap();
    assert_eq!(acked.outages.len(), 1, "{:?}", acked.outages);
    let seen = acked.outages[0].as_millis() as i64;
    eprintln!("write outage: {shown} ms recorded by B, {seen} ms seen by the writers");
    assert_outage_matches(shown, seen, "B");
    let restarted = events["events"].as_array().unwrap().iter().any(|e| {
        e["member"] == "MIRRORA/IRIS"
            && e["kind"] == "role_changed"
            && e["reason"]
                .as_str()
                .unwrap()
                .contains("decided after the restart")
    });
    assert!(restarted, "{events:#}");
    // A no longer runs the primary's jobs; its heartbeats from before are replicated history.
    let productions = a.get("/api/mirror").await.1["productions"].clone();
    assert_eq!(productions[0]["running"], false, "{productions}");
    // A is read-only now.
    let (status, _) = a
        .post("/api/apps/companies", json!({"name": "refused on A"}))
        .await
        .unwrap();
    assert_eq!(status, 409);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_primary_role_passes_back_and_forth_over_repeated_kills() {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    let (a, b) = pair(1000).await;
    mirror_databases(&a, &b).await;
    let members = [Arc::new(a), Arc::new(b)];
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers_on_primary(
        [members[0].api(), members[1].api()],
        4,
        "pingpong",
        stop.clone(),
    );
    let mut rng = common::Rng::from_env_or_clock();
    let mut primary = 0;
    for round in 0..4 {
        let backup = 1 - primary;
        members[backup]
            .wait_mirror(20, "the active backup", |v| v["status"] == "Backup")
            .await;
        tokio::time::sleep(Duration::from_millis(100 + rng.below(700))).await;
        let fault = common::now_ms();
        members[primary].kill_instance().await;
        members[backup]
            .wait_mirror(10, &format!("the primary (round {round})"), |v| {
                v["role"] == "Primary"
            })
            .await;
        members[backup]
            .api()
            .wait_event_since(
                fault,
                [A, B][backup],
                "takeover",
                "agent confirmed its instance down",
            )
            .await;
        tokio::time::sleep(Duration::from_millis(rng.below(500))).await;
        members[primary].start_instance().await;
        members[primary].wait_ready().await;
        primary = backup;
    }
    members[1 - primary]
        .wait_mirror(20, "the active backup", |v| v["status"] == "Backup")
        .await;
    let acked = stop_writers(&stop, writers).await;
    assert!(
        acked.len() > 20,
        "the writers barely wrote: {}",
        acked.len()
    );
    assert_all_present(&members[primary], &acked, "the last primary").await;
    assert_identical(&members[0], &members[1]).await;
    // Each takeover's outage, as the new primary recorded it, is the one the writers saw.
    let events = members[primary].api().events().await;
    let recorded: Vec<i64> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "writes_resumed")
        .map(|e| e["outage_ms"].as_i64().unwrap())
        .collect();
    let seen: Vec<i64> = acked.outages.iter().map(|d| d.as_millis() as i64).collect();
    eprintln!("write outages: recorded {recorded:?}, seen by the writers {seen:?}");
    assert_eq!(recorded.len(), seen.len(), "{events:#}");
    for (recorded, seen) in recorded.iter().zip(&seen) {
        assert_outage_matches(*recorded, *seen, "the new primary");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_divergent_tail_is_undone_and_quarantined_when_the_old_primary_rejoins() {
    let (a, b, proxy) = pair_full(3000, &[], true, None).await;
    let proxy = proxy.unwrap();
    mirror_databases(&a, &b).await;
    created(&a, "/api/apps/companies", json!({"name": "before"})).await;
    assert_identical(&a, &b).await;

    // Nothing reaches B any more; A journals a write it can never acknowledge.
    let mirror_end = |view: &Value| view["mirror"]["end_position"].as_u64().unwrap();
    let before = mirror_end(&a.get("/api/journal").await.1);
    proxy.hold.store(true, std::sync::atomic::Ordering::Relaxed);
    let a = std::sync::Arc::new(a);
    let pending = {
        let a = a.clone();
        tokio::spawn(async move {
            a.post("/api/apps/companies", json!({"name": "never acknowledged"}))
                .await
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while mirror_end(&a.get("/api/journal").await.1) == before {
        assert!(
            std::time::Instant::now() < deadline,
            "the write never reached A's journal"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Durable in A's journal, but not visible on A: it is not committed before the backup
    // holds it, so no reader ever sees a row the takeover below undoes.
    assert!(!all_names(&a).await.contains("never acknowledged"));
    assert!(!pending.is_finished(), "acknowledged without the backup");

    // A dies; B, active and inside its window, takes over without that record.
    a.kill_instance().await;
    b.wait_mirror(10, "the primary", |v| v["role"] == "Primary")
        .await;
    // The client hears an error or nothing at all, never "created".
    if let Ok((status, body)) = pending.await.unwrap() {
        assert_ne!(status, 201, "{body}");
    }
    assert!(!all_names(&b).await.contains("never acknowledged"));
    created(
        &b,
        "/api/apps/companies",
        json!({"name": "after the takeover"}),
    )
    .await;

    // A comes back: its tail is undone, kept in quarantine, and it follows B.
    a.start_instance().await;
    a.wait_ready().await;
    let view = a
        .wait_mirror(20, "B's backup", |v| v["status"] == "Backup")
        .await;
    let quarantine = &view["quarantine"];
    assert!(quarantine["count"].as_u64().unwrap() >= 1, "{view}");
    a.api()
        .wait_event(A, "rows_quarantined", "kept in quarantine")
        .await;
    assert!(
        quarantine["rows"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["table"] == "Company"
                && r["operation"] == "INSERT"
                && r["new"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|v| v == "never acknowledged")),
        "{quarantine}"
    );
    assert_identical(&a, &b).await;
    let on_a = all_names(&a).await;
    assert!(on_a.contains("after the takeover") && on_a.contains("before"));
    assert!(!on_a.contains("never acknowledged"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_an_arbiter_the_backup_takes_over_when_the_primary_host_is_lost() {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    let arbiter = common::TestArbiter::start().await;
    let (a, b, _) = pair_full(1000, &[], false, Some(&arbiter.address)).await;
    mirror_databases(&a, &b).await;
    wait_arbiter_controlled(&a, &b).await;
    let view = a.get("/api/mirror").await.1;
    assert_eq!(
        view["arbiter"]["address"],
        format!("127.0.0.1|{}", arbiter.port())
    );

    let mut a = a;
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers_on_primary([a.api(), b.api()], 4, "hostloss", stop.clone());
    common::before_fault(500).await;

    // The whole host of the primary dies: its agent cannot answer, the arbiter decides.
    let killed = std::time::Instant::now();
    a.kill_host().await;
    b.wait_mirror(15, "the primary", |v| {
        v["role"] == "Primary" && v["status"] == "Primary"
    })
    .await;
    eprintln!("B took over {:?} after the host loss", killed.elapsed());
    b.api()
        .wait_event(B, "takeover", "the arbiter lost the primary too")
        .await;
    // The arbiter's own metrics: the takeover it allowed, and B alone seen now.
    let text = arbiter.scrape().await;
    let series = |series: &str| {
        Api::metric(&text, series).unwrap_or_else(|| panic!("no {series} in:\n{text}"))
    };
    assert_eq!(
        series(r#"mirrorlab_arbiter_answers_total{question="may_take_over",answer="yes"}"#),
        1.0
    );
    // B reconnects to the arbiter as primary a moment after its takeover.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = arbiter.scrape().await;
        let seen = Api::metric(
            &text,
            r#"mirrorlab_arbiter_members_seen{mirror="MIRRORSET"}"#,
        );
        if seen == Some(1.0) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let view = b
        .wait_mirror(10, "agent controlled", |v| {
            v["failover_mode"] == "Agent Controlled"
                && v["arbiter"]["connection_status"]
                    == "Only this member is connected to the arbiter"
        })
        .await;
    assert_eq!(view["role"], "Primary");
    common::before_fault(500).await;

    // The host comes back: A learns that B took over and follows it.
    a.restart_host();
    a.wait_ready().await;
    a.wait_mirror(20, "B's backup", |v| v["status"] == "Backup")
        .await;
    wait_arbiter_controlled(&a, &b).await;
    finish_writers(&stop, writers, &b, &a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn losing_the_arbiter_returns_to_agent_control_without_an_outage() {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    let mut arbiter = common::TestArbiter::start().await;
    let (a, b, _) = pair_full(1000, &[], false, Some(&arbiter.address)).await;
    mirror_databases(&a, &b).await;
    wait_arbiter_controlled(&a, &b).await;
    let (a, b) = (Arc::new(a), Arc::new(b));
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers(&a, 4, "noarbiter", stop.clone());
    common::before_fault(300).await;

    let fault = common::now_ms();
    arbiter.kill();
    for member in [&a, &b] {
        member
            .wait_mirror(10, "agent controlled", |v| {
                v["failover_mode"] == "Agent Controlled"
                    && v["arbiter"]["connection_status"]
                        == "This member is not connected to the arbiter"
            })
            .await;
    }
    assert_eq!(a.get("/api/mirror").await.1["status"], "Primary");
    assert_eq!(b.get("/api/mirror").await.1["status"], "Backup");
    for member in [A, B] {
        a.api()
            .wait_event_since(fault, member, "arbiter_lost", "lost the arbiter")
            .await;
        a.api()
            .wait_event_since(fault, member, "mode_changed", "→ Agent Controlled")
            .await;
    }
    // Writes go on while the arbiter is away; when it returns, the mirror is arbiter controlled
    // again.
    let before = all_names(&a).await.len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(all_names(&a).await.len() > before, "writes stopped");
    arbiter.restart().await;
    wait_arbiter_controlled(&a, &b).await;
    let acked = stop_writers(&stop, writers).await;
    // B applies what A made durable a moment later: compare once they agree.
    assert_identical(&a, &b).await;
    assert_all_present(&b, &acked, "B").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_failover_keeps_the_backup_from_taking_over_until_cleared() {
    let (a, b) = pair(1000).await;
    mirror_databases(&a, &b).await;
    // Set on the backup: the primary stores it and both show it.
    let set = b.ok("/api/mirror/no-failover", json!({"set": true})).await;
    assert!(
        set["message"]
            .as_str()
            .unwrap()
            .contains("No Failover is set"),
        "{set}"
    );
    a.wait_mirror(10, "No Failover", |v| v["no_failover"] == true)
        .await;
    b.wait_mirror(10, "No Failover", |v| v["no_failover"] == true)
        .await;

    a.kill_instance().await;
    b.wait_mirror(10, "waiting", |v| v["status"] == "Waiting")
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let view = b.get("/api/mirror").await.1;
    assert_eq!(
        view["role"], "Backup",
        "took over despite No Failover: {view}"
    );
    // The monitor says why there is no primary, and the events say it too.
    assert!(
        view["no_primary"]
            .as_str()
            .is_some_and(|why| why.contains("No Failover is set")),
        "{view}"
    );
    b.api()
        .wait_event(B, "takeover_refused", "No Failover is set")
        .await;
    b.api().wait_event(B, "operator", "Set No Failover").await;

    // The primary comes back, resumes, and No Failover ends with that.
    a.start_instance().await;
    a.wait_ready().await;
    a.wait_mirror(15, "primary, No Failover cleared", |v| {
        v["role"] == "Primary" && v["no_failover"] == false
    })
    .await;
    b.wait_mirror(15, "backup, No Failover cleared", |v| {
        v["status"] == "Backup" && v["no_failover"] == false
    })
    .await;
    created(
        &a,
        "/api/apps/companies",
        json!({"name": "after no failover"}),
    )
    .await;

    // Without it, the next crash fails over.
    a.kill_instance().await;
    b.wait_mirror(10, "the primary", |v| v["role"] == "Primary")
        .await;
    assert!(all_names(&b).await.contains("after no failover"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_backup_stays_stopped_across_restarts_until_started() {
    let (a, b) = pair(1000).await;
    mirror_databases(&a, &b).await;
    b.ok("/api/mirror/stop", json!({})).await;
    b.wait_mirror(10, "stopped", |v| v["status"] == "Stopped")
        .await;
    b.api()
        .wait_event(B, "operator", "Stop Mirror On This Member")
        .await;
    a.wait_mirror(10, "B down", |v| {
        TestMember::member_row(v, "MIRRORB/IRIS")["status"] == "Down"
    })
    .await;
    created(
        &a,
        "/api/apps/companies",
        json!({"name": "while B is stopped"}),
    )
    .await;
    b.kill_instance().await;
    b.start_instance().await;
    b.wait_ready().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(b.get("/api/mirror").await.1["status"], "Stopped");
    assert!(!all_names(&b).await.contains("while B is stopped"));

    b.ok("/api/mirror/start", json!({})).await;
    b.wait_mirror(15, "a backup again", |v| v["status"] == "Backup")
        .await;
    assert_identical(&a, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_primary_is_forced_down_and_the_backup_takes_over() {
    use mirrorlab::os::{Signal, send_signal};
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    let (a, b) = pair(1000).await;
    mirror_databases(&a, &b).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers_on_primary([a.api(), b.api()], 4, "hang", stop.clone());
    common::before_fault(500).await;

    // The primary hangs: its agent finds it silent, forces it down, and B takes over.
    let pid = a.status().await.pid.unwrap();
    send_signal(pid, Signal::Stop).unwrap();
    let hung = std::time::Instant::now();
    b.wait_mirror(15, "the primary", |v| v["role"] == "Primary")
        .await;
    eprintln!("B took over {:?} after the hang", hung.elapsed());
    b.api()
        .wait_event(B, "takeover", "agent confirmed its instance down")
        .await;
    let status = a.status().await;
    assert_eq!(
        status.state,
        mirrorlab::agent::InstanceState::Down,
        "{status:?}"
    );
    assert!(
        status
            .last_exit
            .as_deref()
            .unwrap_or_default()
            .contains("signal 9"),
        "{status:?}"
    );
    // Its status and the container health check say why it is down and how to start it.
    assert!(
        status
            .forced_down
            .as_deref()
            .unwrap_or_default()
            .contains("hung"),
        "{status:?}"
    );
    let health = std::process::Command::new(common::BINARY)
        .args(["ctl", "--agent", &a.agent, "health"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&health.stdout);
    assert_eq!(health.status.code(), Some(1), "{said}");
    assert!(
        said.contains("forced down by its agent because it did not answer")
            && said.contains("mirrorlab ctl start"),
        "{said}"
    );
    // The orchestrators' liveness check (Swarm, Kubernetes) passes: the agent lives, and a
    // container replaced for a health check would bring back a member the rules keep down.
    let liveness = std::process::Command::new(common::BINARY)
        .args(["ctl", "--agent", &a.agent, "health", "--liveness"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&liveness.stdout);
    assert_eq!(liveness.status.code(), Some(0), "{said}");
    assert!(
        said.contains("agent at") && said.contains("forced down by its agent"),
        "{said}"
    );
    common::before_fault(500).await;

    a.start_instance().await;
    a.wait_ready().await;
    a.wait_mirror(20, "B's backup", |v| v["status"] == "Backup")
        .await;
    finish_writers(&stop, writers, &b, &a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_an_arbiter_a_lost_primary_host_needs_a_person_to_force_the_backup() {
    let (mut a, b) = pair(1000).await;
    mirror_databases(&a, &b).await;
    created(
        &a,
        "/api/apps/companies",
        json!({"name": "before the host loss"}),
    )
    .await;
    a.kill_host().await;
    // The agent cannot answer: no automatic takeover.
    b.wait_mirror(10, "waiting", |v| v["status"] == "Waiting")
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let view = b.get("/api/mirror").await.1;
    assert_eq!(view["role"], "Backup");
    // Why, on the monitor and in the events (A's own cannot be read: its host is gone).
    assert!(
        view["no_primary"]
            .as_str()
            .is_some_and(|why| why.contains("agent does not answer")),
        "{view}"
    );
    b.api()
        .wait_event(B, "takeover_refused", "agent does not answer")
        .await;
    let events = b.api().events().await;
    assert_eq!(events["members"][1]["reachable"], false, "{events}");
    // A person forces it, after the warning.
    b.refused("/api/mirror/force-primary", json!({}), 409, "active backup")
        .await;
    let forced = b
        .ok("/api/mirror/force-primary", json!({"confirm": true}))
        .await;
    assert!(
        forced["message"].as_str().unwrap().contains("forced"),
        "{forced}"
    );
    b.wait_mirror(10, "the primary", |v| v["role"] == "Primary")
        .await;
    b.api().wait_event(B, "forced_primary", "forced").await;
    created(&b, "/api/apps/companies", json!({"name": "after forcing"})).await;
    assert!(all_names(&b).await.contains("before the host loss"));

    // The old primary's host returns: it learns B is primary and follows.
    a.restart_host();
    a.wait_ready().await;
    a.wait_mirror(20, "B's backup", |v| v["status"] == "Backup")
        .await;
    assert_identical(&a, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_gets_back_to_a_running_primary_whose_agent_does_not_answer() {
    // Agent controlled; B's data channel runs through a proxy. A's agent process stands still
    // (it accepts connections and answers nothing) while its instance runs on, and the members
    // lose each other for a while.
    let (a, b, data) = pair_full(1000, &[], true, None).await;
    let data = data.unwrap();
    mirror_databases(&a, &b).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers = start_writers_on_primary([a.api(), b.api()], 3, "agentless", stop.clone());
    common::before_fault(300).await;
    a.freeze_agent();
    let fault = common::now_ms();
    data.blackhole
        .store(true, std::sync::atomic::Ordering::Relaxed);
    // B cannot learn from A's agent whether A is down: no takeover.
    b.api()
        .wait_event_since(fault, B, "takeover_refused", "agent does not answer")
        .await;
    data.blackhole
        .store(false, std::sync::atomic::Ordering::Relaxed);
    // The agent still answers nothing, and B gets back to A all the same: it tries the primary
    // between its questions (it used to hold its link back for as long as the agent was silent).
    b.wait_mirror(30, "a backup again", |v| v["status"] == "Backup")
        .await;
    assert_eq!(a.get("/api/mirror").await.1["role"], "Primary");
    assert_eq!(b.get("/api/mirror").await.1["role"], "Backup");
    writes_go_on(&a, 5).await;
    a.thaw_agent();
    let acked = stop_writers(&stop, writers).await;
    assert_identical(&a, &b).await;
    assert_all_present(&b, &acked, "B").await;
    assert_all_present(&a, &acked, "A").await;
}

/// A pair in arbiter-controlled mode whose links can be cut: B's data channel to A runs through
/// `data`, both members reach the arbiter through `arbiter_proxy`.
struct Lab {
    _arbiter: common::TestArbiter,
    arbiter_proxy: common::Proxy,
    data: common::Proxy,
    a: TestMember,
    b: TestMember,
}

const A: &str = "MIRRORA/IRIS";
const B: &str = "MIRRORB/IRIS";

async fn arbiter_lab() -> Lab {
    let arbiter = common::TestArbiter::start().await;
    let arbiter_proxy = common::Proxy::start_by_member(&arbiter.address).await;
    let (a, b, data) = pair_full(1000, &[], true, Some(&arbiter_proxy.address)).await;
    mirror_databases(&a, &b).await;
    wait_arbiter_controlled(&a, &b).await;
    Lab {
        _arbiter: arbiter,
        arbiter_proxy,
        data: data.unwrap(),
        a,
        b,
    }
}

/// Both members show agent-controlled mode.
async fn wait_agent_controlled(lab: &Lab) {
    for member in [&lab.a, &lab.b] {
        member
            .wait_mirror(15, "agent controlled", |v| {
                v["failover_mode"] == "Agent Controlled"
            })
            .await;
    }
}

/// Writes go on on `member` (a company acknowledged within `seconds`).
async fn writes_go_on(member: &TestMember, seconds: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(seconds);
    loop {
        let (status, _) = member
            .post("/api/apps/companies", json!({"name": "still writing"}))
            .await
            .unwrap();
        if status == 201 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} stopped accepting writes",
            member.url
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn matrix_a_link_to_the_arbiter_lost_means_agent_control_and_no_outage() {
    for cut in [B, A] {
        let lab = arbiter_lab().await;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writers = start_writers_on_primary([lab.a.api(), lab.b.api()], 3, "arb", stop.clone());
        common::before_fault(300).await;
        let fault = common::now_ms();
        lab.arbiter_proxy.cut_member(cut);
        wait_agent_controlled(&lab).await;
        // The events: the cut member lost the arbiter, both left arbiter mode.
        let events = lab.a.api();
        events
            .wait_event_since(fault, cut, "arbiter_lost", "lost the arbiter")
            .await;
        for member in [A, B] {
            events
                .wait_event_since(fault, member, "mode_changed", "→ Agent Controlled")
                .await;
        }
        assert_eq!(lab.a.get("/api/mirror").await.1["status"], "Primary");
        assert_eq!(lab.b.get("/api/mirror").await.1["status"], "Backup");
        writes_go_on(&lab.a, 10).await;
        lab.arbiter_proxy.heal_member(cut);
        wait_arbiter_controlled(&lab.a, &lab.b).await;
        let acked = stop_writers(&stop, writers).await;
        assert_identical(&lab.a, &lab.b).await;
        assert_all_present(&lab.b, &acked, "B").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn matrix_the_members_losing_each_other_while_both_see_the_arbiter_keeps_the_primary() {
    let lab = arbiter_lab().await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers = start_writers_on_primary([lab.a.api(), lab.b.api()], 3, "split", stop.clone());
    common::before_fault(300).await;
    let fault = common::now_ms();
    lab.data
        .blackhole
        .store(true, std::sync::atomic::Ordering::Relaxed);
    // The backup stands down through the arbiter; the primary goes on in agent mode.
    wait_agent_controlled(&lab).await;
    lab.a
        .api()
        .wait_event_since(
            fault,
            B,
            "stood_down",
            "no longer counts as the active backup",
        )
        .await;
    lab.a
        .api()
        .wait_event_since(fault, A, "member_lost", "lost the backup")
        .await;
    writes_go_on(&lab.a, 15).await;
    assert_eq!(lab.b.get("/api/mirror").await.1["role"], "Backup");
    lab.data
        .blackhole
        .store(false, std::sync::atomic::Ordering::Relaxed);
    lab.b
        .wait_mirror(30, "a backup again", |v| v["status"] == "Backup")
        .await;
    let acked = stop_writers(&stop, writers).await;
    assert_identical(&lab.a, &lab.b).await;
    assert_all_present(&lab.b, &acked, "B").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn matrix_an_isolated_primary_freezes_and_the_backup_takes_over_through_the_arbiter() {
    let lab = arbiter_lab().await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers = start_writers_on_primary([lab.a.api(), lab.b.api()], 3, "isolated", stop.clone());
    common::before_fault(300).await;
    // A is cut off from everyone (its agent stays reachable, as a separate path would).
    lab.data
        .blackhole
        .store(true, std::sync::atomic::Ordering::Relaxed);
    lab.arbiter_proxy.cut_member(A);
    lab.b
        .wait_mirror(20, "the primary", |v| v["role"] == "Primary")
        .await;
    lab.b
        .api()
        .wait_event(B, "takeover", "the arbiter lost the primary too")
        .await;
    writes_go_on(&lab.b, 10).await;
    // Healing: the old primary learns that B took over and stops; started again, it follows.
    lab.data
        .blackhole
        .store(false, std::sync::atomic::Ordering::Relaxed);
    lab.arbiter_proxy.heal_member(A);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while lab.a.status().await.state != mirrorlab::agent::InstanceState::Down {
        assert!(
            std::time::Instant::now() < deadline,
            "the old primary kept running after the takeover:\n{}",
            lab.a.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    lab.a.start_instance().await;
    lab.a.wait_ready().await;
    lab.a
        .wait_mirror(30, "B's backup", |v| v["status"] == "Backup")
        .await;
    // A's own account after its restart: B took over meanwhile, so it follows B.
    lab.b
        .api()
        .wait_event(A, "role_changed", "following MIRRORB/IRIS as backup")
        .await;
    let acked = stop_writers(&stop, writers).await;
    assert!(!acked.is_empty());
    assert_all_present(&lab.b, &acked, "B").await;
    assert_identical(&lab.a, &lab.b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn matrix_all_links_lost_freezes_the_primary_until_they_heal() {
    let lab = arbiter_lab().await;
    lab.data
        .blackhole
        .store(true, std::sync::atomic::Ordering::Relaxed);
    lab.arbiter_proxy.cut_member(A);
    lab.arbiter_proxy.cut_member(B);
    lab.a
        .wait_mirror(20, "in trouble", |v| v["status"] == "In Trouble")
        .await;
    // A write waits: nobody can tell A whether B took over, so it is not acknowledged.
    let pending = {
        let api = lab.a.api();
        tokio::spawn(async move {
            api.post("/api/apps/companies", json!({"name": "during the outage"}))
                .await
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !pending.is_finished(),
        "acknowledged while cut off from everyone"
    );
    // B asked A's agent, which says A runs: no takeover.
    assert_eq!(lab.b.get("/api/mirror").await.1["role"], "Backup");
    lab.b
        .api()
        .wait_event(B, "takeover_refused", "says its instance is running")
        .await;
    lab.data
        .blackhole
        .store(false, std::sync::atomic::Ordering::Relaxed);
    lab.arbiter_proxy.heal_member(A);
    lab.arbiter_proxy.heal_member(B);
    let (status, body) = pending.await.unwrap().unwrap();
    assert_eq!(status, 201, "{body}");
    lab.a
        .wait_mirror(20, "primary again", |v| v["status"] == "Primary")
        .await;
    lab.a.api().wait_event(A, "trouble_left", "were held").await;
    wait_arbiter_controlled(&lab.a, &lab.b).await;
    assert_identical(&lab.a, &lab.b).await;
    assert!(all_names(&lab.b).await.contains("during the outage"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_that_was_not_active_takes_over_with_the_journal_from_the_primarys_agent() {
    use mirrorlab::os::{Signal, send_signal};
    let (a, b) = pair(1000).await;
    mirror_databases(&a, &b).await;
    // B hangs; A revokes it, waits out its trouble, and goes on alone: these writes are
    // acknowledged without B.
    let b_pid = b.status().await.pid.unwrap();
    send_signal(b_pid, Signal::Stop).unwrap();
    let mut alone = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while alone.len() < 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "A never went on alone"
        );
        let name = format!("alone {}", alone.len());
        if let Ok((201, _)) = a.post("/api/apps/companies", json!({"name": name})).await {
            alone.push(name);
        }
    }
    // A dies; B wakes up, is no longer active, and takes over only with A's journal.
    a.kill_instance().await;
    send_signal(b_pid, Signal::Cont).unwrap();
    b.wait_mirror(20, "the primary", |v| v["role"] == "Primary")
        .await;
    b.api()
        .wait_event(B, "takeover", "supplied its journal to the end")
        .await;
    assert!(
        b.log().contains("of the down primary through its agent"),
        "B did not fetch A's journal:\n{}",
        b.log()
    );
    assert_all_present(&b, &Outcome::from(alone), "B").await;
    a.start_instance().await;
    a.wait_ready().await;
    a.wait_mirror(20, "B's backup", |v| v["status"] == "Backup")
        .await;
    assert_identical(&a, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_async_member_never_delays_commits_and_follows_the_new_primary() {
    use mirrorlab::os::{Signal, send_signal};
    let (a, b) = pair(1000).await;
    mirror_databases(&a, &b).await;
    let c = TestMember::start_named("mirrorc").await;
    c.ok("/api/mirror/service", json!({"enabled": true})).await;
    let join = |async_type: &str| {
        json!({
            "mirror_name": "MIRRORSET",
            "agent_address": format!("127.0.0.1:{}", a.agent_port()),
            "instance_name": "IRIS",
            "superserver_address": c.superserver,
            "agent_address_local": "127.0.0.1",
            "agent_port_local": c.agent_port(),
            "async_type": async_type,
        })
    };
    c.refused(
        "/api/mirror/join-async",
        join("sideways"),
        400,
        "Async Member System Type",
    )
    .await;
    let joined = c.ok("/api/mirror/join-async", join("dr")).await;
    assert!(
        joined["message"]
            .as_str()
            .unwrap()
            .contains("disaster recovery"),
        "{joined}"
    );
    wait_async_connected(&a, "Disaster Recovery").await;
    copy_databases(&a, &c).await;
    c.wait_mirror(10, "connected", |v| v["status"] == "Connected")
        .await;

    // C hangs: commits on A go on without waiting for it.
    let c_pid = c.status().await.pid.unwrap();
    send_signal(c_pid, Signal::Stop).unwrap();
    for i in 0..10 {
        created(
            &a,
            "/api/apps/companies",
            json!({"name": format!("while C hangs {i}")}),
        )
        .await;
    }
    assert_eq!(a.get("/api/mirror").await.1["status"], "Primary");
    send_signal(c_pid, Signal::Cont).unwrap();

    // A dies, B takes over, and C follows B.
    a.kill_instance().await;
    b.wait_mirror(10, "the primary", |v| v["role"] == "Primary")
        .await;
    c.wait_mirror(20, "following B", |v| {
        v["status"] == "Connected"
            && TestMember::member_row(v, "MIRRORB/IRIS")["status"] == "Primary"
    })
    .await;
    created(&b, "/api/apps/companies", json!({"name": "written on B"})).await;
    a.start_instance().await;
    a.wait_ready().await;
    a.wait_mirror(20, "B's backup", |v| v["status"] == "Backup")
        .await;
    assert_identical(&a, &b).await;
    assert_identical(&b, &c).await;
    assert!(all_names(&c).await.contains("written on B"));
    assert_eq!(c.get("/api/mirror").await.1["role"], "Disaster Recovery");
}

/// Waits until `primary` shows `mirrorc` connected, and checks the type it shows for it.
async fn wait_async_connected(primary: &TestMember, kind: &str) {
    let view = primary
        .wait_mirror(10, "with C connected", |v| {
            TestMember::member_row(v, "MIRRORC/IRIS")["status"] == "Connected"
        })
        .await;
    assert_eq!(TestMember::member_row(&view, "MIRRORC/IRIS")["type"], kind);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dr_async_promoted_to_failover_takes_over_and_the_demoted_backup_follows() {
    let (a, b) = pair(1000).await;
    mirror_databases(&a, &b).await;
    let c = join_async("dr", &a).await;
    // Two failover members already: C cannot be promoted.
    c.refused(
        "/api/mirror/promote",
        json!({}),
        409,
        "two failover members",
    )
    .await;

    // Demote Other Member on the primary: B becomes a DR async, and A does not stall.
    a.ok("/api/mirror/demote-other", json!({})).await;
    b.wait_mirror(15, "a DR async", |v| {
        v["role"] == "Disaster Recovery" && v["status"] == "Connected"
    })
    .await;
    a.wait_mirror(10, "B as DR", |v| {
        TestMember::member_row(v, "MIRRORB/IRIS")["type"] == "Disaster Recovery"
    })
    .await;
    created(
        &a,
        "/api/apps/companies",
        json!({"name": "after the demotion"}),
    )
    .await;
    // (If B's old link dropped while still active, A was In Trouble until B came back as a DR;
    // the monitor's status follows the failover rules a moment after commits resume.)
    a.wait_mirror(5, "primary", |v| v["status"] == "Primary")
        .await;

    // Promote C: it becomes the active backup.
    c.ok("/api/mirror/promote", json!({})).await;
    c.wait_mirror(15, "the backup", |v| v["status"] == "Backup")
        .await;
    a.wait_mirror(15, "with C active", |v| {
        TestMember::member_row(v, "MIRRORC/IRIS")["journal_transfer"] == "Active"
    })
    .await;

    // A dies: C takes over, B (DR) follows C, A rejoins as C's backup.
    a.kill_instance().await;
    c.wait_mirror(10, "the primary", |v| v["role"] == "Primary")
        .await;
    created(&c, "/api/apps/companies", json!({"name": "written on C"})).await;
    b.wait_mirror(20, "following C", |v| {
        v["status"] == "Connected"
            && TestMember::member_row(v, "MIRRORC/IRIS")["status"] == "Primary"
    })
    .await;
    a.start_instance().await;
    a.wait_ready().await;
    a.wait_mirror(20, "C's backup", |v| v["status"] == "Backup")
        .await;
    assert_identical(&a, &c).await;
    assert_identical(&b, &c).await;
    assert!(all_names(&b).await.contains("written on C"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_primary_stopped_gracefully_hands_over_to_its_backup() {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    // No arbiter: the stopping primary's agent goes away too, so only the hand-over can do it.
    let (mut a, b) = pair(1000).await;
    mirror_databases(&a, &b).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers_on_primary([a.api(), b.api()], 4, "handover", stop.clone());
    common::before_fault(400).await;
    a.stop_host().await;
    b.wait_mirror(10, "the primary", |v| v["role"] == "Primary")
        .await;
    assert!(b.log().contains("hands over"), "{}", b.log());
    common::before_fault(300).await;
    a.restart_host();
    a.wait_ready().await;
    a.wait_mirror(20, "B's backup", |v| v["status"] == "Backup")
        .await;
    b.api().wait_event(B, "takeover", "handed over").await;
    b.api().wait_event(A, "stopping", "stops gracefully").await;
    finish_writers(&stop, writers, &b, &a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn matrix_an_isolated_backup_leaves_the_primary_writing() {
    let lab = arbiter_lab().await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers = start_writers_on_primary([lab.a.api(), lab.b.api()], 3, "lonely", stop.clone());
    common::before_fault(300).await;
    // B is cut off from A and from the arbiter: the arbiter confirms it lost B too, and A goes
    // on alone in agent mode after a brief pause.
    let fault = common::now_ms();
    lab.data
        .blackhole
        .store(true, std::sync::atomic::Ordering::Relaxed);
    lab.arbiter_proxy.cut_member(B);
    lab.a
        .wait_mirror(20, "primary in agent mode", |v| {
            v["status"] == "Primary" && v["failover_mode"] == "Agent Controlled"
        })
        .await;
    // A's account: it lost its backup, held commits in trouble, and went on.
    for (kind, says) in [
        ("member_lost", "lost the backup"),
        ("trouble_entered", "mirrored commits wait"),
        ("trouble_left", "were held"),
    ] {
        lab.a.api().wait_event_since(fault, A, kind, says).await;
    }
    writes_go_on(&lab.a, 15).await;
    // B may not take over: it lost the arbiter as well, and A's agent says A runs.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(lab.b.get("/api/mirror").await.1["role"], "Backup");
    lab.data
        .blackhole
        .store(false, std::sync::atomic::Ordering::Relaxed);
    lab.arbiter_proxy.heal_member(B);
    wait_arbiter_controlled(&lab.a, &lab.b).await;
    let acked = stop_writers(&stop, writers).await;
    assert_identical(&lab.a, &lab.b).await;
    assert_all_present(&lab.b, &acked, "B").await;
}

/// The name of company `id` on `member`, if it has that row.
async fn company_name(member: &Api, id: &Value) -> Option<String> {
    let (status, body) = member.get(&format!("/api/apps/companies/{id}")).await;
    (status == 200).then(|| body["name"].as_str().unwrap().to_string())
}

async fn rename_company(member: &Api, id: &Value, name: &str) {
    let reply = member
        .client
        .put(format!("{}/api/apps/companies/{id}", member.url))
        .basic_auth("superuser", Some("SYS"))
        .json(&json!({ "name": name }))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status().as_u16(), 200, "rename to {name}");
}

/// Waits (up to 10 s) until `check` holds for company `id` on `member`.
async fn wait_company(member: &Api, id: &Value, what: &str, check: impl Fn(Option<&str>) -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let name = company_name(member, id).await;
        if check(name.as_deref()) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "company {id}: {what}; it is {name:?}\n{}",
            member.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_write_reporting_async_takes_local_writes_that_are_never_propagated() {
    let (a, b) = pair(1000).await;
    mirror_databases(&a, &b).await;
    let c = join_async("reporting_rw", &a).await;
    wait_async_connected(&a, "Read-Write Reporting").await;
    c.refused("/api/mirror/promote", json!({}), 409, "never be promoted")
        .await;

    // The primary's rows arrive; C's own writes are accepted and stay on C.
    let shared = created(&a, "/api/apps/companies", json!({"name": "from A"})).await;
    wait_company(&c, &shared["id"], "reach C", |n| n == Some("from A")).await;
    // (An id far above the primary's: a row the primary later writes under the same key would
    // replace it, as the primary's version wins.)
    c.sql(
        "COMPANY",
        "INSERT INTO Company (id, name, created_at) VALUES (1000000, 'only on C', 'now')",
    )
    .await;
    let local = json!(1000000);
    wait_company(&c, &local, "be written on C", |n| n == Some("only on C")).await;
    rename_company(&c, &shared["id"], "changed on C").await;
    created(&a, "/api/apps/companies", json!({"name": "after C wrote"})).await;
    wait_company(&c, &shared["id"], "keep C's change", |n| {
        n == Some("changed on C")
    })
    .await;
    for member in [&a, &b] {
        assert!(!all_names(member).await.contains("only on C"));
        assert_eq!(
            company_name(member, &shared["id"]).await.as_deref(),
            Some("from A")
        );
    }

    // The primary changes the row C changed: the primary's version wins on C, and dejournaling
    // goes on.
    rename_company(&a, &shared["id"], "A's version").await;
    wait_company(&c, &shared["id"], "take A's version", |n| {
        n == Some("A's version")
    })
    .await;

    // C's local write survives a crash of its instance, and C follows again after it.
    c.kill_instance().await;
    c.start_instance().await;
    c.wait_ready().await;
    let later = created(
        &a,
        "/api/apps/companies",
        json!({"name": "after C restarted"}),
    )
    .await;
    wait_company(&c, &later["id"], "reach C after its restart", |n| {
        n == Some("after C restarted")
    })
    .await;
    let names = all_names(&c).await;
    assert!(
        names.contains("only on C") && names.contains("after C wrote"),
        "{names:?}"
    );
    // Nothing of C's ever reached the failover members, and they are identical.
    assert!(!all_names(&a).await.contains("only on C"));
    assert_eq!(company_name(&a, &local).await, None);
    assert_identical(&a, &b).await;
}
