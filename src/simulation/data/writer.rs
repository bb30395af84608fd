//! Each simulated primary's real writer: the instance's writer thread ([`Writer`]), with the
//! member's real hub as its replication, the member's real mirror journal and its real
//! database file — the group commit, the parked batch and everything that waits behind it, as
//! a member runs them.
//!
//! # How it stays deterministic
//!
//! The writer is a thread, and the simulation one seed's order of events. The two meet at
//! one point: after each thing the simulation does to a primary (a client's write, an
//! acknowledgement, a hold lifted, time passing) it waits until the writer *settled*
//! ([`WriterHandle::settled`]): the writer took up every command sent before, looked again at
//! its parked batch, and waits for a command. What the writer decided then depends on the
//! order of events only. Its clock is the hub's manual clock, which never brings a deadline by
//! itself: the writer looks at a parked batch's QoS only when woken (see
//! [`crate::clock::Clock::timeout_until`]), so time passes for it only where the world says.
//!
//! A client's write is the writer's own future ([`WriterHandle::write`]), polled without a
//! runtime: once to send it, then after each settle to see whether it was answered.
//!
//! # One ordering checked as it happens
//!
//! The writer tells its replication what it committed ([`Replication::committed`]: the hub
//! then tells every member it may apply it). It must say so only once its own database holds
//! the batch, or a backup could show a row the primary does not. A check after the writer
//! settled cannot see the order of the two, so the hub is handed to the writer wrapped
//! ([`CheckedHub`]): at the moment of each such call, it reads the applied position of the
//! database file on a connection of its own (which sees committed transactions only), and keeps
//! the first call that came before its commit for the simulation to report.
//!
//! # What it leaves out
//!
//! No extension (the mirror's lifecycle steps): a member becomes the writer of the mirror's
//! database by the world's takeover, with its files brought up to its journal's end first, as
//! start-up recovery and the takeover step do. A crash is a stop: the hub closes (the parked
//! batch fails, unanswered clients learn nothing) and the thread ends; what the journal holds
//! beyond the database's applied position stays there, as after a crash.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::clock::ManualClock;
use crate::config::mirror::{Membership, MirrorDefinition};
use crate::config::{ConfigStore, DatabaseConfig, InstanceConfig, NamespaceConfig, catalog_state};
use crate::error::Result as DbResult;
use crate::instance::reader::ReadPool;
use crate::instance::role::MemberRole;
use crate::instance::sql::{QueryResult, SqlValue};
use crate::instance::writer::replication::{Acknowledged, Replication, Waker as ReplicationWaker};
use crate::instance::writer::{WriteRequest, Writer, WriterHandle, WriterSetup};
use crate::journal::{Epoch, Journal, JournalOptions, JournalPos, JournalShared};
use crate::mirror::hub::Hub;
use crate::names::{DbName, NamespaceName};
use crate::storage::Catalog;
use crate::storage::database;

use super::hubs::member_info;
use super::{DB, STREAM, io};

/// The folder, under a member's, of the mirrored database's file.
pub(super) const DB_DIRECTORY: &str = "sim";

/// A primary's writer thread, and what it was started with.
pub(super) struct PrimaryWriter {
    handle: WriterHandle,
    thread: Option<JoinHandle<()>>,
    /// The first committed end it announced before its database held it.
    early: Arc<Mutex<Option<String>>>,
    /// How many times it looked at its parked batch (see [`CheckedHub`]).
    looks: Arc<AtomicU64>,
    /// The epoch its records carry (the world's when the member became primary).
    pub(super) epoch: u8,
}

/// A client's write sent to the writer and not answered yet.
pub(super) struct Submitted {
    /// Its row's key.
    pub(super) key: u64,
    answer: Pin<Box<dyn Future<Output = DbResult<QueryResult>> + Send>>,
}

impl Submitted {
    /// The writer's answer, if it came (look once the writer settled). An answered write is
    /// done with: the caller drops it rather than ask again.
    pub(super) fn answer(&mut self) -> Option<DbResult<QueryResult>> {
        let mut context = Context::from_waker(Waker::noop());
        match self.answer.as_mut().poll(&mut context) {
            Poll::Ready(answer) => Some(answer),
            Poll::Pending => None,
        }
    }
}

/// A member that writes the mirror's database: the writer's only question of its role.
struct Primary;

impl MemberRole for Primary {
    fn is_primary(&self) -> bool {
        true
    }

    fn may_run_productions(&self) -> bool {
        false
    }

