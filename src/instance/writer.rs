//! The writer: the one thread that changes databases, and the group commit.
//!
//! # How a write travels
//!
//! A handler sends a [`WriteRequest`] (namespace, statement, parameters) over a channel and waits
//! for the reply. The writer thread takes the first request and every request for the same
//! namespace that queued up behind it (up to [`MAX_BATCH`]), and for the whole batch:
//!
//! 1. `BEGIN` on the namespace's connection.
//! 2. For each request: a savepoint; a SQLite session per writable database records the
//!    statement's row changes; the changesets are streamed straight into one journal frame at the
//!    next position (schema statements are journaled as their text); the savepoint is released.
//!    A failing statement rolls back to its savepoint and only its own client gets the error.
//! 3. Each database the batch touched gets its new applied position — *in the same transaction*
//!    as its rows.
//! 4. All frames are appended to the journal with one `write`, handed to the commit gate (a
//!    mirror ships them to the backup here, while this member flushes), and made durable with one
//!    `fdatasync`: **one fsync for the whole batch**.
//! 5. The commit gate's wait: the point where a durable batch waits before it is acknowledged
//!    (a mirror's primary waits for its backup's acknowledgement here).
//! 6. `COMMIT`, then every client of the batch is answered.
//!
//! Ordering is the whole argument for safety. Nothing is acknowledged before step 4's fsync, so
//! an acknowledged write is always in the journal. The SQLite commit comes after the fsync, so a
//! database file is never ahead of the durable journal: a crash before step 6 leaves records the
//! files lack, which recovery replays; a crash before step 4 leaves neither.
//!
//! # Failures
//!
//! A statement error is the client's. A failure of the journal or of the commit after the
//! journal write is not: the state on disk is then uncertain, so the writer stops (fail-stop),
//! answers everyone with "unavailable", and calls the fatal hook; the process exits and the next
//! start recovers from the journal. Limping on after a failed fsync is how databases lose data.
//!
//! # Also here
//!
//! Mount and dismount run on this thread too, in order with the writes, so a database is never
//! dismounted in the middle of a batch. After a second without writes the WAL files are folded
//! into the database files, so a plain `cp` of an idle database file is complete.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::session::Session;
use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::journal::{FrameBuilder, Journal, JournalPos};
use crate::names::{DbName, NamespaceName};
use crate::storage::database::{self, META_TABLE, set_applied_sql};
use crate::storage::{Catalog, NamespaceConn, Purpose};
use crate::util::{hex, now_ms};

use super::config::{ConfigStore, catalog_state};
use super::reader::ReadPool;
use super::recovery;
use super::sql::{QueryResult, SqlValue, collect_rows, with_statement};

/// Most requests committed together.
pub const MAX_BATCH: usize = 256;
/// Quiet time after which the WAL files are checkpointed into the database files.
const IDLE_CHECKPOINT: Duration = Duration::from_secs(1);

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

enum Command {
    Write(WriteRequest, Reply<QueryResult>),
    Mount(DbName, Reply<String>),
    Dismount(DbName, Reply<String>),
    Shutdown,
}

/// The point where a durable batch waits before its writers are acknowledged.
///
/// A standalone member acknowledges as soon as its own journal is durable ([`Standalone`]);
/// a mirror's primary ships the batch to its backup and waits for the backup's acknowledgement.
pub trait CommitGate: Send {
    /// Called with a batch's frames (records `first..=last`) after they are appended and before
    /// the local fsync, so a replica can receive them while this member flushes.
    fn ship(&mut self, frames: &[u8], first: JournalPos, last: JournalPos) -> Result<()>;
    /// Returns once whoever must hold the batch besides this member acknowledged `last`.
    fn wait_acknowledged(&mut self, last: JournalPos) -> Result<()>;
}

/// A member with nobody else to wait for.
pub struct Standalone;

impl CommitGate for Standalone {
    fn ship(&mut self, _: &[u8], _: JournalPos, _: JournalPos) -> Result<()> {
        Ok(())
    }
    fn wait_acknowledged(&mut self, _: JournalPos) -> Result<()> {
        Ok(())
    }
}

