//! The rows behind the simulated mirror: each failover member's real mirror journal and real
//! SQLite database, in a folder of their own, kept in step with what the world's members do.
//!
//! # What it does
//!
//! The world decides *whether* a client's write is acknowledged and *who* has what; this module
//! does it on real files, with the member's own building blocks: a write is a real SQLite
//! changeset (made by a session, as the writer makes them) in a real journal frame
//! ([`FrameBuilder`]), appended through the member's real replication [`Hub`] and fsynced by
//! [`Journal`]; a backup stores the frames it is
//! sent at the same positions, after checking their CRCs and positions ([`check_frames`]); each
//! member applies what is committed with the [`Applier`] dejournaling uses; a backup that says
//! hello to a new primary first cuts what the primary's history does not share — after the fork
//! point of its epoch or after the primary's durable end: the member core's decision at a hello
//! ([`at_hello`]), the one the primary's superserver makes. A takeover applies everything the
//! new primary holds (after it fetched the old primary's journal, when it did) and starts an
//! epoch there.
//!
//! A write may also meet a fault of the journal's write path ([`JournalFault`]: a torn append,
//! a failed fsync, a full disk), injected on the real file through the journal's labelled
//! operations ([`InjectedFaults`]); the write fails and the simulation stops that instance, as
//! the writer does. The active backup's journal may fail the same way as it stores a write: it
//! acknowledges nothing and stops, as its receiver has it do, and the write waits for an
//! acknowledgement like any write whose backup was lost. A restarted member opens its journal
//! as an instance does, which cuts a torn tail.
//!
//! An **async member** (a DR async) keeps its own journal and database too: now and then it
//! takes a turn ([`Data::async_turn`]). Not following anyone, it says hello to the failover
//! member its receiver's own decisions choose ([`Follow`]: the one it knows as the primary,
//! then each failover member in turn), which welcomes it only if it runs as primary and the
//! hello's rules let it — a stale primary turns away a member from a newer epoch; following
//! one, it receives and applies what that primary committed, until the link breaks (the
//! primary changed, restarted, stopped running as primary, or the link just broke). It never
//! counts for an acknowledgement and never takes over.
//!
//! # The hub beside the world
//!
//! Each failover member has its real [`Hub`], told what the real one is told: a backup's link
//! registered at each connection (replacing the one it may still hold), acknowledged when the
//! backup caught up and with each write it stores, marked stood down when the backup says so on
//! the link or the arbiter relays it, dropped when the primary notices its channel ended;
//! writes held when the primary's rules enter the trouble state, the hold lifted whenever they
//! let writes go on (as the driver does at each look); a takeover resets the new primary's hub
//! at the end of its journal, a restart starts a new one. What the world does not let a frozen
//! primary hear, its hub does not hear either. Its clock moves with the world's, and the
//! writes that wait for the backup are one parked batch to it, looked at again once they
//! waited a QoS, as the writer does: the hub then revokes an active backup that left them
//! unacknowledged, by itself, and the world carries out what follows (the primary closes the
//! channel; its driver hears of the loss at once). Everything else the hub reports to the
//! driver is dropped: the world tells the cores itself. Writes that come while a batch is
//! parked queue behind it unwritten, as in the writer, and once it is answered they go as one
//! batch of several records (the group commit) through the hub, which must answer it too.
//!
//! # What it checks
//!
//! - At every write, the real hub agrees with the world: it may begin it (it does not hold
//!   mirrored writes while the primary's rules accept them: they would wait for good), and its
//!   verdict is the world's — it does not acknowledge a write the world says waits for the
//!   backup (that write could be lost to a takeover), and it acknowledges at once a write the
//!   world acknowledges alone or with its active backup.
//! - The writes that wait agree with it too: once they waited a QoS the hub still holds them
//!   while the world does, and when the backup acknowledges them or the primary's rules let
//!   them go without it, the hub releases them at once.
//! - A member that takes over holds every acknowledged write in its rows.
//! - Nothing a cut removes was ever applied (applied rows are rows a client may have read).
//! - A backup stores only frames that continue its journal, with the primary's history.
//! - At the end: the final primary holds every acknowledged write and every row any client
//!   read on any member, and the backup's and the async member's rows are the primary's, row
//!   by row.
//!
//! # Left out
//!
//! The writer thread itself: the world's model says when a batch is acknowledged, and the hub
//! must agree; batches are single writes except behind a parked one. A power loss (what the
//! page cache held but no fsync made durable survives a process crash here).
//!
//! [`FrameBuilder`]: crate::journal::FrameBuilder
//! [`Hub`]: crate::mirror::hub::Hub
//! [`Journal`]: crate::journal::Journal
//! [`check_frames`]: crate::mirror::protocol::check_frames
//! [`Applier`]: crate::storage::database::Applier
//! [`at_hello`]: crate::mirror::core::hello::at_hello
//! [`InjectedFaults`]: crate::journal::InjectedFaults

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::time::Instant;

