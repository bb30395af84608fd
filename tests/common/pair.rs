//! A mirrored pair for the tests that run real members: set up as a person would (Enable,
//! Create, Join as Failover, Add to Mirror, `cp`, Activate, Catchup), writers that record what
//! was acknowledged, and the checks every mirror test ends with — every acknowledged write is
//! present, and the mirrored databases are identical row by row.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use std::path::Path;

use super::{Api, TestMember};

pub const DATABASES: [&str; 3] = ["COMPANY", "CUSTOMER", "PERSONAL"];

/// A started pair: A primary of MIRRORSET, B its active backup.
pub async fn pair(qos_ms: u64) -> (TestMember, TestMember) {
    pair_with(qos_ms, &[]).await
}

/// A started pair whose members got `extra` arguments.
pub async fn pair_with(qos_ms: u64, extra: &[&str]) -> (TestMember, TestMember) {
    let (a, b, _) = pair_full(qos_ms, extra, false, None).await;
    (a, b)
}

/// A started pair; with `proxied`, B's data channel to A runs through a fault-injecting proxy
/// (A's mirror private address is the proxy's).
pub async fn pair_full(
    qos_ms: u64,
    extra: &[&str],
    proxied: bool,
    arbiter: Option<&str>,
) -> (TestMember, TestMember, Option<super::Proxy>) {
    let a = TestMember::start_with("mirrora", extra).await;
    let b = TestMember::start_with("mirrorb", extra).await;
    join_pair(a, b, qos_ms, proxied, arbiter).await
}

