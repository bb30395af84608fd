//! One database: one SQLite file under `mgr/<name>/`, plus the bookkeeping row that says which
//! journal it follows and how far it has applied it.
//!
//! Every database file carries a small table, `mirrorlab_meta`, with its identity (a random id
//! given at creation, its name, the id of the journal its positions refer to) and its *applied
//! position*. The applied position is updated in the same SQLite transaction as the rows it
//! accounts for, so after any crash the file says exactly which journal records it holds: replay
//! starts right after it, and a copied file carries the point from which it must be caught up.
//!
//! Files are opened in WAL mode with `synchronous = NORMAL`: a commit does not wait for the disk.
//! That is safe because the journal, fsynced before every acknowledgement, is the durable copy; a
//! database that lost its newest pages in a power cut is simply replayed further at start-up.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::session::{Changegroup, ConflictAction, ConflictType};
use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::error::{Error, IoContext, Result};
use crate::journal::{JournalPos, Record, RecordBody, StreamId};
use crate::names::DbName;
use crate::util::{random_hex, sync_dir};

/// The bookkeeping table inside every database file.
pub const META_TABLE: &str = "mirrorlab_meta";
/// The database file's name inside its folder.
pub const DB_FILE_NAME: &str = "database.sqlite";
/// How long a connection waits for a lock held by another connection before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// What a database file says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseIdentity {
    /// Random id given when the database was created; copies keep it.
    pub guid: String,
    /// The database name it was created as.
    pub name: String,
    /// Hex id of the journal its applied position refers to.
    pub stream: StreamId,
    /// Last journal position whose changes it holds.
    pub applied_pos: JournalPos,
}

/// Opens a database file (which must exist) with the settings every connection uses.
pub fn open(path: &Path) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_URI
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| Error::Io(format!("open database file {}: {e}", path.display())))?;
    configure(&conn, "main")?;
    statement_journal_in_memory(&conn)?;
    Ok(conn)
}

/// Opens a database file for applying journal records (replay, and dejournaling later).
///
/// Triggers are switched off on this connection: a changeset already holds every row change the
/// original statement made, trigger effects included (sessions record them). Firing the triggers
/// again while applying would do their work twice.
///
/// Foreign-key actions are switched off for the same reason: a cascade the original statement
/// caused is in the changeset as its own row changes.
pub fn open_for_apply(path: &Path) -> Result<Connection> {
    let conn = open(path)?;
    quiet_for_apply(&conn)?;
    Ok(conn)
}

/// Turns off triggers and foreign-key actions on a connection that applies journal records.
fn quiet_for_apply(conn: &Connection) -> Result<()> {
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER,
        false,
    )?;
    conn.execute_batch("PRAGMA foreign_keys = OFF")?;
    Ok(())
}

/// Checks that the file at `path` is a whole SQLite database whose pages hang together
/// (`PRAGMA quick_check`: every page read, every b-tree walked). Run before a file is mounted:
/// a copy cut short or damaged on its way must be refused before anything reads or applies to it.
/// `directory` names the folder in the message.
pub fn verify_file(path: &Path, directory: &str) -> Result<()> {
    let damaged = |detail: String| {
        Error::Conflict(format!(
            "the file in {directory} is damaged or incomplete ({detail}): replace it with a good \
             copy (from the primary, while no one writes or during Freeze) and mount again"
        ))
    };
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| damaged(e.to_string()))?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mut stmt = conn
        .prepare("PRAGMA quick_check(5)")
        .map_err(|e| damaged(e.to_string()))?;
    let problems: Vec<String> = stmt
        .query_map([], |row| row.get::<_, String>(0))
        .and_then(|rows| rows.collect())
        .map_err(|e| damaged(e.to_string()))?;
    if problems != ["ok"] {
        return Err(damaged(problems.join("; ")));
    }
    Ok(())
}

/// Writes a consistent copy of the database file `source` to `target` (which must not exist)
/// and makes it durable. SQLite's `VACUUM INTO` reads one snapshot, so writers go on meanwhile
/// and the copy holds exactly the rows — and the applied journal position — of one moment: a
/// Catchup from that position brings it up to date.
pub fn copy_consistent(source: &Path, target: &Path) -> Result<()> {
    let conn = open(source)?;
    conn.execute("VACUUM INTO ?1", [target.to_string_lossy()])
        .map_err(|e| Error::Io(format!("copy {}: {e}", source.display())))?;
    std::fs::File::open(target)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::Io(format!("fsync {}: {e}", target.display())))?;
    Ok(())
}