use rusqlite::Connection;
use rusqlite::session::Session;

use crate::clock::ManualClock;
use crate::config::mirror::EpochStart;
use crate::instance::writer::replication::{Acknowledged, Replication};
use crate::journal::{
    Epoch, Fault, FrameBuilder, InjectedFaults, Journal, JournalOp, JournalOptions, JournalPos,
    StreamId,
};
use crate::mirror::core::follow::{Ended, Follow, Target};
use crate::mirror::core::hello::{Cut, Hello, at_hello};
use crate::mirror::hub::Hub;
use crate::mirror::protocol::check_frames;
use crate::mirror::state::DriverInput;
use crate::storage::database::Applier;

mod hubs;

use hubs::member_info;

/// The async member's index among the stores (the failover members are 0 and 1).
pub(crate) const ASYNC: usize = 2;
/// The mirrored database's name in journal records.
const DB: &str = "SIM";
/// The table every write adds a row to.
const SCHEMA: &str = "CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT NOT NULL)";
/// The mirror journal's stream id (the same on both members: one mirror).
const STREAM: StreamId = StreamId([7; 16]);

/// What happened in the world that the files must follow (the world records these when the
/// simulation asks it to, see [`super::world::World::data_log`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum DataEvent {
    /// A client's write reached primary `primary` in `epoch`.
    Written {
        primary: usize,
        epoch: u8,
        outcome: Outcome,
    },
    /// The primary's writes that waited for the backup were acknowledged without it.
    PendingAcknowledged { primary: usize },
    /// The primary's writes that waited will never be answered (it stopped, or the other took
    /// over).
    PendingDropped { primary: usize },
    /// The backup received everything the primary holds and is active.
    /// The primary's hub hears its acknowledgement unless `heard` is false (a frozen
    /// primary's world drops the news; it notices what became of the link on thawing).
    CaughtUp {
        primary: usize,
        backup: usize,
        heard: bool,
    },
    /// `member` took over in `epoch`, after fetching `old`'s journal when `fetched`.
    TookOver {
        member: usize,
        old: usize,
        epoch: u8,
        fetched: bool,
    },
    /// The backup said hello to the primary, which is in `epoch`, on the data channel of
    /// `generation`.
    Connected {
        primary: usize,
        backup: usize,
        epoch: u8,
        generation: u8,
    },
    /// The primary noticed that the data channel of `generation` ended.
    LinkLost { primary: usize, generation: u8 },
    /// The arbiter relayed the backup's stand-down for the latest activation.
    StandDownRelayed { primary: usize },
    /// The backup stood down on the data channel of `generation` (it is leaving).
    StoodDown { primary: usize, generation: u8 },
    /// The primary's rules entered the trouble state: mirrored writes wait.
    Suspended { primary: usize },
    /// The primary's rules let writes go on (the driver lifts the hub's hold, if any).
    MayResume { primary: usize },
    /// The member's instance started again: it opens its journal afresh.
    Restarted { member: usize },
    /// `ms` of simulated time passed; the failover members whose instance runs (up, not
    /// frozen) look again at what waits.
    TimePassed { ms: u64, running: [bool; 2] },
}

