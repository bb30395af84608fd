//! The Lab page's faults and its acknowledged-write ledger, on real members on loopback: off
//! unless a member is started with `--lab`; the ledger on the backup counting every write
//! through a kill of the primary caused from the primary's Lab (nothing lost, the outage seen);
//! a hang caused from the Lab ending with the backup in charge. Every fault is in the events.

mod common;

use std::time::Duration;

use common::pair::*;
use common::{Api, TestMember};
use mirrorlab::agent::{self, AgentRequest};
use serde_json::{Value, json};

const A: &str = "MIRRORA/IRIS";
const B: &str = "MIRRORB/IRIS";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_lab_is_off_unless_a_member_is_started_with_it() {
    let member = TestMember::start().await;
    for path in ["/api/lab"] {
        let (status, body) = member.get(path).await;
        assert_eq!(status, 404, "{body}");
        assert!(body["error"].as_str().unwrap().contains("--lab"), "{body}");
    }
    member
        .refused("/api/lab/kill", json!({}), 404, "MIRRORLAB_LAB=1")
        .await;
    member
        .refused(
            "/api/lab/hang",
            json!({"seconds": 2}),
            404,
            "Lab page is off",
        )
        .await;
    // Nor does its agent hang anything when asked directly.
    let reply = agent::call(&member.agent, AgentRequest::Hang { seconds: 2 })
        .await
        .unwrap();
    assert!(!reply.ok && reply.message.contains("--lab"), "{reply:?}");
    assert_eq!(
        member.status().await.state,
        mirrorlab::agent::InstanceState::Running
    );
}

fn ledger_of(view: &Value) -> Value {
    view["ledger"].clone()
}