/// Called once when the writer stops after a failure it cannot survive.
pub type FatalHook = Box<dyn Fn(&str) + Send + Sync>;

/// Sends work to the writer thread.
#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<Command>,
    failure: Arc<Mutex<Option<String>>>,
}

impl WriterHandle {
    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        if self.tx.send(make(reply)).is_err() {
            return Err(self.unavailable());
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

    /// Asks the writer to finish queued work and stop.
    pub fn shutdown(&self) {
        let _ = self.tx.send(Command::Shutdown);
    }

    /// Why the writer stopped, if it failed.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().unwrap().clone()
    }
}

/// The writer thread's state.
pub struct Writer {
    data_dir: PathBuf,
    catalog: Arc<Catalog>,
    config: Arc<ConfigStore>,
    journal: Journal,
    readers: Arc<ReadPool>,
    gate: Box<dyn CommitGate>,
    epoch: u64,
    stream_hex: String,
    conns: HashMap<NamespaceName, NamespaceConn>,
    /// Frames of the batch being committed; reused so the write path does not allocate per batch.
    frames: Vec<u8>,
    deferred: VecDeque<Command>,
    dirty: bool,
}

/// How one request of a batch ended.
type Outcome = (Result<QueryResult>, Reply<QueryResult>);

impl Writer {
    /// Starts the writer thread.
    pub fn spawn(
        data_dir: PathBuf,
        catalog: Arc<Catalog>,
        config: Arc<ConfigStore>,
        journal: Journal,
        readers: Arc<ReadPool>,
        gate: Box<dyn CommitGate>,
        on_fatal: FatalHook,
    ) -> (WriterHandle, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel();
        let failure = Arc::new(Mutex::new(None));
        let handle = WriterHandle {
            tx,
            failure: failure.clone(),
        };
        let cfg = config.get();
        let writer = Writer {
            data_dir,
            catalog,
            config,
            stream_hex: hex(&journal.shared().stream()),
            journal,
            readers,
            gate,
            epoch: cfg.epoch,
            conns: HashMap::new(),
            frames: Vec::with_capacity(64 * 1024),
            deferred: VecDeque::new(),
            dirty: false,
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
        while let Some(command) = self.next_command(&rx) {
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
                Command::Shutdown => break,
            };
            if let Some(why) = fatal {
                tracing::error!("writer stopped: {why}");
                *failure.lock().unwrap() = Some(why.clone());
                on_fatal(&why);
                // Answer whatever is still queued; the handles report the failure from now on.
                drop(rx);
                self.deferred.clear();
                return;
            }
        }
        // Orderly stop: closing the connections folds each WAL into its database file.
        self.conns.clear();
    }

