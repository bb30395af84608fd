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
//! 3. The mirror frames are appended and handed to the mirror's members
//!    ([`Replication::publish`]: the backup's disk write overlaps ours); the local frames are appended; each journal is made
//!    durable with one `fdatasync` — **one fsync per journal for the whole batch**.
//! 4. `COMMIT`: the batch becomes visible on this member, and its clients are answered. A batch
//!    with mirrored records first waits for the active backup's acknowledgement — one round
//!    trip for the whole batch, most of it spent while both disks sync. The writer does not
//!    block on it: the batch is *parked* with its transaction open, writes to local databases
//!    go on, and replication wakes the writer when the acknowledgement comes
//!    ([`Replication::acknowledgement`]); mirrored writes queue behind the parked batch and form
//!    the next one.
//!
//! Ordering is the whole argument for safety. Nothing is acknowledged before step 3's fsync (and,
//! mirrored, before the backup's acknowledgement), so an acknowledged write is in the journal —
//! on the backup too. The SQLite commit comes after the fsync, so a database file is never ahead
//! of its durable journal: a crash before step 4 leaves records the files lack, which recovery
//! replays; a crash before step 3 leaves neither. A mirrored batch becomes visible only once the
//! backup holds it, so no reader, here or on any member, ever sees a row that a takeover would
//! undo: members apply only what the primary committed ([`Replication::committed`]).
//!
//! The writer reaches replication only through the [`replication`] seam, which the mirror's hub
//! implements. Its deadlines (a parked batch's QoS, the end of a Freeze) read a clock passed
//! in ([`crate::clock`]): the deterministic simulation runs the writer on a clock that moves
//! only when told, and waits after each event until the writer took up everything sent to it
//! ([`WriterHandle::settled`]), so what the writer decides depends on the order of events
//! only.
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
//! Mount and dismount, Freeze and Thaw, and the work of the layer above — the mirror's
//! lifecycle steps (Add to Mirror, Activate, Catchup, becoming primary, …) and a backup's
//! dejournaling — run on this thread too, in order with the writes, so no two things ever change
//! one database at once (and after a parked batch). The writer knows that work only through its
//! [`extension`] seam: commands it queues and hands on, turns it grants, work it parks until
//! replication acknowledges it (Add to Mirror's events are mirrored writes too). Only copying
//! committed pages from a WAL into its database file happens beside it, on the [`checkpointer`]
//! thread (SQLite's WAL mode is made for that): every 2 s while there were commits, so a plain
//! `cp` of a database idle for a few seconds is complete on its own.
//!
//! Whether this member writes mirrored databases at all (a backup's copies are read-only) is a
//! question the writer asks of its [`MemberRole`].
//!
//! # Files
//!
//! This file holds the thread, its queue and what holds work back, and what the extension may
//! use of the writer; [`batch`] a batch's way from `BEGIN` to its answer, and the mirror's event
//! records; [`statement`] one request inside it and its journal frames; [`files`] mount and
//! dismount; [`freeze`] Freeze and Thaw; [`replication`] the seam to the mirror's hub;
//! [`extension`] the seam to the work of the layer above.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::session::Session;
use tokio::sync::oneshot;

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::journal::{Epoch, FrameBuilder, Journal, JournalPos, StreamId};
use crate::names::{DbName, NamespaceName};
use crate::storage::database::{self, META_TABLE, set_applied_sql};
use crate::storage::{Catalog, NamespaceConn, Purpose};
use crate::util::now_ms;

use super::reader::ReadPool;
use super::recovery;
use super::sql::{QueryResult, SqlValue, collect_rows, with_statement};
use crate::config::{ConfigStore, catalog_state};

mod batch;
pub mod checkpointer;
pub mod extension;
mod files;
mod freeze;
pub mod replication;
mod statement;

use extension::{ExtensionCommand, WriterExtension};
use replication::{Acknowledged, Replication};

use super::role::MemberRole;
use batch::{Parked, Streams};

/// Most requests committed together.
pub const MAX_BATCH: usize = 256;
/// Most commands queued for the writer: a handler finding the queue full is answered "try
/// again" instead of adding to memory without end.
const QUEUE: usize = 1_024;
/// Most commands held back (behind a Freeze, or while mirrored writes may not commit): more
/// are refused with a message.
const MAX_HELD: usize = 1_000;

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

