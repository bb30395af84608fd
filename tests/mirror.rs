//! Mirroring between real member processes on loopback: the article's walk-through through the
//! API and a plain file copy, and the links surviving restarts. After every test the mirrored
//! databases are compared row by row on both members.

mod common;

use std::time::Duration;

use common::TestMember;
use serde_json::{Value, json};

const DATABASES: [&str; 3] = ["COMPANY", "CUSTOMER", "PERSONAL"];

/// A started pair: A primary of MIRRORSET, B its active backup.
async fn pair(qos_ms: u64) -> (TestMember, TestMember) {
    pair_with(qos_ms, &[]).await
}

/// A started pair whose members got `extra` arguments.
async fn pair_with(qos_ms: u64, extra: &[&str]) -> (TestMember, TestMember) {
    let (a, b, _) = pair_full(qos_ms, extra, false, None).await;
    (a, b)
}

/// A started pair; with `proxied`, B's data channel to A runs through a fault-injecting proxy
/// (A's mirror private address is the proxy's).
async fn pair_full(
    qos_ms: u64,
    extra: &[&str],
    proxied: bool,
    arbiter: Option<&common::TestArbiter>,
) -> (TestMember, TestMember, Option<common::Proxy>) {
    let a = TestMember::start_with("mirrora", extra).await;
    let b = TestMember::start_with("mirrorb", extra).await;
    let proxy = match proxied {
        true => Some(common::Proxy::start(&a.superserver).await),
        false => None,
    };
    let private = proxy
        .as_ref()
        .map(|p| p.address.clone())
        .unwrap_or_else(|| a.superserver.clone());
    a.ok("/api/mirror/service", json!({"enabled": true})).await;
    a.ok(
        "/api/mirror/create",
        json!({
            "mirror_name": "mirrorset",
            "use_arbiter": arbiter.is_some(),
            "arbiter_address": "127.0.0.1",
            "arbiter_port": arbiter.map(|a| a.port()),
            "superserver_address": a.superserver,
            "mirror_private_address": private,
            "agent_address": "127.0.0.1",
            "agent_port": a.agent_port(),
            "qos_timeout_ms": qos_ms,
        }),
    )
    .await;
    let view = a
        .wait_mirror(5, "primary", |v| v["role"] == "Primary")
        .await;
    assert_eq!(view["mirror_name"], "MIRRORSET");
    assert_eq!(view["member_name"], "MIRRORA/IRIS");
    if arbiter.is_none() {
        assert_eq!(view["failover_mode"], "Agent Controlled");
        assert_eq!(
            view["arbiter"]["connection_status"],
            "This member is not connected to the arbiter"
        );
    }
    b.ok("/api/mirror/service", json!({"enabled": true})).await;
    b.ok(
        "/api/mirror/join-failover",
        json!({
            "mirror_name": "MIRRORSET",
            "agent_address": format!("127.0.0.1:{}", a.agent_port()),
            "instance_name": "IRIS",
            "superserver_address": b.superserver,
            "agent_address_local": "127.0.0.1",
            "agent_port_local": b.agent_port(),
        }),
    )
    .await;
    a.wait_mirror(15, "with an active backup", |v| {
        TestMember::member_row(v, "MIRRORB/IRIS")["journal_transfer"] == "Active"
    })
    .await;
    let view = b
        .wait_mirror(15, "an active backup", |v| v["status"] == "Backup")
        .await;
    assert_eq!(
        TestMember::member_row(&view, "MIRRORA/IRIS")["status"],
        "Primary"
    );
    (a, b, proxy)
}

