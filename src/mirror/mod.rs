//! Mirroring: a primary and a backup kept identical by shipping the journal (essay to be
//! completed with the data channel).

pub mod config;
pub mod hub;
pub mod protocol;
pub mod state;
pub mod status;

use std::path::Path;

use crate::error::{IoContext, Result};
use crate::instance::config::ConfigStore;
use crate::journal::{JournalPos, JournalShared, RecordBody};
use crate::storage::CatalogState;
use crate::storage::database;

/// True when `dir` holds journal files named with `prefix`.
pub fn journal_exists(dir: &Path, prefix: &str) -> Result<bool> {
    if !dir.is_dir() {
        return Ok(false);
    }
    for entry in std::fs::read_dir(dir).io_context("list journal folder")? {
        let name = entry
            .io_context("list journal folder")?
            .file_name()
            .to_string_lossy()
            .into_owned();
        if name.starts_with(prefix) && !name.ends_with(".tmp") {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Finishes (or drops) Add to Mirror steps a crash interrupted on the primary: when the journal
/// holds the event, the database is switched to the mirror journal and recorded as mirrored;
/// when it does not, the intent is forgotten.
pub fn finish_pending_adds(
    config: &ConfigStore,
    data_dir: &Path,
    membership: &config::Membership,
    journal: &JournalShared,
) -> Result<()> {
    for pending in &membership.pending_adds {
        let pos = JournalPos(pending.added_at);
        let written = journal.read_range(JournalPos(pos.0.saturating_sub(1)), pos).next().transpose()?.is_some_and(|r| {
            matches!(&r.body, RecordBody::Event(e) if e.db.as_deref() == Some(pending.name.as_str()))
        });
        if written {
            let directory = config
                .get()
                .databases
                .iter()
                .find(|d| d.name == pending.name)
                .map(|d| d.directory.clone());
            if let Some(directory) = directory {
                database::switch_stream(
                    &CatalogState::file_path(data_dir, &directory),
                    &membership.mirror.id,
                    pos,
                )?;
            }
            tracing::warn!(
                "finished adding {} to the mirror after a restart",
                pending.name
            );
        }
        config.update(|c| {
            if let Some(m) = c.mirror.membership.as_mut() {
                m.pending_adds.retain(|p| p.name != pending.name);
                if written && m.database(&pending.name).is_none() {
                    m.databases.push(pending.clone());
                }
            }
            if written && let Ok(db) = c.database_mut(&pending.name) {
                db.mirrored = true;
            }
            Ok(())
        })?;
    }
    Ok(())
}
