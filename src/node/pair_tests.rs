//! Two real members in one process, on an in-process network ([`crate::transport::memory`]):
//! the primary's superserver, hub and writer, the backup's receiver, failover driver, Copy from
//! Primary, Catchup and dejournaling — all the real threads, on real files — talking through
//! the transport seam instead of TCP, while the test cuts the network between them: one way,
//! both ways, and every connection at once. Writes go on throughout, and the mirror's
//! invariants are checked: the backup never accepts writes, every acknowledged write is on
//! both members, and after the faults heal the backup is active again and holds the
//! primary's rows. And the first outage the backup covers, a graceful stop of the primary:
//! the backup takes over with every acknowledged write, and an async member finds the new
//! primary.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::types::Value;

use super::tests::{create_mirror, member, membership, mirror_definition, notes_settings};
use super::*;
use crate::config::mirror::{MemberInfo, MemberKind, Membership, MirrorDefinition};
use crate::instance::tests::{insert_company, sql};
use crate::mirror::state::Role;
use crate::names::DbName;
use crate::transport::MemoryNetwork;
use crate::transport::memory::Direction;

/// The primary's superserver address on the in-process network.
const A_AT: &str = "10.0.0.1:1972";
/// The backup's.
const B_AT: &str = "10.0.0.2:1972";
/// An async member's.
const C_AT: &str = "10.0.0.3:1972";
/// The mirror's QoS timeout.
const QOS_MS: u64 = 2_000;

/// A member named `name` reached at `address` on the in-process network.
fn at(name: &str, address: &str) -> MemberInfo {
    MemberInfo {
        superserver_address: address.into(),
        mirror_private_address: address.into(),
        ..member(name)
    }
}

/// A member in `dir` on `network` at `address`, with the mirror service enabled; what would
/// stop its process is recorded in `exits`.
fn open_on(
    dir: &std::path::Path,
    network: &MemoryNetwork,
    address: &str,
    exits: &Arc<Mutex<Vec<String>>>,
) -> Arc<Node> {
    let mut settings = notes_settings(dir);
    settings.superserver = address.into();
    let ip = address.split(':').next().unwrap();
    settings.network = Arc::new(network.host(ip));
    let (failed, superseded) = (exits.clone(), exits.clone());
    let node = Node::open(
        settings,
        Exits {
            failed: Arc::new(move |why| failed.lock().unwrap().push(format!("failed: {why}"))),
            superseded: Arc::new(move || superseded.lock().unwrap().push("superseded".into())),
        },
    )
    .unwrap();
    node.instance
        .config
        .update(|c| {
            c.mirror.service_enabled = true;
            Ok(())
        })
        .unwrap();
    node
}

/// Makes `node` the member `this` of `definition` beside `others`, following `primary` in
/// `role` (as a Join leaves it), knowing the mirrored databases the primary lists, and starts
/// its receiver.
fn join(
    node: &Node,
    definition: &MirrorDefinition,
    (this, role): (&MemberInfo, Role),
    primary: &MemberInfo,
    others: Vec<MemberInfo>,
    databases: Vec<crate::config::mirror::MirroredDatabase>,
) {
    node.instance
        .config
        .update(|c| {
            c.mirror.membership = Some(Membership {
                databases: databases.clone(),
                ..membership(definition, this, others.clone(), primary)
            });
            Ok(())
        })
        .unwrap();
    node.mirror.set_role(role);
    node.mirror_service.start_receiver();
}

/// The names in COMPANY's Company table on `node`.
async fn companies(node: &Node) -> Vec<String> {
    let rows = sql(
        &node.instance,
        "COMPANY",
        "SELECT name FROM Company ORDER BY id",
    )
    .await
    .unwrap()
    .rows;
    rows.into_iter()
        .map(|row| match &row[0] {
            Value::Text(name) => name.clone(),
            other => panic!("a company named {other:?}"),
        })
        .collect()
}