/// Makes started members `a` (primary) and `b` (its active backup) a mirrored pair, as
/// [`pair_full`] does.
pub async fn join_pair(
    a: TestMember,
    b: TestMember,
    qos_ms: u64,
    proxied: bool,
    arbiter: Option<&str>,
) -> (TestMember, TestMember, Option<super::Proxy>) {
    let proxy = match proxied {
        true => Some(super::Proxy::start(&a.superserver).await),
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
            "arbiter_address": arbiter.unwrap_or_default(),
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
pub async fn mirror_databases(a: &TestMember, b: &TestMember) {
    let added = a
        .ok("/api/mirror/add-databases", json!({"databases": DATABASES}))
        .await;
    assert!(
        added["message"].as_str().unwrap().contains("need a copy"),
        "{added}"
    );
    copy_databases(a, b).await;
}

/// Gives member `b` copies of the mirrored demo databases of primary `a`: dismount, `cp`, mount,
/// Activate, Catchup, until each is dejournaling.
pub async fn copy_databases(a: &TestMember, b: &TestMember) {
    copy_databases_between(a, b, &a.data_dir(), &b.data_dir()).await
}

/// [`copy_databases`] for members whose data directories are `a_data` and `b_data` here.
pub async fn copy_databases_between(a: &Api, b: &Api, a_data: &Path, b_data: &Path) {
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
        copy_frozen_between(a, a_data, b_data, &dir).await;
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

pub async fn assert_identical(a: &Api, b: &Api) {
    assert_identical_in(a, b, &DATABASES).await
}

/// Waits until `dbs` hold the same rows on both members (B applies what A made durable shortly
/// after), and fails with both logs if they do not within 15 s.
pub async fn assert_identical_in(a: &Api, b: &Api, dbs: &[&str]) {
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
pub async fn wait_dejournaling(b: &Api, db: &str) {
    b.wait_mirror(20, &format!("dejournaling {db}"), |v| {
        v["databases"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["name"] == db && d["status"] == "Dejournaling")
    })
    .await;
}

pub fn names(result: &Value) -> Vec<String> {
    result["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[0].as_str().unwrap().to_string())
        .collect()
}

/// Writers inserting companies on A until stopped; returns the names acknowledged.
pub fn start_writers(
    a: &std::sync::Arc<TestMember>,
    count: usize,
    prefix: &str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Writers {
    start_writers_on_primary([a.api(), a.api()], count, prefix, stop)
}

/// Every company name on `member`, read in pages (one result holds at most 10 000 rows).
pub async fn all_names(member: &Api) -> std::collections::HashSet<String> {
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

/// Every acknowledged company name, and every company name a reader saw on any member, is on
/// `member` (called `who` in the message): no acknowledged write was lost, and no read returned
/// a row that the final primary lacks.
pub async fn assert_all_present(member: &Api, outcome: &Outcome, who: &str) {
    let present = all_names(member).await;
    for name in &outcome.acked {
        assert!(
            present.contains(name),
            "acknowledged {name} is missing on {who}"
        );
    }
    for (name, on) in &outcome.read {
        assert!(
            present.contains(name),
            "{name} was read on {on} but is missing on {who}: a read returned a row that \
             never became part of the mirror's history"
        );
    }
}

/// What the writers got acknowledged, and what the readers saw (name → the member it was read
/// on).
#[derive(Debug, Default)]
pub struct Outcome {
    pub acked: Vec<String>,
    pub read: std::collections::HashMap<String, String>,
    /// Each time the member acknowledging writes changed: from the old member's last
    /// acknowledgement to the new one's first, as the clients saw it (the write outage).
    pub outages: Vec<Duration>,
}

impl From<Vec<String>> for Outcome {
    fn from(acked: Vec<String>) -> Outcome {
        Outcome {
            acked,
            read: Default::default(),
            outages: Vec::new(),
        }
    }
}

impl std::ops::Deref for Outcome {
    type Target = Vec<String>;
    fn deref(&self) -> &Vec<String> {
        &self.acked
    }
}

/// One acknowledged write: its name, the member that acknowledged it, and when it was sent and
/// when the acknowledgement came back.
#[derive(Debug, Clone)]
pub struct Ack {
    pub name: String,
    pub member: String,
    pub sent: Instant,
    pub acked: Instant,
}

/// Writers a test started, and readers beside them: join handles that return what each
/// writer got acknowledged and what each reader saw.
pub struct Writers {
    writers: Vec<tokio::task::JoinHandle<Vec<Ack>>>,
    readers: Vec<tokio::task::JoinHandle<std::collections::HashMap<String, String>>>,
}

/// Stops the writers and readers, checks that no two members accepted writes at the same time,
/// and returns what was acknowledged and read.
pub async fn stop_writers(stop: &std::sync::atomic::AtomicBool, writers: Writers) -> Outcome {
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acks = Vec::new();
    for w in writers.writers {
        acks.extend(w.await.unwrap());
    }
    assert_one_writer_at_a_time(&mut acks);
    // Sorted by acknowledgement now.
    let outages = acks
        .windows(2)
        .filter(|pair| pair[0].member != pair[1].member)
        .map(|pair| pair[1].acked - pair[0].acked)
        .collect();
    let mut read = std::collections::HashMap::new();
    for r in writers.readers {
        read.extend(r.await.unwrap());
    }
    Outcome {
        acked: acks.into_iter().map(|a| a.name).collect(),
        read,
        outages,
    }
}

/// At most one member accepts writes: a write was accepted somewhere between its sending and
/// its acknowledgement, so when the acknowledgements, in the order they came, pass from one
/// member to another, the new member's first one must come after the old member's last write
/// was sent. Otherwise the two accepted writes at overlapping times.
pub fn assert_one_writer_at_a_time(acks: &mut [Ack]) {
    acks.sort_by_key(|a| a.acked);
    // Each reign: (member, latest send among its writes, its first acknowledgement).
    let mut reigns: Vec<(&str, Instant, Instant)> = Vec::new();
    for ack in acks.iter() {
        match reigns.last_mut() {
            Some((member, latest_sent, _)) if *member == ack.member => {
                *latest_sent = (*latest_sent).max(ack.sent);
            }
            _ => reigns.push((&ack.member, ack.sent, ack.acked)),
        }
    }
    for pair in reigns.windows(2) {
        let ((old, old_latest_sent, _), (new, _, new_first_ack)) = (pair[0], pair[1]);
        assert!(
            new_first_ack > old_latest_sent,
            "{new} acknowledged a write {:?} before {old} had accepted its last one: \
             two members accepted writes at the same time (reigns: {reigns:?})",
            old_latest_sent - new_first_ack,
        );
    }
}

/// Writers inserting companies on whichever member accepts them (A first); each returns what
/// it got acknowledged. Beside them, a reader per member keeps reading the newest companies
/// written with `prefix` (through SQL, on whichever member answers), so that every fault also
/// checks that no read returns a row the final primary lacks.
pub fn start_writers_on_primary(
    members: [super::Api; 2],
    count: usize,
    prefix: &str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Writers {
    let writers = (0..count)
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
                    let sent = Instant::now();
                    match members[target].post("/api/apps/companies", body).await {
                        Ok((201, _)) => acked.push(Ack {
                            name,
                            member: members[target].url.clone(),
                            sent,
                            acked: Instant::now(),
                        }),
                        Ok(_) | Err(_) => {
                            target = 1 - target;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
                acked
            })
        })
        .collect();
    let mut urls: Vec<String> = members.iter().map(|m| m.url.clone()).collect();
    urls.dedup();
    let readers = members
        .into_iter()
        .take(urls.len())
        .map(|member| {
            let (stop, prefix) = (stop.clone(), prefix.to_string());
            tokio::spawn(async move { read_while(&member, &prefix, &stop).await })
        })
        .collect();
    Writers { writers, readers }
}

/// Reads the newest companies named `prefix-…` on `member` until `stop`; returns every name
/// seen, with the member it was read on.
async fn read_while(
    member: &Api,
    prefix: &str,
    stop: &std::sync::atomic::AtomicBool,
) -> std::collections::HashMap<String, String> {
    let mut seen = std::collections::HashMap::new();
    let sql = json!({
        "namespace": "COMPANY",
        "sql": "SELECT name FROM Company WHERE name LIKE ?1 ORDER BY id DESC LIMIT 20",
        "params": [format!("{prefix}-%")],
    });
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        // A member that is down, stopping or not yet up answers nothing: no read happened.
        if let Ok((200, body)) = member.post("/api/sql", sql.clone()).await {
            for row in body["rows"].as_array().into_iter().flatten() {
                if let Some(name) = row[0].as_str() {
                    seen.entry(name.to_string())
                        .or_insert_with(|| member.url.clone());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    seen
}

/// POSTs a new application row and returns it (201 expected).
pub async fn created(member: &Api, path: &str, body: Value) -> Value {
    let (status, row) = member.post(path, body).await.unwrap();
    assert_eq!(status, 201, "{path}: {row}");
    row
}

/// Waits until both members are in arbiter-controlled mode with both connected to the arbiter.
pub async fn wait_arbiter_controlled(a: &Api, b: &Api) {
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

/// Stops the writers and checks the mirror's invariants: they wrote something worth checking,
/// the members converge row by row, and every acknowledged write is on `primary`.
pub async fn finish_writers(
    stop: &std::sync::atomic::AtomicBool,
    writers: Writers,
    primary: &Api,
    other: &Api,
) -> Outcome {
    let acked = stop_writers(stop, writers).await;
    assert!(
        acked.len() > 20,
        "the writers barely wrote: {}",
        acked.len()
    );
    assert_identical(other, primary).await;
    assert_all_present(primary, &acked, "the primary").await;
    acked
}

/// Copies the database file in `mgr/<dir>/` from primary `a` to member `b` under Freeze, as the
/// walk-through says (the primary's HEARTBEAT production writes COMPANY now and then).
pub async fn copy_frozen(a: &TestMember, b: &TestMember, dir: &str) {
    copy_frozen_between(a, &a.data_dir(), &b.data_dir(), dir).await
}

/// [`copy_frozen`] for members whose data directories are `a_data` and `b_data` here.
pub async fn copy_frozen_between(a: &Api, a_data: &Path, b_data: &Path, dir: &str) {
    a.ok("/api/mirror/freeze", json!({})).await;
    std::fs::copy(
        a_data.join(format!("mgr/{dir}/database.sqlite")),
        b_data.join(format!("mgr/{dir}/database.sqlite")),
    )
    .unwrap();
    a.ok("/api/mirror/thaw", json!({})).await;
}

/// A third member, `mirrorc`, joined to `primary`'s mirror as an async of `async_type`, with
/// copies of the mirrored databases.
pub async fn join_async(async_type: &str, primary: &TestMember) -> TestMember {
    let c = TestMember::start_named("mirrorc").await;
    c.ok("/api/mirror/service", json!({"enabled": true})).await;
    c.ok(
        "/api/mirror/join-async",
        json!({
            "mirror_name": "MIRRORSET",
            "agent_address": format!("127.0.0.1:{}", primary.agent_port()),
            "superserver_address": c.superserver,
            "agent_address_local": "127.0.0.1",
            "agent_port_local": c.agent_port(),
            "async_type": async_type,
        }),
    )
    .await;
    copy_databases(primary, &c).await;
    c
}

/// Adds 3000 companies with long missions in one statement (about 5 MB in COMPANY), so that a
/// copy paced at 1 MB/s takes seconds.
pub const BULK_COMPANIES: &str = "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 3000) \
     INSERT INTO Company (name, mission, created_at) \
     SELECT 'bulk ' || x, printf('%.1500c', 'm'), '2026-12-05' FROM n";

/// The Copy from Primary of `db` in a member's `GET /api/mirror` (null when there is none).
pub fn copy_of(view: &Value, db: &str) -> Value {
    view["copies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["database"] == db)
        .cloned()
        .unwrap_or_default()
}

/// Waits until the copy of `db` on `member` holds more than 256 KiB and less than half; returns
/// its size.
pub async fn wait_copy_halfway(member: &Api, db: &str) -> u64 {
    let view = member
        .wait_mirror(30, &format!("{db}'s copy under way"), |v| {
            let c = copy_of(v, db);
            c["bytes"].as_u64().unwrap_or(0) > 256 << 10
                && c["bytes"].as_u64() < c["total"].as_u64().map(|t| t / 2)
        })
        .await;
    copy_of(&view, db)["total"].as_u64().unwrap()
}

/// Waits until the copy of `db` on `member` is done, having resumed a copy cut off before.
pub async fn wait_copy_resumed(member: &Api, db: &str) {
    let view = member
        .wait_mirror(60, &format!("{db} copied"), |v| {
            copy_of(v, db)["state"] == "done"
        })
        .await;
    let copy = copy_of(&view, db);
    assert!(
        copy["resumed_from"].as_u64().unwrap() > 0,
        "the copy started over instead of resuming: {copy}"
    );
    assert_eq!(copy["bytes"], copy["total"], "{copy}");
}

/// A member's `GET /api/mirror` says it is `role`, its no-click mirror is done, and the demo
/// databases dejournal.
pub fn planned_and_dejournaling(role: &'static str) -> impl Fn(&Value) -> bool {
    move |v: &Value| {
        v["role"] == role
            && v["auto_mirror"]["done"] == true
            && DATABASES.iter().all(|db| {
                v["databases"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|d| d["name"] == *db && d["status"] == "Dejournaling")
            })
    }
}

/// The write outage a member recorded (`recorded`, ms) is the one the writers saw (`seen`): the
/// same fault, measured from inside. The two windows are shifted by what only one side waits
/// for — the member starts at the old primary's last write it holds, a commit-acknowledgement
/// before the writers heard of it; the writers end only when one of them retried its way to
/// the new primary (a retry every 20 ms, much slower on a loaded machine). So the member may
/// say a little more (a commit's round trip: 250 ms at most) or rather less (the writers'
/// own search: 1 s at most), never a different order of magnitude.
pub fn assert_outage_matches(recorded: i64, seen: i64, who: &str) {
    assert!(
        recorded > 0 && recorded <= seen + 250 && seen <= recorded + 1_000,
        "{who} recorded a write outage of {recorded} ms, the writers saw {seen} ms"
    );
}
