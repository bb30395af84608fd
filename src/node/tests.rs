//! A member's writer with the mirror attached — the hub as its replication, the mirror's
//! steps as its extension — on real files: the writer's side of a mirrored commit: a batch is invisible until the
//! active backup acknowledged it, mirrored writes wait before they begin in the trouble state
//! (a bounded wait), writes to local databases go on meanwhile, and Add to Mirror waits the
//! same way without freezing anything else. The backup here is a member registered with the
//! hub that acknowledges when the test says so; the process-level tests run real backups.
//! Last, the receiving side: a member whose mirror journal fails an fsync stops, with the test
//! as its primary on a real socket.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::types::Value;

use super::*;
use crate::config::mirror::{MemberInfo, MemberKind, Membership, MirrorDefinition};
use crate::instance::sql::QueryResult;
use crate::instance::tests::{count, insert_company, ns};
use crate::instance::writer::replication::{Acknowledged, Replication};
use crate::journal::{Journal, JournalOptions, JournalPos};
use crate::mirror::steps::MirrorCommand;
use crate::names::DbName;

/// A member whose install adds a namespace NOTES holding only the PERSONAL database.
fn open_with_notes(dir: &std::path::Path) -> Arc<Node> {
    open_with_notes_on(dir, Arc::new(crate::clock::SystemClock))
}

/// [`open_with_notes`], the member reading time from `clock`.
fn open_with_notes_on(dir: &std::path::Path, clock: Arc<dyn crate::clock::Clock>) -> Arc<Node> {
    let mut settings = notes_settings(dir);
    settings.clock = clock;
    Node::open(settings, crate::node::Exits::unexpected()).unwrap()
}

/// The settings of a member in `dir` whose install adds a namespace NOTES holding only the
/// PERSONAL database.
pub(super) fn notes_settings(dir: &std::path::Path) -> InstanceSettings {
    let install = dir.join("install");
    std::fs::create_dir_all(install.join("schema")).unwrap();
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("install");
    for schema in ["company.sql", "customer.sql", "personal.sql"] {
        std::fs::copy(
            source.join("schema").join(schema),
            install.join("schema").join(schema),
        )
        .unwrap();
    }
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(source.join("manifest.json")).unwrap()).unwrap();
    manifest["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"name": "NOTES", "default_database": "PERSONAL", "mapped": []}));
    manifest["productions"] = serde_json::json!([]);
    std::fs::write(install.join("manifest.json"), manifest.to_string()).unwrap();
    let mut settings = InstanceSettings::for_dir(dir.join("data"));
    settings.install_dir = install;
    settings
}

pub(super) fn member(name: &str) -> MemberInfo {
    MemberInfo {
        name: crate::config::mirror::MemberName::new(name).unwrap(),
        kind: MemberKind::Failover,
        superserver_address: "127.0.0.1:1".into(),
        mirror_private_address: "127.0.0.1:1".into(),
        agent_address: "127.0.0.1".into(),
        agent_port: 1,
        instance_guid: "g".into(),
        certificate: None,
    }
}

/// A new mirror MIRRORSET with a fresh id, agent controlled, with this QoS timeout.
pub(super) fn mirror_definition(qos_timeout_ms: u64) -> MirrorDefinition {
    MirrorDefinition {
        name: "MIRRORSET".into(),
        id: crate::journal::StreamId::random(),
        qos_timeout_ms,
        use_arbiter: false,
        arbiter_address: String::new(),
        arbiter_port: 2188,
        require_tls: false,
        parallel_dejournaling: String::new(),
        compression_failover: String::new(),
        compression_async: String::new(),
        defined_primary: None,
    }
}

/// Member `this`'s membership of mirror `definition`, beside `others`, following `primary`
/// (itself: the primary), with no database yet.
pub(super) fn membership(
    definition: &MirrorDefinition,
    this: &MemberInfo,
    others: Vec<MemberInfo>,
    primary: &MemberInfo,
) -> Membership {
    Membership {
        mirror: definition.clone(),
        this: this.clone(),
        others,
        was_primary: this.name == primary.name,
        databases: Vec::new(),
        activated: Vec::new(),
        primary_name: Some(primary.name.clone()),
        pending_adds: Vec::new(),
        epochs: Vec::new(),
        stopped: false,
        pending: Vec::new(),
    }
}

/// Makes `instance` the primary of a new mirror, alone, with COMPANY mirrored.
async fn mirror_company(node: &Node, dir: &std::path::Path) {
    let this = member("MIRRORA/IRIS");
    create_mirror(node, dir, &mirror_definition(60_000), &this, Vec::new()).await;
}