/// Keeps statement journals (what a savepoint needs to roll back) in memory. By default SQLite
/// spills one to a temporary file once it outgrows 64 KiB, and a large batch or a gathered run of
/// changesets would create and delete a file each time. They hold only what the open transaction
/// may undo, so memory bounds them by the batch size.
pub fn statement_journal_in_memory(conn: &Connection) -> Result<()> {
    conn.execute_batch("PRAGMA temp_store = MEMORY")?;
    Ok(())
}

/// WAL pages after which a commit checkpoints (see [`configure`]).
const WAL_AUTOCHECKPOINT_PAGES: u32 = 10_000;

/// Applies the per-connection settings to one schema (`main` or an attached database).
pub fn configure(conn: &Connection, schema: &str) -> Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // WAL: readers never block the writer. NORMAL: commits skip fsync (the journal is durable).
    let mode: String = conn.query_row(
        &format!("PRAGMA \"{schema}\".journal_mode = WAL"),
        [],
        |r| r.get(0),
    )?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::Internal(format!(
            "could not switch {schema} to WAL mode (got {mode})"
        )));
    }
    conn.execute_batch(&format!("PRAGMA \"{schema}\".synchronous = NORMAL"))?;
    // SQLite folds the WAL into the database file from inside a commit once the WAL holds this
    // many pages, and that commit pays for two fsyncs and the copy. The instance's checkpointer
    // thread (`instance::writer::checkpointer`) folds it in long before, beside the writer;
    // this stays only as a ceiling should that thread fall far behind.
    conn.execute_batch(&format!(
        "PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}"
    ))?;
    Ok(())
}

/// Creates a new database file at `file` with its identity row and the given schema, applied
/// position 0. The file is built under a temporary name and renamed into place, so a crash never
/// leaves a half-made database where the configuration expects one.
pub fn create(file: &Path, name: &DbName, stream: StreamId, schema_sql: &str) -> Result<String> {
    let dir = file
        .parent()
        .ok_or_else(|| Error::Internal("database file has no folder".into()))?;
    fs::create_dir_all(dir).io_context(format!("create folder {}", dir.display()))?;
    let tmp = file.with_extension("creating");
    for stale in [tmp.clone(), wal_path(&tmp), shm_path(&tmp)] {
        let _ = fs::remove_file(stale);
    }
    let guid = random_hex(16);
    let stream = stream.to_string();
    {
        let conn = Connection::open(&tmp)
            .map_err(|e| Error::Io(format!("create {}: {e}", tmp.display())))?;
        configure(&conn, "main")?;
        conn.execute_batch(&format!(
            "BEGIN;
             CREATE TABLE {META_TABLE} (key TEXT PRIMARY KEY NOT NULL, value NOT NULL) WITHOUT ROWID;
             COMMIT;"
        ))?;
        let tx = conn.unchecked_transaction()?;
        for (key, value) in [
            ("guid", guid.as_str()),
            ("name", name.as_str()),
            ("stream", stream.as_str()),
        ] {
            tx.execute(
                &format!("INSERT INTO {META_TABLE}(key, value) VALUES (?1, ?2)"),
                [key, value],
            )?;
        }
        tx.execute(
            &format!("INSERT INTO {META_TABLE}(key, value) VALUES ('applied_pos', 0)"),
            [],
        )?;
        tx.execute_batch(schema_sql)
            .map_err(|e| Error::InvalidInput(format!("schema for database {name}: {e}")))?;
        tx.commit()?;
        // Fold the WAL into the main file so the renamed file is complete on its own.
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")?;
    }
    fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .io_context("fsync new database")?;
    fs::rename(&tmp, file).io_context(format!("move new database into {}", file.display()))?;
    sync_dir(dir)?;
    Ok(guid)
}