/// Where the writer sends a command's answer.
pub type Reply<T> = oneshot::Sender<Result<T>>;

enum Command {
    Write(WriteRequest, Reply<QueryResult>),
    Mount(DbName, Reply<String>),
    Dismount(DbName, Reply<String>),
    StampPositions(Reply<()>),
    /// Stop writes and make every database file complete; thaw by itself after the timeout.
    Freeze(Duration, Reply<String>),
    /// Resume writes.
    Thaw(Reply<String>),
    Extension(Box<dyn ExtensionCommand>),
    /// The extension's turn (see [`extension`]).
    Turn,
    /// Something a waiting batch depends on changed (the replication hub's wake-up).
    Wake,
    /// Answered once every command queued before it was taken up (see
    /// [`WriterHandle::settled`]).
    Settled(Reply<()>),
    Shutdown,
}

/// Called once when the writer stops after a failure it cannot survive.
pub type FatalHook = Box<dyn Fn(&str) + Send + Sync>;

/// Sends work to the writer thread.
#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::SyncSender<Command>,
    failure: Arc<Mutex<Option<String>>>,
    /// A turn of the extension waits in the queue (see [`WriterHandle::request_turn`]).
    turn_queued: Arc<AtomicBool>,
    frozen: Arc<AtomicBool>,
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

    /// Stops writes and makes every database file complete, so the files can be copied; writes
    /// resume by themselves after `timeout`.
    pub async fn freeze(&self, timeout: Duration) -> Result<String> {
        self.call(|reply| Command::Freeze(timeout, reply)).await
    }

    /// Resumes writes after a Freeze.
    pub async fn thaw(&self) -> Result<String> {
        self.call(Command::Thaw).await
    }

    /// Runs a command of the writer's extension (build it with the reply sender given).
    pub async fn extension<T, C: ExtensionCommand>(
        &self,
        make: impl FnOnce(Reply<T>) -> C,
    ) -> Result<T> {
        self.call(|reply| Command::Extension(Box::new(make(reply))))
            .await
    }

    /// [`WriterHandle::extension`] for threads outside the async runtime: blocks until the
    /// writer answers.
    pub fn extension_blocking<T, C: ExtensionCommand>(
        &self,
        make: impl FnOnce(Reply<T>) -> C,
    ) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        if self
            .tx
            .send(Command::Extension(Box::new(make(reply))))
            .is_err()
        {
            return Err(self.unavailable());
        }
        answer
            .blocking_recv()
            .unwrap_or_else(|_| Err(self.unavailable()))
    }

    /// Asks for a turn of the extension (coalesced: at most one request waits in the queue).
    pub fn request_turn(&self) {
        if !self.turn_queued.swap(true, Ordering::AcqRel) {
            let _ = self.tx.send(Command::Turn);
        }
    }

    /// Blocks until the writer took up every command queued before this call — committed it,
    /// parked it or held it back — after looking again at what its parked batch waits for,
    /// and until it has nothing left to do but wait for the next command: the look it takes
    /// after every command, and whatever that look let go, come before the answer. The
    /// simulation waits for it after each thing it does, so that what the writer decides
    /// depends on the order of events, never on the timing of threads (a look that ran after
    /// the answer would read a clock the simulation may have moved meanwhile). Not for async
    /// tasks.
    pub(crate) fn settled(&self) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        // The wake-up first: the writer looks at its parked batch (and lets what waited behind
        // it go) before it takes up the question.
        if self.tx.send(Command::Wake).is_err() || self.tx.send(Command::Settled(reply)).is_err() {
            return Err(self.unavailable());
        }
        answer
            .blocking_recv()
            .unwrap_or_else(|_| Err(self.unavailable()))
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
    /// Whether this member writes mirrored databases (see [`MemberRole`]).
    role: Arc<dyn MemberRole>,
    /// Where mirrored batches go (see [`replication`]).
    replication: Arc<dyn Replication>,
    /// What the writer's waits and deadlines read: how long a batch was parked, when a Freeze
    /// ends.
    clock: Arc<dyn Clock>,
    /// Work of the layer above that runs here (see [`extension`]); taken out while it runs.
    extension: Option<Box<dyn WriterExtension>>,
    local: Journal,
    local_stream: StreamId,
    /// The mirror's journal while this member is its primary.
    mirror_journal: Option<Journal>,
    epoch: Epoch,
    conns: HashMap<NamespaceName, NamespaceConn>,
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
    /// Writes (and the extension's turns) waiting for a Thaw.
    held: VecDeque<Command>,
    /// [`Command::Settled`] questions taken up, answered once the writer has looked again and
    /// has nothing left to take up but new commands (see [`WriterHandle::settled`]).
    settled: Vec<Reply<()>>,
    frozen_until: Option<Instant>,
    /// When a postponed turn of the extension runs.
    turn_due: Option<Instant>,
    turn_queued: Arc<AtomicBool>,
    /// Mirrors `frozen_until.is_some()` for the portal.
    frozen_flag: Arc<AtomicBool>,
    /// The checkpointer thread (see [`checkpointer`]); it ends with this writer.
    checkpoints: checkpointer::Checkpointer,
    statement_timeout_ms: i64,
}

