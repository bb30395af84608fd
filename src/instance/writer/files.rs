//! Mounting and dismounting database files, and stamping the journal position every database
//! holds — the work that opens and closes files, in order with the writes.

use super::*;

impl Writer {
    pub(super) fn mount(&mut self, name: &DbName) -> Result<String> {
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
        let mirrored = if identity.stream == self.local_stream {
            let caught_up = recovery::catch_up(
                &entry,
                &self.local.shared(),
                self.local_stream,
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
                recovery::catch_up(&entry, &shared, m.mirror.id, shared.durable_end())?;
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
        if mirrored
            && !self.is_primary()
            && let Some(Some(more)) =
                self.with_extension(|extension, writer| extension.copy_mounted(writer, name))
        {
            message.push_str(&more);
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
    pub(super) fn stamp_positions(&mut self) -> Result<()> {
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

    pub(super) fn dismount(&mut self, name: &DbName) -> Result<String> {
        let entry = self.catalog.snapshot().database(name)?.clone();
        if !entry.mounted {
            return Ok(format!("{name} is already dismounted"));
        }
        self.config.update(|c| {
            c.database_mut(name)?.mounted = false;
            Ok(())
        })?;
        if let Some(extension) = self.extension.as_mut() {
            extension.dismounted(name);
        }
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
}