/// Reads the identity row of `schema` (`main` or an attached name).
pub fn read_identity(conn: &Connection, schema: &str) -> Result<DatabaseIdentity> {
    let has_meta: Option<String> = conn
        .query_row(
            &format!(
                "SELECT name FROM \"{schema}\".sqlite_schema WHERE type = 'table' AND name = ?1"
            ),
            [META_TABLE],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| Error::Conflict(format!("not a readable SQLite database: {e}")))?;
    if has_meta.is_none() {
        return Err(Error::Conflict(format!(
            "this file is not a mirrorlab database (it has no {META_TABLE} table)"
        )));
    }
    let mut stmt = conn.prepare(&format!("SELECT key, value FROM \"{schema}\".{META_TABLE}"))?;
    let mut rows = stmt.query([])?;
    let (mut guid, mut name, mut stream, mut applied) = (None, None, None, None);
    while let Some(row) = rows.next()? {
        let key: String = row.get(0)?;
        match key.as_str() {
            "guid" => guid = Some(row.get::<_, String>(1)?),
            "name" => name = Some(row.get::<_, String>(1)?),
            "stream" => {
                let text = row.get::<_, String>(1)?;
                stream = Some(StreamId::parse(&text).ok_or_else(|| {
                    Error::Corrupt(format!(
                        "the journal stream {text:?} of {schema} is not an id"
                    ))
                })?);
            }
            "applied_pos" => applied = Some(row.get::<_, i64>(1)?),
            _ => {}
        }
    }
    match (guid, name, stream, applied) {
        (Some(guid), Some(name), Some(stream), Some(applied)) if applied >= 0 => {
            Ok(DatabaseIdentity {
                guid,
                name,
                stream,
                applied_pos: JournalPos(applied as u64),
            })
        }
        _ => Err(Error::Corrupt(format!(
            "the {META_TABLE} table of {schema} is incomplete"
        ))),
    }
}

/// The statement that records a new applied position for `schema`.
pub fn set_applied_sql(schema: &str) -> String {
    format!("UPDATE \"{schema}\".{META_TABLE} SET value = ?1 WHERE key = 'applied_pos'")
}

/// Points a database file at another journal: `stream`, applied up to `pos` (Add to Mirror,
/// leaving a mirror). One transaction.
pub fn switch_stream(file: &Path, stream: StreamId, pos: JournalPos) -> Result<()> {
    let conn = open(file)?;
    let tx = conn.unchecked_transaction()?;
    tx.execute(
        &format!("UPDATE {META_TABLE} SET value = ?1 WHERE key = 'stream'"),
        [stream.to_string()],
    )?;
    tx.execute(&set_applied_sql("main"), [pos.0 as i64])?;
    tx.commit()?;
    // The file a person copies right afterwards must already say which journal it follows.
    checkpoint(&conn)
}

/// Folds the WAL into the main file (`TRUNCATE` checkpoint), retrying briefly while a reader in
/// the middle of a query holds the last frames back.
pub fn checkpoint(conn: &Connection) -> Result<()> {
    for _ in 0..100 {
        let (busy, log, done): (i64, i64, i64) =
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?;
        if busy == 0 && log == done {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(Error::Conflict(
        "the database is busy; its file could not be completed on disk, try again".into(),
    ))
}

/// Path of the WAL file SQLite keeps beside `file`.
pub fn wal_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

fn shm_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push("-shm");
    PathBuf::from(name)
}

/// Folds the WAL into the main file and removes it, so the main file is complete on its own (what
/// a user copies with `cp`). Called with no other connection open on the file.
pub fn checkpoint_and_close(file: &Path) -> Result<()> {
    let conn = open(file)?;
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")?;
    conn.close().map_err(|(_, e)| Error::from(e))?;
    Ok(())
}

/// Applies journal records to one database: the connection's `main` is that database.
///
/// Each call to [`Applier::apply`] runs inside the transaction the caller opened, and the
/// caller records the applied position in that same transaction.
pub struct Applier<'c> {
    conn: &'c Connection,
    name: &'c str,
    file: &'c Path,
    on_conflict: OnConflict,
}

/// What applying a changeset does with a row that does not match it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnConflict {
    /// Stop with an error: the file does not hold what its applied position claims. Everywhere
    /// but on a Read-Write Reporting async, where it would mean damage or a bug.
    Abort,
    /// The row as the primary has it wins (a row changed or added here is overwritten; one
    /// deleted or never added here is left so). A Read-Write Reporting async's copies take local
    /// writes the primary never hears of, so its changes may meet rows that differ.
    PrimaryWins,
}