/// How one request of a batch ended.
type Outcome = (Result<QueryResult>, Reply<QueryResult>);

/// A failure that stops the writer: the state on disk is uncertain (see the module essay).
pub struct Fatal(pub String);

/// What the writer thread starts with.
pub struct WriterSetup {
    /// The data directory.
    pub data_dir: PathBuf,
    /// Databases and namespaces.
    pub catalog: Arc<Catalog>,
    /// The configuration file.
    pub config: Arc<ConfigStore>,
    /// The instance's own journal.
    pub local: Journal,
    /// The mirror's journal when this member starts as its primary.
    pub mirror_journal: Option<Journal>,
    /// The read connections (dropped around mounts and dismounts).
    pub readers: Arc<ReadPool>,
    /// Whether this member writes mirrored databases.
    pub role: Arc<dyn MemberRole>,
    /// Where mirrored batches go.
    pub replication: Arc<dyn Replication>,
    /// The clock the writer's deadlines read (the machine's, but in the simulation).
    pub clock: Arc<dyn Clock>,
    /// Work of the layer above that runs on the writer thread.
    pub extension: Option<Box<dyn WriterExtension>>,
    /// How long one write statement may run (ms).
    pub write_timeout_ms: i64,
    /// Called once if the writer stops after a failure.
    pub on_fatal: FatalHook,
}

