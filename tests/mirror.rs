//! Mirroring between real member processes on loopback: the article's walk-through through the
//! API and a plain file copy, and the links surviving restarts. After every test the mirrored
//! databases are compared row by row on both members.

mod common;

use std::time::Duration;

use common::pair::*;
use common::{Api, TestMember};
use serde_json::json;

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
    // Load balancers: A is the primary, on our path and on the one IRIS serves. A backup says
    // FAILED to every poll, as it should — without an error in its log for each.
    async fn load_balancer_asks(member: &Api, path: &str) -> (u16, String) {
        let answer = member
            .client
            .get(format!("{}{path}", member.url))
            .send()
            .await
            .unwrap();
        (answer.status().as_u16(), answer.text().await.unwrap())
    }
    for path in ["/mirror_status", "/csp/user/mirror_status.cxw"] {
        assert_eq!(
            load_balancer_asks(&a, path).await,
            (200, "SUCCESS".to_string()),
            "{path}"
        );
        for _ in 0..10 {
            assert_eq!(
                load_balancer_asks(&b, path).await,
                (503, "FAILED".to_string()),
                "{path}"
            );
        }
    }
    let log = b.log();
    assert!(
        !log.contains("response failed"),
        "the backup logged its expected answers as failures:\n{log}"
    );

    assert_identical(&a, &b).await;
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

/// Copy from Primary: B fetches each mirrored database over the data channel while A's
/// applications write. B's instance is killed in the middle of COMPANY's copy: its database
/// file stays the old one (never half a file), and when B starts again the copy resumes from
/// the bytes it held, is verified, mounted, activated and caught up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_copy_from_the_primary_survives_a_kill_and_catches_up() {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    let (a, b) = pair(2000).await;
    // Enough rows that a paced copy takes seconds.
    a.sql("COMPANY", BULK_COMPANIES).await;
    let a = Arc::new(a);
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers(&a, 2, "netcopy", stop.clone());
    a.ok("/api/mirror/add-databases", json!({"databases": DATABASES}))
        .await;
    b.wait_mirror(20, "the mirrored databases missing", |v| {
        v["missing_databases"].as_array().unwrap().len() == DATABASES.len()
    })
    .await;

    // Bad input is refused with a reason; on the primary there is nothing to copy from.
    let (status, body) = b
        .post(
            "/api/databases/COMPANY/copy?max_bytes_per_s=fast",
            json!({}),
        )
        .await
        .unwrap();
    assert_eq!(status, 400, "{body}");
    let (status, body) = a
        .post("/api/databases/COMPANY/copy", json!({}))
        .await
        .unwrap();
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("backup"), "{body}");

    let file = b.data_dir().join("mgr/company/database.sqlite");
    let before = std::fs::read(&file).unwrap();
    let started = b
        .ok(
            "/api/databases/COMPANY/copy?max_bytes_per_s=1000000",
            json!({}),
        )
        .await;
    assert!(
        started["message"].as_str().unwrap().contains("copying"),
        "{started}"
    );
    // A second click while it runs changes nothing and says so.
    b.refused(
        "/api/databases/COMPANY/copy",
        json!({}),
        409,
        "already running",
    )
    .await;
    let total = wait_copy_halfway(&b.api(), "COMPANY").await;
    assert!(total > 3_000_000, "a copy of {total} bytes");

    b.kill_instance().await;
    // Killed mid-copy: the database file is untouched; the partial copy lies beside it.
    assert_eq!(
        std::fs::read(&file).unwrap(),
        before,
        "the database file changed"
    );
    let partial = std::fs::metadata(b.data_dir().join("mgr/company/database.sqlite.copy"))
        .unwrap()
        .len();
    assert!(
        partial > 0 && partial < total,
        "partial copy of {partial} bytes"
    );

    b.start_instance().await;
    b.wait_ready().await;
    wait_copy_resumed(&b.api(), "COMPANY").await;
    assert!(
        !b.data_dir()
            .join("mgr/company/database.sqlite.copy")
            .exists(),
        "the partial copy stayed"
    );
    // The other two, unpaced, through the monitor's button's path.
    for db in ["CUSTOMER", "PERSONAL"] {
        b.ok(&format!("/api/databases/{db}/copy"), json!({})).await;
    }
    for db in DATABASES {
        wait_dejournaling(&b, db).await;
    }
    let view = b.get("/api/mirror").await.1;
    assert!(
        view["missing_databases"].as_array().unwrap().is_empty(),
        "{view}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let acked = stop_writers(&stop, writers).await;
    assert!(
        acked.len() > 20,
        "the writers barely wrote: {}",
        acked.len()
    );
    assert_identical(&a, &b).await;
    assert_all_present(&b, &acked, "B").await;
    b.api()
        .wait_event("MIRRORB/IRIS", "operator", "Copy COMPANY from Primary done")
        .await;
}