    fn next_command(&mut self, rx: &mpsc::Receiver<Command>) -> Option<Command> {
        if let Some(command) = self.deferred.pop_front() {
            return Some(command);
        }
        loop {
            if !self.dirty {
                return rx.recv().ok();
            }
            match rx.recv_timeout(IDLE_CHECKPOINT) {
                Ok(command) => return Some(command),
                Err(RecvTimeoutError::Timeout) => self.idle_checkpoint(),
                Err(RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// Adds to `batch` the queued writes for the same namespace. Writes for other namespaces wait
    /// for the next batch; a mount or dismount ends the collection so it keeps its place in line.
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
            _ => NamespaceConn::open(&self.catalog.snapshot(), namespace, Purpose::Write),
        }
    }

    /// Commits one batch (see the module essay). `Err` is a fatal failure.
    fn commit_batch(
        &mut self,
        batch: Vec<(WriteRequest, Reply<QueryResult>)>,
    ) -> Result<(), String> {
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
        let result = self.commit_on(&conn, batch);
        self.conns.insert(namespace, conn);
        result
    }

    fn commit_on(
        &mut self,
        conn: &NamespaceConn,
        batch: Vec<(WriteRequest, Reply<QueryResult>)>,
    ) -> Result<(), String> {
        if let Err(err) = conn.conn.execute_batch("BEGIN") {
            let err = Error::from(err);
            for (_, reply) in batch {
                let _ = reply.send(Err(err.clone()));
            }
            return Ok(());
        }
        self.frames.clear();
        let first = self.journal.end().next();
        let mut next = first;
        let time_ms = now_ms();
        // Last position per database touched, for its applied-position row.
        let mut touched: Vec<(DbName, JournalPos)> = Vec::new();
        let mut outcomes: Vec<Outcome> = Vec::with_capacity(batch.len());
        for (request, reply) in batch {
            let result = execute_one(
                conn,
                &request,
                &mut self.frames,
                next,
                self.epoch,
                time_ms,
                &mut touched,
            );
            if matches!(&result, Ok(r) if r.position.is_some()) {
                next = next.next();
            }
            outcomes.push((result, reply));
        }
        let last = JournalPos(next.0 - 1);
        let records = next.0 - first.0;

        if records > 0 {
            // The applied positions go into the same transaction as the rows they account for.
            for (db, pos) in &touched {
                let schema = if db == &conn.main {
                    "main"
                } else {
                    db.as_str()
                };
                let updated = conn
                    .conn
                    .prepare_cached(&set_applied_sql(schema))
                    .and_then(|mut s| s.execute([pos.0 as i64]));
                if let Err(err) = updated {
                    // Nothing is journaled yet: undo and report, the instance stays healthy.
                    let _ = conn.conn.execute_batch("ROLLBACK");
                    let err = Error::Internal(format!("record applied position of {db}: {err}"));
                    fail_all(outcomes, &err);
                    return Ok(());
                }
            }
            // From here on a failure leaves the disk in a state only recovery can sort out.
            let durable = self
                .journal
                .append(&self.frames, last, records)
                .and_then(|_| self.gate.ship(&self.frames, first, last))
                .and_then(|_| self.journal.sync())
                .and_then(|_| self.gate.wait_acknowledged(last));
            if let Err(err) = durable {
                let _ = conn.conn.execute_batch("ROLLBACK");
                fail_all(
                    outcomes,
                    &Error::Unavailable(format!("the journal write failed: {err}")),
                );
                return Err(format!("journal write failed: {err}"));
            }
        }
        // Only now, with the batch durable (and acknowledged), do its changes become visible.
        if let Err(err) = conn.conn.execute_batch("COMMIT") {
            let _ = conn.conn.execute_batch("ROLLBACK");
            let err = Error::Internal(format!("commit failed: {err}"));
            fail_all(outcomes, &err);
            return if records > 0 {
                Err(err.to_string())
            } else {
                Ok(())
            };
        }
        if records > 0 {
            self.dirty = true;
        }
        for (result, reply) in outcomes {
            let _ = reply.send(result);
        }
        Ok(())
    }

    fn idle_checkpoint(&mut self) {
        for conn in self.conns.values() {
            if let Err(err) = conn.conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE)") {
                tracing::warn!("checkpoint of namespace {} failed: {err}", conn.namespace);
            }
        }
        self.dirty = false;
    }

    fn reload_catalog(&self) {
        self.catalog
            .replace(catalog_state(&self.config.get(), &self.data_dir));
    }

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
        // Check the file and bring it up to date before any connection can see it.
        let caught_up = recovery::catch_up(&entry, &self.journal.shared(), &self.stream_hex)?;
        self.config.update(|c| {
            c.database_mut(name)?.mounted = true;
            Ok(())
        })?;
        self.reload_catalog();
        tracing::info!(
            "mounted {name} (applied {} journal records)",
            caught_up.applied
        );
        Ok(match caught_up.applied {
            0 => format!("{name} mounted"),
            n => format!("{name} mounted; {n} journal records it lacked were applied"),
        })
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
        self.reload_catalog();
        // Close every connection that could have the file open: the writer's own now, the
        // readers' once reads in flight finish (the exclusive file gate waits for them).
        self.conns.clear();
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
}

fn fail_all(outcomes: Vec<Outcome>, err: &Error) {
    for (result, reply) in outcomes {
        // Requests that had already failed keep their own error.
        let _ = reply.send(result.and(Err(err.clone())));
    }
}

