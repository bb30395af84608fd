//! The writer: the one thread that changes databases, and the group commit.
//!
//! # How a write travels
//!
//! A handler sends a [`WriteRequest`] (namespace, statement, parameters) over a channel and waits
//! for the reply. The writer thread takes the first request and every request for the same
//! namespace that queued up behind it (up to [`MAX_BATCH`]), and for the whole batch:
//!
//! 1. `BEGIN` on the namespace's connection.
//! 2. For each request, under its own savepoint: a SQLite session per writable database records
//!    the statement's row changes; the changesets are streamed straight into a journal frame at
//!    the next position — in the mirror's journal for mirrored databases, in the instance's own
//!    journal for the others (schema statements are journaled as their text); each database it
//!    changed gets its new applied position *in the same transaction as its rows*. A failing
//!    statement rolls back to its savepoint and only its own client gets the error.
//! 3. The mirror frames are appended and handed to the mirror's members ([`Hub::publish`](crate::mirror::hub::Hub::publish): the
//!    backup's disk write overlaps ours); the local frames are appended; each journal is made
//!    durable with one `fdatasync` — **one fsync per journal for the whole batch**.
//! 4. `COMMIT`: the batch becomes visible on this member, and its clients are answered. A batch
//!    with mirrored records first waits for the active backup's acknowledgement — one round
//!    trip for the whole batch, most of it spent while both disks sync. The writer does not
//!    block on it: the batch is *parked* with its transaction open, writes to local databases
//!    go on, and the hub wakes the writer when the acknowledgement comes
//!    ([`Hub::acknowledgement`](crate::mirror::hub::Hub::acknowledgement)); mirrored writes
//!    queue behind the parked batch and form the next one.
//!
//! Ordering is the whole argument for safety. Nothing is acknowledged before step 3's fsync (and,
//! mirrored, before the backup's acknowledgement), so an acknowledged write is in the journal —
//! on the backup too. The SQLite commit comes after the fsync, so a database file is never ahead
//! of its durable journal: a crash before step 4 leaves records the files lack, which recovery
//! replays; a crash before step 3 leaves neither. A mirrored batch becomes visible only once the
//! backup holds it, so no reader, here or on any member, ever sees a row that a takeover would
//! undo: members apply only what the primary committed ([`Hub::committed`](crate::mirror::hub::Hub::committed)).
//!
//! # The trouble state
//!
//! While the mirror may not acknowledge mirrored writes (the trouble state: the backup was lost
//! and may be taking over), the writer holds mirrored writes *before* `BEGIN`: they wait, in a
//! bounded queue (a full one refuses with a message), until the trouble ends, and a client that
//! gave up meanwhile is not written for. Writes to local databases go on. A batch that was
//! parked when the trouble began stays parked, invisible, until then.
//!
//! # Failures
//!
//! A statement error is the client's. A failure of a journal, or of the commit after a journal
//! write, is not: the state on disk is then uncertain, so the writer stops (fail-stop), answers
//! everyone with "unavailable", and calls the fatal hook; the process exits and the next start
//! recovers from the journal. Limping on after a failed fsync is how databases lose data.
//!
//! # Everything else that changes a database
//!
//! Mount and dismount, and the mirror's work — Add to Mirror, Activate, Catchup and dejournaling
//! on a backup, Freeze and Thaw — run on this thread too, in order with the writes, so no two
//! things ever change one file at once (and after a parked batch). Add to Mirror's events are
//! mirrored writes too: the databases switch to the mirror journal once the backup holds them. Dejournaling works in chunks so writes and acknowledgements
//! are never stuck behind a long Catchup. After a second without writes the WAL files are folded
//! into the database files, so a plain `cp` of an idle database file is complete.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use rusqlite::session::Session;
use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::journal::{FrameBuilder, Journal, JournalPos, JournalShared, ReadResume, RecordBody};
use crate::mirror::config::MirroredDatabase;
use crate::mirror::hub::Acknowledged;
use crate::mirror::state::{CatchupPhase, MirrorState, Role};
use crate::names::{DbName, NamespaceName};
use crate::storage::database::{
    self, Applier, ChangesetRun, META_TABLE, apply_schema_qualified, is_qualified_schema,
    set_applied_sql,
};
use crate::storage::{Catalog, DatabaseEntry, NamespaceConn, Purpose};
use crate::util::{hex, now_ms};

use super::config::{ConfigStore, catalog_state};
use super::reader::ReadPool;
use super::recovery;
use super::sql::{QueryResult, SqlValue, collect_rows, with_statement};

/// Most requests committed together.
pub const MAX_BATCH: usize = 256;
/// Most commands queued for the writer: a handler finding the queue full is answered "try
/// again" instead of adding to memory without end.
const QUEUE: usize = 1_024;
/// Most commands held back (behind a Freeze, or while mirrored writes may not commit): more
/// are refused with a message.
const MAX_HELD: usize = 1_000;
/// Quiet time after which the WAL files are checkpointed into the database files.
const IDLE_CHECKPOINT: Duration = Duration::from_secs(1);
/// Records a dejournal round applies before other work gets a turn.
const DEJOURNAL_CHUNK: u64 = 2_000;
/// How long dejournaling lets received records gather before a round (unless many are waiting):
/// one round applies them with one transaction per database instead of one per batch.
///
/// Each round pays for its own transaction and for SQLite preparing the changeset's statements
/// again. At 5 ms these costs made up half of a backup's dejournaling CPU under a 16-client
/// load; at 20 ms a backup spent about 40 % less per commit, and at 50 ms the pair committed a
/// few per cent more on a two-core machine, where the primary shares the backup's CPU. Nothing
/// waits for a round but readers on the backup, who see a write up to this much later (commits
/// wait for the journal, not for dejournaling).
const DEJOURNAL_GATHER: Duration = Duration::from_millis(50);
/// How often dejournaling that stopped on a full disk tries again by itself.
const DISK_FULL_RETRY: Duration = Duration::from_secs(2);

/// One statement to run as its own transaction.
#[derive(Debug, Clone)]
pub struct WriteRequest {
    /// Where to run it.
    pub namespace: NamespaceName,
    /// The statement.
    pub sql: Cow<'static, str>,
    /// Its parameters (`?1`, `?2`, …).
    pub params: Vec<SqlValue>,
    /// Reuse the prepared statement (fixed application statements only).
    pub cached: bool,
}

type Reply<T> = oneshot::Sender<Result<T>>;

/// Mirror work, done by the writer in order with the writes.
pub enum MirrorCommand {
    /// Become the primary of a new mirror: `journal` is its new, empty journal. The membership is
    /// stored and the mirror's first record written.
    Create {
        /// The new mirror journal.
        journal: Journal,
        /// The membership to store.
        membership: Box<crate::mirror::config::Membership>,
        /// Answer.
        reply: Reply<String>,
    },
    /// Add databases to the mirror (primary).
    AddDatabases {
        /// The databases.
        dbs: Vec<DbName>,
        /// Answer.
        reply: Reply<String>,
    },
    /// Activate a mirrored database's copy (backup).
    Activate {
        /// The database.
        db: DbName,
        /// Answer.
        reply: Reply<String>,
    },
    /// Start applying the journal to an activated copy (backup).
    Catchup {
        /// The database.
        db: DbName,
        /// Answer.
        reply: Reply<String>,
    },
    /// Stop writes and make every database file complete.
    Freeze {
        /// Thaw by itself after this long.
        timeout: Duration,
        /// Answer.
        reply: Reply<String>,
    },
    /// Resume writes.
    Thaw {
        /// Answer.
        reply: Reply<String>,
    },
    /// Leave the mirror: copies of mirrored databases become local databases.
    Leave {
        /// Answer.
        reply: Reply<String>,
    },
    /// Become the primary: a backup taking over (`new_epoch`), or a restarted former primary
    /// that learned it still is one. The journal is taken from `source` only once every copy
    /// holds everything in it; on a refusal it stays there.
    BecomePrimary {
        /// The receiver's mirror journal.
        source: crate::mirror::receiver::SharedJournal,
        /// Start a new epoch (a takeover).
        new_epoch: bool,
        /// Answer.
        reply: Reply<String>,
    },
    /// A restarted former primary learned that `primary` took over: follow it as backup.
    Demote {
        /// The member now primary.
        primary: String,
        /// Answer.
        reply: Reply<String>,
    },
    /// Undo what the copies here applied after `after` (a divergent tail), keeping its rows in
    /// quarantine, before the journal is cut there.
    RollBack {
        /// The last position shared with the primary.
        after: JournalPos,
        /// Answer.
        reply: Reply<String>,
    },
}

impl MirrorCommand {
    /// Answers the command with `err` without carrying it out.
    fn refuse(self, err: Error) {
        let reply = match self {
            MirrorCommand::Create { reply, .. }
            | MirrorCommand::AddDatabases { reply, .. }
            | MirrorCommand::Activate { reply, .. }
            | MirrorCommand::Catchup { reply, .. }
            | MirrorCommand::Freeze { reply, .. }
            | MirrorCommand::Thaw { reply }
            | MirrorCommand::Leave { reply }
            | MirrorCommand::BecomePrimary { reply, .. }
            | MirrorCommand::Demote { reply, .. }
            | MirrorCommand::RollBack { reply, .. } => reply,
        };
        let _ = reply.send(Err(err));
    }
}

enum Command {
    Write(WriteRequest, Reply<QueryResult>),
    Mount(DbName, Reply<String>),
    Dismount(DbName, Reply<String>),
    StampPositions(Reply<()>),
    Mirror(MirrorCommand),
    Dejournal,
    /// Something a waiting batch depends on changed (the replication hub's wake-up).
    Wake,
    Shutdown,
}

/// Called once when the writer stops after a failure it cannot survive.
pub type FatalHook = Box<dyn Fn(&str) + Send + Sync>;

/// Sends work to the writer thread.
#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::SyncSender<Command>,
    failure: Arc<Mutex<Option<String>>>,
    mirror: Arc<MirrorState>,
    frozen: Arc<std::sync::atomic::AtomicBool>,
}