    fn mirror_journal(&self) -> Option<Arc<JournalShared>> {
        None
    }

    fn members_need(
        &self,
        _: &Membership,
    ) -> Vec<(crate::config::mirror::MemberName, Option<JournalPos>)> {
        Vec::new()
    }
}

impl PrimaryWriter {
    /// Starts the writer of the member in `dir` as the mirror's primary in `epoch`: its
    /// configuration says so (the database mirrored, the epoch), and it writes `journal`
    /// through `hub` (checked, see the module essay: `file` is the database's), on the hub's
    /// `clock`.
    pub(super) fn start(
        (dir, file): (&Path, &Path),
        journal: Journal,
        hub: Arc<Hub>,
        clock: Arc<ManualClock>,
        epoch: u8,
    ) -> Result<PrimaryWriter, String> {
        let config = io(
            "load the configuration",
            ConfigStore::load_or_create(dir, || InstanceConfig::fresh(Vec::new())),
        )?;
        io(
            "write the configuration",
            config.update(|c| {
                c.epoch = Epoch(u64::from(epoch));
                let db = DbName::new(DB)?;
                c.databases = vec![DatabaseConfig {
                    name: db.clone(),
                    directory: DB_DIRECTORY.into(),
                    mounted: true,
                    mirrored: true,
                }];
                c.namespaces = vec![NamespaceConfig {
                    name: NamespaceName::new(DB)?,
                    default_database: db,
                    mapped: Vec::new(),
                }];
                c.mirror.membership.get_or_insert_with(membership);
                Ok(())
            }),
        )?;
        let config = Arc::new(config);
        let catalog = Arc::new(Catalog::new());
        catalog.replace(catalog_state(&config.get(), dir, true));
        let (local, _) = io(
            "open the instance's journal",
            Journal::open(
                &dir.join("local-journal"),
                config.get().journal_stream,
                JournalOptions::local(64 << 10),
            ),
        )?;
        let readers = Arc::new(ReadPool::new(catalog.clone(), 5_000));
        let early = Arc::new(Mutex::new(None));
        let looks = Arc::new(AtomicU64::new(0));
        let replication = Arc::new(CheckedHub {
            hub,
            db: Mutex::new(io("open the database", database::open_for_apply(file))?),
            early: early.clone(),
            looks: looks.clone(),
        });
        let (handle, thread) = Writer::spawn(WriterSetup {
            data_dir: dir.to_path_buf(),
            catalog,
            config,
            local,
            mirror_journal: Some(journal),
            readers,
            role: Arc::new(Primary),
            replication,
            clock,
            extension: None,
            write_timeout_ms: 5_000,
            // The failure is the handle's to tell; the world stops the instance.
            on_fatal: Box::new(|_| {}),
        });
        Ok(PrimaryWriter {
            handle,
            thread: Some(thread),
            early,
            looks,
            epoch,
        })
    }

    /// Sends a client's write of row `key` (made in `epoch`, as its text says).
    pub(super) fn submit(&self, key: u64, epoch: u8) -> Submitted {
        let handle = self.handle.clone();
        let request = WriteRequest {
            namespace: NamespaceName::new(DB).expect("a namespace name"),
            sql: "INSERT INTO t(k, v) VALUES (?1, ?2)".into(),
            params: vec![
                SqlValue::Integer(key as i64),
                SqlValue::Text(format!("row {key} of epoch {epoch}")),
            ],
            cached: true,
        };
        let mut submitted = Submitted {
            key,
            answer: Box::pin(async move { handle.write(request).await }),
        };
        // The first poll sends it; the writer cannot have answered yet unless it refused it.
        if let Some(answer) = submitted.answer() {
            submitted.answer = Box::pin(std::future::ready(answer));
        }
        submitted
    }

    /// Waits until the writer settled (see the module essay).
    pub(super) fn settled(&self) -> Result<(), String> {
        match self.handle.settled() {
            Ok(()) => Ok(()),
            // A writer stopped by a failure has settled for good.
            Err(_) if self.handle.failure().is_some() => Ok(()),
            Err(err) => Err(format!("the writer did not settle: {err}")),
        }
    }

    /// How many times the writer looked at where its parked batch's acknowledgement stands.
    pub(super) fn looks(&self) -> u64 {
        self.looks.load(Ordering::Relaxed)
    }

    /// The first committed end the writer announced before its database held it.
    pub(super) fn announced_early(&self) -> Option<String> {
        self.early.lock().unwrap().clone()
    }