/// A fault of the journal's write path that stops the primary in the middle of a write (the
/// writer exits rather than limp on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JournalFault {
    /// The append is cut short: only part of the frame reaches the file.
    TornAppend,
    /// The append works, its fsync fails.
    FailedSync,
    /// The disk is full.
    DiskFull,
}

/// What became of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Outcome {
    /// Acknowledged by the primary alone (no active backup).
    Alone,
    /// Acknowledged once the active backup stored it.
    WithBackup,
    /// Waits for an acknowledgement (the trouble state).
    Pending,
}

/// One member's files.
struct Store {
    dir: PathBuf,
    journal: Journal,
    /// The journal's write path, with the faults a run plans.
    faults: Arc<InjectedFaults>,
    db: Connection,
    file: PathBuf,
    /// What this member may apply: committed by the primary (on a backup: and stored here).
    committed: JournalPos,
    /// What its database holds.
    applied: JournalPos,
    /// Primary: keys of the writes waiting for an acknowledgement.
    pending: Vec<u64>,
    /// Primary: when the parked batch was durable: the first write that waits. The writes
    /// that come while it waits queue behind it, unwritten, as in the writer.
    waiting_since: Option<Instant>,
    /// Primary: how many writes queued behind the parked batch, and their epoch.
    queued: Option<(u8, usize)>,
    /// The member's replication hub, the real one, on a clock that moves with the world's.
    hub: Hub,
    /// What the hub tells the failover driver (the world tells the cores itself).
    hub_reports: mpsc::Receiver<DriverInput>,
    clock: Arc<ManualClock>,
    /// The hub serves this member's journal as the primary's (reset at the journal's end).
    serving: bool,
    /// Primary: the hub's link of each data channel generation.
    links: Vec<(u8, u64)>,
}

/// The files of both failover members, and what clients were told and saw.
pub(crate) struct Data {
    dir: PathBuf,
    /// The two failover members, then the async member ([`ASYNC`]).
    stores: [Store; 3],
    /// The failover member the async member said hello to, while its link lives.
    async_follows: Option<usize>,
    /// The async member's following decisions (the receiver's, [`Follow`]) and the failover
    /// member it knows as the primary (the last to welcome it).
    async_follow: Follow,
    async_knows: usize,
    /// Where each epoch after the first began.
    epochs: Vec<EpochStart>,
    acknowledged: BTreeSet<u64>,
    read: BTreeSet<u64>,
    next_key: u64,
    /// Torn tails the journal cut when a member restarted.
    pub(crate) torn_tails_cut: u64,
    /// Active backups a hub revoked because writes waited a QoS for them.
    pub(crate) qos_revocations: u64,
    /// Batches of writes that queued behind a parked one, written once it was answered.
    pub(crate) queued_batches: u64,
    /// The primaries whose hub revoked its backup, for the world to hear.
    revoked: Vec<usize>,
    /// A scratch database where writes are made, to take their changesets.
    scratch: Connection,
}

fn sql<T>(what: &str, result: rusqlite::Result<T>) -> Result<T, String> {
    result.map_err(|e| format!("{what}: {e}"))
}

fn io<T>(what: &str, result: crate::error::Result<T>) -> Result<T, String> {
    result.map_err(|e| format!("{what}: {e}"))
}

impl Store {
    fn open(dir: &Path) -> Result<Store, String> {
        let (journal, faults, _) = Store::open_journal(dir)?;
        let file = dir.join("sim.db");
        let db = sql("open database", Connection::open(&file))?;
        sql("create table", db.execute_batch(SCHEMA))?;
        let (hub, hub_reports, clock) = Store::new_hub();
        Ok(Store {
            dir: dir.to_path_buf(),
            journal,
            faults,
            db,
            file,
            committed: JournalPos::ZERO,
            applied: JournalPos::ZERO,
            pending: Vec::new(),
            waiting_since: None,
            queued: None,
            hub,
            hub_reports,
            clock,
            serving: false,
            links: Vec::new(),
        })
    }