/// Waits until `done` holds, at most `within`.
async fn until(what: &str, within: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done().await {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A primary and its active backup on an in-process network (see the module essay).
struct Pair {
    network: MemoryNetwork,
    definition: MirrorDefinition,
    a_info: MemberInfo,
    b_info: MemberInfo,
    a: Arc<Node>,
    b: Arc<Node>,
    /// What would have stopped either member's process.
    exits: Arc<Mutex<Vec<String>>>,
    dir: tempfile::TempDir,
}

impl Pair {
    /// Member A the primary of a new mirror with COMPANY mirrored; member B joined as its
    /// failover member, COMPANY copied from the primary, activated and caught up, and active:
    /// a backup that may take over.
    async fn start() -> Pair {
        let dir = tempfile::tempdir().unwrap();
        let network = MemoryNetwork::new();
        let exits = Arc::new(Mutex::new(Vec::new()));
        let (a_info, b_info) = (at("MIRRORA/IRIS", A_AT), at("MIRRORB/IRIS", B_AT));
        let definition = mirror_definition(QOS_MS);

        let a = open_on(&dir.path().join("a"), &network, A_AT, &exits);
        let others = vec![b_info.clone()];
        create_mirror(&a, &dir.path().join("a"), &definition, &a_info, others).await;
        let databases = a
            .instance
            .config
            .get()
            .mirror
            .member()
            .unwrap()
            .databases
            .clone();
        let b = open_on(&dir.path().join("b"), &network, B_AT, &exits);
        let others = vec![a_info.clone()];
        join(
            &b,
            &definition,
            (&b_info, Role::Backup),
            &a_info,
            others,
            databases,
        );

        // Copy from Primary goes over the network too; then Activate and Catchup follow by
        // themselves, and the primary counts the backup as active once it caught up.
        insert_company(&a.instance, "before the copy")
            .await
            .unwrap();
        until(
            "the backup is connected",
            Duration::from_secs(10),
            async || b.mirror.status().link.connected,
        )
        .await;
        b.mirror_service
            .copy_from_primary(DbName::new("COMPANY").unwrap(), None)
            .unwrap();
        until(
            "the backup is active",
            Duration::from_secs(30),
            async || a.mirror.hub.has_active_backup(),
        )
        .await;
        // Active is about the journal; the backup may take over only once its copy of COMPANY
        // is dejournaled too (the monitor's "Dejournaling").
        let company = DbName::new("COMPANY").unwrap();
        until(
            "the backup's copy is dejournaling",
            Duration::from_secs(30),
            async || {
                let facts = b.mirror_service.context().database_facts(&company);
                crate::mirror::status::database_status(facts) == Some("Dejournaling")
            },
        )
        .await;

        Pair {
            network,
            definition,
            a_info,
            b_info,
            a,
            b,
            exits,
            dir,
        }
    }

    /// Member C, a disaster recovery async member following the primary, known to both
    /// failover members (it keeps the journal only: no database of the mirror is copied).
    async fn add_async(&self) -> Arc<Node> {
        let c_info = MemberInfo {
            kind: MemberKind::Dr,
            ..at("MIRRORC/IRIS", C_AT)
        };
        for node in [&self.a, &self.b] {
            node.instance
                .config
                .update(|c| {
                    let m = c.mirror.membership.as_mut().expect("a member");
                    m.others.push(c_info.clone());
                    Ok(())
                })
                .unwrap();
        }
        let c = open_on(&self.dir.path().join("c"), &self.network, C_AT, &self.exits);
        let others = vec![self.a_info.clone(), self.b_info.clone()];
        let role = Role::Async(MemberKind::Dr);
        join(
            &c,
            &self.definition,
            (&c_info, role),
            &self.a_info,
            others,
            Vec::new(),
        );
        until(
            "the async member follows the primary",
            Duration::from_secs(10),
            async || {
                let link = c.mirror.status().link;
                link.connected && link.primary.is_some_and(|p| p.name == self.a_info.name)
            },
        )
        .await;
        c
    }

    fn backup_is_active(&self) -> bool {
        self.a.mirror.hub.has_active_backup()
    }

    /// Neither member stopped by itself.
    fn check_no_exits(&self) {
        let exits = self.exits.lock().unwrap();
        assert!(exits.is_empty(), "no member stopped: {exits:?}");
    }
}

/// The network cut one way, then both ways, then every connection reset, with writes on the
/// primary and reads on the backup throughout (see the module essay for what is checked).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_on_an_in_process_network_follows_its_primary_through_cuts_and_resets() {
    let pair = Pair::start().await;
    let (network, a, b) = (&pair.network, &pair.a, &pair.b);
    let active = || pair.backup_is_active();

    // Writers on the primary, all along; a watcher that the backup never takes writes.
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let writer = tokio::spawn({
        let (a, stop, acknowledged) = (a.clone(), stop.clone(), acknowledged.clone());
        async move {
            let mut n = 0;
            while !stop.load(Ordering::Acquire) {
                n += 1;
                let name = format!("write {n}");
                if insert_company(&a.instance, &name).await.is_ok() {
                    acknowledged.lock().unwrap().push(name);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    // Reads on the backup all along: no row read there may be missing on the final primary.
    let reader = tokio::spawn({
        let (b, stop) = (b.clone(), stop.clone());
        async move {
            let mut read = std::collections::BTreeSet::new();
            while !stop.load(Ordering::Acquire) {
                read.extend(companies(&b).await);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            read
        }
    });
    let backup_roles = std::thread::spawn({
        let (b, stop) = (b.clone(), stop.clone());
        move || {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Acquire) {
                let role = b.mirror.role();
                if seen.last() != Some(&role) {
                    seen.push(role);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            seen
        }
    });
    let acked = || acknowledged.lock().unwrap().len();
    let qos = Duration::from_millis(QOS_MS);

    // The primary goes on alone while the network is cut: it revokes the backup after a QoS
    // without its acknowledgement, holds writes while the backup might still take over (the
    // trouble state), then acknowledges them alone.
    let goes_on_alone = async |what: &str| {
        let before = acked();
        until(what, 6 * qos, async || acked() > before + 10).await;
        assert!(
            !active(),
            "the backup is not active while the network is cut"
        );
    };

    let active_again =
        async |what: &str| until(what, Duration::from_secs(30), async || active()).await;

    // 1. The backup's acknowledgements stop reaching the primary; the backup is active again
    //    once they flow.
    tokio::time::sleep(Duration::from_millis(300)).await;
    network.hold(A_AT, Direction::ToListener);
    tokio::time::sleep(Duration::from_millis(100)).await;
    goes_on_alone("the primary goes on alone after a one-way cut").await;
    network.heal(A_AT, Direction::ToListener);
    active_again("the backup is active after a one-way cut").await;

    // 2. Both ways cut for longer than a QoS: the backup cannot reach the primary's agent, so
    //    it does not take over; it reconnects once the network heals.
    network.hold(A_AT, Direction::ToListener);
    network.hold(A_AT, Direction::FromListener);
    tokio::time::sleep(Duration::from_millis(100)).await;
    goes_on_alone("the primary goes on alone in a partition").await;
    network.heal(A_AT, Direction::ToListener);
    network.heal(A_AT, Direction::FromListener);
    active_again("the backup is active after a partition").await;

    // 3. Every connection reset at once.
    network.reset(A_AT);
    active_again("the backup is active after a reset").await;

    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Release);
    writer.await.unwrap();
    let read_on_backup = reader.await.unwrap();
    let roles = backup_roles.join().unwrap();
    assert!(
        roles.iter().all(|role| *role != Role::Primary),
        "the backup never became the primary: {roles:?}"
    );
    assert_eq!(a.mirror.role(), Role::Primary);

    // Converged: the backup holds every row of the primary, which holds every acknowledged
    // write.
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        acknowledged.len() > 100,
        "writes went on: {}",
        acknowledged.len()
    );
    let on_a = companies(a).await;
    until(
        "the backup holds the primary's rows",
        Duration::from_secs(20),
        async || companies(b).await == on_a,
    )
    .await;
    for name in &acknowledged {
        assert!(
            on_a.contains(name),
            "{name} acknowledged but not on the primary"
        );
    }
    assert!(read_on_backup.len() > 10, "the backup was read");
    for name in &read_on_backup {
        assert!(
            on_a.contains(name),
            "{name} read on the backup but not on the primary"
        );
    }
    pair.check_no_exits();
    b.close();
    a.close();
}

/// A primary that stops gracefully hands over to its active backup on the in-process network:
/// the backup takes over at once (the handover rule: it asks no agent, and there is none to
/// ask here), holds every write the primary acknowledged, and takes writes itself; the async
/// member, which followed the old primary, finds the new one by trying the failover members in
/// turn and receives its journal.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_primary_that_stops_hands_over_to_its_backup_on_an_in_process_network() {
    let pair = Pair::start().await;
    let c = pair.add_async().await;
    let (a, b) = (pair.a.clone(), pair.b.clone());
    let mut acknowledged = Vec::new();
    for i in 0..50 {
        let name = format!("before the handover {i}");
        insert_company(&a.instance, &name).await.unwrap();
        acknowledged.push(name);
    }
    tokio::task::spawn_blocking(move || a.close())
        .await
        .unwrap();
    until(
        "the backup took over",
        Duration::from_secs(10),
        async || b.mirror.role() == Role::Primary,
    )
    .await;
    until(
        "the new primary takes writes",
        Duration::from_secs(10),
        async || {
            insert_company(&b.instance, "after the handover")
                .await
                .is_ok()
        },
    )
    .await;
    let on_b = companies(&b).await;
    for name in &acknowledged {
        assert!(
            on_b.contains(name),
            "{name} acknowledged but lost in the handover"
        );
    }
    assert!(on_b.contains(&"after the handover".to_string()));
    until(
        "the async member follows the new primary and holds its journal",
        Duration::from_secs(20),
        async || {
            let link = c.mirror.status().link;
            link.connected
                && link.primary.is_some_and(|p| p.name == pair.b_info.name)
                && link.received_end >= b.mirror.hub.committed_end()
        },
    )
    .await;
    assert_eq!(c.mirror.role(), Role::Async(MemberKind::Dr));
    pair.check_no_exits();
    c.close();
    b.close();
}
