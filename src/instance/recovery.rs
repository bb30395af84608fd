//! Bringing a database file up to date from the journal: at start-up (crash recovery) and when a
//! database is mounted.
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
use crate::journal::{JournalPos, JournalShared};
use crate::storage::DatabaseEntry;
use crate::storage::database::{
    self, Applier, apply_schema_qualified, is_qualified_schema, set_applied_sql,
};

/// Records applied per SQLite transaction while replaying.
const REPLAY_BATCH: u64 = 1_000;

/// What bringing one database up to date did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatchUp {
    /// Applied position before.
    pub from: JournalPos,
    /// Applied position after (the last record that touched the database).
    pub to: JournalPos,
    /// Records applied.
    pub applied: u64,
}

/// Checks the file of `entry` and applies the journal records it lacks.
pub fn catch_up(
    entry: &DatabaseEntry,
    journal: &JournalShared,
    stream_hex: &str,
) -> Result<CatchUp> {
    let name = entry.name.as_str();
    let conn = database::open_for_apply(&entry.file)?;
    let identity = database::read_identity(&conn, "main")
        .map_err(|e| Error::Conflict(format!("{} ({}): {e}", entry.name, entry.file.display())))?;
    if identity.name != name {
        return Err(Error::Conflict(format!(
            "the file in {} holds database {}, not {name}",
            entry.directory, identity.name
        )));
    }
    if identity.stream != stream_hex {
        return Err(Error::Conflict(format!(
            "the file in {} is a copy of {name} from another instance: its changes cannot be \
             brought up to date from this instance's journal",
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
    let applier = Applier::new(&conn, name, &entry.file);
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
    for record in journal.read_after(identity.applied_pos) {
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