    /// Opens the member's journal as its instance does at start (a torn tail is cut here).
    /// Also says whether a torn tail was cut.
    fn open_journal(dir: &Path) -> Result<(Journal, Arc<InjectedFaults>, bool), String> {
        let faults = Arc::new(InjectedFaults::default());
        let options = JournalOptions::mirror(DB, 64 << 10, JournalPos(1)).with_io(faults.clone());
        let (journal, report) = io(
            "open journal",
            Journal::open(&dir.join("journal"), STREAM, options),
        )?;
        Ok((journal, faults, report.truncated.is_some()))
    }

    fn end(&self) -> JournalPos {
        self.journal.end()
    }

    /// The epoch of its newest record (0 when it has none).
    fn last_epoch(&self) -> Result<Epoch, String> {
        io("read the last epoch", self.journal.shared().last_epoch())
    }

    /// Applies every record up to `committed` it has not applied yet, as dejournaling does.
    fn apply(&mut self) -> Result<(), String> {
        let upto = self.committed.min(self.end());
        if upto <= self.applied {
            return Ok(());
        }
        let records: Vec<_> = self
            .journal
            .shared()
            .read_range(self.applied, upto)
            .collect::<crate::error::Result<_>>()
            .map_err(|e| format!("read journal: {e}"))?;
        sql("begin", self.db.execute_batch("BEGIN"))?;
        let applier = Applier::new(&self.db, DB, &self.file);
        for record in &records {
            io("apply", applier.apply(record))?;
        }
        sql("commit", self.db.execute_batch("COMMIT"))?;
        self.applied = upto;
        Ok(())
    }

    fn rows(&self) -> Result<BTreeSet<u64>, String> {
        let mut statement = sql("read rows", self.db.prepare("SELECT k FROM t"))?;
        let keys = sql(
            "read rows",
            statement
                .query_map([], |row| row.get::<_, i64>(0))
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>()),
        )?;
        Ok(keys.into_iter().map(|k| k as u64).collect())
    }
}

impl Data {
    /// Fresh files for both members under `dir` (removed first if they exist).
    pub(crate) fn create(dir: PathBuf) -> Result<Data, String> {
        let _ = std::fs::remove_dir_all(&dir);
        let stores = [
            Store::open(&dir.join("a"))?,
            Store::open(&dir.join("b"))?,
            Store::open(&dir.join("dr"))?,
        ];
        let scratch = sql("open scratch", Connection::open_in_memory())?;
        sql("create scratch", scratch.execute_batch(SCHEMA))?;
        Ok(Data {
            dir,
            stores,
            async_follows: None,
            async_follow: Follow::new(),
            async_knows: 0,
            epochs: Vec::new(),
            acknowledged: BTreeSet::new(),
            read: BTreeSet::new(),
            next_key: 1,
            torn_tails_cut: 0,
            qos_revocations: 0,
            revoked: Vec::new(),
            queued_batches: 0,
            scratch,
        })
    }

    /// Acknowledged writes so far.
    pub(crate) fn acknowledged(&self) -> usize {
        self.acknowledged.len()
    }