    /// Why the writer stopped, if a failure stopped it.
    pub(super) fn failure(&self) -> Option<String> {
        self.handle.failure()
    }

    /// Stops the thread (the hub was closed first: nothing waits for an acknowledgement).
    pub(super) fn stop(mut self) {
        self.handle.shutdown();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A member's hub as its writer's replication, checking that the writer announces a committed
/// end only once its database holds it (see the module essay); everything else is the hub's.
struct CheckedHub {
    hub: Arc<Hub>,
    /// The member's database file, on a connection of its own.
    db: Mutex<rusqlite::Connection>,
    early: Arc<Mutex<Option<String>>>,
    /// How many times the writer looked at where its parked batch's acknowledgement stands.
    looks: Arc<AtomicU64>,
}

impl Replication for CheckedHub {
    fn publish(
        &self,
        journal: &mut Journal,
        frames: &[u8],
        first: JournalPos,
        last: JournalPos,
    ) -> DbResult<()> {
        self.hub.publish(journal, frames, first, last)
    }

    fn acknowledgement(&self, last: JournalPos, since: Instant) -> Acknowledged {
        self.looks.fetch_add(1, Ordering::Relaxed);
        self.hub.acknowledgement(last, since)
    }

    fn committed(&self, pos: JournalPos) {
        let applied = database::read_identity(&self.db.lock().unwrap(), "main")
            .map(|identity| identity.applied_pos);
        let mut early = self.early.lock().unwrap();
        match applied {
            Ok(applied) if applied >= pos => {}
            Ok(applied) => {
                early.get_or_insert(format!(
                    "announced that members may apply up to {pos} while its database held up \
                     to {applied}"
                ));
            }
            Err(err) => {
                early.get_or_insert(format!("announced {pos}: its database unread: {err}"));
            }
        }
        drop(early);
        self.hub.committed(pos);
    }

    fn may_commit(&self) -> bool {
        self.hub.may_commit()
    }

    fn qos(&self) -> Duration {
        Replication::qos(&*self.hub)
    }

    fn set_waker(&self, waker: ReplicationWaker) {
        self.hub.set_waker(waker)
    }

    fn close(&self, why: &str) {
        Replication::close(&*self.hub, why)
    }
}

/// The mirror as its primary's configuration records it: it only needs to name the database
/// mirrored.
fn membership() -> Membership {
    Membership {
        mirror: MirrorDefinition {
            name: "SIMMIRROR".into(),
            id: STREAM,
            qos_timeout_ms: super::super::world::QOS,
            use_arbiter: true,
            arbiter_address: String::new(),
            arbiter_port: 0,
            require_tls: false,
            parallel_dejournaling: String::new(),
            compression_failover: String::new(),
            compression_async: String::new(),
            defined_primary: None,
        },
        this: member_info(0),
        others: Vec::new(),
        was_primary: true,
        databases: Vec::new(),
        activated: Vec::new(),
        primary_name: None,
        pending_adds: Vec::new(),
        epochs: Vec::new(),
        stopped: false,
        pending: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Data, DataEvent, Outcome};

    /// The writer says it settled only once it is done looking: the look at its parked batch
    /// that follows every command comes before the answer. A look after it would read a clock
    /// the simulation may have moved meanwhile (at a frozen primary, which it does not wait
    /// for), and revoke the backup at a moment thread timing chose.
    #[test]
    fn a_writer_that_settled_looks_no_more_until_told_something() {
        let dir = tempfile::tempdir().unwrap();
        let mut data = Data::create(dir.path().join("files")).unwrap();
        let events = [
            DataEvent::Connected {
                primary: 0,
                backup: 1,
                epoch: 1,
                generation: 0,
            },
            DataEvent::CaughtUp {
                primary: 0,
                backup: 1,
                heard: true,
            },
            // The backup is active and hears nothing more: the batch stays parked.
            DataEvent::Written {
                primary: 0,
                epoch: 1,
                outcome: Outcome::Pending,
            },
        ];
        for event in &events {
            data.follow(event).unwrap();
        }
        let writer = data.stores[0].writer.as_ref().expect("a running writer");
        let settled = writer.looks();
        assert!(settled > 0, "the writer looked at its parked batch");
        // Ample time for a look that came after the answer to show.
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert_eq!(
            writer.looks(),
            settled,
            "it looked after it said it settled"
        );
        writer.settled().unwrap();
        assert!(writer.looks() > settled, "told to look again, it does");
    }
}
