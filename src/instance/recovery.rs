//! Bringing a database file up to date from a journal: crash recovery at start-up, a mount, and
//! (on a mirror backup) Catchup.
//!
//! The file's identity row says which journal it follows and how far it has applied it; every
//! record after that position that touches the database is applied, in order, with the new
//! applied position written in the same transaction. Applying is idempotent by construction: a
//! record at or below the stored position is never applied again, so recovery interrupted by
//! another crash simply resumes.
//!
//! Refused, with a message: a file whose identity names another database or another journal (a
//! copy from somewhere else), and a file that claims more than the journal holds.

use crate::error::{Error, Result};
use crate::journal::{JournalPos, JournalShared, StreamId};
use crate::storage::DatabaseEntry;
use crate::storage::database::{
    self, Applier, DatabaseIdentity, apply_schema_qualified, is_qualified_schema, set_applied_sql,
};

/// Records applied per SQLite transaction while replaying.
const REPLAY_BATCH: u64 = 1_000;

/// What bringing one database up to date did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatchUp {
    /// Applied position before.
    pub from: JournalPos,
    /// Applied position after.
    pub to: JournalPos,
    /// Records applied.
    pub applied: u64,
}

/// Reads the identity of `entry`'s file and checks that it is the database it should be.
pub fn identity_of(entry: &DatabaseEntry) -> Result<DatabaseIdentity> {
    let conn = database::open(&entry.file)?;
    let identity = database::read_identity(&conn, "main")
        .map_err(|e| Error::Conflict(format!("{} ({}): {e}", entry.name, entry.directory)))?;
    if identity.name != entry.name.as_str() {
        return Err(Error::Conflict(format!(
            "the file in {} holds database {}, not {}",
            entry.directory, identity.name, entry.name
        )));
    }
    Ok(identity)
}

/// Checks the file of `entry` against the journal `stream` and applies the records after its
/// applied position up to `until` (at most the journal's durable end).
pub fn catch_up(
    entry: &DatabaseEntry,
    journal: &JournalShared,
    stream: StreamId,
    until: JournalPos,
) -> Result<CatchUp> {
    let name = entry.name.as_str();
    let identity = identity_of(entry)?;
    if identity.stream != stream {
        return Err(Error::Conflict(format!(
            "the file in {} is a copy of {name} made elsewhere (another instance or mirror): its \
             changes cannot be brought up to date from this journal",
            entry.directory
        )));
    }
    let end = journal.durable_end();
    if identity.applied_pos > end {
        return Err(Error::Corrupt(format!(
            "database {name} has applied journal position {} but the journal ends at {end}: \
             journal files are missing",
            identity.applied_pos
        )));
    }
    if identity.applied_pos.next() < journal.first_pos() && identity.applied_pos < until.min(end) {
        return Err(Error::Conflict(format!(
            "database {name} needs journal records from position {} but the oldest journal file \
             starts at {}",
            identity.applied_pos.next(),
            journal.first_pos()
        )));
    }
    let conn = database::open_for_apply(&entry.file)?;
    let applier = Applier::new(&conn, name, &entry.file).on_conflict(entry.on_conflict());
    let update = set_applied_sql("main");
    let mut result = CatchUp {
        from: identity.applied_pos,
        to: identity.applied_pos,
        applied: 0,
    };
    let mut in_tx = false;
    let mut pending = 0u64;
    let commit = |pos: JournalPos| -> Result<()> {
        conn.execute(&update, [pos.0 as i64])?;
        conn.execute_batch("COMMIT")?;
        Ok(())
    };
    for record in journal.read_range(identity.applied_pos, until.min(end)) {
        let record = record?;
        if is_qualified_schema(&record, name) {
            if in_tx {
                commit(result.to)?;
                in_tx = false;
                pending = 0;
            }
            apply_schema_qualified(&entry.file, name, &record)?;
            result.to = record.pos;
            result.applied += 1;
            continue;
        }
        if !in_tx {
            conn.execute_batch("BEGIN")?;
            in_tx = true;
        }
        if applier.apply(&record)? {
            result.to = record.pos;
            result.applied += 1;
            pending += 1;
        }
        if pending >= REPLAY_BATCH {
            commit(result.to)?;
            in_tx = false;
            pending = 0;
        }
    }
    if in_tx {
        if pending > 0 {
            commit(result.to)?;
        } else {
            conn.execute_batch("ROLLBACK")?;
        }
    }
    Ok(result)
}
