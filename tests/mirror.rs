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
    let a = TestMember::start_named("mirrora").await;
    let b = TestMember::start_named("mirrorb").await;
    a.ok("/api/mirror/service", json!({"enabled": true})).await;
    a.ok(
        "/api/mirror/create",
        json!({
            "mirror_name": "mirrorset",
            "use_arbiter": false,
            "superserver_address": a.superserver,
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
    assert_eq!(view["failover_mode"], "Agent Controlled");
    assert_eq!(
        view["arbiter"]["connection_status"],
        "This member is not connected to the arbiter"
    );
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
    (a, b)
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
        b.wait_mirror(15, &format!("dejournaling {db}"), |v| {
            v["databases"]
                .as_array()
                .unwrap()
                .iter()
                .any(|d| d["name"] == db && d["status"] == "Dejournaling")
        })
        .await;
    }
}

async fn assert_identical(a: &TestMember, b: &TestMember) {
    // B applies what A made durable shortly after; wait for it to get there.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let mut same = true;
        for (namespace, db) in [
            ("PHONEBOOK", "COMPANY"),
            ("PHONEBOOK", "CUSTOMER"),
            ("PHONEBOOK", "PERSONAL"),
        ] {
            if a.checksums(namespace, db).await != b.checksums(namespace, db).await {
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