impl WriterHandle {
    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        // Never blocks a task of the runtime: a full queue is answered at once.
        match self.tx.try_send(make(reply)) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(_)) => {
                return Err(Error::Unavailable(
                    "the instance has too much work queued; try again in a moment".into(),
                ));
            }
            Err(mpsc::TrySendError::Disconnected(_)) => return Err(self.unavailable()),
        }
        answer.await.unwrap_or_else(|_| Err(self.unavailable()))
    }

    fn unavailable(&self) -> Error {
        match self.failure.lock().unwrap().as_deref() {
            Some(why) => Error::Unavailable(format!(
                "the instance stopped accepting writes after a failure ({why}); restart it to recover"
            )),
            None => Error::Unavailable("the instance is shutting down".into()),
        }
    }

    /// Runs a statement as its own transaction; returns once it is durable.
    pub async fn write(&self, request: WriteRequest) -> Result<QueryResult> {
        self.call(|reply| Command::Write(request, reply)).await
    }

    /// Mounts a database (checks its file, replays what it lacks).
    pub async fn mount(&self, db: DbName) -> Result<String> {
        self.call(|reply| Command::Mount(db, reply)).await
    }

    /// Dismounts a database; afterwards no connection has its file open.
    pub async fn dismount(&self, db: DbName) -> Result<String> {
        self.call(|reply| Command::Dismount(db, reply)).await
    }

    /// Records in every database this member writes that it holds all changes up to the end of
    /// its journal (see the writer's `stamp_positions`).
    pub async fn stamp_positions(&self) -> Result<()> {
        self.call(Command::StampPositions).await
    }

    /// Runs a mirror command (build it with the reply sender given).
    pub async fn mirror<T>(&self, make: impl FnOnce(Reply<T>) -> MirrorCommand) -> Result<T> {
        self.call(|reply| Command::Mirror(make(reply))).await
    }

    /// [`WriterHandle::mirror`] for threads outside the async runtime (the receiver and the
    /// failover driver): blocks until the writer answers.
    pub fn mirror_blocking<T>(&self, make: impl FnOnce(Reply<T>) -> MirrorCommand) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        if self.tx.send(Command::Mirror(make(reply))).is_err() {
            return Err(self.unavailable());
        }
        answer
            .blocking_recv()
            .unwrap_or_else(|_| Err(self.unavailable()))
    }

    /// Asks the writer to apply what the mirror journal received (coalesced: at most one
    /// request waits in the queue).
    pub fn dejournal(&self) {
        if !self.mirror.dejournal_queued.swap(true, Ordering::AcqRel) {
            let _ = self.tx.send(Command::Dejournal);
        }
    }

    /// Asks the writer to finish queued work and stop.
    pub fn shutdown(&self) {
        let _ = self.tx.send(Command::Shutdown);
    }

    /// Why the writer stopped, if it failed.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().unwrap().clone()
    }

    /// Whether writes are frozen.
    pub fn frozen(&self) -> bool {
        self.frozen.load(Ordering::Acquire)
    }
}

/// The writer thread's state.
pub struct Writer {
    data_dir: PathBuf,
    catalog: Arc<Catalog>,
    config: Arc<ConfigStore>,
    readers: Arc<ReadPool>,
    mirror: Arc<MirrorState>,
    local: Journal,
    local_hex: String,
    /// The mirror's journal while this member is its primary.
    mirror_journal: Option<Journal>,
    epoch: u64,
    conns: HashMap<NamespaceName, NamespaceConn>,
    /// Backup: databases the mirror journal is applied to, with the position applied so far.
    cursors: BTreeMap<DbName, JournalPos>,
    /// Backup: the connections dejournaling uses, kept open between rounds.
    appliers: HashMap<DbName, Connection>,
    /// Backup: where the last dejournal round stopped reading the mirror journal, so the next
    /// round reads on from there instead of searching from a seek mark.
    dejournal_resume: Option<ReadResume>,
    /// Backup: databases whose dejournaling stopped on a full disk, and when to try again.
    disk_full: BTreeMap<DbName, Instant>,
    /// The mirrored batch (or Add to Mirror's events) durable here and shipped, waiting for the
    /// active backup's acknowledgement before it commits (see the module essay).
    parked: Option<Parked>,
    /// Commands waiting until mirrored writes may commit again: behind the parked batch, or in
    /// the trouble state.
    waiting: VecDeque<Command>,
    /// Frames of the batch being committed; reused so the write path does not allocate per batch.
    local_frames: Vec<u8>,
    mirror_frames: Vec<u8>,
    deferred: VecDeque<Command>,
    /// Writes (and dejournaling) waiting for a Thaw.
    held: VecDeque<Command>,
    frozen_until: Option<Instant>,
    /// Backup: when the next dejournal round may run (rounds gather records for a moment).
    dejournal_due: Option<Instant>,
    last_dejournal: Instant,
    /// Mirrors `frozen_until.is_some()` for the portal.
    frozen_flag: Arc<std::sync::atomic::AtomicBool>,
    dirty: bool,
    statement_timeout_ms: i64,
}

/// How one request of a batch ended.
type Outcome = (Result<QueryResult>, Reply<QueryResult>);

/// Where the frames of the batch being built go.
struct Streams<'a> {
    local: &'a mut Vec<u8>,
    next_local: JournalPos,
    mirror: Option<&'a mut Vec<u8>>,
    next_mirror: JournalPos,
    epoch: u64,
    time_ms: i64,
}

/// A failure that stops the writer.
struct Fatal(String);

/// How a batch left `commit_on`.
enum Committed {
    /// Committed (or failed) and answered.
    Done,
    /// Its mirrored records are durable here and shipped; it commits once the active backup
    /// acknowledged `last`.
    Waiting {
        last: JournalPos,
        outcomes: Vec<Outcome>,
    },
}

/// Mirrored work durable in the journal and shipped, waiting for the active backup's
/// acknowledgement before it becomes visible.
struct Parked {
    last: JournalPos,
    since: Instant,
    work: ParkedWork,
}

enum ParkedWork {
    /// A batch: its transaction is open on its namespace's connection.
    Batch {
        namespace: NamespaceName,
        conn: Box<NamespaceConn>,
        outcomes: Vec<Outcome>,
    },
    /// Add to Mirror: its events are journaled; the databases switch to the mirror journal once
    /// the backup holds them.
    Add {
        added: Vec<(DatabaseEntry, MirroredDatabase)>,
        reply: Reply<String>,
    },
}

impl Parked {
    /// Answers everyone waiting on it with `err` (the work is left undone here).
    fn fail(self, err: &Error) {
        match self.work {
            ParkedWork::Batch { conn, outcomes, .. } => {
                let _ = conn.internal(|c| c.execute_batch("ROLLBACK"));
                fail_all(outcomes, err);
            }
            ParkedWork::Add { reply, .. } => {
                let _ = reply.send(Err(err.clone()));
            }
        }
    }
}

impl Writer {
    /// Starts the writer thread. `mirror_journal` is the mirror's journal when this member
    /// starts as its primary.
    #[allow(clippy::too_many_arguments)]
    pub fn spawn(
        data_dir: PathBuf,
        catalog: Arc<Catalog>,
        config: Arc<ConfigStore>,
        local: Journal,
        mirror_journal: Option<Journal>,
        readers: Arc<ReadPool>,
        mirror: Arc<MirrorState>,
        on_fatal: FatalHook,
    ) -> (WriterHandle, JoinHandle<()>) {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let failure = Arc::new(Mutex::new(None));
        // The hub wakes the writer when a batch's acknowledgement may have come; a full queue
        // needs no wake-up (the writer looks again after every command).
        let wake = tx.clone();
        mirror
            .hub
            .set_waker(Box::new(move || drop(wake.try_send(Command::Wake))));
        let frozen = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let handle = WriterHandle {
            tx: tx.clone(),
            failure: failure.clone(),
            mirror: mirror.clone(),
            frozen: frozen.clone(),
        };
        let cfg = config.get();
        let readers_for_timeout = readers.clone();
        let writer = Writer {
            data_dir,
            catalog,
            config,
            readers,
            mirror,
            local_hex: hex(&local.shared().stream()),
            local,
            mirror_journal,
            epoch: cfg.epoch,
            conns: HashMap::new(),
            cursors: BTreeMap::new(),
            appliers: HashMap::new(),
            dejournal_resume: None,
            disk_full: BTreeMap::new(),
            parked: None,
            waiting: VecDeque::new(),
            local_frames: Vec::with_capacity(64 * 1024),
            mirror_frames: Vec::with_capacity(64 * 1024),
            deferred: VecDeque::new(),
            held: VecDeque::new(),
            frozen_until: None,
            dejournal_due: None,
            last_dejournal: Instant::now(),
            frozen_flag: frozen,
            dirty: false,
            statement_timeout_ms: readers_for_timeout.timeout_ms(),
        };
        let thread = std::thread::Builder::new()
            .name("writer".into())
            .spawn(move || writer.run(rx, failure, on_fatal))
            .expect("spawn the writer thread");
        (handle, thread)
    }

    fn run(
        mut self,
        rx: mpsc::Receiver<Command>,
        failure: Arc<Mutex<Option<String>>>,
        on_fatal: FatalHook,
    ) {
        self.follow_activated_copies();
        loop {
            if let Err(Fatal(why)) = self.settle_parked() {
                self.stop_failed(why, &failure, &on_fatal);
                return;
            }
            self.release_waiting();
            let Some(command) = self.next_command(&rx) else {
                break;
            };
            if self.must_wait(&command) {
                self.hold_for_mirror(command);
                continue;
            }
            let fatal = match command {
                Command::Write(request, reply) => {
                    let mut batch = vec![(request, reply)];
                    self.collect_batch(&rx, &mut batch);
                    self.commit_batch(batch).err()
                }
                Command::Mount(db, reply) => {
                    let _ = reply.send(self.mount(&db));
                    None
                }
                Command::Dismount(db, reply) => {
                    let _ = reply.send(self.dismount(&db));
                    None
                }
                Command::StampPositions(reply) => {
                    let _ = reply.send(self.stamp_positions());
                    None
                }
                Command::Mirror(command) => self.mirror_command(command).err(),
                Command::Dejournal => {
                    if self.dejournal_later() {
                        continue;
                    }
                    self.dejournal();
                    None
                }
                Command::Wake => None,
                Command::Shutdown => break,
            };
            if let Some(Fatal(why)) = fatal {
                self.stop_failed(why, &failure, &on_fatal);
                return;
            }
        }
        // Orderly stop: closing the connections folds each WAL into its database file.
        self.conns.clear();
    }

    /// Fail-stop (see the module essay): whatever is still queued is answered by the handles
    /// from now on.
    fn stop_failed(&mut self, why: String, failure: &Mutex<Option<String>>, on_fatal: &FatalHook) {
        tracing::error!("writer stopped: {why}");
        *failure.lock().unwrap() = Some(why.clone());
        on_fatal(&why);
        self.deferred.clear();
        self.held.clear();
        self.waiting.clear();
        if let Some(parked) = self.parked.take() {
            parked.fail(&Error::Unavailable(why));
        }
    }

    fn is_held(&self, command: &Command) -> bool {
        self.frozen_until.is_some() && matches!(command, Command::Write(..) | Command::Dejournal)
    }

