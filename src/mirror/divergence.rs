//! A divergent tail: what a former primary wrote that the mirror's new primary never received.
//!
//! # When it happens
//!
//! A backup takes over while the old primary still has journal records it never passed on —
//! written while the backup was not active (the primary went on alone after its trouble
//! timeout), or committed locally and never acknowledged to a client before the primary died.
//! The new primary starts a new epoch at the end of what *it* holds. When the old primary comes
//! back and asks to follow, the new primary tells it where the histories fork (the position
//! before the first newer epoch, see [`fork_point`](crate::config::mirror::fork_point)); everything
//! after that in the old primary's journal is the divergent tail.
//!
//! # What is done with it
//!
//! Nothing is silently merged or dropped:
//!
//! 1. [`quarantine`] writes every row change of the tail, as the old primary made it, to
//!    `mgr/quarantine.jsonl` (one JSON object per row change: position, epoch, time, database,
//!    table, operation, old and new values). The Mirror Monitor lists them, so a person can
//!    decide what to re-enter on the new primary.
//! 2. [`undo`] rolls each database copy back to the fork: the changesets it applied after the
//!    fork are *inverted* (SQLite's session extension turns an insert into a delete, an update
//!    into the reverse update) and applied newest first, in one transaction together with the
//!    copy's new applied position. A conflict means the copy no longer matches what the journal
//!    says it applied; a schema statement in the tail cannot be inverted. Both are refused with
//!    a message saying the member must be rebuilt (remove its mirror configuration, copy the
//!    databases from the primary again, join again).
//! 3. Only then does the receiver cut its journal at the fork and follow the new primary.
//!
//! Both steps are idempotent: a crash between them repeats the quarantine of the same records
//! (the file then lists them twice, with the same positions) and undoes nothing twice, since
//! each copy's applied position says what it still holds.

use std::io::Write;
use std::path::{Path, PathBuf};

use rusqlite::fallible_streaming_iterator::FallibleStreamingIterator;
use rusqlite::session::ChangesetIter;
use rusqlite::types::ValueRef;
use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::journal::{Epoch, JournalPos, JournalShared, RecordBody};
use crate::storage::DatabaseEntry;
use crate::storage::database::{self, OnConflict, apply_changesets, set_applied_sql};
use crate::util::now_ms;

/// The quarantine file in the data directory.
pub fn quarantine_file(data_dir: &Path) -> PathBuf {
    data_dir.join("mgr").join("quarantine.jsonl")
}

/// One row change of a divergent tail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuarantinedRow {
    /// When it was put in quarantine (ms since the Unix epoch).
    pub quarantined_ms: i64,
    /// The mirror.
    pub mirror: String,
    /// Journal position of the record.
    pub position: u64,
    /// The epoch the old primary wrote it in.
    pub epoch: Epoch,
    /// Commit time on the old primary (ms since the Unix epoch).
    pub time_ms: i64,
    /// Database.
    pub database: String,
    /// Table.
    pub table: String,
    /// `INSERT`, `UPDATE` or `DELETE`.
    pub operation: String,
    /// Column values before (UPDATE, DELETE; for an UPDATE only the primary key and the
    /// changed columns are known).
    pub old: Vec<serde_json::Value>,
    /// Column values after (INSERT, UPDATE).
    pub new: Vec<serde_json::Value>,
}

fn json_value(value: ValueRef<'_>) -> serde_json::Value {
    match value {
        ValueRef::Null => serde_json::Value::Null,
        ValueRef::Integer(i) => i.into(),
        ValueRef::Real(f) => f.into(),
        ValueRef::Text(t) => String::from_utf8_lossy(t).into(),
        ValueRef::Blob(b) => format!("x'{}'", crate::util::hex(b)).into(),
    }
}