    /// Follows one event of the world.
    pub(crate) fn follow(&mut self, event: &DataEvent) -> Result<(), String> {
        // A restart, a takeover or a new connection of the failover members ends the async
        // member's link to whichever was primary: it says hello again.
        if matches!(
            event,
            DataEvent::Restarted { .. } | DataEvent::TookOver { .. } | DataEvent::Connected { .. }
        ) {
            self.async_lost();
        }
        match *event {
            DataEvent::Written {
                primary,
                epoch,
                outcome,
            } => self.write(primary, epoch, outcome),
            DataEvent::PendingAcknowledged { primary } => {
                // The rules let the waiting writes go without the backup, and lifted the hub's
                // hold first: the hub must release them too.
                let p = &mut self.stores[primary];
                p.hub_releases_waiting(primary, "its rules acknowledge without the backup")?;
                p.committed = p.end();
                let keys = p.answer_pending();
                self.acknowledged.extend(keys);
                self.stores[primary].apply()?;
                self.run_queued(primary, None, true)
            }
            DataEvent::PendingDropped { primary } => {
                self.stores[primary].clear_pending();
                Ok(())
            }
            DataEvent::TimePassed { ms, running } => self.time_passed(ms, running),
            DataEvent::CaughtUp {
                primary,
                backup,
                heard,
            } => self.caught_up(primary, backup, heard),
            DataEvent::TookOver {
                member,
                old,
                epoch,
                fetched,
            } => self.take_over(member, old, epoch, fetched),
            DataEvent::Connected {
                primary,
                backup,
                epoch,
                generation,
            } => match self.cut_at_hello(primary, backup, epoch)? {
                true => {
                    // The primary's hub registers the link (replacing the one it may still
                    // hold: losing that counts as losing any link).
                    let p = &mut self.stores[primary];
                    let registered = p.primary_hub().register(member_info(backup));
                    let (id, ..) = io("register the backup", registered)?;
                    p.links.push((generation, id));
                    Ok(())
                }
                // The world lets a backup follow only a primary of its epoch or a newer one.
                false => Err(format!(
                    "member {primary} (epoch {epoch}) would refuse member {backup}'s hello: \
                     its records are from a newer epoch"
                )),
            },
            DataEvent::LinkLost {
                primary,
                generation,
            } => {
                let p = &mut self.stores[primary];
                if let Some(i) = p.links.iter().position(|(g, _)| *g == generation) {
                    let (_, id) = p.links.remove(i);
                    p.primary_hub().unregister(id, "the data channel ended");
                }
                Ok(())
            }
            DataEvent::StoodDown {
                primary,
                generation,
            } => {
                let p = &mut self.stores[primary];
                if let Some(&(_, id)) = p.links.iter().find(|(g, _)| *g == generation) {
                    p.primary_hub().on_stood_down(id);
                }
                Ok(())
            }
            DataEvent::StandDownRelayed { primary } => {
                let hub = self.stores[primary].primary_hub();
                hub.relayed_stand_down(hub.last_activation());
                Ok(())
            }
            DataEvent::Suspended { primary } => {
                self.stores[primary].primary_hub().suspend();
                Ok(())
            }
            DataEvent::MayResume { primary } => {
                let hub = self.stores[primary].primary_hub();
                if hub.suspended() {
                    hub.resume(hub.loss_generation());
                }
                Ok(())
            }
            DataEvent::Restarted { member } => {
                let m = &mut self.stores[member];
                let (journal, faults, cut) = Store::open_journal(&m.dir)?;
                (m.journal, m.faults) = (journal, faults);
                // A new process: a new hub, serving nothing yet.
                (m.hub, m.hub_reports, m.clock) = Store::new_hub();
                m.serving = false;
                m.links.clear();
                self.torn_tails_cut += u64::from(cut);
                if m.applied > m.end() {
                    return Err(format!(
                        "member {member} applied up to {} but its journal ends at {} after a \
                         restart",
                        m.applied,
                        m.end()
                    ));
                }
                m.clear_pending();
                Ok(())
            }
        }
    }

    /// A client reads every row of member `i`.
    pub(crate) fn read(&mut self, i: usize) -> Result<(), String> {
        let rows = self.stores[i].rows()?;
        self.read.extend(rows);
        Ok(())
    }

    /// A client's write in `epoch`: its key and its journal frame at `pos`.
    fn frame(&mut self, epoch: u8, pos: JournalPos) -> Result<(u64, Vec<u8>), String> {
        let key = self.next_key;
        self.next_key += 1;
        // The change as the writer makes it: a session records the statement's changeset.
        let mut changeset = Vec::new();
        {
            let mut session = sql("session", Session::new(&self.scratch))?;
            sql("attach", session.attach(None::<&str>))?;
            sql(
                "insert",
                self.scratch.execute(
                    "INSERT INTO t(k, v) VALUES (?1, ?2)",
                    rusqlite::params![key as i64, format!("row {key} of epoch {epoch}")],
                ),
            )?;
            sql("changeset", session.changeset_strm(&mut changeset))?;
        }
        sql("clear scratch", self.scratch.execute_batch("DELETE FROM t"))?;
        let mut frames = Vec::new();
        let mut frame = FrameBuilder::begin(&mut frames, pos, Epoch(u64::from(epoch)), 0);
        io(
            "frame",
            frame.add_changes(DB, |buf| {
                buf.extend_from_slice(&changeset);
                Ok(())
            }),
        )?;
        frame.finish();
        Ok((key, frames))
    }