    fn next_command(&mut self, rx: &mpsc::Receiver<Command>) -> Option<Command> {
        loop {
            if let Some(until) = self.frozen_until
                && Instant::now() >= until
            {
                tracing::warn!("the freeze timed out; writes resume");
                self.frozen_until = None;
                self.frozen_flag.store(false, Ordering::Release);
            }
            if self.frozen_until.is_none()
                && let Some(command) = self.held.pop_front()
            {
                return Some(command);
            }
            if let Some(command) = self.deferred.pop_front() {
                if self.is_held(&command) {
                    self.held.push_back(command);
                    continue;
                }
                return Some(command);
            }
            let now = Instant::now();
            if let Some(due) = self.dejournal_due
                && due <= now
                && self.frozen_until.is_none()
            {
                self.dejournal_due = None;
                return Some(Command::Dejournal);
            }
            // A parked batch is looked at again when the backup's QoS timeout for it runs out
            // (the hub then revokes the backup); after that only a wake-up ends its wait.
            let revoke_at = self
                .parked
                .as_ref()
                .map(|p| p.since + self.mirror.hub.qos())
                .filter(|at| *at > now);
            let retry_at = self
                .disk_full
                .values()
                .min()
                .copied()
                .filter(|_| self.frozen_until.is_none());
            let deadlines = [
                self.frozen_until,
                self.dirty.then(|| now + IDLE_CHECKPOINT),
                self.dejournal_due.filter(|_| self.frozen_until.is_none()),
                revoke_at,
                retry_at,
            ];
            let wait = deadlines
                .into_iter()
                .flatten()
                .min()
                .map(|at| at.saturating_duration_since(now));
            let command = match wait {
                None => rx.recv().ok()?,
                Some(wait) => match rx.recv_timeout(wait) {
                    Ok(command) => command,
                    Err(RecvTimeoutError::Timeout) => {
                        if revoke_at.is_some_and(|at| at <= Instant::now()) {
                            return Some(Command::Wake);
                        }
                        if retry_at.is_some_and(|at| at <= Instant::now()) {
                            return Some(Command::Dejournal);
                        }
                        if self.frozen_until.is_none()
                            && self.dirty
                            && self.dejournal_due.is_none()
                            && self.parked.is_none()
                        {
                            self.idle_checkpoint();
                        }
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => return None,
                },
            };
            if self.is_held(&command) {
                self.held.push_back(command);
                continue;
            }
            return Some(command);
        }
    }

    /// Adds to `batch` the queued writes for the same namespace. Writes for other namespaces wait
    /// for the next batch; any other command ends the collection so it keeps its place in line.
    fn collect_batch(
        &mut self,
        rx: &mpsc::Receiver<Command>,
        batch: &mut Vec<(WriteRequest, Reply<QueryResult>)>,
    ) {
        let namespace = batch[0].0.namespace.clone();
        let mut i = 0;
        while i < self.deferred.len() && batch.len() < MAX_BATCH {
            match &self.deferred[i] {
                Command::Write(request, _) if request.namespace == namespace => {
                    if let Some(Command::Write(request, reply)) = self.deferred.remove(i) {
                        batch.push((request, reply));
                    }
                }
                Command::Write(..) => i += 1,
                _ => return,
            }
        }
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(Command::Write(request, reply)) if request.namespace == namespace => {
                    batch.push((request, reply))
                }
                Ok(other) => {
                    let stop = !matches!(other, Command::Write(..));
                    self.deferred.push_back(other);
                    if stop {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    }

    /// The writer's connection for `namespace`, rebuilt when the catalog changed.
    fn take_connection(&mut self, namespace: &NamespaceName) -> Result<NamespaceConn> {
        let generation = self.catalog.generation();
        match self.conns.remove(namespace) {
            Some(conn) if conn.generation == generation => Ok(conn),
            _ => NamespaceConn::open(
                &self.catalog.snapshot(),
                namespace,
                Purpose::Write,
                self.statement_timeout_ms,
            ),
        }
    }

    fn commit_batch(
        &mut self,
        batch: Vec<(WriteRequest, Reply<QueryResult>)>,
    ) -> Result<(), Fatal> {
        let namespace = batch[0].0.namespace.clone();
        let conn = match self.take_connection(&namespace) {
            Ok(conn) => conn,
            Err(err) => {
                for (_, reply) in batch {
                    let _ = reply.send(Err(err.clone()));
                }
                return Ok(());
            }
        };
        match self.commit_on(&conn, batch)? {
            Committed::Done => {
                self.conns.insert(namespace, conn);
            }
            Committed::Waiting { last, outcomes } => {
                // The transaction stays open on its connection until the backup acknowledged.
                self.parked = Some(Parked {
                    last,
                    since: Instant::now(),
                    work: ParkedWork::Batch {
                        namespace,
                        conn: Box::new(conn),
                        outcomes,
                    },
                });
                self.settle_parked()?;
            }
        }
        Ok(())
    }

    /// Commits one batch (see the module essay); a batch with mirrored records is left open,
    /// durable in the journal and shipped, to commit once the backup acknowledged it.
    fn commit_on(
        &mut self,
        conn: &NamespaceConn,
        batch: Vec<(WriteRequest, Reply<QueryResult>)>,
    ) -> Result<Committed, Fatal> {
        // A client that gave up (its request timed out) is not written for: it was told
        // nothing, and a retry of it must not become a second row.
        let batch: Vec<_> = batch
            .into_iter()
            .filter(|(_, reply)| !reply.is_closed())
            .collect();
        if batch.is_empty() {
            return Ok(Committed::Done);
        }
        if let Err(err) = conn.internal(|c| c.execute_batch("BEGIN")) {
            let err = Error::from(err);
            for (_, reply) in batch {
                let _ = reply.send(Err(err.clone()));
            }
            return Ok(Committed::Done);
        }
        self.local_frames.clear();
        self.mirror_frames.clear();
        let first_local = self.local.end().next();
        let first_mirror = self
            .mirror_journal
            .as_ref()
            .map(|j| j.end().next())
            .unwrap_or(JournalPos(1));
        let mut streams = Streams {
            local: &mut self.local_frames,
            next_local: first_local,
            mirror: self
                .mirror_journal
                .as_ref()
                .map(|_| &mut self.mirror_frames),
            next_mirror: first_mirror,
            epoch: self.epoch,
            time_ms: now_ms(),
        };
        let mut outcomes: Vec<Outcome> = Vec::with_capacity(batch.len());
        // The requests since the last schema statement share one session per database: their
        // net row changes become one record per journal (see `Segment`).
        let mut segment: Option<Segment<'_>> = None;
        for (request, reply) in batch {
            let step = run_request(conn, &request, &mut segment, &mut streams, &mut outcomes);
            match step {
                Ok(Step::Done(result, changed)) => {
                    if changed && let Some(segment) = segment.as_mut() {
                        segment.members.push(outcomes.len());
                    }
                    outcomes.push((result, reply));
                }
                Ok(Step::TransactionLost(err)) => {
                    // SQLite rolled back the whole transaction (an interrupted or failed
                    // statement can do that): the batch so far is undone and nothing of it was
                    // journaled. Its clients are told to retry; the rest continue afresh.
                    segment = None;
                    streams.local.clear();
                    if let Some(m) = streams.mirror.as_mut() {
                        m.clear();
                    }
                    streams.next_local = first_local;
                    streams.next_mirror = first_mirror;
                    let retry = Error::Conflict(
                        "the write was rolled back together with another statement of its batch; try again".into(),
                    );
                    for (result, earlier) in outcomes.drain(..) {
                        let _ = earlier.send(result.and(Err(retry.clone())));
                    }
                    let _ = reply.send(Err(err));
                    if let Err(err) = conn.internal(|c| c.execute_batch("BEGIN")) {
                        return Err(Fatal(format!("could not start a transaction again: {err}")));
                    }
                }
                Err(Fatal(why)) => {
                    outcomes.push((Err(Error::Unavailable(why.clone())), reply));
                    drop(segment);
                    let _ = conn.internal(|c| c.execute_batch("ROLLBACK"));
                    fail_all(outcomes, &Error::Unavailable(why.clone()));
                    return Err(Fatal(why));
                }
            }
        }
        if let Some(segment) = segment.take()
            && let Err(err) = segment.flush(conn, &mut streams, &mut outcomes)
        {
            // Nothing is journaled yet: undo the batch and report; the instance stays healthy.
            let _ = conn.internal(|c| c.execute_batch("ROLLBACK"));
            fail_all(outcomes, &err);
            return Ok(Committed::Done);
        }
        let (next_local, next_mirror) = (streams.next_local, streams.next_mirror);
        let local_records = next_local.0 - first_local.0;
        let mirror_records = next_mirror.0 - first_mirror.0;

        if local_records + mirror_records > 0 {
            // From here on a failure leaves the disk in a state only recovery can sort out.
            if let Err(err) = self.make_durable(first_local, next_local, first_mirror, next_mirror)
            {
                let _ = conn.internal(|c| c.execute_batch("ROLLBACK"));
                let why = format!(
                    "journal write failed ({err}); whether the last writes are durable is unknown"
                );
                fail_all(outcomes, &Error::Unavailable(why.clone()));
                return Err(Fatal(why));
            }
        }
        if mirror_records > 0 {
            // Step 4: a mirrored batch becomes visible only once the active backup holds it.
            // Committing it now would let readers here see rows a takeover undoes; the writer
            // parks it and goes on with other work meanwhile (see `settle_parked`).
            return Ok(Committed::Waiting {
                last: JournalPos(next_mirror.0 - 1),
                outcomes,
            });
        }
        // Only now, with the batch durable here, do its changes become visible.
        self.commit_and_answer(conn, outcomes, local_records > 0)?;
        Ok(Committed::Done)
    }

    /// `COMMIT` and answer the batch's clients. After a journal write, a failed commit leaves
    /// the files behind the durable journal: fail-stop, recovery replays it.
    fn commit_and_answer(
        &mut self,
        conn: &NamespaceConn,
        outcomes: Vec<Outcome>,
        journaled: bool,
    ) -> Result<(), Fatal> {
        if let Err(err) = conn.internal(|c| c.execute_batch("COMMIT")) {
            let _ = conn.internal(|c| c.execute_batch("ROLLBACK"));
            let err = Error::Internal(format!("commit failed: {err}"));
            fail_all(outcomes, &err);
            return if journaled {
                Err(Fatal(err.to_string()))
            } else {
                Ok(())
            };
        }
        if journaled {
            self.dirty = true;
        }
        for (result, reply) in outcomes {
            let _ = reply.send(result);
        }
        Ok(())
    }

    /// Looks at the parked work: commits it once the active backup acknowledged it (the
    /// members then learn that they may apply it), or gives it up when the hub closed (the
    /// instance stops, or this member is no longer primary: its records stay in the journal,
    /// which the next start replays or undoes, and the clients hear that the outcome is not
    /// known).
    fn settle_parked(&mut self) -> Result<(), Fatal> {
        let Some(parked) = &self.parked else {
            return Ok(());
        };
        let (last, since) = (parked.last, parked.since);
        match self.mirror.hub.acknowledgement(last, since) {
            Acknowledged::Waiting => Ok(()),
            Acknowledged::Closed => {
                let parked = self.parked.take().expect("looked at above");
                parked.fail(&Error::Unavailable(
                    "the instance stopped before the backup acknowledged the write; whether it \
                     survives is not known"
                        .into(),
                ));
                Ok(())
            }
            Acknowledged::Yes => {
                let parked = self.parked.take().expect("looked at above");
                self.mirror.hub.committed(last);
                match parked.work {
                    ParkedWork::Batch {
                        namespace,
                        conn,
                        outcomes,
                    } => {
                        let result = self.commit_and_answer(&conn, outcomes, true);
                        self.conns.insert(namespace, *conn);
                        result
                    }
                    ParkedWork::Add { added, reply } => {
                        let result = self.finish_add(added);
                        answer_or_stop(reply, result)
                    }
                }
            }
        }
    }

    /// Whether `command` must wait until mirrored writes may commit: while work is parked,
    /// every command that could touch its files (writes of its namespace or of any namespace
    /// with a mirrored database, and everything but writes), and in the trouble state every
    /// mirrored write. Writes to local databases go on.
    fn must_wait(&self, command: &Command) -> bool {
        if self.mirror_journal.is_none() || matches!(command, Command::Wake) {
            return false;
        }
        let parked = self.parked.as_ref();
        match command {
            Command::Write(request, _) => {
                (parked.is_some() || !self.mirror.hub.may_commit())
                    && self.touches_mirror(&request.namespace, parked)
            }
            Command::Mirror(MirrorCommand::AddDatabases { .. }) => {
                parked.is_some() || !self.mirror.hub.may_commit()
            }
            _ => parked.is_some(),
        }
    }

    /// Whether a write in `namespace` may touch a mirrored database, or a file of the parked
    /// batch (whose transaction holds its files' write locks).
    fn touches_mirror(&self, namespace: &NamespaceName, parked: Option<&Parked>) -> bool {
        let state = self.catalog.snapshot();
        let Ok(entry) = state.namespace(namespace) else {
            return false;
        };
        let parked_dbs: Vec<&DbName> = match parked.map(|p| &p.work) {
            Some(ParkedWork::Batch { namespace, .. }) => state
                .namespace(namespace)
                .map(|n| n.databases().collect())
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        entry.databases().any(|db| {
            parked_dbs.contains(&db)
                || state
                    .databases
                    .get(db)
                    .is_some_and(|d| d.mirrored.is_some() && !d.read_only)
        })
    }

    /// Holds `command` until mirrored writes may commit; refuses it when too many wait.
    fn hold_for_mirror(&mut self, command: Command) {
        if self.waiting.len() + self.held.len() < MAX_HELD {
            self.waiting.push_back(command);
            return;
        }
        refuse(
            command,
            Error::Unavailable(
                "writes to mirrored databases wait until the backup acknowledges (or the \
                 trouble state ends), and too many are waiting: try again later"
                    .into(),
            ),
        );
    }

    /// Puts the held commands back in line, first, once nothing keeps them waiting.
    fn release_waiting(&mut self) {
        if self.waiting.is_empty()
            || self.parked.is_some()
            || (self.mirror_journal.is_some() && !self.mirror.hub.may_commit())
        {
            return;
        }
        while let Some(command) = self.waiting.pop_back() {
            self.deferred.push_front(command);
        }
    }

    /// Step 3 of the essay: append, ship, fsync.
    fn make_durable(
        &mut self,
        first_local: JournalPos,
        next_local: JournalPos,
        first_mirror: JournalPos,
        next_mirror: JournalPos,
    ) -> Result<()> {
        let mirror_last = JournalPos(next_mirror.0 - 1);
        let mirror_records = next_mirror.0 - first_mirror.0;
        if mirror_records > 0 {
            let journal = self
                .mirror_journal
                .as_mut()
                .expect("mirror frames need the mirror journal");
            self.mirror
                .hub
                .publish(journal, &self.mirror_frames, first_mirror, mirror_last)?;
        }
        let local_records = next_local.0 - first_local.0;
        if local_records > 0 {
            self.local.append(
                &self.local_frames,
                JournalPos(next_local.0 - 1),
                local_records,
            )?;
            self.local.sync()?;
        }
        if mirror_records > 0 {
            let journal = self
                .mirror_journal
                .as_mut()
                .expect("mirror frames need the mirror journal");
            journal.sync()?;
        }
        Ok(())
    }

    fn idle_checkpoint(&mut self) {
        for conn in self.conns.values() {
            if let Err(err) = conn.internal(|c| c.execute_batch("PRAGMA wal_checkpoint(PASSIVE)")) {
                tracing::warn!("checkpoint of namespace {} failed: {err}", conn.namespace);
            }
        }
        self.dirty = false;
    }

    fn is_primary(&self) -> bool {
        self.mirror.role() == Role::Primary
    }

    fn reload_catalog(&mut self) {
        self.catalog.replace(catalog_state(
            &self.config.get(),
            &self.data_dir,
            self.is_primary(),
        ));
        self.conns.clear();
    }

    fn mirror_id(&self) -> Option<String> {
        self.config
            .get()
            .mirror
            .membership
            .as_ref()
            .map(|m| m.mirror.id.clone())
    }

    // -----------------------------------------------------------------------------------------
    // Mount and dismount

    fn mount(&mut self, name: &DbName) -> Result<String> {
        let entry = self.catalog.snapshot().database(name)?.clone();
        if entry.mounted {
            return Ok(format!("{name} is already mounted"));
        }
        if !entry.file.is_file() {
            return Err(Error::Conflict(format!(
                "cannot mount {name}: there is no database file at {}/{}",
                entry.directory,
                database::DB_FILE_NAME
            )));
        }
        database::verify_file(&entry.file, &entry.directory)?;
        let identity = recovery::identity_of(&entry)?;
        let config = self.config.get();
        let membership = config.mirror.membership.as_ref();
        let mirrored = if identity.stream == self.local_hex {
            let caught_up = recovery::catch_up(
                &entry,
                &self.local.shared(),
                &self.local_hex,
                self.local.shared().durable_end(),
            )?;
            if caught_up.applied > 0 {
                tracing::info!(
                    "mount {name}: applied {} journal records",
                    caught_up.applied
                );
            }
            false
        } else if let Some(m) = membership.filter(|m| m.mirror.id == identity.stream) {
            let Some(known) = m.database(name) else {
                return Err(Error::Conflict(format!(
                    "the file in {} is a copy of {name} from mirror {}, but {name} is not (yet) one of \
                     the mirror's databases on this member",
                    entry.directory, m.mirror.name
                )));
            };
            if known.guid != identity.guid {
                return Err(Error::Conflict(format!(
                    "the file in {} is not a copy of the mirrored database {name}: it is another \
                     database of the same name (its id differs)",
                    entry.directory
                )));
            }
            if let Some(journal) = self.mirror_journal.as_ref().filter(|_| self.is_primary()) {
                let shared = journal.shared();
                recovery::catch_up(&entry, &shared, &m.mirror.id, shared.durable_end())?;
            }
            true
        } else {
            return Err(Error::Conflict(format!(
                "the file in {} is a copy of {name} from another instance or another mirror: it \
                 cannot be brought up to date from this member's journals",
                entry.directory
            )));
        };
        self.config.update(|c| {
            let db = c.database_mut(name)?;
            db.mounted = true;
            db.mirrored = mirrored;
            Ok(())
        })?;
        self.reload_catalog();
        tracing::info!("mounted {name}");
        let mut message = format!("{name} mounted");
        if mirrored && !self.is_primary() {
            if self.config.get().mirror.activated(name) {
                let _ = self.start_catchup(name);
                message.push_str("; catching up from the mirror journal");
            } else {
                message.push_str(
                    " as a copy of the mirrored database: it needs Activate, then Catchup",
                );
            }
        }
        Ok(message)
    }

    /// Moves the applied position of every database this writer writes up to its journal's end.
    ///
    /// A database's applied position is the last record *applied to it*; one that nobody wrote
    /// for a while keeps an old position, and would pin every journal file after it (recovery
    /// replays from there). Between batches the writer knows better: every record up to the end
    /// is committed, and those after the database's position did not touch it, so the database
    /// holds everything up to the end. Journal purge calls this first. Copies the backup
    /// dejournals are left alone: their position is exactly how far dejournaling got.
    fn stamp_positions(&mut self) -> Result<()> {
        if self.frozen_until.is_some() {
            // Someone may be copying the files right now: not a byte changes until Thaw.
            return Err(Error::Conflict(
                "writes are frozen: purge the journal after Thaw".into(),
            ));
        }
        let state = self.catalog.snapshot();
        let local_end = self.local.end();
        let mirror_end = self.mirror_journal.as_ref().map(|j| j.end());
        for entry in state.databases.values().filter(|e| e.mounted) {
            let end = match (&entry.mirrored, mirror_end) {
                (None, _) => local_end,
                (Some(_), Some(end)) if self.is_primary() => end,
                _ => continue,
            };
            let conn = database::open(&entry.file)?;
            conn.execute(
                &format!(
                    "{} AND CAST(value AS INTEGER) < ?1",
                    database::set_applied_sql("main")
                ),
                [end.0 as i64],
            )?;
        }
        Ok(())
    }

    fn dismount(&mut self, name: &DbName) -> Result<String> {
        let entry = self.catalog.snapshot().database(name)?.clone();
        if !entry.mounted {
            return Ok(format!("{name} is already dismounted"));
        }
        self.config.update(|c| {
            c.database_mut(name)?.mounted = false;
            Ok(())
        })?;
        self.cursors.remove(name);
        self.appliers.remove(name);
        self.mirror.update_database(name, |d| {
            d.dejournaling = false;
            d.phase = CatchupPhase::Idle;
        });
        self.reload_catalog();
        // Close every connection that could have the file open: the writer's own now, the
        // readers' once reads in flight finish (the exclusive file gate waits for them).
        {
            let _no_reads = self.catalog.exclusive_files();
            self.readers.drop_stale();
        }
        database::checkpoint_and_close(&entry.file)?;
        tracing::info!("dismounted {name}");
        Ok(format!(
            "{name} dismounted; its file {}/{} is complete and may be copied or replaced",
            entry.directory,
            database::DB_FILE_NAME
        ))
    }

    // -----------------------------------------------------------------------------------------
    // Mirror work

    fn mirror_command(&mut self, command: MirrorCommand) -> Result<(), Fatal> {
        match command {
            MirrorCommand::Create {
                journal,
                membership,
                reply,
            } => {
                let result = self.create_mirror(journal, *membership);
                return answer_or_stop(reply, result);
            }
            MirrorCommand::AddDatabases { dbs, reply } => return self.add_databases(&dbs, reply),
            MirrorCommand::Activate { db, reply } => {
                let _ = reply.send(self.activate(&db));
            }
            MirrorCommand::Catchup { db, reply } => {
                let result = self
                    .require_activated(&db)
                    .and_then(|_| self.start_catchup(&db));
                let _ = reply.send(result);
            }
            MirrorCommand::Freeze { timeout, reply } => {
                let _ = reply.send(self.freeze(timeout));
            }
            MirrorCommand::Thaw { reply } => {
                self.frozen_flag.store(false, Ordering::Release);
                let message = match self.frozen_until.take() {
                    Some(_) => "writes resumed".to_string(),
                    None => "writes were not frozen".to_string(),
                };
                let _ = reply.send(Ok(message));
            }
            MirrorCommand::Leave { reply } => {
                let _ = reply.send(self.leave());
            }
            MirrorCommand::BecomePrimary {
                source,
                new_epoch,
                reply,
            } => {
                let result = self.become_primary(&source, new_epoch);
                return answer_or_stop(reply, result);
            }
            MirrorCommand::Demote { primary, reply } => {
                let _ = reply.send(self.demote(primary));
            }
            MirrorCommand::RollBack { after, reply } => {
                let _ = reply.send(self.roll_back(after));
            }
        }
        Ok(())
    }

    /// See [`MirrorCommand::BecomePrimary`].
    fn become_primary(
        &mut self,
        source: &crate::mirror::receiver::SharedJournal,
        new_epoch: bool,
    ) -> Result<Result<String>, Fatal> {
        let config = self.config.get();
        let Some(m) = config.mirror.membership.clone() else {
            return Ok(Err(Error::Conflict("not a mirror member".into())));
        };
        let Some(journal) = self.mirror.journal() else {
            return Ok(Err(Error::Conflict(
                "this member has no mirror journal".into(),
            )));
        };
        let end = journal.durable_end();
        // Everything this member holds durably counts now — including records the old primary
        // had not yet announced as durable: they may have been acknowledged to clients. Every
        // copy of the mirror here is brought up to the journal's end before any write.
        let state = self.catalog.snapshot();
        for db in &m.databases {
            if self.cursors.contains_key(&db.name) {
                continue;
            }
            let Some(entry) = mounted_copy(&state, &db.name) else {
                continue;
            };
            if let Ok(identity) = recovery::identity_of(entry)
                && identity.stream == m.mirror.id
            {
                self.cursors.insert(db.name.clone(), identity.applied_pos);
            }
        }
        self.mirror.set_dejournal_target(end);
        while let Some(from) = self.cursors.values().min().copied()
            && from < end
        {
            let until = JournalPos(end.0.min(from.0 + DEJOURNAL_CHUNK));
            if let Err((failed, err)) = self.apply_range(&journal, from, until) {
                let names: Vec<String> = failed.iter().map(|d| d.to_string()).collect();
                return Ok(Err(Error::Conflict(format!(
                    "cannot become primary: applying the mirror journal to {} failed: {err}",
                    names.join(", ")
                ))));
            }
        }
        let last_epoch = crate::mirror::last_epoch(&journal).unwrap_or(0);
        let epoch = if new_epoch {
            config.epoch.max(last_epoch) + 1
        } else {
            config.epoch.max(last_epoch)
        };
        let Some(taken) = source.lock().unwrap().take() else {
            return Ok(Err(Error::Conflict("the mirror journal is in use".into())));
        };
        let this = m.this.name.clone();
        // Durability: the new role and epoch are on disk before the first write of the epoch,
        // so a crash right after restarts this member as the former primary of that epoch.
        let stored = self.config.update(|c| {
            c.epoch = epoch;
            if let Some(m) = c.mirror.membership.as_mut() {
                m.was_primary = true;
                m.primary_name = Some(this.clone());
                // No Failover ends when the member it protected resumes as primary.
                if !new_epoch && m.mirror.defined_primary.as_deref() == Some(this.as_str()) {
                    m.mirror.defined_primary = None;
                }
                if new_epoch {
                    m.epochs.push(crate::mirror::config::EpochStart {
                        epoch,
                        first: end.0 + 1,
                    });
                }
            }
            Ok(())
        });
        if let Err(err) = stored {
            *source.lock().unwrap() = Some(taken);
            return Ok(Err(err));
        }
        self.epoch = epoch;
        self.cursors.clear();
        self.appliers.clear();
        for db in &m.databases {
            self.mirror.update_database(&db.name, |d| {
                d.dejournaling = false;
                d.phase = CatchupPhase::Idle;
                d.applied = end;
            });
        }
        self.mirror.hub.reset(taken.end());
        self.mirror_journal = Some(taken);
        self.mirror.set_role(Role::Primary);
        self.reload_catalog();
        if new_epoch {
            let json = serde_json::json!({
                "event": "became_primary", "member": this, "epoch": epoch
            })
            .to_string();
            self.commit_event_alone(&json)?;
            tracing::warn!(
                "{this} took over as primary of mirror {} (epoch {epoch})",
                m.mirror.name
            );
            Ok(Ok(format!("{this} is the primary now (epoch {epoch})")))
        } else {
            tracing::info!(
                "{this} resumes as primary of mirror {} (epoch {epoch})",
                m.mirror.name
            );
            Ok(Ok(format!("{this} is the primary again (epoch {epoch})")))
        }
    }

    /// See [`MirrorCommand::Demote`]. The former primary's own files are full copies of the
    /// mirrored databases: they are activated and follow the new primary's journal.
    fn demote(&mut self, primary: String) -> Result<String> {
        let config = self.config.get();
        let m = config.mirror.member()?;
        let state = self.catalog.snapshot();
        let copies: Vec<DbName> = m
            .databases
            .iter()
            .filter(|db| mounted_copy(&state, &db.name).is_some())
            .map(|db| db.name.clone())
            .collect();
        self.config.update(|c| {
            if let Some(m) = c.mirror.membership.as_mut() {
                m.was_primary = false;
                m.primary_name = Some(primary.clone());
                for db in &copies {
                    if !m.activated.contains(db) {
                        m.activated.push(db.clone());
                    }
                }
            }
            Ok(())
        })?;
        self.mirror.set_role(Role::Backup);
        self.reload_catalog();
        self.follow_activated_copies();
        Ok(format!("following {primary} as backup"))
    }

    /// See [`MirrorCommand::RollBack`].
    fn roll_back(&mut self, after: JournalPos) -> Result<String> {
        let config = self.config.get();
        let m = config.mirror.member()?;
        let journal = self
            .mirror
            .journal()
            .ok_or_else(|| Error::Conflict("no mirror journal".into()))?;
        let quarantined =
            crate::mirror::divergence::quarantine(&journal, after, &self.data_dir, &m.mirror.name)?;
        let state = self.catalog.snapshot();
        let mut undone = Vec::new();
        for db in &m.databases {
            let Some(entry) = mounted_copy(&state, &db.name) else {
                continue;
            };
            // The applier's open connection must not outlive the undo.
            self.appliers.remove(&db.name);
            let records = crate::mirror::divergence::undo(entry, &journal, after)?;
            if records > 0 {
                undone.push(format!("{} ({records} records)", db.name));
            }
            if let Some(cursor) = self.cursors.get_mut(&db.name) {
                *cursor = (*cursor).min(after);
            }
            self.mirror
                .update_database(&db.name, |d| d.applied = d.applied.min(after));
        }
        Ok(format!(
            "divergent tail after position {after}: {quarantined} row changes kept in quarantine; undone in {}",
            if undone.is_empty() {
                "no database (none had applied it)".to_string()
            } else {
                undone.join(", ")
            }
        ))
    }

    /// Writes one mirror event record, shipped and durable here. Returns its position. Like a
    /// batch, it counts as committed only once the active backup holds it: see
    /// [`Writer::commit_event_alone`] and Add to Mirror.
    fn write_event(&mut self, db: Option<&DbName>, json: &str) -> Result<JournalPos, Fatal> {
        let journal = self
            .mirror_journal
            .as_mut()
            .ok_or_else(|| Fatal("no mirror journal".into()))?;
        let pos = journal.end().next();
        self.mirror_frames.clear();
        let mut frame = FrameBuilder::begin(&mut self.mirror_frames, pos, self.epoch, now_ms());
        frame.set_event(db.map(|d| d.as_str()), json);
        frame.finish();
        let durable = self
            .mirror
            .hub
            .publish(journal, &self.mirror_frames, pos, pos)
            .and_then(|_| journal.sync());
        if let Err(err) = durable {
            return Err(Fatal(format!("mirror journal write failed: {err}")));
        }
        Ok(pos)
    }

    /// Writes and commits an event of a primary that has no backup yet (a new mirror, a new
    /// epoch): there is no acknowledgement to wait for.
    fn commit_event_alone(&mut self, json: &str) -> Result<JournalPos, Fatal> {
        let pos = self.write_event(None, json)?;
        self.mirror.hub.committed(pos);
        Ok(pos)
    }

    fn create_mirror(
        &mut self,
        journal: Journal,
        membership: crate::mirror::config::Membership,
    ) -> Result<Result<String>, Fatal> {
        if self.config.get().mirror.membership.is_some() {
            return Ok(Err(Error::Conflict(
                "this instance already belongs to a mirror".into(),
            )));
        }
        let shared = journal.shared();
        self.mirror.hub.reset(journal.end());
        self.mirror.hub.set_qos(membership.mirror.qos_timeout_ms);
        self.mirror_journal = Some(journal);
        self.mirror.set_journal(Some(shared));
        let name = membership.mirror.name.clone();
        let member = membership.this.name.clone();
        if let Err(err) = self.config.update(|c| {
            c.mirror.membership = Some(membership.clone());
            Ok(())
        }) {
            self.mirror_journal = None;
            self.mirror.set_journal(None);
            return Ok(Err(err));
        }
        self.mirror.set_role(Role::Primary);
        let json =
            serde_json::json!({ "event": "mirror_created", "mirror": name, "member": member })
                .to_string();
        self.commit_event_alone(&json)?;
        self.reload_catalog();
        tracing::info!("created mirror {name}; {member} is its primary");
        Ok(Ok(format!(
            "mirror {name} created; this member ({member}) is its primary"
        )))
    }

    /// Add to Mirror: one event per database in the mirror journal (its position is where the
    /// database's changes move to the mirror journal), then — once the active backup holds the
    /// events, like any mirrored write — the switch of each file and the configuration
    /// ([`Writer::finish_add`]). Meanwhile the writer goes on with other work.
    fn add_databases(&mut self, dbs: &[DbName], reply: Reply<String>) -> Result<(), Fatal> {
        let added = match self.journal_adds(dbs) {
            Ok(Ok(added)) => added,
            Ok(Err(answer)) => {
                let _ = reply.send(answer);
                return Ok(());
            }
            Err(fatal) => {
                let _ = reply.send(Err(Error::Unavailable(fatal.0.clone())));
                return Err(fatal);
            }
        };
        let Some(last) = added.last().map(|(_, db)| JournalPos(db.added_at)) else {
            return Ok(());
        };
        self.parked = Some(Parked {
            last,
            since: Instant::now(),
            work: ParkedWork::Add { added, reply },
        });
        self.settle_parked()
    }

    /// Checks the request and writes Add to Mirror's events: `Ok(Err(answer))` when there is
    /// nothing to add (the answer says why), else the databases with their events.
    #[allow(clippy::type_complexity)]
    fn journal_adds(
        &mut self,
        dbs: &[DbName],
    ) -> Result<std::result::Result<Vec<(DatabaseEntry, MirroredDatabase)>, Result<String>>, Fatal>
    {
        let config = self.config.get();
        let Some(membership) = config.mirror.membership.clone() else {
            return Ok(Err(Err(Error::Conflict(
                "this instance is not a mirror member".into(),
            ))));
        };
        if !self.is_primary() || self.mirror_journal.is_none() {
            return Ok(Err(Err(Error::Conflict(
                "databases are added to a mirror on its primary".into(),
            ))));
        }
        if dbs.is_empty() {
            return Ok(Err(Err(Error::InvalidInput(
                "select at least one database to add to the mirror".into(),
            ))));
        }
        let state = self.catalog.snapshot();
        let mut entries: Vec<DatabaseEntry> = Vec::new();
        let mut already = Vec::new();
        for name in dbs {
            let entry = match state.database(name) {
                Ok(entry) => entry.clone(),
                Err(err) => return Ok(Err(Err(err))),
            };
            if entry.mirrored.is_some() {
                already.push(name.to_string());
                continue;
            }
            if !entry.mounted {
                return Ok(Err(Err(Error::Conflict(format!(
                    "{name} is dismounted: mount it before adding it to the mirror"
                )))));
            }
            entries.push(entry);
        }
        if entries.is_empty() {
            return Ok(Err(Ok(format!(
                "already in mirror {}: {}",
                membership.mirror.name,
                already.join(", ")
            ))));
        }
        let mut identities = Vec::new();
        for entry in &entries {
            match recovery::identity_of(entry) {
                Ok(identity) => identities.push(identity),
                Err(err) => return Ok(Err(Err(err))),
            }
        }
        let mut added = Vec::new();
        for (entry, identity) in entries.into_iter().zip(identities) {
            let json = serde_json::json!({
                "event": "add_database",
                "db": entry.name,
                "guid": identity.guid,
                "mirror": membership.mirror.name,
            })
            .to_string();
            // Remember the intent first: a crash between the event and the switch is finished
            // (or dropped, if the event never got written) at the next start.
            let expected = self
                .mirror_journal
                .as_ref()
                .map(|j| j.end().next())
                .unwrap_or(JournalPos(1));
            let pending = MirroredDatabase {
                name: entry.name.clone(),
                guid: identity.guid.clone(),
                added_at: expected.0,
            };
            let noted = self.config.update(|c| {
                if let Some(m) = c.mirror.membership.as_mut() {
                    m.pending_adds.push(pending.clone());
                }
                Ok(())
            });
            if let Err(err) = noted {
                return Ok(Err(Err(err)));
            }
            let pos = self.write_event(Some(&entry.name), &json)?;
            let database = MirroredDatabase {
                added_at: pos.0,
                ..pending
            };
            added.push((entry, database));
        }
        Ok(Ok(added))
    }

    /// Add to Mirror, once the backup holds the events: from each event's position on, the
    /// database's changes belong in the mirror's journal. The switch and the configuration
    /// follow the durable event, and are completed at start-up if a crash comes in between.
    fn finish_add(
        &mut self,
        added: Vec<(DatabaseEntry, MirroredDatabase)>,
    ) -> Result<Result<String>, Fatal> {
        let config = self.config.get();
        let Some(membership) = config.mirror.membership.clone() else {
            return Ok(Err(Error::Conflict(
                "this instance left the mirror meanwhile".into(),
            )));
        };
        let mirror_id = membership.mirror.id.clone();
        let mut names = Vec::new();
        for (entry, database) in added {
            let pos = JournalPos(database.added_at);
            if let Err(err) = database::switch_stream(&entry.file, &mirror_id, pos) {
                return Err(Fatal(format!(
                    "switching {} to the mirror journal failed: {err}",
                    entry.name
                )));
            }
            let update = self.config.update(|c| {
                c.database_mut(&entry.name)?.mirrored = true;
                if let Some(m) = c.mirror.membership.as_mut() {
                    m.pending_adds.retain(|p| p.name != entry.name);
                    if m.database(&entry.name).is_none() {
                        m.databases.push(database.clone());
                    }
                }
                Ok(())
            });
            if let Err(err) = update {
                return Err(Fatal(format!(
                    "recording {} as mirrored failed: {err}",
                    entry.name
                )));
            }
            self.mirror
                .hub
                .announce(crate::mirror::protocol::Control::DatabaseAdded { database });
            names.push(entry.name.to_string());
        }
        self.reload_catalog();
        tracing::info!(
            "added to mirror {}: {}",
            membership.mirror.name,
            names.join(", ")
        );
        Ok(Ok(format!(
            "added to mirror {}: {}. The other members need a copy of each database: dismount it \
             there, copy mgr/<db>/database.sqlite from this member (while no one writes, or after \
             Freeze), mount it, then Activate and Catchup",
            membership.mirror.name,
            names.join(", ")
        )))
    }

    fn activate(&mut self, name: &DbName) -> Result<String> {
        let config = self.config.get();
        let membership = config.mirror.member()?;
        if self.is_primary() {
            return Ok(format!(
                "{name} is Normal on the primary: nothing to activate"
            ));
        }
        let entry = self.catalog.snapshot().database(name)?.clone();
        if membership.database(name).is_none() {
            return Err(Error::Conflict(format!(
                "{name} is not a database of mirror {}",
                membership.mirror.name
            )));
        }
        if !entry.mounted {
            return Err(Error::Conflict(format!(
                "{name} is dismounted: mount its copy first"
            )));
        }
        if entry.mirrored.is_none() {
            return Err(Error::Conflict(format!(
                "{name} here is not a copy of the mirrored database: dismount it, copy the file from \
                 the primary, and mount it"
            )));
        }
        if membership.activated.contains(name) {
            return Ok(format!("{name} is already activated"));
        }
        self.config.update(|c| {
            if let Some(m) = c.mirror.membership.as_mut() {
                m.activated.push(name.clone());
            }
            Ok(())
        })?;
        Ok(format!("{name} activated; it needs Catchup"))
    }

    /// Catchup applies the journal to a copy only after the user activated it: Activate is the
    /// step where they confirm that this file is the copy they meant to bring in.
    fn require_activated(&self, name: &DbName) -> Result<()> {
        if self.is_primary() {
            return Ok(());
        }
        let config = self.config.get();
        let membership = config.mirror.member()?;
        if membership.activated.contains(name) {
            Ok(())
        } else {
            Err(Error::Conflict(format!(
                "{name} needs Activate before Catchup"
            )))
        }
    }

    /// Adds an activated copy to the databases the journal is applied to.
    fn start_catchup(&mut self, name: &DbName) -> Result<String> {
        if self.is_primary() {
            return Ok(format!("{name} is Normal on the primary"));
        }
        if self.cursors.contains_key(name) {
            return Ok(format!("{name} is already catching up or dejournaling"));
        }
        let entry = self.catalog.snapshot().database(name)?.clone();
        let journal = self
            .mirror
            .journal()
            .ok_or_else(|| Error::Conflict("this member has no mirror journal yet".into()))?;
        let identity = recovery::identity_of(&entry)?;
        if Some(&identity.stream) != self.mirror_id().as_ref() {
            return Err(Error::Conflict(format!(
                "{name} here is not a copy of the mirrored database"
            )));
        }
        if identity.applied_pos.next() < journal.first_pos() {
            let message = format!(
                "the copy of {name} needs journal records from position {}, but the oldest mirror \
                 journal file here starts at {}: copy a newer file from the primary (or let Catchup \
                 fetch them from the primary)",
                identity.applied_pos.next(),
                journal.first_pos()
            );
            self.mirror
                .update_database(name, |d| d.phase = CatchupPhase::Obsolete(message.clone()));
            return Err(Error::Conflict(message));
        }
        let target = self.mirror.dejournal_target();
        self.cursors.insert(name.clone(), identity.applied_pos);
        self.mirror.update_database(name, |d| {
            d.dejournaling = false;
            d.applied = identity.applied_pos;
            d.phase = CatchupPhase::Running {
                done: 0,
                total: target.0.saturating_sub(identity.applied_pos.0),
            };
        });
        self.queue_dejournal();
        tracing::info!(
            "catchup started for {name} from journal position {}",
            identity.applied_pos
        );
        Ok(format!(
            "Catchup started for {name} from journal position {}",
            identity.applied_pos
        ))
    }

    /// On a backup, activated copies follow the journal from the start.
    fn follow_activated_copies(&mut self) {
        if self.is_primary() {
            return;
        }
        let config = self.config.get();
        let Some(membership) = config.mirror.membership.as_ref() else {
            return;
        };
        let state = self.catalog.snapshot();
        for name in &membership.activated {
            if state
                .databases
                .get(name)
                .is_some_and(|d| d.mounted && d.mirrored.is_some())
                && let Err(err) = self.start_catchup(name)
            {
                tracing::warn!("{name}: {err}");
            }
        }
    }

    fn queue_dejournal(&mut self) {
        if !self.mirror.dejournal_queued.swap(true, Ordering::AcqRel) {
            self.deferred.push_back(Command::Dejournal);
        }
    }

    /// Applies up to [`DEJOURNAL_CHUNK`] received records to the databases that follow the
    /// mirror journal, each in one transaction with its new applied position.
    /// Postpones a dejournal round that comes too soon after the last one, unless many records
    /// wait. True when postponed (the round runs when `dejournal_due` passes).
    fn dejournal_later(&mut self) -> bool {
        let waiting = match self.cursors.values().min() {
            Some(from) => self.mirror.dejournal_target().0.saturating_sub(from.0),
            None => 0,
        };
        let due = self.last_dejournal + DEJOURNAL_GATHER;
        if waiting > 0 && waiting < DEJOURNAL_CHUNK && Instant::now() < due {
            self.dejournal_due = Some(due);
            return true;
        }
        false
    }

    fn dejournal(&mut self) {
        self.last_dejournal = Instant::now();
        self.mirror.dejournal_queued.store(false, Ordering::Release);
        let Some(journal) = self.mirror.journal() else {
            return;
        };
        if self.is_primary() {
            self.disk_full.clear();
            return;
        }
        // Dejournaling that stopped on a full disk resumes by itself: if space came back, the
        // copy catches up from the position it holds.
        let now = Instant::now();
        let due: Vec<DbName> = self
            .disk_full
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(db, _)| db.clone())
            .collect();
        for db in due {
            self.disk_full.remove(&db);
            if let Err(err) = self.start_catchup(&db) {
                tracing::warn!("dejournaling {db} could not resume: {err}");
            }
        }
        if self.cursors.is_empty() {
            return;
        }
        let target = self.mirror.dejournal_target();
        let from = *self.cursors.values().min().expect("not empty");
        if from < target {
            let until = JournalPos(target.0.min(from.0 + DEJOURNAL_CHUNK));
            if let Err((failed, err)) = self.apply_range(&journal, from, until) {
                let full = is_disk_full(&err);
                for db in failed {
                    tracing::error!("dejournaling {db} stopped: {err}");
                    self.cursors.remove(&db);
                    let message = if full {
                        self.disk_full
                            .insert(db.clone(), Instant::now() + DISK_FULL_RETRY);
                        format!("{err} (dejournaling resumes by itself when space is free again)")
                    } else {
                        err.to_string()
                    };
                    self.mirror.update_database(&db, |d| {
                        d.dejournaling = false;
                        d.phase = CatchupPhase::Failed(message);
                    });
                }
            }
            if until < target {
                self.queue_dejournal();
            }
        }
        // Databases that reached the target have caught up.
        for (db, pos) in &self.cursors {
            let caught_up = *pos >= target;
            self.mirror.update_database(db, |d| match &mut d.phase {
                CatchupPhase::Running { done, total } if !caught_up => {
                    *done = total.saturating_sub(target.0.saturating_sub(pos.0));
                }
                _ if caught_up => {
                    if matches!(d.phase, CatchupPhase::Running { .. }) {
                        tracing::info!("Mirror Catchup completed for {db}");
                    }
                    d.phase = CatchupPhase::Idle;
                    d.dejournaling = true;
                }
                _ => {}
            });
        }
    }

    /// Applies records `from+1..=until` to every following database behind `until`. On failure,
    /// names the database that failed (all of them when the journal itself could not be read).
    fn apply_range(
        &mut self,
        journal: &JournalShared,
        from: JournalPos,
        until: JournalPos,
    ) -> Result<(), (Vec<DbName>, Error)> {
        let state = self.catalog.snapshot();
        let behind: Vec<(DbName, DatabaseEntry)> = self
            .cursors
            .iter()
            .filter(|(_, pos)| **pos < until)
            .filter_map(|(db, _)| state.databases.get(db).map(|e| (db.clone(), e.clone())))
            .collect();
        let mut conns: Vec<(DbName, DatabaseEntry, Connection)> = Vec::with_capacity(behind.len());
        for (db, entry) in behind {
            let conn = match self.appliers.remove(&db) {
                Some(conn) => Ok(conn),
                None => database::open_for_apply(&entry.file),
            };
            let conn = conn
                .and_then(|c| c.execute_batch("BEGIN").map(|_| c).map_err(Error::from))
                .map_err(|e| (vec![db.clone()], e))?;
            conns.push((db, entry, conn));
        }
        let update = set_applied_sql("main");
        // Consecutive changesets of one database are applied in one call; a schema statement
        // ends the run. One run per connection, by index.
        let mut pending: Vec<Option<ChangesetRun>> = (0..conns.len()).map(|_| None).collect();
        let flush = |db: &DbName,
                     entry: &DatabaseEntry,
                     conn: &Connection,
                     run: &mut Option<ChangesetRun>|
         -> Result<()> {
            match run.take() {
                Some(run) => run.apply(conn, db.as_str(), entry.on_conflict()),
                None => Ok(()),
            }
        };
        let mut records = journal.read_range_resuming(from, until, self.dejournal_resume.as_ref());
        for record in records.by_ref() {
            let record =
                record.map_err(|e| (conns.iter().map(|c| c.0.clone()).collect::<Vec<_>>(), e))?;
            for (i, (db, entry, conn)) in conns.iter().enumerate() {
                if self.cursors[db] >= record.pos {
                    continue;
                }
                let result = match &record.body {
                    RecordBody::Changes(changes) => {
                        if let Some(change) = changes.iter().find(|c| c.db == db.as_str()) {
                            pending[i]
                                .get_or_insert_with(|| ChangesetRun::new(record.pos))
                                .push(record.pos, &change.changeset);
                        }
                        Ok(())
                    }
                    _ if is_qualified_schema(&record, db.as_str()) => {
                        flush(db, entry, conn, &mut pending[i])
                            .and_then(|_| {
                                conn.execute(&update, [record.pos.0 as i64 - 1])
                                    .map_err(Error::from)
                            })
                            .and_then(|_| conn.execute_batch("COMMIT").map_err(Error::from))
                            .and_then(|_| apply_schema_qualified(&entry.file, db.as_str(), &record))
                            .and_then(|_| conn.execute_batch("BEGIN").map_err(Error::from))
                    }
                    _ => flush(db, entry, conn, &mut pending[i]).and_then(|_| {
                        Applier::new(conn, db.as_str(), &entry.file)
                            .on_conflict(entry.on_conflict())
                            .apply(&record)
                            .map(|_| ())
                    }),
                };
                result.map_err(|e| (vec![db.clone()], e))?;
            }
        }
        self.dejournal_resume = records.resume_point();
        for ((db, entry, conn), run) in conns.iter().zip(pending.iter_mut()) {
            flush(db, entry, conn, run).map_err(|e| (vec![db.clone()], e))?;
        }
        for (db, _, conn) in conns {
            conn.execute(&update, [until.0 as i64])
                .and_then(|_| conn.execute_batch("COMMIT"))
                .map_err(|e| (vec![db.clone()], Error::from(e)))?;
            self.mirror.update_database(&db, |d| d.applied = until);
            self.cursors.insert(db.clone(), until);
            self.appliers.insert(db, conn);
        }
        Ok(())
    }

    fn freeze(&mut self, timeout: Duration) -> Result<String> {
        if self.frozen_until.is_some() {
            return Ok("writes are already frozen".into());
        }
        // Fold every WAL into its database file, so each file is complete on its own.
        let state = self.catalog.snapshot();
        for entry in state.databases.values().filter(|d| d.mounted) {
            database::checkpoint(&database::open(&entry.file)?).map_err(|_| {
                Error::Conflict(format!("{} is busy; try Freeze again", entry.name))
            })?;
        }
        self.frozen_until = Some(Instant::now() + timeout);
        self.frozen_flag.store(true, Ordering::Release);
        tracing::info!("writes frozen for at most {} s", timeout.as_secs());
        Ok(format!(
            "writes are frozen and every database file is complete: copy them now, then Thaw \
             (writes resume by themselves after {} s)",
            timeout.as_secs()
        ))
    }

    fn leave(&mut self) -> Result<String> {
        let config = self.config.get();
        let Some(membership) = config.mirror.membership.as_ref() else {
            return Ok("this instance is not a mirror member".into());
        };
        if self.is_primary() && !membership.others.is_empty() {
            return Err(Error::Conflict(
                "remove the other mirror members first (Edit Mirror), then remove the mirror configuration".into(),
            ));
        }
        let local_end = self.local.end();
        let state = self.catalog.snapshot();
        for db in config.databases.iter().filter(|d| d.mirrored) {
            let entry = state.database(&db.name)?;
            if entry.file.is_file() {
                database::switch_stream(&entry.file, &self.local_hex, local_end)?;
            }
        }
        let name = membership.mirror.name.clone();
        self.config.update(|c| {
            c.mirror.membership = None;
            for db in c.databases.iter_mut() {
                db.mirrored = false;
            }
            Ok(())
        })?;
        self.mirror
            .hub
            .close_all("the mirror configuration was removed");
        self.mirror_journal = None;
        self.mirror.set_journal(None);
        self.cursors.clear();
        self.appliers.clear();
        self.mirror.databases.lock().unwrap().clear();
        self.mirror.set_role(Role::NotMember);
        self.reload_catalog();
        Ok(format!(
            "this member left mirror {name}; its copies of the mirrored databases are now local databases"
        ))
    }
}

/// Whether `err` says the disk is full (SQLite's "database or disk is full", the system's "No
/// space left on device"): a failure that goes away by itself once space is freed.
fn is_disk_full(err: &Error) -> bool {
    let text = err.to_string();
    text.contains("disk is full") || text.contains("No space left")
}

/// Answers a command that cannot be carried out with `err`.
fn refuse(command: Command, err: Error) {
    match command {
        Command::Write(_, reply) => drop(reply.send(Err(err))),
        Command::Mount(_, reply) | Command::Dismount(_, reply) => drop(reply.send(Err(err))),
        Command::StampPositions(reply) => drop(reply.send(Err(err))),
        Command::Mirror(command) => command.refuse(err),
        Command::Dejournal | Command::Wake | Command::Shutdown => {}
    }
}

/// `name`'s entry when it is mounted and a copy of a mirrored database.
fn mounted_copy<'s>(
    state: &'s crate::storage::CatalogState,
    name: &DbName,
) -> Option<&'s DatabaseEntry> {
    state
        .databases
        .get(name)
        .filter(|e| e.mounted && e.mirrored.is_some())
}

/// Answers a mirror command whose failure may be fatal: a fatal one is answered "unavailable"
/// and stops the writer.
fn answer_or_stop(
    reply: Reply<String>,
    result: Result<Result<String>, Fatal>,
) -> Result<(), Fatal> {
    match result {
        Err(Fatal(why)) => {
            let _ = reply.send(Err(Error::Unavailable(why.clone())));
            Err(Fatal(why))
        }
        Ok(answer) => {
            let _ = reply.send(answer);
            Ok(())
        }
    }
}

fn fail_all(outcomes: Vec<Outcome>, err: &Error) {
    for (result, reply) in outcomes {
        // Requests that had already failed keep their own error.
        let _ = reply.send(result.and(Err(err.clone())));
    }
}

/// How one request ended.
enum Step {
    /// The request ran (or failed on its own); whether it changed rows; the batch goes on.
    Done(Result<QueryResult>, bool),
    /// The request failed and SQLite rolled back the whole batch transaction with it.
    TransactionLost(Error),
}

/// The requests of a batch between schema statements. One SQLite session per writable database
/// records their row changes; a session keeps the *net* effect between a row's first change and
/// the moment the changeset is taken, so a request rolled back to its savepoint leaves nothing
/// in it. At the end the segment becomes at most one journal record per journal: its
/// transactions are committed together anyway, and one record per group commit means one
/// changeset to build here and one to apply on the backup, instead of one per request.
struct Segment<'c> {
    sessions: Vec<(&'c DbName, Session<'c>)>,
    /// Indexes (in the batch's outcomes) of the requests that changed rows, to receive the
    /// segment's position.
    members: Vec<usize>,
}