impl OnConflict {
    fn action(self, kind: ConflictType) -> ConflictAction {
        match (self, kind) {
            (OnConflict::Abort, _) | (OnConflict::PrimaryWins, ConflictType::UNKNOWN) => {
                ConflictAction::SQLITE_CHANGESET_ABORT
            }
            (
                OnConflict::PrimaryWins,
                ConflictType::SQLITE_CHANGESET_DATA | ConflictType::SQLITE_CHANGESET_CONFLICT,
            ) => ConflictAction::SQLITE_CHANGESET_REPLACE,
            (OnConflict::PrimaryWins, _) => ConflictAction::SQLITE_CHANGESET_OMIT,
        }
    }
}

impl<'c> Applier<'c> {
    /// An applier for database `name` stored in `file`, reachable as `main` through `conn`.
    pub fn new(conn: &'c Connection, name: &'c str, file: &'c Path) -> Self {
        Applier {
            conn,
            name,
            file,
            on_conflict: OnConflict::Abort,
        }
    }

    /// Applies with `policy` for rows that do not match.
    pub fn on_conflict(mut self, policy: OnConflict) -> Self {
        self.on_conflict = policy;
        self
    }

    /// Applies this database's part of `record`; returns false when the record does not touch it.
    ///
    /// A conflict (a row to insert already exists, a row to change is missing or differs) means
    /// the file does not hold what its applied position claims. That is never papered over: the
    /// whole apply aborts with an error naming the position.
    pub fn apply(&self, record: &Record) -> Result<bool> {
        match &record.body {
            RecordBody::Changes(changes) => {
                let Some(change) = changes.iter().find(|c| c.db == self.name) else {
                    return Ok(false);
                };
                apply_changesets(
                    self.conn,
                    self.name,
                    &change.changeset,
                    &format!("position {}", record.pos),
                    self.on_conflict,
                )?;
                Ok(true)
            }
            RecordBody::Schema(schema) if schema.db == self.name => {
                if schema.qualified {
                    // The statement names the database (`COMPANY.t`): run it where the file is
                    // attached under that name. Needs its own connection, hence its own
                    // transaction; callers commit their open transaction first.
                    return Err(Error::Internal(
                        "qualified schema records are applied by apply_schema_qualified".into(),
                    ));
                }
                self.conn.execute_batch(&schema.sql).map_err(|e| {
                    Error::Corrupt(format!(
                        "schema statement at journal position {} failed on {}: {e}",
                        record.pos, self.name
                    ))
                })?;
                Ok(true)
            }
            RecordBody::Schema(_) => Ok(false),
            // Events change no rows; one about this database still counts as applied.
            RecordBody::Event(event) => Ok(event.db.as_deref() == Some(self.name)),
        }
    }

    /// The file this applier writes.
    pub fn file(&self) -> &Path {
        self.file
    }
}

/// Largest run of changesets [`merge_changesets`] is given: merging holds every changed row in
/// memory at once, and a run this large has few table headers per row to save anyway.
const MERGE_LIMIT: usize = 8 << 20;

/// The changesets of consecutive journal records for one database, gathered to be applied in
/// one call (dejournaling and replay on a backup).
#[derive(Debug)]
pub struct ChangesetRun {
    /// The changesets, concatenated as they were journaled.
    changesets: Vec<u8>,
    first: JournalPos,
    last: JournalPos,
    /// How many records' changesets `changesets` holds.
    frames: usize,
}

impl ChangesetRun {
    /// An empty run that starts at the record at `first`.
    pub fn new(first: JournalPos) -> ChangesetRun {
        ChangesetRun {
            changesets: Vec::new(),
            first,
            last: first,
            frames: 0,
        }
    }

    /// Adds the changeset of the record at `pos` (after every record already in the run).
    pub fn push(&mut self, pos: JournalPos, changeset: &[u8]) {
        self.changesets.extend_from_slice(changeset);
        self.last = pos;
        self.frames += 1;
    }