/// Makes `node` the primary `this` of the new mirror `definition`, beside `others`, with
/// COMPANY mirrored.
pub(super) async fn create_mirror(
    node: &Node,
    dir: &std::path::Path,
    definition: &MirrorDefinition,
    this: &MemberInfo,
    others: Vec<MemberInfo>,
) {
    let membership = membership(definition, this, others, this);
    let (journal, _) = Journal::open(
        &dir.join("data/mgr/journal"),
        definition.id,
        JournalOptions::mirror(&definition.name, 1 << 20, JournalPos(1)),
    )
    .unwrap();
    let writer = node.instance.writer();
    writer
        .extension(|reply| MirrorCommand::Create {
            journal,
            membership: Box::new(membership),
            reply,
        })
        .await
        .unwrap();
    writer
        .extension(|reply| MirrorCommand::AddDatabases {
            dbs: vec![DbName::new("COMPANY").unwrap()],
            reply,
        })
        .await
        .unwrap();
}

async fn note(instance: &Instance, text: &str) -> Result<QueryResult> {
    instance
        .write(
            &ns("NOTES"),
            "INSERT INTO Contact(name, company_id, created_at) VALUES (?1, 1, '2026-01-01')",
            vec![Value::Text(text.into())],
        )
        .await
}

/// Waits until `done` holds (at most 10 s).
async fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mirrored_batch_is_invisible_until_the_backup_acknowledges_it() {
    let dir = tempfile::tempdir().unwrap();
    let node = open_with_notes(dir.path());
    mirror_company(&node, dir.path()).await;
    let instance = node.instance.clone();
    let hub = &node.mirror.hub;
    // An active backup: it acknowledged everything up to where it connected.
    let (id, _outbox, snapshot) = hub.register(member("MIRRORB/IRIS")).unwrap();
    hub.on_ack(id, snapshot);
    assert!(hub.has_active_backup());

    let before = count(&instance, "COMPANY", "Company").await;
    let write = {
        let instance = instance.clone();
        tokio::spawn(async move { insert_company(&instance, "waits for B").await })
    };
    until("the batch is journaled and shipped", || {
        hub.ends().0 > snapshot
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !write.is_finished(),
        "answered before the backup acknowledged"
    );
    assert_eq!(
        count(&instance, "COMPANY", "Company").await,
        before,
        "visible before the backup acknowledged"
    );
    // Meanwhile writes to local databases go on.
    note(&instance, "local").await.unwrap();
    // The backup acknowledges: the batch commits, and its client hears.
    let (published, committed) = hub.ends();
    assert!(committed < published);
    hub.on_ack(id, published);
    write.await.unwrap().unwrap();
    assert_eq!(count(&instance, "COMPANY", "Company").await, before + 1);
    assert_eq!(hub.ends().1, published, "announced as committed");
    // The backup goes (a stopping primary would otherwise hand over to it and wait).
    hub.unregister(id, "the test ends");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_trouble_mirrored_writes_wait_before_they_begin_and_local_writes_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let node = open_with_notes(dir.path());
    mirror_company(&node, dir.path()).await;
    let instance = node.instance.clone();
    let hub = &node.mirror.hub;
    // An active backup, lost: the trouble state (agent controlled, 2 × QoS — long enough).
    let (id, _outbox, snapshot) = hub.register(member("MIRRORB/IRIS")).unwrap();
    hub.on_ack(id, snapshot);
    // The failover rules read the hub's events in order: connected, active, lost.
    hub.unregister(id, "connection lost");
    until("in trouble", || {
        node.mirror
            .read(|s| s.failover.status == Some("In Trouble"))
    })
    .await;
    let journal_end = hub.ends().0;
    let before = count(&instance, "COMPANY", "Company").await;
    // More mirrored writes than may wait: the surplus is refused at once, with a message.
    let writes: Vec<_> = (0..1_100)
        .map(|n| {
            let instance = instance.clone();
            tokio::spawn(async move { insert_company(&instance, &format!("held {n}")).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let refused = writes.iter().filter(|w| w.is_finished()).count();
    assert!(refused >= 100, "only {refused} refused");
    // Nothing of them began: not journaled, not visible.
    assert_eq!(hub.ends().0, journal_end, "a held write was journaled");
    assert_eq!(count(&instance, "COMPANY", "Company").await, before);
    // Local databases keep working.
    note(&instance, "during the trouble").await.unwrap();
    // The backup comes back (not having taken over): the trouble ends, and the held writes run
    // in order.
    let (back, _outbox, _) = hub.register(member("MIRRORB/IRIS")).unwrap();
    let mut committed = 0;
    let mut too_many = 0;
    for write in writes {
        match write.await.unwrap() {
            Ok(_) => committed += 1,
            Err(err) => {
                let text = err.to_string();
                assert!(
                    text.contains("too many are waiting") || text.contains("too much work"),
                    "{text}"
                );
                too_many += usize::from(text.contains("too many are waiting"));
            }
        }
    }
    assert!(
        too_many > 0,
        "the bound on waiting writes was never reached"
    );
    assert!(
        committed >= 1_000 - 1,
        "only {committed} held writes committed"
    );
    assert_eq!(
        count(&instance, "COMPANY", "Company").await,
        before + committed
    );
    hub.unregister(back, "the test ends");
}

/// The failover driver reads the member's clock, not the machine's: a primary that lost its
/// active backup in agent mode stays in trouble for 2 × QoS *on that clock* — one millisecond
/// short of it, however long the machine waits, it is still in trouble; at it, the trouble
/// ends — and the event says how long mirrored commits were held, on the same clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_trouble_state_ends_after_twice_the_qos_on_the_members_clock() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(crate::clock::ManualClock::new());
    let node = open_with_notes_on(dir.path(), clock.clone());
    mirror_company(&node, dir.path()).await;
    let hub = &node.mirror.hub;
    let (id, _outbox, snapshot) = hub.register(member("MIRRORB/IRIS")).unwrap();
    hub.on_ack(id, snapshot);
    hub.unregister(id, "connection lost");
    let in_trouble = || {
        node.mirror
            .read(|s| s.failover.status == Some("In Trouble"))
    };
    until("in trouble", in_trouble).await;
    // The QoS here is 60 s: the trouble lasts 120 s of the member's clock.
    clock.advance(Duration::from_millis(119_999));
    // The driver looks every tick (25 ms): twenty looks at the moved clock.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        in_trouble(),
        "out of trouble before 2 × QoS on the member's clock"
    );
    clock.advance(Duration::from_millis(1));
    until("out of trouble", || !in_trouble()).await;
    node.mirror.events.flush(Duration::from_secs(5));
    let left: Vec<String> = crate::mirror::events::read(&dir.path().join("data"), 0)
        .into_iter()
        .filter(|e| e.kind == crate::mirror::events::EventKind::TroubleLeft)
        .map(|e| e.reason)
        .collect();
    assert_eq!(
        left,
        ["out of trouble: mirrored commits were held 120000 ms"],
        "held for as long as the member's clock moved"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn add_to_mirror_waits_for_the_backup_without_freezing_writes_and_fails_when_closed() {
    let dir = tempfile::tempdir().unwrap();
    let node = open_with_notes(dir.path());
    mirror_company(&node, dir.path()).await;
    let instance = node.instance.clone();
    let hub = &node.mirror.hub;
    let (id, _outbox, snapshot) = hub.register(member("MIRRORB/IRIS")).unwrap();
    hub.on_ack(id, snapshot);
    let add = {
        let instance = instance.clone();
        tokio::spawn(async move {
            instance
                .writer()
                .extension(|reply| MirrorCommand::AddDatabases {
                    dbs: vec![DbName::new("CUSTOMER").unwrap()],
                    reply,
                })
                .await
        })
    };
    until("the event is shipped", || hub.ends().0 > snapshot).await;
    // The backup does not answer: local writes still go on, and so do reads.
    note(&instance, "while Add to Mirror waits").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !add.is_finished(),
        "Add to Mirror finished without the backup"
    );
    // The hub closes (the instance stops, or this member is no longer primary): the action
    // fails with a message instead of reporting success.
    hub.close_all("stopping");
    let err = add
        .await
        .unwrap()
        .expect_err("Add to Mirror succeeded without the backup");
    assert!(err.to_string().contains("backup acknowledged"), "{err}");
    let config = instance.config.get();
    let customer = config
        .databases
        .iter()
        .find(|d| d.name.as_str() == "CUSTOMER")
        .unwrap();
    assert!(
        !customer.mirrored,
        "recorded as mirrored without the backup"
    );
    assert_eq!(
        hub.acknowledgement(JournalPos(1), Instant::now()),
        Acknowledged::Closed
    );
}

/// The primary of a following member under test: the test itself, on a real socket.
struct TestPrimary {
    port: std::net::TcpListener,
    primary: MemberInfo,
    this: MemberInfo,
    definition: MirrorDefinition,
}

impl TestPrimary {
    /// Makes `node` the member `this` of the mirror `definition` (given the primary's name,
    /// the result's), following the test as its primary in `role`, and starts its receiver.
    fn followed_by(
        node: &Node,
        this: MemberInfo,
        definition: impl FnOnce(&MemberInfo) -> MirrorDefinition,
        role: crate::mirror::state::Role,
    ) -> TestPrimary {
        // Listening where the member will look for its primary.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = port.local_addr().unwrap().to_string();
        let primary = MemberInfo {
            superserver_address: address.clone(),
            mirror_private_address: address,
            ..member("MIRRORA/IRIS")
        };
        let definition = definition(&primary);
        node.instance
            .config
            .update(|c| {
                c.mirror.membership = Some(membership(
                    &definition,
                    &this,
                    vec![primary.clone()],
                    &primary,
                ));
                Ok(())
            })
            .unwrap();
        node.mirror.set_role(role);
        node.mirror_service.start_receiver();
        TestPrimary {
            port,
            primary,
            this,
            definition,
        }
    }

    /// Accepts the member's next connection, checks that it says hello, and welcomes it to
    /// receive from position 1.
    fn welcome(&self) -> std::net::TcpStream {
        use crate::mirror::protocol::{Control, Message, MirrorDescription};
        use crate::mirror::protocol::{read_message, write_control};
        let (mut link, _) = self.port.accept().unwrap();
        link.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        match read_message(&mut link).unwrap() {
            Some(Message::Control(hello)) => assert!(matches!(*hello, Control::Hello { .. })),
            other => panic!("the member said {other:?} instead of hello"),
        }
        let description = MirrorDescription {
            mirror: self.definition.clone(),
            members: vec![self.primary.clone(), self.this.clone()],
            primary: Some(self.primary.name.clone()),
            databases: Vec::new(),
            journal_first: JournalPos(1),
            journal_end: JournalPos(0),
            epoch: crate::journal::Epoch(1),
            epochs: Vec::new(),
            deciding: false,
        };
        let welcome = Control::Welcome {
            description,
            truncate_after: None,
            divergent: false,
            from: JournalPos(1),
        };
        write_control(&mut link, &welcome).unwrap();
        link
    }
}

/// A receiving member whose mirror journal fails an fsync acknowledges nothing more, does not
/// reconnect, and has its instance stop: were it to reconnect, its hello would count the batch
/// whose fsync failed, and the next fsync that succeeded would acknowledge records the system
/// may have dropped. The primary here is the test itself, on a real socket; the member is a
/// real node (an async member, so no failover rules act), its journal on real files with the
/// fault injected on its write path.
#[test]
fn a_receiving_member_whose_journal_fails_an_fsync_stops_and_acknowledges_nothing_more() {
    use crate::journal::{Fault, FrameBuilder, InjectedFaults, JournalOp};
    use crate::mirror::protocol::{Message, read_message, write_frames};
    use crate::mirror::state::Role;
    use std::sync::Mutex;

    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(InjectedFaults::default());
    let mut settings = InstanceSettings::for_dir(dir.path().join("data"));
    settings.journal_io = faults.clone();
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let exits = crate::node::Exits {
        failed: {
            let failures = failures.clone();
            Arc::new(move |why| failures.lock().unwrap().push(why.to_string()))
        },
        superseded: Arc::new(|| panic!("an async member is never superseded")),
    };
    let node = Node::open(settings, exits).unwrap();

    // The primary: this test.
    let this = MemberInfo {
        kind: MemberKind::Dr,
        ..member("MIRRORB/IRIS")
    };
    let test = TestPrimary::followed_by(
        &node,
        this,
        |_| mirror_definition(2_000),
        Role::Async(MemberKind::Dr),
    );
    let mut link = test.welcome();
    let frame = |pos: u64| {
        let mut frames = Vec::new();
        let mut frame =
            FrameBuilder::begin(&mut frames, JournalPos(pos), crate::journal::Epoch(1), 0);
        frame
            .add_changes("COMPANY", |changes| {
                changes.extend_from_slice(b"a changeset");
                Ok(())
            })
            .unwrap();
        frame.finish();
        frames
    };
    let next_ack = |link: &mut std::net::TcpStream| loop {
        match read_message(link) {
            Ok(Some(Message::Ack(pos))) => return Some(pos),
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => return None,
        }
    };

    // A batch stored and made durable is acknowledged.
    write_frames(&mut link, JournalPos(1), JournalPos(1), &frame(1)).unwrap();
    assert_eq!(next_ack(&mut link), Some(JournalPos(1)));

    // The next batch's fsync fails: no acknowledgement of it, the link ends, the instance is
    // told to stop.
    faults.next(JournalOp::Sync, Fault::Fail(libc::EIO));
    write_frames(&mut link, JournalPos(2), JournalPos(2), &frame(2)).unwrap();
    assert_eq!(
        next_ack(&mut link),
        None,
        "acknowledged after a failed fsync"
    );
    assert_eq!(faults.injected(), 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while failures.lock().unwrap().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the instance was never told to stop"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let why = failures.lock().unwrap().join("; ");
    assert!(why.contains("fsync"), "{why}");

    // And it does not come back (it would within a second: the receiver's retry).
    test.port.set_nonblocking(true).unwrap();
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        if let Ok((_, from)) = test.port.accept() {
            panic!("the member connected again (from {from}) after its journal failed");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    node.close();
}

/// The stall rule reads the member's clock: a backup whose failover driver sees its clock jump
/// by more than half a QoS between two looks (what a process that stood still sees) starts its
/// rules afresh, drops the data link and says hello again; a jump of exactly half a QoS is no
/// stall. The primary is the test itself, on a real socket; the backup a real node on a clock
/// the test moves.
#[test]
fn a_backup_whose_clock_jumps_past_half_a_qos_reconnects_and_one_that_jumps_half_does_not() {
    use crate::mirror::protocol::{Control, write_control};
    use crate::mirror::state::Role;
    use std::net::TcpStream;

    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(crate::clock::ManualClock::new());
    let mut settings = InstanceSettings::for_dir(dir.path().join("data"));
    settings.clock = clock.clone();
    let node = Node::open(settings, crate::node::Exits::unexpected()).unwrap();

    // The primary: this test. No Failover: a backup that lost its primary then does not ask
    // the primary's agent (there is none here) and hold its link back while it asks; it just
    // reconnects.
    let test = TestPrimary::followed_by(
        &node,
        member("MIRRORB/IRIS"),
        |primary| MirrorDefinition {
            defined_primary: Some(primary.name.clone()),
            ..mirror_definition(2_000)
        },
        Role::Backup,
    );
    // Welcomes the backup's next hello and makes it the active backup.
    let welcome = || {
        let mut link = test.welcome();
        write_control(&mut link, &Control::Activated { activation: 7 }).unwrap();
        link
    };
    // A heartbeat, as the primary's sender thread sends on an idle link; the backup's next
    // round (and so its look at what the driver asked) follows it.
    let beat = |link: &mut TcpStream| {
        let heartbeat = Control::Heartbeat {
            durable: JournalPos(0),
            time_ms: 0,
        };
        write_control(link, &heartbeat).is_ok()
    };
    let active = || node.mirror.read(|s| s.link.connected && s.link.active);
    let wait_until = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "never: {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    };

    let mut link = welcome();
    wait_until("the backup is active", &|| active());
    // Half a QoS (1 000 ms) in one jump: no stall. Twenty looks later the link still stands,
    // with heartbeats every 50 ms so that the backup's own read timeout never runs out.
    clock.advance(Duration::from_millis(1_000));
    for _ in 0..10 {
        assert!(
            beat(&mut link),
            "the backup dropped the link after half a QoS"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(active(), "no longer the active backup after half a QoS");

    // A millisecond more in one jump: a stall. The backup drops the link and says hello again.
    test.port.set_nonblocking(true).unwrap();
    clock.advance(Duration::from_millis(1_001));
    let deadline = Instant::now() + Duration::from_secs(10);
    let again = loop {
        assert!(
            Instant::now() < deadline,
            "the backup never said hello again after its clock jumped past half a QoS"
        );
        beat(&mut link);
        if let Ok((again, _)) = test.port.accept() {
            break again;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // Read while the new connection waits for its welcome: the error is the last link's.
    let why = node.mirror.read(|s| s.link.last_error.clone());
    assert!(
        why.as_ref()
            .is_some_and(|why| why.to_string().contains("stalled")),
        "the link ended for another reason than the stall: {why:?}"
    );
    assert_eq!(node.mirror.role(), Role::Backup);
    drop(again);
    node.close();
}