impl<'c> Segment<'c> {
    fn open(conn: &'c NamespaceConn) -> Result<Segment<'c>> {
        let mut sessions = Vec::with_capacity(conn.journaled.len());
        for db in &conn.journaled {
            let mut session = Session::new_with_name(&conn.conn, db.as_str())?;
            session.table_filter(Some(|table: &str| table != META_TABLE));
            session.attach::<&str>(None)?;
            sessions.push((db, session));
        }
        Ok(Segment {
            sessions,
            members: Vec::new(),
        })
    }

    /// Journals the segment's row changes, records the applied positions (same transaction as
    /// the rows), and gives its members their position.
    fn flush(
        mut self,
        conn: &NamespaceConn,
        streams: &mut Streams<'_>,
        outcomes: &mut [Outcome],
    ) -> Result<()> {
        let local_pos = streams.next_local;
        let mirror_pos = streams.next_mirror;
        let mut local_frame =
            FrameBuilder::begin(streams.local, local_pos, streams.epoch, streams.time_ms);
        let mut mirror_frame = streams
            .mirror
            .as_deref_mut()
            .map(|m| FrameBuilder::begin(m, mirror_pos, streams.epoch, streams.time_ms));
        let mut changed: Vec<(&DbName, JournalPos)> = Vec::new();
        let outcome = (|| -> Result<()> {
            for (db, session) in self.sessions.iter_mut() {
                if session.is_empty() {
                    continue;
                }
                let (frame, pos) = if conn.mirrored.contains(db) {
                    (mirror_frame.as_mut().ok_or_else(not_primary)?, mirror_pos)
                } else {
                    (&mut local_frame, local_pos)
                };
                // Generating a changeset runs SQLite's own SAVEPOINT: the instance's, not a user's.
                let write = |buf: &mut Vec<u8>| {
                    conn.guard
                        .internal(|| session.changeset_strm(buf))
                        .map_err(Error::from)
                };
                if frame.add_changes(db.as_str(), write)? {
                    changed.push((db, pos));
                }
            }
            for (db, pos) in &changed {
                conn.internal(|c| {
                    c.prepare_cached(&set_applied_sql(db.as_str()))
                        .and_then(|mut s| s.execute([pos.0 as i64]))
                })
                .map_err(|e| Error::Internal(format!("record applied position of {db}: {e}")))?;
            }
            Ok(())
        })();
        if let Err(err) = outcome {
            local_frame.abandon();
            if let Some(frame) = mirror_frame {
                frame.abandon();
            }
            return Err(err);
        }
        let mut position = None;
        if local_frame.is_empty() {
            local_frame.abandon();
        } else {
            local_frame.finish();
            position = Some(local_pos);
            streams.next_local = local_pos.next();
        }
        if let Some(frame) = mirror_frame {
            if frame.is_empty() {
                frame.abandon();
            } else {
                frame.finish();
                position = Some(mirror_pos);
                streams.next_mirror = mirror_pos.next();
            }
        }
        for i in self.members {
            if let Ok(result) = &mut outcomes[i].0 {
                result.position = position;
            }
        }
        Ok(())
    }
}

/// Runs one request inside the batch transaction, under its own savepoint. A schema statement
/// first closes the current segment (so records keep the statements' order) and is journaled as
/// its own record. `Err` is fatal (a savepoint that cannot be undone).
fn run_request<'c>(
    conn: &'c NamespaceConn,
    request: &WriteRequest,
    segment: &mut Option<Segment<'c>>,
    streams: &mut Streams<'_>,
    outcomes: &mut [Outcome],
) -> Result<Step, Fatal> {
    // The applications' cached statements are never schema statements; a user's might be.
    let ddl = if request.cached {
        None
    } else {
        match with_statement(conn, &request.sql, false, |_, facts| {
            Ok(facts.ddl_db.clone())
        }) {
            Ok(ddl) => ddl,
            Err(err) => return Ok(Step::Done(Err(err), false)),
        }
    };
    if ddl.is_some()
        && let Some(open) = segment.take()
        && let Err(err) = open.flush(conn, streams, outcomes)
    {
        return Err(Fatal(format!(
            "could not journal the changes before a schema statement: {err}"
        )));
    }
    if ddl.is_none() && segment.is_none() {
        match Segment::open(conn) {
            Ok(open) => *segment = Some(open),
            Err(err) => return Ok(Step::Done(Err(err), false)),
        }
    }
    if let Err(err) = conn.internal(|c| {
        c.prepare_cached("SAVEPOINT request")
            .and_then(|mut s| s.execute([]))
    }) {
        return Ok(Step::Done(Err(Error::from(err)), false));
    }
    let local_before = streams.local.len();
    let mirror_before = streams.mirror.as_ref().map(|m| m.len()).unwrap_or(0);
    let (next_local, next_mirror) = (streams.next_local, streams.next_mirror);
    let result = match &ddl {
        None => run_statement(conn, request),
        Some(db) => run_schema_statement(conn, request, db, streams),
    };
    if let Err(err) = result {
        streams.local.truncate(local_before);
        if let Some(m) = streams.mirror.as_mut() {
            m.truncate(mirror_before);
        }
        streams.next_local = next_local;
        streams.next_mirror = next_mirror;
        if conn.conn.is_autocommit() {
            return Ok(Step::TransactionLost(err));
        }
        conn.internal(|c| {
            c.prepare_cached("ROLLBACK TO request")
                .and_then(|mut s| s.execute([]))
        })
        .map_err(|e| Fatal(format!("could not undo a failed statement: {e}")))?;
        conn.internal(|c| {
            c.prepare_cached("RELEASE request")
                .and_then(|mut s| s.execute([]))
        })
        .map_err(|e| Fatal(format!("could not release a statement's savepoint: {e}")))?;
        return Ok(Step::Done(Err(err), false));
    }
    conn.internal(|c| {
        c.prepare_cached("RELEASE request")
            .and_then(|mut s| s.execute([]))
    })
    .map_err(|e| Fatal(format!("could not release a statement's savepoint: {e}")))?;
    let changed = ddl.is_none() && result.as_ref().is_ok_and(|r| r.rows_affected > 0);
    Ok(Step::Done(result, changed))
}