    fn write(&mut self, primary: usize, epoch: u8, outcome: Outcome) -> Result<(), String> {
        if self.queue_behind_parked(primary, epoch, outcome)? {
            return Ok(());
        }
        let batch = self.publish_batch(primary, epoch, 1)?;
        let (pos, key, since) = (batch.last, batch.keys[0], batch.since);
        let p = &mut self.stores[primary];
        match outcome {
            Outcome::Pending => {
                // The real hub must hold what the mirror holds: acknowledging it now could
                // lose it to a takeover.
                if p.hub.acknowledgement(pos, since) == Acknowledged::Yes {
                    return Err(format!(
                        "member {primary}'s hub acknowledged write {key} (position {pos}) while \
                         its backup could not have stored it and may take over"
                    ));
                }
                p.pending.push(key);
                p.waiting_since.get_or_insert(since);
                return Ok(());
            }
            Outcome::Alone => {
                // No active backup: the hub must not make the write wait either.
                let why = "the primary acknowledges alone: no backup is active";
                p.hub_answers_yes(primary, pos, since, why)?;
                p.committed = pos
            }
            Outcome::WithBackup => {
                let backup = 1 - primary;
                self.ship(primary, backup)?;
                self.acknowledge(primary, backup);
                // The active backup stored and acknowledged it: so must the hub say.
                let why = "its active backup stored and acknowledged";
                self.stores[primary].hub_answers_yes(primary, pos, since, why)?;
                self.stores[primary].committed = pos;
                self.stores[backup].committed = pos;
                self.stores[backup].apply()?;
            }
        }
        self.acknowledged.insert(key);
        self.stores[primary].apply()
    }

    /// A client's write on `primary` meets `fault` in the journal's write path: the write fails
    /// (the caller then stops the instance, as the writer does). Nothing is acknowledged.
    pub(crate) fn fail_write(
        &mut self,
        primary: usize,
        epoch: u8,
        fault: JournalFault,
    ) -> Result<(), String> {
        let pos = self.stores[primary].end().next();
        let (_, frames) = self.frame(epoch, pos)?;
        let p = &mut self.stores[primary];
        let (op, fault) = match fault {
            JournalFault::TornAppend => (JournalOp::Append, Fault::Tear(frames.len() / 2)),
            JournalFault::FailedSync => (JournalOp::Sync, Fault::Fail(libc::EIO)),
            JournalFault::DiskFull => (JournalOp::Append, Fault::Fail(libc::ENOSPC)),
        };
        p.faults.next(op, fault);
        p.primary_hub();
        let written = p
            .hub
            .publish(&mut p.journal, &frames, pos, pos)
            .and_then(|()| p.journal.sync());
        if written.is_ok() {
            return Err(format!(
                "the injected {fault:?} on {op:?} did not fail the write"
            ));
        }
        Ok(())
    }

    /// Sends the backup every record of the primary it lacks, as the data channel does: frames
    /// checked, stored at the same positions, fsynced.
    fn ship(&mut self, primary: usize, backup: usize) -> Result<(), String> {
        io("store", self.try_ship(primary, backup)?)
    }