impl Writer {
    /// Starts the writer thread.
    pub fn spawn(setup: WriterSetup) -> (WriterHandle, JoinHandle<()>) {
        let WriterSetup {
            data_dir,
            catalog,
            config,
            local,
            mirror_journal,
            readers,
            role,
            replication,
            clock,
            extension,
            write_timeout_ms,
            on_fatal,
        } = setup;
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let failure = Arc::new(Mutex::new(None));
        // Replication wakes the writer when a batch's acknowledgement may have come; a full
        // queue needs no wake-up (the writer looks again after every command).
        let wake = tx.clone();
        replication.set_waker(Box::new(move || drop(wake.try_send(Command::Wake))));
        let frozen = Arc::new(AtomicBool::new(false));
        let turn_queued = Arc::new(AtomicBool::new(false));
        let handle = WriterHandle {
            tx: tx.clone(),
            failure: failure.clone(),
            turn_queued: turn_queued.clone(),
            frozen: frozen.clone(),
        };
        let cfg = config.get();
        let checkpoints = checkpointer::Checkpointer::start(catalog.clone(), frozen.clone());
        let writer = Writer {
            data_dir,
            catalog,
            config,
            readers,
            role,
            replication,
            clock,
            extension,
            local_stream: local.shared().stream(),
            local,
            mirror_journal,
            epoch: cfg.epoch,
            conns: HashMap::new(),
            parked: None,
            waiting: VecDeque::new(),
            local_frames: Vec::with_capacity(64 * 1024),
            mirror_frames: Vec::with_capacity(64 * 1024),
            deferred: VecDeque::new(),
            settled: Vec::new(),
            held: VecDeque::new(),
            frozen_until: None,
            turn_due: None,
            turn_queued,
            frozen_flag: frozen,
            checkpoints,
            statement_timeout_ms: write_timeout_ms,
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
        self.with_extension(|extension, writer| extension.start(writer));
        loop {
            if let Err(Fatal(why)) = self.settle_parked() {
                self.stop_failed(why, &failure, &on_fatal);
                return;
            }
            self.release_waiting();
            self.answer_settled();
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
                Command::Freeze(timeout, reply) => {
                    let _ = reply.send(self.freeze(timeout));
                    None
                }
                Command::Thaw(reply) => {
                    let _ = reply.send(Ok(self.thaw()));
                    None
                }
                Command::Extension(command) => self.extension_command(command).err(),
                Command::Turn => {
                    if let Some(Some(due)) =
                        self.with_extension(|extension, _| extension.postpone())
                    {
                        // Still counts as queued: requests meanwhile join this turn.
                        self.turn_due = Some(due);
                        continue;
                    }
                    self.turn_queued.store(false, Ordering::Release);
                    self.with_extension(|extension, writer| extension.turn(writer));
                    None
                }
                Command::Wake => None,
                Command::Settled(reply) => {
                    // Answered at the top of the loop, after the look that follows every
                    // command: answered here, that look would run while the asker goes on.
                    self.settled.push(reply);
                    None
                }
                Command::Shutdown => break,
            };
            // Whatever the command was, a file may have changed: a batch, Mount's replay, a
            // backup's dejournaling, a rollback. The checkpointer folds it in.
            self.checkpoints.dirty();
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

    /// Answers the [`Command::Settled`] questions taken up, unless something the last look let
    /// go (a batch's waiting commands, a Thaw's held writes) is still to be taken up: the
    /// writer then does nothing more until a new command comes (or a deadline on the machine's
    /// clock, which the simulation's clock never brings).
    fn answer_settled(&mut self) {
        let idle =
            self.deferred.is_empty() && (self.held.is_empty() || self.frozen_until.is_some());
        if idle {
            for reply in self.settled.drain(..) {
                let _ = reply.send(Ok(()));
            }
        }
    }

    fn is_held(&self, command: &Command) -> bool {
        self.frozen_until.is_some() && matches!(command, Command::Write(..) | Command::Turn)
    }

    fn next_command(&mut self, rx: &mpsc::Receiver<Command>) -> Option<Command> {
        loop {
            if let Some(until) = self.frozen_until
                && self.clock.now() >= until
            {
                tracing::warn!("the freeze timed out; writes resume");
                self.frozen_until = None;
                self.frozen_flag.store(false, Ordering::Release);
            }
            // What a Freeze held goes back in line first, in order, where a batch collects it:
            // the writes that waited behind a Freeze commit together, not one fsync each.
            if self.frozen_until.is_none() {
                while let Some(command) = self.held.pop_back() {
                    self.deferred.push_front(command);
                }
            }
            if let Some(command) = self.deferred.pop_front() {
                if self.is_held(&command) {
                    self.held.push_back(command);
                    continue;
                }
                return Some(command);
            }
            let now = self.clock.now();
            if let Some(due) = self.turn_due
                && due <= now
                && self.frozen_until.is_none()
            {
                self.turn_due = None;
                return Some(Command::Turn);
            }
            // A parked batch is looked at again when the backup's QoS timeout for it runs out
            // (the hub then revokes the backup); after that only a wake-up ends its wait.
            let revoke_at = self
                .parked
                .as_ref()
                .map(|p| p.since + self.replication.qos())
                .filter(|at| *at > now);
            let retry_at = self
                .extension
                .as_ref()
                .and_then(|extension| extension.retry_at())
                .filter(|_| self.frozen_until.is_none());
            let deadlines = [
                self.frozen_until,
                self.turn_due.filter(|_| self.frozen_until.is_none()),
                revoke_at,
                retry_at,
            ];
            // A clock that moves only when told (the simulation's) never brings a deadline by
            // waiting: whoever moves it wakes the writer.
            let wait = deadlines
                .into_iter()
                .flatten()
                .min()
                .and_then(|at| self.clock.timeout_until(at));
            let command = match wait {
                None => rx.recv().ok()?,
                Some(wait) => match rx.recv_timeout(wait) {
                    Ok(command) => command,
                    Err(RecvTimeoutError::Timeout) => {
                        if revoke_at.is_some_and(|at| at <= self.clock.now()) {
                            return Some(Command::Wake);
                        }
                        if retry_at.is_some_and(|at| at <= self.clock.now()) {
                            return Some(Command::Turn);
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

    /// Hands `command` to the extension; a command with no extension installed is refused.
    fn extension_command(&mut self, command: Box<dyn ExtensionCommand>) -> Result<(), Fatal> {
        let Some(mut extension) = self.extension.take() else {
            command.refuse(Error::Conflict(
                "this instance cannot carry out mirror work".into(),
            ));
            return Ok(());
        };
        let result = extension.command(self, command);
        self.extension = Some(extension);
        result
    }

    /// Runs `f` with the extension taken out of the writer (so both can be borrowed); `None`
    /// when no extension is installed.
    fn with_extension<R>(
        &mut self,
        f: impl FnOnce(&mut dyn WriterExtension, &mut Writer) -> R,
    ) -> Option<R> {
        let mut extension = self.extension.take()?;
        let result = f(extension.as_mut(), self);
        self.extension = Some(extension);
        Some(result)
    }
}

/// # For extensions
///
/// What the writer's [`extension`] may use of it, on the writer thread.
impl Writer {
    /// The data directory.
    pub(crate) fn data_dir(&self) -> &std::path::Path {
        &self.data_dir
    }

    /// Databases and namespaces.
    pub(crate) fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// The configuration file.
    pub(crate) fn config(&self) -> &Arc<ConfigStore> {
        &self.config
    }

    /// The instance's own journal, and its stream id.
    pub(crate) fn local_journal(&self) -> (&Journal, StreamId) {
        (&self.local, self.local_stream)
    }

    /// The mirror's journal, when this member writes it (its primary).
    pub(crate) fn mirror_journal(&self) -> Option<&Journal> {
        self.mirror_journal.as_ref()
    }

    /// Takes over (`Some`) or gives up (`None`) the mirror's journal, and with it the writing of
    /// mirrored records.
    pub(crate) fn set_mirror_journal(&mut self, journal: Option<Journal>) {
        self.mirror_journal = journal;
    }

    /// Sets the epoch stamped on the records written from now on.
    pub(crate) fn set_epoch(&mut self, epoch: Epoch) {
        self.epoch = epoch;
    }

    /// Whether this member writes mirrored databases.
    pub(crate) fn is_primary(&self) -> bool {
        self.role.is_primary()
    }

    /// Rebuilds the catalog after the configuration or the role changed, and drops the
    /// connections built on the old one.
    pub(crate) fn reload_catalog(&mut self) {
        self.catalog.replace(catalog_state(
            &self.config.get(),
            &self.data_dir,
            self.is_primary(),
        ));
        self.conns.clear();
    }

    /// Queues a turn of the extension behind the work already queued.
    pub(crate) fn queue_turn(&mut self) {
        if !self.turn_queued.swap(true, Ordering::AcqRel) {
            self.deferred.push_back(Command::Turn);
        }
    }
}

/// Answers a command that cannot be carried out with `err`.
fn refuse(command: Command, err: Error) {
    match command {
        Command::Write(_, reply) => drop(reply.send(Err(err))),
        Command::Mount(_, reply) | Command::Dismount(_, reply) => drop(reply.send(Err(err))),
        Command::Freeze(_, reply) => drop(reply.send(Err(err))),
        Command::Thaw(reply) => drop(reply.send(Err(err))),
        Command::StampPositions(reply) => drop(reply.send(Err(err))),
        Command::Extension(command) => command.refuse(err),
        Command::Settled(reply) => drop(reply.send(Err(err))),
        Command::Turn | Command::Wake | Command::Shutdown => {}
    }
}

/// Answers a command whose failure may be fatal: a fatal one is answered "unavailable" and
/// stops the writer.
pub(crate) fn answer_or_stop(
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