    /// Applies the run to the `main` database of `conn` (named `name` in errors).
    ///
    /// A run of several records is merged first (see [`merge_changesets`]) — only where a
    /// conflict aborts: a copy that takes local writes must see each change as it was made, to
    /// let the primary's row win row by row. A run SQLite cannot merge is applied record by
    /// record, as it was journaled: whatever is wrong with it is then reported there.
    pub fn apply(self, conn: &Connection, name: &str, on_conflict: OnConflict) -> Result<()> {
        let mut changesets = self.changesets;
        if self.frames > 1
            && changesets.len() <= MERGE_LIMIT
            && on_conflict == OnConflict::Abort
            && let Ok(merged) = merge_changesets(&changesets)
        {
            changesets = merged;
        }
        apply_changesets(
            conn,
            name,
            &changesets,
            &format!("positions {}..={}", self.first, self.last),
            on_conflict,
        )
    }
}

/// Merges changesets (several, concatenated as they were journaled) into one changeset with the
/// same net effect: one table header per table instead of one per journal frame.
///
/// Why: `sqlite3changeset_apply` starts over at every table header — it reads the table's
/// columns (`PRAGMA table_xinfo`) and prepares its `SELECT`, `INSERT` and `DELETE` again, even
/// when the header names the table it just applied. A backup dejournaling a few hundred small
/// frames per round spent about half its dejournaling time there. The merge (SQLite's
/// changegroup) folds changes to one row into one: an insert then an update is an insert of the
/// newer row, an insert then a delete is nothing. Applied to a copy that holds what its
/// applied position says, the result is the same as applying the frames one after the other;
/// changes that meet a constraint in the merged order are retried by SQLite at the end of the
/// table, as in a single changeset. A copy that does not match is still caught by every row the
/// run leaves changed; a row the run inserts and deletes again is no longer looked at.
fn merge_changesets(changesets: &[u8]) -> Result<Vec<u8>> {
    let mut group = Changegroup::new()?;
    group.add_stream(&mut &changesets[..])?;
    let mut merged = Vec::with_capacity(changesets.len());
    group.output_strm(&mut merged)?;
    Ok(merged)
}

/// Applies changesets (several, concatenated as they were journaled) to the `main` database of
/// `conn` in one call. A conflict the policy does not settle aborts the whole call with an error
/// naming `what`.
pub fn apply_changesets(
    conn: &Connection,
    name: &str,
    changesets: &[u8],
    what: &str,
    on_conflict: OnConflict,
) -> Result<()> {
    let conflict = Arc::new(Mutex::new(None));
    let seen = conflict.clone();
    let result = conn.apply_strm(
        &mut &changesets[..],
        None::<fn(&str) -> bool>,
        move |kind: ConflictType, _item| {
            let name = format!("{kind:?}");
            let action = on_conflict.action(kind);
            if action == ConflictAction::SQLITE_CHANGESET_ABORT {
                *seen.lock().unwrap() = Some(name);
            }
            action
        },
    );
    if let Err(err) = result {
        let detail = conflict
            .lock()
            .unwrap()
            .take()
            .unwrap_or_else(|| err.to_string());
        return Err(Error::Corrupt(format!(
            "database {name} does not match the journal at {what}: {detail}"
        )));
    }
    Ok(())
}

/// True when `record` is a schema statement for `db` that names the database itself.
pub fn is_qualified_schema(record: &Record, db: &str) -> bool {
    matches!(&record.body, RecordBody::Schema(s) if s.db == db && s.qualified)
}