    /// [`Data::ship`], the backup's journal failure apart from the rest: the outer error is a
    /// violation, the inner one what the backup's journal said.
    fn try_ship(
        &mut self,
        primary: usize,
        backup: usize,
    ) -> Result<crate::error::Result<()>, String> {
        let from = self.stores[backup].end();
        let until = self.stores[primary].end();
        if from > until {
            return Err(format!(
                "member {backup}'s journal goes to {from}, beyond its primary's ({until}): a \
                 hello should have cut it"
            ));
        }
        if from == until {
            return Ok(Ok(()));
        }
        let mut frames = Vec::new();
        for record in self.stores[primary]
            .journal
            .shared()
            .read_range(from, until)
        {
            io("read", record)?.encode_into(&mut frames);
        }
        let (first, last) = (from.next(), until);
        let records = io("check frames", check_frames(&frames, first, last))?;
        let b = &mut self.stores[backup];
        Ok(b.journal
            .append(&frames, last, records)
            .and_then(|()| b.journal.sync()))
    }

    /// The active backup's journal meets `fault` while it stores what the primary just wrote
    /// (a write that therefore waits for its acknowledgement): the store fails, and the caller
    /// stops the backup's instance, as its receiver does.
    pub(crate) fn fail_backup_store(
        &mut self,
        primary: usize,
        backup: usize,
        fault: JournalFault,
    ) -> Result<(), String> {
        let (op, planned) = match fault {
            JournalFault::TornAppend => (
                JournalOp::Append,
                Fault::Tear(crate::journal::record::FRAME_HEADER_LEN),
            ),
            JournalFault::FailedSync => (JournalOp::Sync, Fault::Fail(libc::EIO)),
            JournalFault::DiskFull => (JournalOp::Append, Fault::Fail(libc::ENOSPC)),
        };
        self.stores[backup].faults.next(op, planned);
        if self.try_ship(primary, backup)?.is_ok() {
            return Err(format!(
                "the injected {planned:?} on {op:?} did not fail the backup's store"
            ));
        }
        Ok(())
    }

    fn take_over(
        &mut self,
        member: usize,
        old: usize,
        epoch: u8,
        fetched: bool,
    ) -> Result<(), String> {
        if fetched && self.stores[old].end() > self.stores[member].end() {
            // The old primary's agent handed over its journal (what it made durable).
            self.ship(old, member)?;
        }
        // The new primary's hub starts serving at the end of its journal (the takeover step's
        // reset). The old primary's notices its link ending when the world delivers that.
        let m = &mut self.stores[member];
        m.serving = false;
        m.links.clear();
        m.primary_hub();
        // A new primary applies everything it holds: its history is the mirror's now.
        m.committed = m.end();
        m.clear_pending();
        m.apply()?;
        let rows = m.rows()?;
        if let Some(lost) = self.acknowledged.iter().find(|k| !rows.contains(k)) {
            return Err(format!(
                "member {member} took over without acknowledged write {lost} in its rows"
            ));
        }
        self.epochs.push(EpochStart {
            epoch: Epoch(u64::from(epoch)),
            first: m.end().next().0,
        });
        Ok(())
    }

    /// The backup's hello to a primary in `epoch`: it keeps only what the primary's history
    /// shares (see the module essay), then receives the rest. False when the primary turns it
    /// away (its records are from a newer epoch than the primary's).
    fn cut_at_hello(&mut self, primary: usize, backup: usize, epoch: u8) -> Result<bool, String> {
        let durable = self.stores[primary].end();
        let b = &mut self.stores[backup];
        let hello = Hello {
            end: b.end(),
            last_epoch: b.last_epoch()?,
            fresh: false,
        };
        let Ok(decision) = at_hello(&self.epochs, Epoch(u64::from(epoch)), durable, hello) else {
            return Ok(false);
        };
        let Some(Cut { after: cut, .. }) = decision.cut else {
            return Ok(true);
        };
        if b.applied > cut {
            return Err(format!(
                "member {backup} must cut its journal after {cut}, but it applied up to {}: \
                 rows a client may have read would be undone",
                b.applied
            ));
        }
        io("cut", b.journal.truncate_after(cut))?;
        b.committed = b.committed.min(cut);
        b.clear_pending();
        Ok(true)
    }

