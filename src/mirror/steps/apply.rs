//! A backup's (or async's) side: activating copies, Catchup, and dejournaling — applying the
//! mirror journal to the copies in gathered rounds, one transaction per database per round,
//! never beyond what the primary committed. Dejournaling that stopped on a full disk resumes by
//! itself.

use super::*;
use crate::instance::recovery;
use crate::journal::{JournalShared, RecordBody};
use crate::storage::database::{
    self, Applier, ChangesetRun, apply_schema_qualified, is_qualified_schema, set_applied_sql,
};

/// Whether `err` may say the disk is full: SQLite's "database or disk is full", the system's "No
/// space left on device", and SQLite's "disk I/O error", which is what a write into the WAL or
/// its shared memory that runs out of space reports (SQLite tells `SQLITE_FULL` only for some
/// writes). A failure that goes away by itself once space is freed; trying the copy again
/// after another I/O error is harmless, since the failed round's transaction was rolled back
/// and the copy resumes from the position it holds.
pub(super) fn is_disk_full(err: &Error) -> bool {
    let text = err.to_string();
    text.contains("disk is full")
        || text.contains("No space left")
        || text.contains("disk I/O error")
}

impl MirrorSteps {
    pub(super) fn activate(&mut self, w: &mut Writer, name: &DbName) -> Result<String> {
        let config = w.config().get();
        let membership = config.mirror.member()?;
        if w.is_primary() {
            return Ok(format!(
                "{name} is Normal on the primary: nothing to activate"
            ));
        }
        let entry = w.catalog().snapshot().database(name)?.clone();
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
        w.config().update(|c| {
            if let Some(m) = c.mirror.membership.as_mut() {
                m.activated.push(name.clone());
            }
            Ok(())
        })?;
        Ok(format!("{name} activated; it needs Catchup"))
    }

    /// Catchup applies the journal to a copy only after the user activated it: Activate is the
    /// step where they confirm that this file is the copy they meant to bring in.
    pub(super) fn require_activated(&self, w: &Writer, name: &DbName) -> Result<()> {
        if w.is_primary() {
            return Ok(());
        }
        let config = w.config().get();
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
    pub(super) fn start_catchup(&mut self, w: &mut Writer, name: &DbName) -> Result<String> {
        if w.is_primary() {
            return Ok(format!("{name} is Normal on the primary"));
        }
        if self.cursors.contains_key(name) {
            return Ok(format!("{name} is already catching up or dejournaling"));
        }
        let entry = w.catalog().snapshot().database(name)?.clone();
        let journal = self
            .mirror
            .journal()
            .ok_or_else(|| Error::Conflict("this member has no mirror journal yet".into()))?;
        let identity = recovery::identity_of(&entry)?;
        if Some(&identity.stream)
            != w.config()
                .get()
                .mirror
                .membership
                .as_ref()
                .map(|m| &m.mirror.id)
        {
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
        w.queue_turn();
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
    pub(super) fn follow_activated_copies(&mut self, w: &mut Writer) {
        if w.is_primary() {
            return;
        }
        let config = w.config().get();
        let Some(membership) = config.mirror.membership.as_ref() else {
            return;
        };
        let state = w.catalog().snapshot();
        for name in &membership.activated {
            if state
                .databases
                .get(name)
                .is_some_and(|d| d.mounted && d.mirrored.is_some())
                && let Err(err) = self.start_catchup(w, name)
            {
                tracing::warn!("{name}: {err}");
            }
        }
    }

    /// Postpones a dejournal round that comes too soon after the last one, unless many records
    /// wait: `Some(when)` to run it then.
    pub(super) fn dejournal_later(&mut self) -> Option<Instant> {
        let waiting = match self.cursors.values().min() {
            Some(from) => self.mirror.dejournal_target().0.saturating_sub(from.0),
            None => 0,
        };
        let due = self.last_dejournal + DEJOURNAL_GATHER;
        if waiting > 0 && waiting < DEJOURNAL_CHUNK && Instant::now() < due {
            return Some(due);
        }
        None
    }

    /// Applies up to [`DEJOURNAL_CHUNK`] received records to the databases that follow the
    /// mirror journal, each in one transaction with its new applied position.
    pub(super) fn dejournal(&mut self, w: &mut Writer) {
        self.last_dejournal = Instant::now();
        let Some(journal) = self.mirror.journal() else {
            return;
        };
        if w.is_primary() {
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
            if let Err(err) = self.start_catchup(w, &db) {
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
            if let Err((failed, err)) = self.apply_range(w, &journal, from, until) {
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
                w.queue_turn();
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
    pub(super) fn apply_range(
        &mut self,
        w: &mut Writer,
        journal: &JournalShared,
        from: JournalPos,
        until: JournalPos,
    ) -> Result<(), (Vec<DbName>, Error)> {
        let state = w.catalog().snapshot();
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
}
