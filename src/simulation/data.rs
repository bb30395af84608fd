//! The rows behind the simulated mirror: each failover member's real mirror journal, real
//! SQLite database and real writer thread, in a folder of their own, kept in step with what
//! the world's members do.
//!
//! # What it does
//!
//! The world decides *whether* a client's write should be acknowledged and *who* has what;
//! this module does it on real files, with the member's own parts: a client's write goes to
//! the primary's real writer thread ([`Writer`], started on the member's files at its first
//! write as the primary, see [`writer`]), which runs the statement, journals its changeset in
//! a real frame, appends it through the member's real replication [`Hub`], fsyncs it, and
//! parks the batch until the hub acknowledges it — or answers at once. Writes that come while
//! a batch is parked queue behind it in the writer and go as one batch once it is answered
//! (the group commit). The writer's answer must be the world's (below). A backup reads the
//! real bytes of its data channel — what the superserver's catch-up sends from the journal
//! files when it connects, then what the primary's hub queued in the link's outbox — and
//! stores their frames with the receiver's own receive round ([`Round`]: contiguous, CRCs and
//! positions checked, after its journal's end, one append and one fsync; see [`wire`]); each
//! member applies what is committed with the [`Applier`] dejournaling
//! uses (the rows and the applied position in one transaction); a backup that says hello to a
//! new primary first cuts what the primary's history does not share — after the fork point of
//! its epoch or after the primary's durable end: the member core's decision at a hello
//! ([`at_hello`]), the one the primary's superserver makes. A takeover applies everything the
//! new primary holds (after it fetched the old primary's journal, when it did) and starts an
//! epoch there.
//!
//! A write may also meet a fault of the journal's write path ([`JournalFault`]: a torn append,
//! a failed fsync, a full disk), injected on the real file through the journal's labelled
//! operations ([`InjectedFaults`]): the writer fails the write and stops, and the simulation
//! stops that instance. The active backup's journal may fail the same way as it stores a
//! write: it acknowledges nothing and stops, as its receiver has it do, and the write waits
//! for an acknowledgement like any write whose backup was lost. A stopped instance's writer
//! ends (its hub closed first: the parked batch is never committed); a restarted member opens
//! its journal as an instance does, which cuts a torn tail.
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
//! # The hub and the writer beside the world
//!
//! Each failover member has its real [`Hub`], told what the real one is told: a backup's link
//! registered at each connection (replacing the one it may still hold), acknowledged when the
//! backup caught up and with each write it stores, marked stood down when the backup says so on
//! the link or the arbiter relays it, dropped when the primary notices its channel ended;
//! writes held when the primary's rules enter the trouble state, the hold lifted whenever they
//! let writes go on (as the driver does at each look); a takeover resets the new primary's hub
//! at the end of its journal, a restart starts a new one. What the world does not let a frozen
//! primary hear, its hub does not hear either, and a frozen primary's writer takes nothing up.
//! The hub's clock — the writer's too — moves with the world's; when time passes, the writer
//! of each running primary looks again at its parked batch, as the real one does when the
//! batch waited a QoS: the hub then revokes an active backup that left it unacknowledged, by
//! itself, and the world carries out what follows (the primary closes the channel; its driver
//! hears of the loss at once). Everything else the hub reports to the driver is dropped: the
//! world tells the cores itself. After every event the simulation waits until each running
//! writer settled (it answers once it looked again and has nothing left to do but wait for a
//! command), so what the writer does depends on the order of events only.
//!
//! # What it checks
//!
//! - At every write, the real writer agrees with the world: the hub may begin it (it does not
//!   hold mirrored writes while the primary's rules accept them: they would wait for good), and
//!   the writer does not acknowledge a write the world says waits for the backup (that write
//!   could be lost to a takeover), nor one before its active backup stored it, and it
//!   acknowledges a write the world acknowledges alone at once, and one the world acknowledges
//!   with its backup once the backup stored and acknowledged it.
//! - The writes that wait agree with it too: time passing alone never lets the writer answer
//!   them, and when the backup acknowledges them or the primary's rules let them go without
//!   it, the writer answers every one — those that queued behind the parked batch as one
//!   batch.
//! - A writer stops only on an injected journal fault, refuses no write otherwise, and a write
//!   that meets the fault is not acknowledged.
//! - A writer announces a committed end (members may apply up to it) only once its database
//!   holds it — checked at the moment it says so (see [`writer`]).
//! - A member that takes over holds every acknowledged write in its rows.
//! - Nothing a cut removes was ever applied (applied rows are rows a client may have read).
//! - A backup stores only frames that continue its journal, with the primary's history; what
//!   the primary's hub sent it over a delivered channel is everything the primary's journal
//!   holds, and the committed end it was told never passes what the primary's writer
//!   committed (members apply nothing beyond it).
//! - At the end: no write still waits, the final primary holds every acknowledged write and
//!   every row any client read on any member (a read on the primary sees only what its writer
//!   committed), and the backup's and the async member's rows are the primary's, row by row.
//!
//! # Left out
//!
//! The receiver's and the driver's threads: the world's model carries out the cores'
//! decisions and says when a channel's bytes are delivered and the backup acknowledges. The writer's extension (the mirror's lifecycle
//! steps): a member becomes the writer of the mirror's database by the world's takeover. A
//! power loss (what the page cache held but no fsync made durable survives a process crash
//! here).
//!
//! [`Writer`]: crate::instance::writer::Writer
//! [`Hub`]: crate::mirror::hub::Hub
//! [`Applier`]: crate::storage::database::Applier
//! [`Round`]: crate::mirror::receiver::round::Round
//! [`at_hello`]: crate::mirror::core::hello::at_hello
//! [`InjectedFaults`]: crate::journal::InjectedFaults

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};