    /// The async member receives what primary `primary` has (after a hello, when its link is
    /// new) and applies what the primary committed. It never counts for an acknowledgement.
    /// `epoch` is the primary's: a stale one (from an older epoch than the async member's
    /// records) turns it away, and it receives nothing.
    pub(crate) fn async_receives(&mut self, primary: usize, epoch: u8) -> Result<(), String> {
        if self.async_follows != Some(primary) {
            if !self.cut_at_hello(primary, ASYNC, epoch)? {
                return Ok(());
            }
            self.async_follows = Some(primary);
        }
        self.ship(primary, ASYNC)?;
        self.stores[ASYNC].committed = self.stores[primary].committed;
        self.stores[ASYNC].apply()
    }

    /// The async member's link breaks.
    pub(crate) fn async_lost(&mut self) {
        if self.async_follows.take().is_some() {
            // It had been welcomed: the member it knows is the one to ask first again.
            self.async_follow.ended(Ended::Closed);
        }
    }

    /// The async member's turn. Following a failover member, it receives from it — or its link
    /// breaks, when that member no longer runs as primary. Following none, it says hello to the
    /// member its receiver's decisions choose ([`Follow::target`]: the one it knows as the
    /// primary, then the failover members in turn); a member that does not run as primary, or
    /// turns it away, is a failed attempt. `primaries[i]` is failover member `i`'s epoch while
    /// it runs as primary. Returns the member it tried or received from.
    pub(crate) fn async_turn(&mut self, primaries: [Option<u8>; 2]) -> Result<usize, String> {
        if let Some(p) = self.async_follows {
            match primaries[p] {
                Some(epoch) => self.async_receives(p, epoch)?,
                None => self.async_lost(),
            }
            return Ok(p);
        }
        let target = match self
            .async_follow
            .target(true, Some(self.async_knows), &["A", "B"])
        {
            Target::Primary => self.async_knows,
            Target::Member(i) => i,
        };
        if let Some(epoch) = primaries[target] {
            self.async_receives(target, epoch)?;
        }
        if self.async_follows == Some(target) {
            self.async_knows = target;
        } else {
            self.async_follow.ended(Ended::Failed);
        }
        Ok(target)
    }

    /// The failover member the async member follows now, if any.
    pub(crate) fn async_follows(&self) -> Option<usize> {
        self.async_follows
    }

    /// The final checks, once the pair settled with `primary` (in `epoch`) and its backup.
    pub(crate) fn check_end(&mut self, primary: usize, epoch: u8) -> Result<(), String> {
        // The async member finds the primary by its receiver's decisions, whatever it knew: in
        // two attempts (the member it knows, then the other one).
        self.async_lost();
        let mut primaries = [None, None];
        primaries[primary] = Some(epoch);
        let mut tried = Vec::new();
        while self.async_follows != Some(primary) {
            if tried.len() == 2 {
                return Err(format!(
                    "the async member did not find primary {primary} in two attempts (it tried \
                     {tried:?})"
                ));
            }
            tried.push(self.async_turn(primaries)?);
        }
        let backup = 1 - primary;
        self.ship(primary, backup)?;
        self.stores[backup].committed = self.stores[primary].committed;
        self.stores[backup].apply()?;
        self.stores[primary].apply()?;
        let rows = self.stores[primary].rows()?;
        if let Some(lost) = self.acknowledged.iter().find(|k| !rows.contains(k)) {
            return Err(format!(
                "acknowledged write {lost} is not on the final primary"
            ));
        }
        if let Some(ghost) = self.read.iter().find(|k| !rows.contains(k)) {
            return Err(format!(
                "a client read row {ghost}, which the final primary lacks"
            ));
        }
        for (member, name) in [(backup, "backup"), (ASYNC, "async member")] {
            let theirs = self.stores[member].rows()?;
            if theirs != rows {
                return Err(format!(
                    "the {name}'s rows differ from the primary's: only on the primary {:?}, \
                     only on the {name} {:?}",
                    rows.difference(&theirs).collect::<Vec<_>>(),
                    theirs.difference(&rows).collect::<Vec<_>>()
                ));
            }
        }
        Ok(())
    }
}

impl Drop for Data {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