/// The no-click mirror: three members started with a plan (`--auto-mirror FILE`) build it by
/// themselves — A creates MIRRORSET with the arbiter and adds the databases, B joins as failover
/// and C as a DR async, and both copy the databases from the primary over the data channel,
/// activate and catch up — without one request from outside. A restart converges again
/// without doing anything twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_planned_mirror_builds_itself_with_no_clicks() {
    let arbiter = common::TestArbiter::start().await;
    let plans = tempfile::tempdir().unwrap();
    // Each member's plan says where the others' agents answer as that member sees them; A's
    // cannot know B's and C's ports yet, which only means it finds no mirror there to join.
    let plan = |name: &str, a_agent: &str| {
        let path = plans.path().join(name);
        let plan = json!({
            "about": "a test's mirror",
            "mirror_name": "MIRRORSET",
            "arbiter": arbiter.address,
            "qos_timeout_ms": 2000,
            "databases": DATABASES,
            "members": [
                {"host": "mirrorA", "agent": a_agent},
                {"host": "mirrorB", "agent": "127.0.0.1:1"},
                {"host": "mirrorC", "type": "dr", "agent": "127.0.0.1:1"},
            ],
        });
        std::fs::write(&path, plan.to_string()).unwrap();
        path.to_string_lossy().to_string()
    };
    let plan_a = plan("a.json", "127.0.0.1:1");
    let a = TestMember::start_with("mirrorA", &["--auto-mirror", &plan_a]).await;
    let plan_others = plan("others.json", &a.agent);
    let b = TestMember::start_with("mirrorB", &["--auto-mirror", &plan_others]).await;
    let c = TestMember::start_with("mirrorC", &["--auto-mirror", &plan_others]).await;
    let ready = std::time::Instant::now();
    b.wait_mirror(
        60,
        "the active backup, its databases dejournaling",
        planned_and_dejournaling("Backup"),
    )
    .await;
    c.wait_mirror(
        60,
        "a DR async, its databases dejournaling",
        planned_and_dejournaling("Disaster Recovery"),
    )
    .await;
    eprintln!(
        "figure: planned mirror in place {:?} after the portals answered",
        ready.elapsed()
    );
    let view = a
        .wait_mirror(20, "done, with an active backup", |v| {
            v["auto_mirror"]["done"] == true
                && TestMember::member_row(v, "MIRRORB/IRIS")["journal_transfer"] == "Active"
        })
        .await;
    assert_eq!(view["role"], "Primary", "{view}");
    assert_eq!(view["qos_timeout_ms"], 2000, "{view}");
    wait_arbiter_controlled(&a.api(), &b.api()).await;
    let steps = view["auto_mirror"]["steps"].to_string();
    assert!(steps.contains("Create MIRRORSET"), "{steps}");
    let steps = b.get("/api/mirror").await.1["auto_mirror"]["steps"].to_string();
    assert!(
        steps.contains("Join MIRRORSET through mirrorA")
            && steps.contains("COMPANY copied from the primary"),
        "{steps}"
    );

    // What A writes reaches both.
    created(&a.api(), "/api/apps/companies", json!({"name": "planned"})).await;
    assert_identical(&a, &b).await;
    assert_identical(&a, &c).await;

    // A restart finds everything in place: no copy, no second join.
    let before = common::now_ms();
    b.kill_instance().await;
    b.start_instance().await;
    b.wait_ready().await;
    b.wait_mirror(30, "converged again", planned_and_dejournaling("Backup"))
        .await;
    let events = b.get(&format!("/api/mirror/events?since={before}")).await.1;
    let again: Vec<&serde_json::Value> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["member"] == "MIRRORB/IRIS" && e["kind"] == "operator")
        .collect();
    assert!(again.is_empty(), "the restart acted again: {again:?}");
    assert!(
        b.get("/api/mirror").await.1["copies"]
            .as_array()
            .unwrap()
            .is_empty(),
        "the restart copied again"
    );

    // The primary crashes under writers and comes back: B took over, and A, converging on its
    // plan again, rejoins as B's backup with the same rows.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers = start_writers_on_primary([a.api(), b.api()], 2, "planned", stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.kill_instance().await;
    b.wait_mirror(15, "the primary", |v| v["role"] == "Primary")
        .await;
    a.start_instance().await;
    a.wait_ready().await;
    a.wait_mirror(30, "B's backup again", planned_and_dejournaling("Backup"))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    finish_writers(&stop, writers, &b.api(), &a.api()).await;
    assert_identical(&b, &c).await;
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
    }
    // The three Catchups at once (quick clicks, or the no-click mirror): each needs the same
    // older records, and only one may put them before B's journal.
    let paths = DATABASES.map(|db| format!("/api/databases/{db}/catchup"));
    let catchup = |path| b.ok(path, json!({}));
    tokio::join!(catchup(&paths[0]), catchup(&paths[1]), catchup(&paths[2]));
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
    copy_frozen(&a, &b, "company").await;
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
        // A wrong mirror name and a closed port get the same answer (no port scanning).
        (
            join("OTHERSET", a_agent.clone()),
            409,
            "no mirror OTHERSET answered at 127.0.0.1",
        ),
        (join("no spaces!", a_agent.clone()), 400, "is not valid"),
        (
            join("MIRRORSET", nobody),
            409,
            "no mirror MIRRORSET answered at 127.0.0.1",
        ),
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
    copy_frozen(&a, &b, "company").await;
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