use rusqlite::Connection;

use crate::clock::ManualClock;
use crate::config::mirror::EpochStart;
use crate::instance::writer::replication::Replication;
use crate::journal::{
    Epoch, Fault, InjectedFaults, Journal, JournalOp, JournalOptions, JournalPos, JournalShared,
    StreamId,
};
use crate::mirror::core::follow::Follow;
use crate::mirror::core::hello::{Cut, Hello, at_hello};
use crate::mirror::hub::Hub;
use crate::mirror::protocol::{Control, write_control};
use crate::mirror::state::DriverInput;
use crate::mirror::state::LinkError;
use crate::names::DbName;
use crate::storage::CatalogState;
use crate::storage::database::{self, Applier, set_applied_sql};

mod async_member;
mod hubs;
mod wire;
mod writer;

use hubs::member_info;
use wire::Link;
use writer::{DB_DIRECTORY, PrimaryWriter, Submitted};

/// The async member's index among the stores (the failover members are 0 and 1).
pub(crate) const ASYNC: usize = 2;
/// The mirrored database's name (and its namespace's) in journal records.
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
    /// The world gave up on the primary's writes that waited (it stopped, or the other took
    /// over); its writer keeps them until it stops.
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
    /// The member's host froze: its threads stand still.
    Froze { member: usize },
    /// The member's host thawed: its writer looks at once at what waited.
    Thawed { member: usize },
    /// The member's instance stopped (crashed, or stopped gracefully).
    Stopped { member: usize },
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
    /// The member's mirror journal, unless its writer holds it (the member writes as the
    /// primary) or its instance is down.
    journal: Option<Journal>,
    /// The same journal, read by anyone (whoever holds it).
    shared: Arc<JournalShared>,
    /// The journal's write path, with the faults a run plans.
    faults: Arc<InjectedFaults>,
    /// A fault was planned on the primary's journal: its writer may stop.
    fault_planned: bool,
    db: Connection,
    file: PathBuf,
    /// What this member may apply: committed by the primary (on a backup: and stored here).
    committed: JournalPos,
    /// What its database holds.
    applied: JournalPos,
    /// Primary: the writes sent to its writer and not answered yet (the parked batch and
    /// those queued behind it).
    pending: Vec<Submitted>,
    /// Primary: its real writer thread, started at its first write as the primary.
    writer: Option<PrimaryWriter>,
    /// Its host is frozen: its writer takes nothing up.
    frozen: bool,
    /// How many times its writer had looked at its parked batch when its host froze: no more
    /// when it thaws, or the writer acted while it stood still (it looks once settled only
    /// when told something, and the world tells a frozen primary nothing).
    looks_at_freeze: u64,
    /// The member's replication hub, the real one, on a clock that moves with the world's.
    hub: Arc<Hub>,
    /// What the hub tells the failover driver (the world tells the cores itself).
    hub_reports: mpsc::Receiver<DriverInput>,
    clock: Arc<ManualClock>,
    /// The hub serves this member's journal as the primary's (reset at the journal's end).
    serving: bool,
    /// Primary: the hub's link of each data channel generation, newest last.
    links: Vec<Link>,
}