/// Runs a row-changing statement; the segment's sessions record what it changes.
fn run_statement(conn: &NamespaceConn, request: &WriteRequest) -> Result<QueryResult> {
    let mut result = with_statement(conn, &request.sql, request.cached, |stmt, _| {
        collect_rows(conn, stmt, &request.params)
    })?;
    result.rows_affected = conn.conn.changes() as usize;
    Ok(result)
}

/// Runs a schema statement and journals it as its own record, with the applied position of the
/// database it changes.
fn run_schema_statement(
    conn: &NamespaceConn,
    request: &WriteRequest,
    db: &str,
    streams: &mut Streams<'_>,
) -> Result<QueryResult> {
    let mut result = with_statement(conn, &request.sql, false, |stmt, _| {
        collect_rows(conn, stmt, &request.params)
    })?;
    check_primary_keys(conn, db)?;
    let name = DbName::new(db)?;
    if !conn.writable.contains(&name) {
        return Err(Error::Conflict(format!(
            "database {db} cannot be changed here"
        )));
    }
    let (buffer, pos) = if conn.mirrored.contains(&name) {
        (
            streams.mirror.as_deref_mut().ok_or_else(not_primary)?,
            &mut streams.next_mirror,
        )
    } else {
        (&mut *streams.local, &mut streams.next_local)
    };
    let mut frame = FrameBuilder::begin(buffer, *pos, streams.epoch, streams.time_ms);
    // Namespace connections attach every database under its name: DDL always names it.
    frame.set_schema(db, true, &request.sql);
    frame.finish();
    conn.internal(|c| {
        c.prepare_cached(&set_applied_sql(db))
            .and_then(|mut s| s.execute([pos.0 as i64]))
    })
    .map_err(|e| Error::Internal(format!("record applied position of {db}: {e}")))?;
    result.position = Some(*pos);
    result.rows_affected = 0;
    *pos = pos.next();
    Ok(result)
}