/// Decodes the row changes of one changeset.
fn rows_of(changeset: &[u8], base: &QuarantinedRow) -> Result<Vec<QuarantinedRow>> {
    let mut input: &[u8] = changeset;
    let reader: &mut dyn std::io::Read = &mut input;
    let mut items = ChangesetIter::start_strm(&reader)?;
    let mut rows = Vec::new();
    while let Some(item) = items.next()? {
        let op = item.op()?;
        let columns = op.number_of_columns().max(0) as usize;
        let operation = match op.code() {
            rusqlite::hooks::Action::SQLITE_INSERT => "INSERT",
            rusqlite::hooks::Action::SQLITE_UPDATE => "UPDATE",
            rusqlite::hooks::Action::SQLITE_DELETE => "DELETE",
            _ => "UNKNOWN",
        };
        let values = |old: bool| -> Vec<serde_json::Value> {
            (0..columns)
                .map(|c| {
                    let v = if old {
                        item.old_value(c)
                    } else {
                        item.new_value(c)
                    };
                    v.map(json_value).unwrap_or(serde_json::Value::Null)
                })
                .collect()
        };
        rows.push(QuarantinedRow {
            table: op.table_name().to_string(),
            operation: operation.into(),
            old: if operation == "INSERT" {
                Vec::new()
            } else {
                values(true)
            },
            new: if operation == "DELETE" {
                Vec::new()
            } else {
                values(false)
            },
            ..base.clone()
        });
    }
    Ok(rows)
}

/// Appends every row change of the records after `after` to the quarantine file (made
/// durable); returns how many.
pub fn quarantine(
    journal: &JournalShared,
    after: JournalPos,
    data_dir: &Path,
    mirror: &str,
) -> Result<usize> {
    let mut lines = Vec::new();
    let mut count = 0;
    let now = now_ms();
    for record in journal.read_range(after, journal.appended_end()) {
        let record = record?;
        let RecordBody::Changes(changes) = &record.body else {
            continue;
        };
        for change in changes {
            let base = QuarantinedRow {
                quarantined_ms: now,
                mirror: mirror.to_string(),
                position: record.pos.0,
                epoch: record.epoch,
                time_ms: record.time_ms,
                database: change.db.clone(),
                table: String::new(),
                operation: String::new(),
                old: Vec::new(),
                new: Vec::new(),
            };
            for row in rows_of(&change.changeset, &base)? {
                serde_json::to_writer(&mut lines, &row)
                    .map_err(|e| Error::Internal(format!("encode a quarantined row: {e}")))?;
                lines.push(b'\n');
                count += 1;
            }
        }
    }
    if lines.is_empty() {
        return Ok(0);
    }
    let path = quarantine_file(data_dir);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .io_context(format!("open {}", path.display()))?;
    // Durability: the rows are on disk before anything is undone, so they survive a crash.
    file.write_all(&lines)
        .and_then(|_| file.sync_all())
        .io_context(format!("write {}", path.display()))?;
    Ok(count)
}

/// What the monitor shows of the quarantine file: how many rows it holds, the newest few, and
/// how many lines could not be read.
#[derive(Debug, Clone, Default)]
pub struct QuarantineSummary {
    /// Rows in the file.
    pub count: usize,
    /// The newest rows, oldest first (at most the number asked for).
    pub newest: Vec<QuarantinedRow>,
    /// Lines that are not a row (a damaged file): counted, and said on the monitor.
    pub unreadable: usize,
}

/// Reads the quarantine file incrementally: the file only grows, so each call reads just what
/// was appended since the last one (the monitor refreshes every few seconds; re-reading a large
/// file whole each time would cost without end). Keeps at most `keep` newest rows in memory.
#[derive(Debug, Default)]
pub struct QuarantineReader {
    /// Bytes of the file read so far, and the summary up to there.
    read: u64,
    summary: QuarantineSummary,
}

impl QuarantineReader {
    /// The summary of the file in `data_dir`, keeping the newest `keep` rows.
    pub fn summary(&mut self, data_dir: &Path, keep: usize) -> QuarantineSummary {
        use std::io::{Read, Seek, SeekFrom};
        let Ok(mut file) = std::fs::File::open(quarantine_file(data_dir)) else {
            return QuarantineSummary::default();
        };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len < self.read {
            // Replaced by a smaller file: start over.
            *self = QuarantineReader::default();
        }
        let mut appended = String::new();
        if file.seek(SeekFrom::Start(self.read)).is_ok()
            && file.read_to_string(&mut appended).is_ok()
        {
            // Only whole lines: a line being written now is read next time.
            let whole = appended.rfind('\n').map(|i| i + 1).unwrap_or(0);
            for line in appended[..whole].lines().filter(|l| !l.is_empty()) {
                match serde_json::from_str::<QuarantinedRow>(line) {
                    Ok(row) => {
                        self.summary.count += 1;
                        self.summary.newest.push(row);
                    }
                    Err(err) => {
                        self.summary.unreadable += 1;
                        tracing::warn!(
                            "mirror: a line of the quarantine file is unreadable: {err}"
                        );
                    }
                }
            }
            let excess = self.summary.newest.len().saturating_sub(keep);
            self.summary.newest.drain(..excess);
            self.read += whole as u64;
        }
        self.summary.clone()
    }
}