/// Adds the demo databases to the mirror on A and copies them to B with `cp`.
async fn mirror_databases(a: &TestMember, b: &TestMember) {
    let added = a
        .ok("/api/mirror/add-databases", json!({"databases": DATABASES}))
        .await;
    assert!(
        added["message"].as_str().unwrap().contains("need a copy"),
        "{added}"
    );
    let view = b
        .wait_mirror(10, "aware of the mirrored databases", |v| {
            v["missing_databases"].as_array().map(|m| m.len()) == Some(3)
        })
        .await;
    assert_eq!(view["missing_databases"][0], ":mirror:MIRRORSET:COMPANY");
    for db in DATABASES {
        b.ok(&format!("/api/databases/{db}/dismount"), json!({}))
            .await;
        let dir = db.to_ascii_lowercase();
        std::fs::copy(
            a.data_dir().join(format!("mgr/{dir}/database.sqlite")),
            b.data_dir().join(format!("mgr/{dir}/database.sqlite")),
        )
        .unwrap();
        b.ok(&format!("/api/databases/{db}/mount"), json!({})).await;
        assert_eq!(b.db_status(db).await, "Needs Activation");
        b.ok(&format!("/api/databases/{db}/activate"), json!({}))
            .await;
        assert_eq!(b.db_status(db).await, "Needs Catchup");
        b.ok(&format!("/api/databases/{db}/catchup"), json!({}))
            .await;
    }
    for db in DATABASES {
        wait_dejournaling(b, db).await;
    }
}

async fn assert_identical(a: &TestMember, b: &TestMember) {
    assert_identical_in(a, b, &DATABASES).await
}