fn not_primary() -> Error {
    Error::Conflict("mirrored databases are written on the mirror's primary only".into())
}

/// Refuses a schema change that leaves a table in `db` whose rows could not be journaled:
/// without a primary key, or with a primary key that may be NULL (SQLite sessions identify rows
/// by primary key and skip rows whose key is NULL).
fn check_primary_keys(conn: &NamespaceConn, db: &str) -> Result<()> {
    let schema = db;
    let sql = format!(
        "SELECT m.name,
                (SELECT count(*) FROM pragma_table_info(m.name, '{schema}') WHERE pk > 0),
                (SELECT count(*) FROM pragma_table_info(m.name, '{schema}') WHERE pk > 0 AND \"notnull\" = 0
                   AND NOT (upper(type) = 'INTEGER' AND (SELECT count(*) FROM pragma_table_info(m.name, '{schema}') WHERE pk > 0) = 1))
         FROM \"{schema}\".sqlite_schema AS m
         WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite%' AND m.sql NOT LIKE '%WITHOUT ROWID%'
         UNION ALL
         SELECT m.name, (SELECT count(*) FROM pragma_table_info(m.name, '{schema}') WHERE pk > 0), 0
         FROM \"{schema}\".sqlite_schema AS m
         WHERE m.type = 'table' AND m.sql LIKE '%WITHOUT ROWID%'"
    );
    let tables: Vec<(String, i64, i64)> = conn
        .internal(|c| -> rusqlite::Result<Vec<(String, i64, i64)>> {
            let mut stmt = c.prepare(&sql)?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            rows.collect()
        })
        .map_err(|e| Error::Internal(format!("check primary keys: {e}")))?;
    for (table, keys, nullable) in tables {
        if keys == 0 {
            return Err(Error::InvalidInput(format!(
                "table {table} has no PRIMARY KEY: row changes are journaled by primary key, so \
                 every table in a journaled database needs one"
            )));
        }
        if nullable > 0 {
            return Err(Error::InvalidInput(format!(
                "table {table} has a PRIMARY KEY that may be NULL: declare its key columns NOT NULL \
                 (or use INTEGER PRIMARY KEY), since rows with a NULL key cannot be journaled"
            )));
        }
    }
    Ok(())
}