/// Runs one request inside the batch transaction and appends its frame. The frame gets position
/// `pos` only if the statement changed something; `touched` then learns the databases it changed.
fn execute_one(
    conn: &NamespaceConn,
    request: &WriteRequest,
    frames: &mut Vec<u8>,
    pos: JournalPos,
    epoch: u64,
    time_ms: i64,
    touched: &mut Vec<(DbName, JournalPos)>,
) -> Result<QueryResult> {
    conn.conn.prepare_cached("SAVEPOINT request")?.execute([])?;
    let frames_before = frames.len();
    let result = record_one(conn, request, frames, pos, epoch, time_ms);
    let result = match result {
        Ok((result, dbs)) => {
            for db in dbs {
                match touched.iter_mut().find(|(d, _)| *d == db) {
                    Some(entry) => entry.1 = pos,
                    None => touched.push((db, pos)),
                }
            }
            Ok(result)
        }
        Err(err) => {
            frames.truncate(frames_before);
            conn.conn
                .prepare_cached("ROLLBACK TO request")?
                .execute([])?;
            Err(err)
        }
    };
    conn.conn.prepare_cached("RELEASE request")?.execute([])?;
    result
}

/// Runs the statement with sessions recording its row changes and writes its frame; returns the
/// result and the databases the frame changes.
fn record_one(
    conn: &NamespaceConn,
    request: &WriteRequest,
    frames: &mut Vec<u8>,
    pos: JournalPos,
    epoch: u64,
    time_ms: i64,
) -> Result<(QueryResult, Vec<DbName>)> {
    // One session per writable database captures this statement's row changes.
    let mut sessions = Vec::with_capacity(conn.writable.len());
    for db in &conn.writable {
        let schema = if db == &conn.main {
            "main"
        } else {
            db.as_str()
        };
        let mut session = Session::new_with_name(&conn.conn, schema)?;
        session.table_filter(Some(|table: &str| table != META_TABLE));
        session.attach::<&str>(None)?;
        sessions.push((db, session));
    }
    let (mut result, ddl_db) =
        with_statement(conn, &request.sql, request.cached, |stmt, facts| {
            let result = collect_rows(conn, stmt, &request.params)?;
            Ok((result, facts.ddl_db.clone()))
        })?;
    result.rows_affected = conn.conn.changes() as usize;

    let mut changed = Vec::new();
    let mut frame = FrameBuilder::begin(frames, pos, epoch, time_ms);
    if let Some(db) = ddl_db {
        if let Err(err) = check_primary_keys(conn, &db) {
            frame.abandon();
            return Err(err);
        }
        let qualified = db != conn.main.as_str();
        frame.set_schema(&db, qualified, &request.sql);
        changed.push(DbName::new(&db)?);
        result.rows_affected = 0;
    } else {
        for (db, session) in sessions.iter_mut() {
            if session.is_empty() {
                continue;
            }
            let added = frame.add_changes(db.as_str(), |buf| {
                session.changeset_strm(buf).map_err(Error::from)
            });
            match added {
                Ok(true) => changed.push((*db).clone()),
                Ok(false) => {}
                Err(err) => {
                    frame.abandon();
                    return Err(err);
                }
            }
        }
    }
    if frame.is_empty() {
        frame.abandon();
    } else {
        frame.finish();
        result.position = Some(pos);
    }
    Ok((result, changed))
}

/// Refuses a schema change that leaves a table without a primary key in `db`: its row changes
/// could not be journaled (SQLite sessions identify rows by primary key).
fn check_primary_keys(conn: &NamespaceConn, db: &str) -> Result<()> {
    let schema = if db == conn.main.as_str() { "main" } else { db };
    let sql = format!(
        "SELECT m.name FROM \"{schema}\".sqlite_schema AS m
         WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite%'
           AND NOT EXISTS (SELECT 1 FROM pragma_table_info(m.name, '{schema}') WHERE pk > 0)"
    );
    let missing: Option<String> = conn.conn.query_row(&sql, [], |r| r.get(0)).ok();
    match missing {
        Some(table) => Err(Error::InvalidInput(format!(
            "table {table} has no PRIMARY KEY: row changes are journaled by primary key, so every \
             table in a journaled database needs one"
        ))),
        None => Ok(()),
    }
}