/// The files of both failover members, and what clients were told and saw.
pub(crate) struct Data {
    dir: PathBuf,
    /// The two failover members, then the async member ([`ASYNC`]).
    stores: [Store; 3],
    /// The failover member the async member said hello to, while its link lives.
    async_follows: Option<usize>,
    /// That link, as the followed member's hub knows it.
    async_link: Option<Link>,
    /// The async member's following decisions (the receiver's, [`Follow`]) and the failover
    /// member it knows as the primary (the last to welcome it).
    async_follow: Follow,
    async_knows: usize,
    /// Where each epoch after the first began.
    epochs: Vec<EpochStart>,
    /// The writes a writer acknowledged to their client.
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
        let file = CatalogState::file_path(dir, DB_DIRECTORY);
        let name = io("a database name", DbName::new(DB))?;
        io(
            "create the database",
            database::create(&file, &name, STREAM, SCHEMA),
        )?;
        let db = io("open the database", database::open_for_apply(&file))?;
        let (hub, hub_reports, clock) = Store::new_hub();
        Ok(Store {
            dir: dir.to_path_buf(),
            shared: journal.shared(),
            journal: Some(journal),
            faults,
            fault_planned: false,
            db,
            file,
            committed: JournalPos::ZERO,
            applied: JournalPos::ZERO,
            pending: Vec::new(),
            writer: None,
            frozen: false,
            looks_at_freeze: 0,
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

    /// The journal, to write (`member` is this one): not while its writer holds it.
    fn journal(&mut self, member: usize) -> Result<&mut Journal, String> {
        self.journal.as_mut().ok_or_else(|| {
            format!("member {member}'s journal is its writer's (it writes as the primary)")
        })
    }

    fn end(&self) -> JournalPos {
        self.shared.appended_end()
    }

    /// The epoch of its newest record (0 when it has none).
    fn last_epoch(&self) -> Result<Epoch, String> {
        io("read the last epoch", self.shared.last_epoch())
    }

    /// Applies every record up to `committed` it has not applied yet, as dejournaling does:
    /// the rows and the applied position in one transaction.
    fn apply(&mut self) -> Result<(), String> {
        let upto = self.committed.min(self.end());
        if upto <= self.applied {
            return Ok(());
        }
        let records: Vec<_> = self
            .shared
            .read_range(self.applied, upto)
            .collect::<crate::error::Result<_>>()
            .map_err(|e| format!("read journal: {e}"))?;
        sql("begin", self.db.execute_batch("BEGIN"))?;
        let applier = Applier::new(&self.db, DB, &self.file);
        for record in &records {
            io("apply", applier.apply(record))?;
        }
        sql(
            "record the applied position",
            self.db
                .execute(&set_applied_sql("main"), [upto.0 as i64])
                .map(drop),
        )?;
        sql("commit", self.db.execute_batch("COMMIT"))?;
        self.applied = upto;
        Ok(())
    }

    /// The applied position its database file records (its writer's commits move it).
    fn applied_in_file(&self) -> Result<JournalPos, String> {
        let identity = io(
            "read the applied position",
            database::read_identity(&self.db, "main"),
        )?;
        Ok(identity.applied_pos)
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
        Ok(Data {
            dir,
            stores,
            async_follows: None,
            async_link: None,
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
        })
    }

    /// Acknowledged writes so far.
    pub(crate) fn acknowledged(&self) -> usize {
        self.acknowledged.len()
    }

    /// Follows one event of the world, and waits until every writer that runs settled on it.
    pub(crate) fn follow(&mut self, event: &DataEvent) -> Result<(), String> {
        // A restart, a takeover or a new connection of the failover members ends the async
        // member's link to whichever was primary: it says hello again.
        if matches!(
            event,
            DataEvent::Restarted { .. } | DataEvent::TookOver { .. } | DataEvent::Connected { .. }
        ) {
            self.async_lost()?;
        }
        self.follow_event(event)?;
        // Whatever the hubs heard may have woken a writer: what it does about it happens
        // before the next event, whatever the threads' timing.
        for i in 0..2 {
            self.settle(i)?;
        }
        Ok(())
    }

    fn follow_event(&mut self, event: &DataEvent) -> Result<(), String> {
        match *event {
            DataEvent::Written {
                primary,
                epoch,
                outcome,
            } => self.write(primary, epoch, outcome),
            DataEvent::PendingAcknowledged { primary } => {
                // The rules let the waiting writes go without the backup, and lifted the hub's
                // hold first: the writer must answer them, and those queued behind them.
                self.release(primary, None)
            }
            // The writer keeps them until it stops: if it ever answered one, that write counts
            // as acknowledged (and must survive).
            DataEvent::PendingDropped { .. } => Ok(()),
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
                    let backup_end = self.stores[backup].end();
                    let p = &mut self.stores[primary];
                    let registered = p.primary_hub().register(member_info(backup));
                    let registered = io("register the backup", registered)?;
                    let committed = p.hub.committed_end();
                    let link = Link::new(generation, registered, &p.shared, backup_end, committed)?;
                    p.links.push(link);
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
                if let Some(i) = p.links.iter().position(|l| l.generation == generation) {
                    let link = p.links.remove(i);
                    p.primary_hub()
                        .unregister(link.id, "the data channel ended");
                }
                Ok(())
            }
            DataEvent::StoodDown {
                primary,
                generation,
            } => {
                let p = &mut self.stores[primary];
                match p.links.iter().find(|l| l.generation == generation) {
                    // Said on the link, as the backup's receiver says it.
                    Some(link) => {
                        let id = link.id;
                        let stood_down =
                            |out: &mut Vec<u8>| write_control(out, &Control::StoodDown);
                        wire::hear(p.primary_hub(), id, stood_down)
                    }
                    None => Ok(()),
                }
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
            DataEvent::Froze { member } => {
                let m = &mut self.stores[member];
                m.frozen = true;
                m.looks_at_freeze = m.writer.as_ref().map_or(0, PrimaryWriter::looks);
                Ok(())
            }
            DataEvent::Thawed { member } => {
                // Its writer's deadline passed while it stood still: it looks at once (the
                // settle after every event) — not before.
                let m = &mut self.stores[member];
                m.frozen = false;
                match m.writer.as_ref().map(PrimaryWriter::looks) {
                    Some(looks) if looks != m.looks_at_freeze => Err(format!(
                        "member {member}'s writer looked at its parked batch {} times while its \
                         host was frozen",
                        looks - m.looks_at_freeze
                    )),
                    _ => Ok(()),
                }
            }
            DataEvent::Stopped { member } => self.stores[member].stop_writer(),
            DataEvent::Restarted { member } => {
                let m = &mut self.stores[member];
                if m.writer.is_some() {
                    return Err(format!("member {member} restarted while its writer ran"));
                }
                let (journal, faults, cut) = Store::open_journal(&m.dir)?;
                m.shared = journal.shared();
                (m.journal, m.faults) = (Some(journal), faults);
                m.fault_planned = false;
                // A new process: a new hub, serving nothing yet.
                (m.hub, m.hub_reports, m.clock) = Store::new_hub();
                m.serving = false;
                m.frozen = false;
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

    /// A client's write on `primary` in `epoch`, through its writer; the writer's answer must
    /// be the world's `outcome`.
    fn write(&mut self, primary: usize, epoch: u8, outcome: Outcome) -> Result<(), String> {
        let key = self.next_key;
        self.next_key += 1;
        let p = &mut self.stores[primary];
        // The world writes only while the primary's rules accept writes; a hub holding them
        // then would hold them for good (the driver lifts its hold at every look that lets
        // writes go on).
        if !p.primary_hub().may_commit() {
            return Err(format!(
                "member {primary}'s hub holds mirrored writes while its rules accept them: \
                 write {key} would wait for good"
            ));
        }
        let queued = !p.pending.is_empty();
        let submitted = p.writer(primary, epoch)?.submit(key, epoch);
        p.pending.push(submitted);
        let answered = self.settle(primary)?;
        let acknowledged = answered.contains(&key);
        match outcome {
            // The real writer must hold what the mirror holds: acknowledging it now could
            // lose it to a takeover.
            Outcome::Pending if acknowledged => Err(format!(
                "member {primary}'s writer acknowledged write {key} while its backup could not \
                 have stored it and may take over"
            )),
            Outcome::Pending => Ok(()),
            // No active backup: the writer must not make the write wait either.
            Outcome::Alone if !acknowledged => Err(format!(
                "member {primary}'s writer did not acknowledge write {key}, which the world \
                 acknowledges alone (no backup is active){}",
                if queued {
                    ": it queued behind writes that wait"
                } else {
                    ""
                }
            )),
            Outcome::Alone => Ok(()),
            Outcome::WithBackup if acknowledged => Err(format!(
                "member {primary}'s writer acknowledged write {key} before its active backup \
                 stored it"
            )),
            Outcome::WithBackup => {
                self.release(primary, Some(1 - primary))?;
                match self.acknowledged.contains(&key) {
                    true => Ok(()),
                    false => Err(format!(
                        "member {primary}'s writer did not acknowledge write {key} once its \
                         active backup stored and acknowledged it"
                    )),
                }
            }
        }
    }

    /// A client's write on `primary` meets `fault` in the journal's write path: the write fails
    /// and the writer stops (the caller then stops the instance). Nothing is acknowledged. A
    /// write that queues behind a parked batch never reaches the journal: the fault does not
    /// strike, and the instance stops all the same.
    pub(crate) fn fail_write(
        &mut self,
        primary: usize,
        epoch: u8,
        fault: JournalFault,
    ) -> Result<(), String> {
        let key = self.next_key;
        self.next_key += 1;
        let p = &mut self.stores[primary];
        let (op, fault) = match fault {
            JournalFault::TornAppend => (
                JournalOp::Append,
                Fault::Tear(crate::journal::record::FRAME_HEADER_LEN + 3),
            ),
            JournalFault::FailedSync => (JournalOp::Sync, Fault::Fail(libc::EIO)),
            JournalFault::DiskFull => (JournalOp::Append, Fault::Fail(libc::ENOSPC)),
        };
        let queued = !p.pending.is_empty();
        // Started before the fault is planned: the start must not be what meets it.
        p.writer(primary, epoch)?;
        p.faults.next(op, fault);
        p.fault_planned = true;
        let submitted = p.writer(primary, epoch)?.submit(key, epoch);
        p.pending.push(submitted);
        let answered = self.settle(primary)?;
        let p = &self.stores[primary];
        let stopped = p.writer.as_ref().and_then(PrimaryWriter::failure);
        match (answered.contains(&key), stopped) {
            (true, _) => Err(format!(
                "the injected {fault:?} on {op:?} did not fail write {key}: it was acknowledged"
            )),
            (false, Some(_)) => Ok(()),
            (false, None) if queued => Ok(()),
            (false, None) => Err(format!(
                "the injected {fault:?} on {op:?} did not stop member {primary}'s writer"
            )),
        }
    }

    /// Member `backup` receives everything in flight on its data channel from `primary` (see
    /// [`wire`]): frames checked, stored at the same positions, fsynced.
    fn ship(&mut self, primary: usize, backup: usize) -> Result<(), String> {
        self.try_ship(primary, backup)?
            .map_err(|err| format!("member {backup} stores: {err}"))
    }

    /// [`Data::ship`], the backup's journal failure apart from the rest: the outer error is a
    /// violation, the inner one what the backup's journal said. The member reads its data
    /// channel ([`Data::deliver`]).
    fn try_ship(&mut self, primary: usize, backup: usize) -> Result<Result<(), LinkError>, String> {
        let from = self.stores[backup].end();
        let until = self.stores[primary].end();
        if from > until {
            return Err(format!(
                "member {backup}'s journal goes to {from}, beyond its primary's ({until}): a \
                 hello should have cut it"
            ));
        }
        self.deliver(primary, backup)
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
            self.send_from_files(old, member)?
                .map_err(|err| format!("member {member} stores what it fetched: {err}"))?;
        }
        // The new primary's hub starts serving at the end of its journal (the takeover step's
        // reset). The old primary's notices its link ending when the world delivers that.
        let m = &mut self.stores[member];
        if m.writer.is_some() {
            return Err(format!(
                "member {member} took over while its writer ran as the primary's"
            ));
        }
        m.serving = false;
        m.links.clear();
        m.primary_hub();
        // A new primary applies everything it holds: its history is the mirror's now.
        m.committed = m.end();
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
        io("cut", b.journal(backup)?.truncate_after(cut))?;
        b.committed = b.committed.min(cut);
        Ok(true)
    }

    /// The final checks, once the pair settled with `primary` (in `epoch`) and its backup.
    pub(crate) fn check_end(&mut self, primary: usize, epoch: u8) -> Result<(), String> {
        // The async member finds the primary by its receiver's decisions, whatever it knew: in
        // two attempts (the member it knows, then the other one).
        self.async_lost()?;
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
        let waiting: Vec<u64> = self.stores[primary].pending.iter().map(|s| s.key).collect();
        if !waiting.is_empty() {
            return Err(format!(
                "the pair settled with writes {waiting:?} still waiting on the primary"
            ));
        }
        let backup = 1 - primary;
        // The last commit's announcement is delivered with the rest: the backup may apply all.
        self.ship(primary, backup)?;
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
        // The writers' threads end before their files go.
        for store in &mut self.stores {
            let _ = store.stop_writer();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