async fn wait_ledger(
    member: &Api,
    seconds: u64,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(seconds);
    loop {
        let (_, view) = member.get("/api/lab").await;
        let ledger = ledger_of(&view);
        if check(&ledger) {
            return ledger;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the ledger never {what}: {ledger:#}\nlog:\n{}",
            member.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The walk-through's failover from the Lab: the ledger runs on B, A is killed from its own Lab
/// page, B takes over, and the ledger — still writing, now to B — finds every acknowledged
/// write on B: lost 0, with the outage it saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_ledger_finds_every_acknowledged_write_after_the_lab_kills_the_primary() {
    let (a, b) = pair_with(1000, &["--lab"]).await;
    mirror_databases(&a, &b).await;
    let members = [format!("http://{}", a.web), format!("http://{}", b.web)];
    b.refused(
        "/api/lab/ledger/start",
        json!({"writers": 0, "members": members}),
        400,
        "writers",
    )
    .await;
    b.refused(
        "/api/lab/ledger/start",
        json!({"writers": 2, "members": members}),
        400,
        "password",
    )
    .await;
    let started = b
        .ok(
            "/api/lab/ledger/start",
            json!({"writers": 2, "rate": 50, "members": members, "password": "SYS"}),
        )
        .await;
    assert!(
        started["message"].as_str().unwrap().contains("2 writers"),
        "{started}"
    );
    // A second start while it runs is refused and changes nothing.
    b.refused(
        "/api/lab/ledger/start",
        json!({"writers": 1, "members": members, "password": "SYS"}),
        409,
        "running",
    )
    .await;
    let before = wait_ledger(&b.api(), 20, "wrote to A", |l| {
        l["acknowledged"].as_u64().unwrap_or(0) > 50 && l["check"]["found"].as_u64() > Some(0)
    })
    .await;
    assert_eq!(before["primary"], members[0], "{before}");
    assert_eq!(before["check"]["lost"], 0, "{before}");

    let killed = a.ok("/api/lab/kill", json!({})).await;
    assert!(
        killed["message"].as_str().unwrap().contains("SIGKILL"),
        "{killed}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while a.status().await.state != mirrorlab::agent::InstanceState::Down {
        assert!(std::time::Instant::now() < deadline, "A was not killed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        a.status().await.last_exit.as_deref(),
        Some("killed by signal 9")
    );
    b.wait_mirror(15, "the primary", |v| v["role"] == "Primary")
        .await;
    let acked_at_kill = before["acknowledged"].as_u64().unwrap();
    wait_ledger(&b.api(), 20, "wrote to B", |l| {
        l["primary"] == members[1].as_str()
            && l["acknowledged"].as_u64().unwrap_or(0) > acked_at_kill + 100
    })
    .await;
    b.ok("/api/lab/ledger/stop", json!({})).await;
    let last = wait_ledger(&b.api(), 20, "checked after stopping", |l| {
        l["running"] == false
            && l["check"]["acknowledged"] == l["acknowledged"]
            && l["check"]["primary"] == members[1].as_str()
    })
    .await;
    eprintln!(
        "figure: ledger through a Lab kill: {} acknowledged, {} found, {} lost, outages {}",
        last["acknowledged"], last["check"]["found"], last["check"]["lost"], last["outages"]
    );
    assert_eq!(last["check"]["lost"], 0, "{last:#}");
    assert_eq!(last["check"]["found"], last["acknowledged"], "{last:#}");
    assert!(
        !last["outages"].as_array().unwrap().is_empty(),
        "the takeover's pause is an outage: {last:#}"
    );
    // The same names, counted by the test itself on the final primary.
    let names = all_names(&b.api()).await;
    let on_b = names.iter().filter(|n| n.starts_with("ledger-")).count() as u64;
    assert!(
        on_b >= last["acknowledged"].as_u64().unwrap(),
        "{on_b} on B"
    );
    b.api()
        .wait_event(A, "operator", "Lab: kill this instance")
        .await;
    b.api()
        .wait_event("MIRRORB/IRIS", "operator", "Lab: the ledger")
        .await;

    // A starts again and rejoins; the mirror converges.
    a.start_instance().await;
    a.wait_ready().await;
    a.wait_mirror(20, "B's backup", |v| v["status"] == "Backup")
        .await;
    assert_identical(&b, &a).await;
}

/// A hang from the Lab longer than the QoS timeout: the backup finds the primary silent, its
/// agent forces it down, and the backup takes over — the hang's event says where it came from.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hang_from_the_lab_longer_than_the_qos_ends_with_the_backup_in_charge() {
    let (a, b) = pair_with(1000, &["--lab"]).await;
    mirror_databases(&a, &b).await;
    a.api()
        .refused("/api/lab/hang", json!({"seconds": 61}), 400, "1 to 60")
        .await;
    // The request waits for the instance to go on, which it never does: not awaited.
    let hang = {
        let a = a.api();
        tokio::spawn(async move { a.post("/api/lab/hang", json!({"seconds": 20})).await })
    };
    b.wait_mirror(20, "the primary", |v| v["role"] == "Primary")
        .await;
    let status = a.status().await;
    assert_eq!(
        status.state,
        mirrorlab::agent::InstanceState::Down,
        "{status:?}"
    );
    assert!(
        status
            .forced_down
            .as_deref()
            .unwrap_or_default()
            .contains("hung"),
        "{status:?}"
    );
    hang.abort();
    b.api()
        .wait_event(A, "operator", "Lab: hang this instance for 20 s")
        .await;
    b.api()
        .wait_event(
            "MIRRORB/IRIS",
            "takeover",
            "agent confirmed its instance down",
        )
        .await;
    a.start_instance().await;
    a.wait_ready().await;
    a.wait_mirror(20, "B's backup", |v| v["status"] == "Backup")
        .await;
    assert_identical(&b, &a).await;
}

/// The members' view of B from A: its journal transfer.
fn b_transfer(view: &Value) -> Value {
    TestMember::member_row(view, B)["journal_transfer"].clone()
}

/// Waits until A shows B active again, and the mirror arbiter controlled.
async fn wait_healed(a: &TestMember, b: &TestMember) {
    a.wait_mirror(30, "B active again", |v| b_transfer(v) == "Active")
        .await;
    wait_arbiter_controlled(&a.api(), &b.api()).await;
}

/// Cuts from the Lab, with an arbiter and writers throughout: B's link to A both ways, then
/// A's outgoing link to B, then A's link to the arbiter. Each holds traffic for longer than the
/// QoS timeout, so the members' timeouts end the connections; the arbiter still sees the
/// primary each time, so no backup takes over. After each the mirror heals by itself, and in
/// the end every acknowledged write is on both members, which never both accepted writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn links_cut_from_the_lab_hold_the_traffic_and_the_mirror_heals_without_a_takeover() {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    let arbiter = common::TestArbiter::start().await;
    let (a, b, _) = pair_full(1000, &["--lab"], false, Some(&arbiter.address)).await;
    mirror_databases(&a, &b).await;
    wait_arbiter_controlled(&a.api(), &b.api()).await;
    b.refused("/api/lab/cut", json!({"link": "cable"}), 400, "\"members\"")
        .await;
    b.refused("/api/lab/cut", json!({"direction": "up"}), 400, "\"both\"")
        .await;
    b.refused("/api/lab/cut", json!({"seconds": 0}), 400, "1 to 600")
        .await;
    assert_eq!(b.get("/api/lab").await.1["cuts"], json!([]));
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers_on_primary([a.api(), b.api()], 4, "cut", stop.clone());
    common::before_fault(300).await;

    // 1. B's link to the other members, both ways, for 4 s (four QoS timeouts).
    let fault = common::now_ms();
    let said = b
        .ok(
            "/api/lab/cut",
            json!({"link": "members", "direction": "both", "seconds": 4}),
        )
        .await;
    assert_eq!(
        said["message"],
        "the link to the other members is cut (both ways) for 4 s"
    );
    let cuts = b.get("/api/lab").await.1["cuts"].clone();
    assert_eq!(cuts[0]["link"], "members", "{cuts}");
    assert_eq!(cuts[0]["direction"], "both", "{cuts}");
    a.wait_mirror(10, "B no longer active", |v| b_transfer(v) != "Active")
        .await;
    b.api().wait_event_since(fault, B, "member_lost", "").await;
    assert_eq!(b.get("/api/mirror").await.1["role"], "Backup");
    b.api()
        .wait_event_since(
            fault,
            B,
            "operator",
            "Lab: the link to the other members (both ways) is whole again",
        )
        .await;
    assert_eq!(b.get("/api/lab").await.1["cuts"], json!([]));
    wait_healed(&a, &b).await;

    // 2. A's outgoing link to the other members, for 3 s: B hears nothing, A hears B.
    let fault = common::now_ms();
    a.ok(
        "/api/lab/cut",
        json!({"link": "members", "direction": "out", "seconds": 3}),
    )
    .await;
    a.wait_mirror(10, "B no longer active", |v| b_transfer(v) != "Active")
        .await;
    a.api()
        .wait_event_since(fault, A, "operator", "(outgoing only) is whole again")
        .await;
    wait_healed(&a, &b).await;

    // 3. A's link to the arbiter, both ways, for a minute; mended from the API once A saw the
    // arbiter lost.
    let fault = common::now_ms();
    a.ok(
        "/api/lab/cut",
        json!({"link": "arbiter", "direction": "both", "seconds": 60}),
    )
    .await;
    a.wait_mirror(10, "the arbiter lost", |v| {
        v["arbiter"]["connection_status"] == "This member is not connected to the arbiter"
    })
    .await;
    a.api()
        .wait_event_since(fault, A, "arbiter_lost", "lost the arbiter")
        .await;
    assert_eq!(a.get("/api/mirror").await.1["status"], "Primary");
    let mended = a.ok("/api/lab/mend", json!({})).await;
    assert_eq!(mended["message"], "the cut links are whole again");
    assert_eq!(
        a.ok("/api/lab/mend", json!({})).await["message"],
        "no link is cut"
    );
    a.api()
        .wait_event_since(fault, A, "operator", "every cut link is mended")
        .await;
    wait_healed(&a, &b).await;

    // No takeover at any time; every acknowledged write is on A, and B is identical.
    let events = a.api().events().await;
    assert!(
        Api::event(&events, B, "takeover").is_none(),
        "B took over: {events:#}"
    );
    assert_eq!(a.get("/api/mirror").await.1["role"], "Primary");
    let outcome = finish_writers(&stop, writers, &a.api(), &b.api()).await;
    eprintln!(
        "figure: {} writes acknowledged through three cuts, none lost",
        outcome.len()
    );
}