/// Waits until `dbs` hold the same rows on both members (B applies what A made durable shortly
/// after), and fails with both logs if they do not within 15 s.
async fn assert_identical_in(a: &TestMember, b: &TestMember, dbs: &[&str]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let mut same = true;
        for db in dbs {
            // The PHONEBOOK namespace attaches all three demo databases.
            if a.checksums("PHONEBOOK", db).await != b.checksums("PHONEBOOK", db).await {
                same = false;
            }
        }
        if same {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the mirrored databases differ:\nA log:\n{}\nB log:\n{}",
            a.log(),
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits (up to 20 s) until `db` is dejournaling on backup `b`.
async fn wait_dejournaling(b: &TestMember, db: &str) {
    b.wait_mirror(20, &format!("dejournaling {db}"), |v| {
        v["databases"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["name"] == db && d["status"] == "Dejournaling")
    })
    .await;
}

fn names(result: &Value) -> Vec<String> {
    result["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[0].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_walkthrough_replicates_to_the_backup() {
    let (a, b) = pair(2000).await;
    // The applications on A; B does not have them yet.
    let (_, company) = a
        .post("/api/apps/companies", json!({"name": "Acme"}))
        .await
        .unwrap();
    a.post(
        "/api/apps/contacts",
        json!({"name": "Ann", "company_id": company["id"]}),
    )
    .await
    .unwrap();
    assert!(names(&b.sql("COMPANY", "SELECT name FROM Company").await).is_empty());

    mirror_databases(&a, &b).await;
    assert_eq!(
        names(&b.sql("COMPANY", "SELECT name FROM Company").await),
        ["Acme"]
    );

    // A company added on A appears on B within a moment.
    let (status, _) = a
        .post("/api/apps/companies", json!({"name": "Another company"}))
        .await
        .unwrap();
    assert_eq!(status, 201);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !names(&b.sql("COMPANY", "SELECT name FROM Company").await)
        .contains(&"Another company".to_string())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "Another company never reached B"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // On B the mirrored databases are read-only, on every path.
    let (status, err) = b
        .post("/api/apps/companies", json!({"name": "Nope"}))
        .await
        .unwrap();
    assert_eq!(status, 409, "{err}");
    assert!(
        err["error"].as_str().unwrap().contains("read-only"),
        "{err}"
    );
    let (status, err) = b
        .post(
            "/api/sql",
            json!({"namespace": "COMPANY", "sql": "DELETE FROM Company"}),
        )
        .await
        .unwrap();
    assert_eq!(status, 409, "{err}");
    let (_, databases) = b.get("/api/databases").await;
    for db in databases.as_array().unwrap() {
        assert_eq!(db["read_only"], true, "{db}");
        assert!(
            db["mirrored"]
                .as_str()
                .unwrap()
                .starts_with(":mirror:MIRRORSET:")
        );
    }
    // Load balancers: A is the primary.
    let a_status = a
        .client
        .get(format!("{}/mirror_status", a.url))
        .send()
        .await
        .unwrap();
    assert_eq!(a_status.status().as_u16(), 200);
    let b_status = b
        .client
        .get(format!("{}/mirror_status", b.url))
        .send()
        .await
        .unwrap();
    assert_eq!(b_status.status().as_u16(), 503);

    assert_identical(&a, &b).await;
}

/// Writers inserting companies on A until stopped; returns the names acknowledged.
fn start_writers(
    a: &std::sync::Arc<TestMember>,
    count: usize,
    prefix: &str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<String>>> {
    (0..count)
        .map(|w| {
            let (a, stop, prefix) = (a.clone(), stop.clone(), prefix.to_string());
            tokio::spawn(async move {
                let mut acked = Vec::new();
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    let name = format!("{prefix}-{w}-{n}");
                    match a.post("/api/apps/companies", json!({"name": name})).await {
                        Ok((201, _)) => acked.push(name),
                        Ok(_) | Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
                acked
            })
        })
        .collect()
}

/// Every company name on `member`, read in pages (one result holds at most 10 000 rows).
async fn all_names(member: &TestMember) -> std::collections::HashSet<String> {
    let mut all = std::collections::HashSet::new();
    let mut after = 0i64;
    loop {
        let page = member
            .sql(
                "COMPANY",
                &format!("SELECT name, id FROM Company WHERE id > {after} ORDER BY id LIMIT 5000"),
            )
            .await;
        let rows = page["rows"].as_array().unwrap();
        let Some(last) = rows.last() else {
            return all;
        };
        after = last[1].as_i64().unwrap();
        all.extend(rows.iter().map(|r| r[0].as_str().unwrap().to_string()));
    }
}

/// Every acknowledged company name is on `member` (called `who` in the message).
async fn assert_all_present(member: &TestMember, acked: &[String], who: &str) {
    let present = all_names(member).await;
    for name in acked {
        assert!(
            present.contains(name),
            "acknowledged {name} is missing on {who}"
        );
    }
}

async fn stop_writers(
    stop: &std::sync::atomic::AtomicBool,
    writers: Vec<tokio::task::JoinHandle<Vec<String>>>,
) -> Vec<String> {
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_copy_made_during_freeze_while_applications_write_catches_up() {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    let (a, b) = pair(2000).await;
    let a = Arc::new(a);
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers(&a, 4, "freeze", stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.ok("/api/mirror/add-databases", json!({"databases": DATABASES}))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for db in DATABASES {
        b.ok(&format!("/api/databases/{db}/dismount"), json!({}))
            .await;
    }
    // Freeze, copy while the writers wait, thaw.
    let frozen = a.ok("/api/mirror/freeze", json!({"timeout_s": 60})).await;
    assert!(
        frozen["message"].as_str().unwrap().contains("frozen"),
        "{frozen}"
    );
    for db in DATABASES {
        let dir = db.to_ascii_lowercase();
        std::fs::copy(
            a.data_dir().join(format!("mgr/{dir}/database.sqlite")),
            b.data_dir().join(format!("mgr/{dir}/database.sqlite")),
        )
        .unwrap();
    }
    a.ok("/api/mirror/thaw", json!({})).await;
    for db in DATABASES {
        b.ok(&format!("/api/databases/{db}/mount"), json!({})).await;
        b.ok(&format!("/api/databases/{db}/activate"), json!({}))
            .await;
        b.ok(&format!("/api/databases/{db}/catchup"), json!({}))
            .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let acked = stop_writers(&stop, writers).await;
    assert!(
        acked.len() > 20,
        "the writers barely wrote: {}",
        acked.len()
    );
    for db in DATABASES {
        wait_dejournaling(&b, db).await;
    }
    assert_identical(&a, &b).await;
    assert_all_present(&b, &acked, "B").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_killed_mid_stream_catches_up_without_losing_or_repeating() {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    let (a, b) = pair(1000).await;
    mirror_databases(&a, &b).await;
    let a = Arc::new(a);
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers(&a, 4, "bkill", stop.clone());
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        b.kill_instance().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        b.start_instance().await;
        b.wait_ready().await;
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let acked = stop_writers(&stop, writers).await;
    assert!(
        acked.len() > 20,
        "the writers barely wrote: {}",
        acked.len()
    );
    a.wait_mirror(20, "with an active backup again", |v| {
        TestMember::member_row(v, "MIRRORB/IRIS")["journal_transfer"] == "Active"
    })
    .await;
    assert_identical(&a, &b).await;
    assert_all_present(&b, &acked, "B").await;
    for db in DATABASES {
        assert_eq!(b.db_status(db).await, "Dejournaling", "{db}");
    }
}

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
        tokio::time::sleep(Duration::from_millis(400)).await;
        a.kill_instance().await;
        b.wait_mirror(10, "disconnected", |v| v["status"] == "Waiting")
            .await;
        a.start_instance().await;
        a.wait_ready().await;
        // A asks B who is primary before it resumes.
        a.wait_mirror(15, "primary again", |v| v["role"] == "Primary")
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
    assert_all_present(&a, &acked, "A").await;
    assert_eq!(b.get("/api/mirror").await.1["role"], "Backup");
}

/// Writers inserting companies on whichever member accepts them (A first); returns the names
/// acknowledged.
fn start_writers_on_primary(
    members: [common::Api; 2],
    count: usize,
    prefix: &str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<String>>> {
    (0..count)
        .map(|w| {
            let (members, stop, prefix) = (members.clone(), stop.clone(), prefix.to_string());
            tokio::spawn(async move {
                let mut acked = Vec::new();
                let mut target = 0;
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    let name = format!("{prefix}-{w}-{n}");
                    let body = json!({ "name": name });
                    match members[target].post("/api/apps/companies", body).await {
                        Ok((201, _)) => acked.push(name),
                        Ok(_) | Err(_) => {
                            target = 1 - target;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
                acked
            })
        })
        .collect()
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
    tokio::time::sleep(Duration::from_millis(500)).await;

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
    tokio::time::sleep(Duration::from_millis(500)).await;

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
async fn a_divergent_tail_is_undone_and_quarantined_when_the_old_primary_rejoins() {
    let (a, b, proxy) = pair_full(3000, &[], true, None).await;
    let proxy = proxy.unwrap();
    mirror_databases(&a, &b).await;
    created(&a, "/api/apps/companies", json!({"name": "before"})).await;
    assert_identical(&a, &b).await;

    // Nothing reaches B any more; A commits a write locally that it can never acknowledge.
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
    while !all_names(&a).await.contains("never acknowledged") {
        assert!(
            std::time::Instant::now() < deadline,
            "the write never ran on A"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
async fn catchup_fetches_older_journal_from_the_primary() {
    // A mirrors its databases and keeps a copy before B ever joins: B's own mirror journal
    // starts later than the copy needs.
    let a = TestMember::start_named("mirrora").await;
    let b = TestMember::start_named("mirrorb").await;
    a.ok("/api/mirror/service", json!({"enabled": true})).await;
    a.ok("/api/mirror/create", json!({"mirror_name": "MIRRORSET", "superserver_address": a.superserver, "agent_address": "127.0.0.1", "agent_port": a.agent_port(), "qos_timeout_ms": 2000})).await;
    a.ok("/api/mirror/add-databases", json!({"databases": DATABASES}))
        .await;
    a.post("/api/apps/companies", json!({"name": "before the copy"}))
        .await
        .unwrap();
    let saved = a.dir.path().join("saved");
    std::fs::create_dir_all(&saved).unwrap();
    a.ok("/api/mirror/freeze", json!({})).await;
    for db in DATABASES {
        let dir = db.to_ascii_lowercase();
        std::fs::copy(
            a.data_dir().join(format!("mgr/{dir}/database.sqlite")),
            saved.join(format!("{dir}.sqlite")),
        )
        .unwrap();
    }
    a.ok("/api/mirror/thaw", json!({})).await;
    for i in 0..30 {
        a.post(
            "/api/apps/companies",
            json!({"name": format!("after the copy {i}")}),
        )
        .await
        .unwrap();
    }
    b.ok("/api/mirror/service", json!({"enabled": true})).await;
    b.ok("/api/mirror/join-failover", json!({"mirror_name": "MIRRORSET", "agent_address": format!("127.0.0.1:{}", a.agent_port()), "superserver_address": b.superserver, "agent_address_local": "127.0.0.1", "agent_port_local": b.agent_port()})).await;
    b.wait_mirror(15, "a backup", |v| v["status"] == "Backup")
        .await;
    for db in DATABASES {
        let dir = db.to_ascii_lowercase();
        b.ok(&format!("/api/databases/{db}/dismount"), json!({}))
            .await;
        std::fs::copy(
            saved.join(format!("{dir}.sqlite")),
            b.data_dir().join(format!("mgr/{dir}/database.sqlite")),
        )
        .unwrap();
        b.ok(&format!("/api/databases/{db}/mount"), json!({})).await;
        b.ok(&format!("/api/databases/{db}/activate"), json!({}))
            .await;
        b.ok(&format!("/api/databases/{db}/catchup"), json!({}))
            .await;
    }
    for db in DATABASES {
        wait_dejournaling(&b, db).await;
    }
    assert!(
        b.log().contains("fetching journal records"),
        "B should have fetched from A"
    );
    assert_identical(&a, &b).await;
    assert_eq!(all_names(&b).await.len(), 31);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn copies_of_something_else_are_refused() {
    let (a, b) = pair(2000).await;
    a.ok("/api/mirror/add-databases", json!({"databases": DATABASES}))
        .await;
    b.wait_mirror(10, "aware of the mirrored databases", |v| {
        v["missing_databases"].as_array().map(|m| m.len()) == Some(3)
    })
    .await;
    b.ok("/api/databases/COMPANY/dismount", json!({})).await;
    // Another database's file in COMPANY's place.
    std::fs::copy(
        a.data_dir().join("mgr/personal/database.sqlite"),
        b.data_dir().join("mgr/company/database.sqlite"),
    )
    .unwrap();
    b.refused(
        "/api/databases/COMPANY/mount",
        json!({}),
        409,
        "holds database PERSONAL",
    )
    .await;
    // A copy of COMPANY from an instance outside the mirror.
    let c = TestMember::start_named("other").await;
    c.post("/api/apps/companies", json!({"name": "elsewhere"}))
        .await
        .unwrap();
    c.ok("/api/databases/COMPANY/dismount", json!({})).await;
    std::fs::copy(
        c.data_dir().join("mgr/company/database.sqlite"),
        b.data_dir().join("mgr/company/database.sqlite"),
    )
    .unwrap();
    b.refused(
        "/api/databases/COMPANY/mount",
        json!({}),
        409,
        "another instance or another mirror",
    )
    .await;
    // The right file is accepted.
    std::fs::copy(
        a.data_dir().join("mgr/company/database.sqlite"),
        b.data_dir().join("mgr/company/database.sqlite"),
    )
    .unwrap();
    b.ok("/api/databases/COMPANY/mount", json!({})).await;
    assert_eq!(b.db_status("COMPANY").await, "Needs Activation");
    // A second Activate and a second Catchup do no harm.
    b.ok("/api/databases/COMPANY/activate", json!({})).await;
    let again = b.ok("/api/databases/COMPANY/activate", json!({})).await;
    assert!(
        again["message"].as_str().unwrap().contains("already"),
        "{again}"
    );
    b.ok("/api/databases/COMPANY/catchup", json!({})).await;
    b.ok("/api/databases/COMPANY/catchup", json!({})).await;
    wait_dejournaling(&b, "COMPANY").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_mirror_input_is_refused_clearly_and_changes_nothing() {
    let (a, b) = pair(2000).await;
    a.post("/api/apps/companies", json!({"name": "before the copy"}))
        .await
        .unwrap();

    // Joins that must fail, each with a message that says why; C stays outside the mirror.
    let c = TestMember::start_named("mirrorc").await;
    c.ok("/api/mirror/service", json!({"enabled": true})).await;
    let join = |mirror: &str, agent: String| {
        json!({
            "mirror_name": mirror,
            "agent_address": agent,
            "instance_name": "IRIS",
            "superserver_address": c.superserver,
            "agent_address_local": "127.0.0.1",
            "agent_port_local": c.agent_port(),
        })
    };
    let a_agent = format!("127.0.0.1:{}", a.agent_port());
    let nobody = format!("127.0.0.1:{}", common::free_port());
    for (body, status, says) in [
        (join("OTHERSET", a_agent.clone()), 409, "not OTHERSET"),
        (join("no spaces!", a_agent.clone()), 400, "is not valid"),
        (join("MIRRORSET", nobody), 409, "could not reach"),
        (
            join("MIRRORSET", a_agent.clone()),
            409,
            "already has two failover members",
        ),
    ] {
        let (got, err) = c.post("/api/mirror/join-failover", body).await.unwrap();
        assert_eq!(got, status, "{err}");
        assert!(err["error"].as_str().unwrap().contains(says), "{err}");
    }
    let view = c.get("/api/mirror").await.1;
    assert!(view["mirror_name"].is_null(), "{view}");
    let view = a.get("/api/mirror").await.1;
    assert_eq!(view["members"].as_array().unwrap().len(), 2, "{view}");

    // Adding a database twice: the second click says so and changes nothing.
    a.ok(
        "/api/mirror/add-databases",
        json!({"databases": ["COMPANY", "CUSTOMER"]}),
    )
    .await;
    let again = a
        .ok(
            "/api/mirror/add-databases",
            json!({"databases": ["COMPANY"]}),
        )
        .await;
    assert!(
        again["message"]
            .as_str()
            .unwrap()
            .contains("already in mirror"),
        "{again}"
    );
    b.wait_mirror(10, "aware of COMPANY and CUSTOMER", |v| {
        v["missing_databases"].as_array().map(|m| m.len()) == Some(2)
    })
    .await;

    // A truncated copy and a damaged copy are refused at Mount, and stay dismounted. Enough
    // rows first that the middle of the file is table pages.
    for i in 0..300 {
        created(
            &a,
            "/api/apps/companies",
            json!({"name": format!("filler {i}")}),
        )
        .await;
    }
    b.ok("/api/databases/COMPANY/dismount", json!({})).await;
    let target = b.data_dir().join("mgr/company/database.sqlite");
    a.ok("/api/mirror/freeze", json!({})).await;
    let original = std::fs::read(a.data_dir().join("mgr/company/database.sqlite")).unwrap();
    a.ok("/api/mirror/thaw", json!({})).await;
    let mut damaged = original.clone();
    // The start of a page in the middle: its b-tree page header and cell pointers.
    let middle = damaged.len() / 2 / 4096 * 4096;
    for byte in &mut damaged[middle..middle + 512] {
        *byte ^= 0x5a;
    }
    for bad in [&original[..original.len() / 2], &damaged[..]] {
        std::fs::write(&target, bad).unwrap();
        b.refused(
            "/api/databases/COMPANY/mount",
            json!({}),
            409,
            "is damaged or incomplete",
        )
        .await;
        let databases = b.get("/api/databases").await.1;
        let company = databases
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == "COMPANY")
            .unwrap()
            .clone();
        assert_eq!(company["mounted"], false, "{company}");
    }

    // The good copy mounts; Catchup before Activate is refused; then both work.
    std::fs::write(&target, &original).unwrap();
    b.ok("/api/databases/COMPANY/mount", json!({})).await;
    b.refused(
        "/api/databases/COMPANY/catchup",
        json!({}),
        409,
        "needs Activate before Catchup",
    )
    .await;
    assert_eq!(b.db_status("COMPANY").await, "Needs Activation");
    b.ok("/api/databases/COMPANY/activate", json!({})).await;
    b.ok("/api/databases/COMPANY/catchup", json!({})).await;
    a.post("/api/apps/companies", json!({"name": "after the copy"}))
        .await
        .unwrap();
    wait_dejournaling(&b, "COMPANY").await;
    assert_identical_in(&a, &b, &["COMPANY"]).await;
}

/// POSTs a new application row and returns it (201 expected).
async fn created(member: &TestMember, path: &str, body: Value) -> Value {
    let (status, row) = member.post(path, body).await.unwrap();
    assert_eq!(status, 201, "{path}: {row}");
    row
}

/// Files of a journal as `GET /api/journal` lists them (`mirror` for the mirror journal).
async fn journal_files(member: &TestMember, mirror: bool) -> Vec<String> {
    let journal = member.get("/api/journal").await.1;
    let journal = if mirror { &journal["mirror"] } else { &journal };
    journal["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn purged_journal_makes_a_stale_copy_obsolete_and_loses_nothing() {
    // Small journal files, so a few hundred writes fill several.
    let (a, b) = pair_with(2000, &["--journal-segment-bytes", "8192"]).await;
    a.ok(
        "/api/mirror/add-databases",
        json!({"databases": ["COMPANY"]}),
    )
    .await;
    b.wait_mirror(10, "aware of COMPANY", |v| {
        v["missing_databases"].as_array().map(|m| m.len()) == Some(1)
    })
    .await;
    // The stale copy: taken now, used after the journal it needs is gone.
    a.ok("/api/mirror/freeze", json!({})).await;
    let stale = std::fs::read(a.data_dir().join("mgr/company/database.sqlite")).unwrap();
    a.ok("/api/mirror/thaw", json!({})).await;
    b.ok("/api/databases/COMPANY/dismount", json!({})).await;

    // Mirrored writes (COMPANY) and local writes (PERSONAL, not mirrored) fill several files.
    for i in 0..300 {
        let company = created(
            &a,
            "/api/apps/companies",
            json!({"name": format!("company {i}")}),
        )
        .await;
        created(
            &a,
            "/api/apps/contacts",
            json!({"name": format!("contact {i}"), "company_id": company["id"]}),
        )
        .await;
    }
    let (local_before, mirror_before) = (
        journal_files(&a, false).await,
        journal_files(&a, true).await,
    );
    assert!(
        local_before.len() > 2 && mirror_before.len() > 2,
        "{local_before:?} {mirror_before:?}"
    );

    // Purge on both. A keeps what B has not acknowledged; B has nothing mounted that needs its
    // mirror journal (its COMPANY is dismounted).
    let purged = a.ok("/api/journal/purge", json!({})).await;
    assert!(
        !purged["removed"].as_array().unwrap().is_empty(),
        "{purged}"
    );
    assert!(
        !purged["mirror_removed"].as_array().unwrap().is_empty(),
        "{purged}"
    );
    b.ok("/api/journal/purge", json!({})).await;
    let again = a.ok("/api/journal/purge", json!({})).await;
    assert!(
        again["message"]
            .as_str()
            .unwrap()
            .starts_with("no journal file"),
        "{again}"
    );
    assert!(journal_files(&a, true).await.len() < mirror_before.len());

    // Nothing acknowledged is lost to the purge, even across a crash: every database position
    // needed after restart is still in the journal.
    a.kill_instance().await;
    a.start_instance().await;
    a.wait_ready().await;
    let contacts = a
        .sql(
            "PHONEBOOK",
            "SELECT count(*) FROM Contact WHERE name LIKE 'contact %'",
        )
        .await;
    assert_eq!(contacts["rows"][0][0], 300, "{contacts}");
    b.wait_mirror(15, "active again after A restarted", |v| {
        TestMember::member_row(v, "MIRRORB/IRIS")["journal_transfer"] == "Active"
            || v["status"] == "Backup" && v["link_error"].is_null()
    })
    .await;

    // The stale copy: Activate works, Catchup says Obsolete and what to do.
    std::fs::write(b.data_dir().join("mgr/company/database.sqlite"), &stale).unwrap();
    b.ok("/api/databases/COMPANY/mount", json!({})).await;
    b.ok("/api/databases/COMPANY/activate", json!({})).await;
    let (status, err) = b
        .post("/api/databases/COMPANY/catchup", json!({}))
        .await
        .unwrap();
    assert_eq!(status, 409, "{err}");
    let message = err["error"].as_str().unwrap();
    assert!(
        message.contains("Obsolete") && message.contains("Copy the database file"),
        "{err}"
    );
    assert_eq!(b.db_status("COMPANY").await, "Obsolete");

    // A fresh copy replaces it and catches up.
    b.ok("/api/databases/COMPANY/dismount", json!({})).await;
    a.ok("/api/mirror/freeze", json!({})).await;
    std::fs::copy(
        a.data_dir().join("mgr/company/database.sqlite"),
        b.data_dir().join("mgr/company/database.sqlite"),
    )
    .unwrap();
    a.ok("/api/mirror/thaw", json!({})).await;
    b.ok("/api/databases/COMPANY/mount", json!({})).await;
    created(
        &a,
        "/api/apps/companies",
        json!({"name": "after the fresh copy"}),
    )
    .await;
    wait_dejournaling(&b, "COMPANY").await;
    assert_identical_in(&a, &b, &["COMPANY"]).await;

    // With B down, A keeps its mirror journal whole for it.
    for i in 0..100 {
        created(
            &a,
            "/api/apps/companies",
            json!({"name": format!("before B goes {i}")}),
        )
        .await;
    }
    b.kill_instance().await;
    let kept = a.ok("/api/journal/purge", json!({})).await;
    assert!(
        kept["mirror_removed"].as_array().unwrap().is_empty(),
        "{kept}"
    );
    assert!(
        kept["message"]
            .as_str()
            .unwrap()
            .contains("MIRRORB/IRIS is not connected"),
        "{kept}"
    );
}

/// Waits until both members are in arbiter-controlled mode with both connected to the arbiter.
async fn wait_arbiter_controlled(a: &TestMember, b: &TestMember) {
    for member in [a, b] {
        member
            .wait_mirror(20, "arbiter controlled", |v| {
                v["failover_mode"] == "Arbiter Controlled"
                    && v["arbiter"]["connection_status"]
                        == "Both failover members are connected to the arbiter"
            })
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_an_arbiter_the_backup_takes_over_when_the_primary_host_is_lost() {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    let arbiter = common::TestArbiter::start().await;
    let (a, b, _) = pair_full(1000, &[], false, Some(&arbiter)).await;
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
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The whole host of the primary dies: its agent cannot answer, the arbiter decides.
    let killed = std::time::Instant::now();
    a.kill_host().await;
    b.wait_mirror(15, "the primary", |v| {
        v["role"] == "Primary" && v["status"] == "Primary"
    })
    .await;
    eprintln!("B took over {:?} after the host loss", killed.elapsed());
    let view = b
        .wait_mirror(10, "agent controlled", |v| {
            v["failover_mode"] == "Agent Controlled"
                && v["arbiter"]["connection_status"]
                    == "Only this member is connected to the arbiter"
        })
        .await;
    assert_eq!(view["role"], "Primary");
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The host comes back: A learns that B took over and follows it.
    a.restart_host();
    a.wait_ready().await;
    a.wait_mirror(20, "B's backup", |v| v["status"] == "Backup")
        .await;
    wait_arbiter_controlled(&a, &b).await;
    let acked = stop_writers(&stop, writers).await;
    assert!(
        acked.len() > 20,
        "the writers barely wrote: {}",
        acked.len()
    );
    assert_all_present(&b, &acked, "B").await;
    assert_identical(&a, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn losing_the_arbiter_returns_to_agent_control_without_an_outage() {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    let mut arbiter = common::TestArbiter::start().await;
    let (a, b, _) = pair_full(1000, &[], false, Some(&arbiter)).await;
    mirror_databases(&a, &b).await;
    wait_arbiter_controlled(&a, &b).await;
    let (a, b) = (Arc::new(a), Arc::new(b));
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers(&a, 4, "noarbiter", stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;

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
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The primary hangs: its agent finds it silent, forces it down, and B takes over.
    let pid = a.status().await.pid.unwrap();
    send_signal(pid, Signal::Stop).unwrap();
    let hung = std::time::Instant::now();
    b.wait_mirror(15, "the primary", |v| v["role"] == "Primary")
        .await;
    eprintln!("B took over {:?} after the hang", hung.elapsed());
    let status = a.status().await;
    assert_eq!(status.state, "down", "{status:?}");
    assert!(
        status
            .last_exit
            .as_deref()
            .unwrap_or_default()
            .contains("signal 9"),
        "{status:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    a.start_instance().await;
    a.wait_ready().await;
    a.wait_mirror(20, "B's backup", |v| v["status"] == "Backup")
        .await;
    let acked = stop_writers(&stop, writers).await;
    assert!(
        acked.len() > 20,
        "the writers barely wrote: {}",
        acked.len()
    );
    assert_all_present(&b, &acked, "B").await;
    assert_identical(&a, &b).await;
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
    assert_eq!(b.get("/api/mirror").await.1["role"], "Backup");
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
    created(&b, "/api/apps/companies", json!({"name": "after forcing"})).await;
    assert!(all_names(&b).await.contains("before the host loss"));

    // The old primary's host returns: it learns B is primary and follows.
    a.restart_host();
    a.wait_ready().await;
    a.wait_mirror(20, "B's backup", |v| v["status"] == "Backup")
        .await;
    assert_identical(&a, &b).await;
}