/// Rolls `entry`'s copy back to position `after`: inverts, newest first, the changesets it
/// applied after it. Returns how many records were undone.
pub fn undo(entry: &DatabaseEntry, journal: &JournalShared, after: JournalPos) -> Result<u64> {
    let name = entry.name.as_str();
    let identity = crate::instance::recovery::identity_of(entry)?;
    if identity.applied_pos <= after {
        return Ok(0);
    }
    let rebuild = |why: String| {
        Error::Conflict(format!(
            "{name} cannot be rolled back to journal position {after}: {why}. This member must be \
             rebuilt: remove its mirror configuration, copy the databases from the primary and join again"
        ))
    };
    let mut changesets = Vec::new();
    for record in journal.read_range(after, identity.applied_pos) {
        let record = record?;
        match &record.body {
            RecordBody::Changes(changes) => {
                if let Some(change) = changes.iter().find(|c| c.db == name) {
                    changesets.push((record.pos, change.changeset.clone()));
                }
            }
            RecordBody::Schema(schema) if schema.db == name => {
                return Err(rebuild(format!(
                    "the tail holds a schema change at position {}",
                    record.pos
                )));
            }
            _ => {}
        }
    }
    let conn = database::open_for_apply(&entry.file)?;
    conn.execute_batch("BEGIN")?;
    let undone = (|| -> Result<u64> {
        for (pos, changeset) in changesets.iter().rev() {
            let mut inverted = Vec::with_capacity(changeset.len());
            rusqlite::session::invert_strm(&mut &changeset[..], &mut inverted)?;
            apply_changesets(
                &conn,
                name,
                &inverted,
                &format!("undo of position {pos}"),
                OnConflict::Abort,
            )
            .map_err(|e| rebuild(e.to_string()))?;
        }
        // The new applied position goes in the same transaction as the undone rows.
        conn.execute(&set_applied_sql("main"), [after.0 as i64])?;
        Ok(changesets.len() as u64)
    })();
    match undone {
        Ok(n) => {
            conn.execute_batch("COMMIT")?;
            tracing::warn!("{name}: undid {n} records after journal position {after}");
            Ok(n)
        }
        Err(err) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(err)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn row(position: u64) -> String {
        serde_json::json!({
            "quarantined_ms": 1, "mirror": "MIRRORSET", "position": position, "epoch": 1,
            "time_ms": 1, "database": "COMPANY", "table": "Company", "operation": "INSERT",
            "old": [], "new": ["x"]
        })
        .to_string()
    }

    #[test]
    fn the_monitor_reads_only_what_was_appended_and_keeps_the_newest_rows() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("mgr")).unwrap();
        let path = quarantine_file(dir.path());
        let mut reader = QuarantineReader::default();
        assert_eq!(reader.summary(dir.path(), 2).count, 0);
        let mut file = std::fs::File::create(&path).unwrap();
        for position in 1..=3 {
            writeln!(file, "{}", row(position)).unwrap();
        }
        // A damaged line, and half a line still being written.
        writeln!(file, "not a row").unwrap();
        let fourth = row(4);
        write!(file, "{}", &fourth[..10]).unwrap();
        let summary = reader.summary(dir.path(), 2);
        assert_eq!((summary.count, summary.unreadable), (3, 1));
        let positions: Vec<u64> = summary.newest.iter().map(|r| r.position).collect();
        assert_eq!(positions, vec![2, 3]);
        // The rest of the line arrives, and one more row: only they are read.
        writeln!(file, "{}", &fourth[10..]).unwrap();
        writeln!(file, "{}", row(5)).unwrap();
        let summary = reader.summary(dir.path(), 2);
        assert_eq!((summary.count, summary.unreadable), (5, 1));
        let positions: Vec<u64> = summary.newest.iter().map(|r| r.position).collect();
        assert_eq!(positions, vec![4, 5]);
    }
}
