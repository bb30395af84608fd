//! Journal purge: deleting the journal files nothing needs any more.
//!
//! A journal only grows; purging is what keeps a long-running lab's disk in check, and it is also
//! what makes a stale copy of a mirrored database *Obsolete*: once the records a copy would need
//! are gone from every member, the copy can never be caught up and must be replaced.
//!
//! # Who needs a record
//!
//! - **Every mounted database** needs the records after its applied position: crash recovery and
//!   Mount replay from there. The writer first moves the position of each database it writes up
//!   to its journal's end (an idle database would otherwise pin the journal since its last
//!   write). Only a position that is durable *inside the database file* counts,
//!   because database commits skip fsync (the journal is what is durable). So each database's
//!   position is read first and the database is then checkpointed (WAL copied into the file, the
//!   file fsynced): after that, the position read is on disk whatever happens next.
//! - **On the primary, every other failover member** needs the mirror journal after what it
//!   acknowledged: that is where its link resumes. A member that is not connected might need
//!   anything, so the mirror journal is then kept whole (and the answer says why).
//!
//! Dismounted databases are not considered — the user may be replacing their files. Mounting one
//! whose records were purged is refused with a message saying what to do; Catchup of a copy whose
//! records are gone from the primary too marks it Obsolete.
//!
//! # What is left out
//!
//! No automatic purge policy (IRIS purges after N days or N backups); the user purges from the
//! Journals page or `POST /api/journal/purge`. Whole files only, and never the newest file of a
//! journal (see [`JournalShared::purge_before`]).

use crate::error::Result;
use crate::journal::{JournalPos, JournalShared};
use crate::storage::database;

use super::Instance;

/// What a purge removed and what it kept on purpose.
#[derive(Debug, Default)]
pub struct PurgeReport {
    /// Local journal files removed.
    pub local_removed: Vec<String>,
    /// Mirror journal files removed.
    pub mirror_removed: Vec<String>,
    /// Why some journal was kept although older than every database needs.
    pub kept_because: Vec<String>,
}

impl PurgeReport {
    /// One sentence for the portal.
    pub fn message(&self) -> String {
        let removed: Vec<&String> = self
            .local_removed
            .iter()
            .chain(&self.mirror_removed)
            .collect();
        let mut message = if removed.is_empty() {
            "no journal file could be purged: every file is still needed (the newest file of a \
             journal is always kept)"
                .to_string()
        } else {
            format!(
                "purged {} journal file{}: {}",
                removed.len(),
                if removed.len() == 1 { "" } else { "s" },
                removed
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        for why in &self.kept_because {
            message.push_str("; ");
            message.push_str(why);
        }
        message
    }
}

/// The first position a journal must keep: the oldest record any holder still needs, and never
/// past the journal's end (a journal with no holder keeps its newest records).
pub fn keep_from(end: JournalPos, needs: impl IntoIterator<Item = JournalPos>) -> JournalPos {
    needs.into_iter().fold(end.next(), JournalPos::min)
}

/// Purges both journals of `instance` as far as nothing needs them (blocking: checkpoints and
/// deletes files).
pub fn purge(instance: &Instance) -> Result<PurgeReport> {
    // One checkpointer at a time (the checkpointer thread's passes, a Freeze), then the gate:
    // Dismount waits for it, so no file is swapped while its position is being read.
    let _checkpoints = instance.catalog.hold_checkpoints();
    let _files = instance.catalog.enter_files();
    let state = instance.catalog.snapshot();
    let config = instance.config.get();
    let membership = config.mirror.membership.as_ref();
    let local_stream = instance.journal.stream();
    let mut local_needs = Vec::new();
    let mut mirror_needs = Vec::new();
    let mut report = PurgeReport::default();
    for entry in state.databases.values().filter(|e| e.mounted) {
        let conn = database::open(&entry.file)?;
        let identity = database::read_identity(&conn, "main")?;
        // Read first, checkpoint second: the position read is then durable in the file.
        database::checkpoint(&conn)?;
        let need = identity.applied_pos.next();
        if identity.stream == local_stream {
            local_needs.push(need);
        } else if membership.is_some_and(|m| m.mirror.id == identity.stream) {
            mirror_needs.push(need);
        }
    }
    if let Some(m) = membership
        && instance.role.is_primary()
    {
        for (member, need) in instance.role.members_need(m) {
            match need {
                Some(need) => mirror_needs.push(need),
                None => {
                    mirror_needs.push(JournalPos(1));
                    report.kept_because.push(format!(
                        "the mirror journal is kept whole while member {member} is not connected"
                    ));
                }
            }
        }
    }
    report.local_removed = purge_one(&instance.journal, local_needs)?;
    if let Some(journal) = instance.role.mirror_journal() {
        report.mirror_removed = purge_one(&journal, mirror_needs)?;
    }
    for name in report.local_removed.iter().chain(&report.mirror_removed) {
        tracing::info!("journal file {name} purged");
    }
    Ok(report)
}

fn purge_one(journal: &JournalShared, needs: Vec<JournalPos>) -> Result<Vec<String>> {
    journal.purge_before(keep_from(journal.durable_end(), needs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_oldest_need_and_nothing_past_the_end() {
        let end = JournalPos(100);
        assert_eq!(keep_from(end, []), JournalPos(101));
        assert_eq!(
            keep_from(end, [JournalPos(40), JournalPos(7), JournalPos(90)]),
            JournalPos(7)
        );
        assert_eq!(keep_from(end, [JournalPos(500)]), JournalPos(101));
    }

    #[test]
    fn the_message_names_files_and_reasons() {
        let report = PurgeReport {
            local_removed: vec!["20261126.001".into()],
            mirror_removed: vec![],
            kept_because: vec!["kept for B".into()],
        };
        assert_eq!(
            report.message(),
            "purged 1 journal file: 20261126.001; kept for B"
        );
        assert!(
            PurgeReport::default()
                .message()
                .starts_with("no journal file")
        );
    }
}