/// Applies a qualified schema statement (`CREATE TABLE COMPANY.t ...`) and its applied position in
/// one transaction, on a connection where the file is attached under its own name.
pub fn apply_schema_qualified(file: &Path, name: &str, record: &Record) -> Result<()> {
    let RecordBody::Schema(schema) = &record.body else {
        return Err(Error::Internal("not a schema record".into()));
    };
    let conn = Connection::open_in_memory()?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // As in `open_for_apply`: the journal already holds what triggers and cascades did.
    quiet_for_apply(&conn)?;
    conn.execute(
        "ATTACH DATABASE ?1 AS ?2",
        rusqlite::params![file.to_string_lossy(), name],
    )?;
    let tx = conn.unchecked_transaction()?;
    tx.execute_batch(&schema.sql).map_err(|e| {
        Error::Corrupt(format!(
            "schema statement at journal position {} failed on {name}: {e}",
            record.pos
        ))
    })?;
    tx.execute(&set_applied_sql(name), [record.pos.0 as i64])?;
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use rusqlite::session::Session;

    use super::*;

    const SCHEMA: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT UNIQUE, n INTEGER);";

    /// Runs `sql` on `conn` and returns the changeset it made.
    fn changeset_of(conn: &Connection, sql: &str) -> Vec<u8> {
        let mut session = Session::new(conn).unwrap();
        session.attach(None::<&str>).unwrap();
        conn.execute_batch(sql).unwrap();
        let mut out = Vec::new();
        session.changeset_strm(&mut out).unwrap();
        out
    }

    fn rows(conn: &Connection) -> Vec<(i64, String, i64)> {
        let mut stmt = conn
            .prepare("SELECT id, name, n FROM t ORDER BY id")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(|r| r.unwrap())
            .collect()
    }

    /// A history that touches the same rows and the same unique value several times: merged,
    /// it must leave the copy exactly as the frames applied one by one do — including a name
    /// that moves to another row, which only works if the constraint retry does its part.
    #[test]
    fn merged_changesets_have_the_effect_of_the_frames_in_order() {
        let source = Connection::open_in_memory().unwrap();
        source.execute_batch(SCHEMA).unwrap();
        source
            .execute_batch("INSERT INTO t VALUES (1, 'kept', 0), (2, 'moves', 0);")
            .unwrap();
        let start = rows(&source);
        let frames = [
            "INSERT INTO t VALUES (3, 'new', 1);",
            "UPDATE t SET n = n + 1 WHERE id IN (1, 3);",
            "DELETE FROM t WHERE id = 2;",
            "INSERT INTO t VALUES (4, 'moves', 2);",
            "INSERT INTO t VALUES (5, 'gone', 3);",
            "DELETE FROM t WHERE id = 5;",
            "UPDATE t SET n = 7 WHERE id = 3;",
        ];
        let per_frame: Vec<Vec<u8>> = frames
            .iter()
            .map(|sql| changeset_of(&source, sql))
            .collect();
        let concatenated = per_frame.concat();
        let merged = merge_changesets(&concatenated).unwrap();
        assert!(
            merged.len() < concatenated.len(),
            "one table header, folded rows"
        );

        let copy = || {
            let c = Connection::open_in_memory().unwrap();
            c.execute_batch(SCHEMA).unwrap();
            for (id, name, n) in &start {
                c.execute("INSERT INTO t VALUES (?1, ?2, ?3)", (id, name, n))
                    .unwrap();
            }
            c
        };
        let one_by_one = copy();
        apply_changesets(&one_by_one, "t", &concatenated, "test", OnConflict::Abort).unwrap();
        let folded = copy();
        apply_changesets(&folded, "t", &merged, "test", OnConflict::Abort).unwrap();
        assert_eq!(rows(&one_by_one), rows(&source));
        assert_eq!(rows(&folded), rows(&source));

        // The way dejournaling gets there: a run of the frames, merged or not by its policy.
        for policy in [OnConflict::Abort, OnConflict::PrimaryWins] {
            let mut run = ChangesetRun::new(JournalPos(1));
            for (i, changeset) in per_frame.iter().enumerate() {
                run.push(JournalPos(i as u64 + 1), changeset);
            }
            let through_run = copy();
            run.apply(&through_run, "t", policy).unwrap();
            assert_eq!(rows(&through_run), rows(&source), "{policy:?}");
        }
    }

    /// The merge hides nothing a copy that does not match would have shown for rows the run
    /// leaves changed: applying the merged run to a wrong copy still aborts.
    #[test]
    fn a_merged_run_still_aborts_on_a_copy_that_does_not_match() {
        let source = Connection::open_in_memory().unwrap();
        source.execute_batch(SCHEMA).unwrap();
        let mut concatenated = changeset_of(&source, "INSERT INTO t VALUES (1, 'a', 0);");
        concatenated.extend(changeset_of(&source, "UPDATE t SET n = 1 WHERE id = 1;"));
        let merged = merge_changesets(&concatenated).unwrap();
        let wrong = Connection::open_in_memory().unwrap();
        wrong.execute_batch(SCHEMA).unwrap();
        wrong
            .execute_batch("INSERT INTO t VALUES (1, 'other', 5);")
            .unwrap();
        let err = apply_changesets(&wrong, "t", &merged, "positions 1..=2", OnConflict::Abort)
            .unwrap_err();
        assert!(err.to_string().contains("positions 1..=2"), "{err}");
        assert_eq!(rows(&wrong), vec![(1, "other".to_string(), 5)]);
    }
}
