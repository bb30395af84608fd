//! Freeze and Thaw: writes stop and every database file is made complete on its own, so a user
//! can copy the files (the walk-through's "copy the database files" step) while the instance
//! runs. Writes and the extension's turns wait behind a Freeze (see `Writer::next_command`)
//! and go back in line, first and in order, at the Thaw, where the writes that waited commit
//! together (one fsync, not one each); the Freeze ends by itself after its timeout, so a
//! forgotten one cannot stop a member for good.

use super::*;

impl Writer {
    pub(super) fn freeze(&mut self, timeout: Duration) -> Result<String> {
        if self.frozen_until.is_some() {
            return Ok("writes are already frozen".into());
        }
        // Fold every WAL into its database file, so each file is complete on its own. The
        // checkpointer's lock is held until the flag is up: a pass already running ends first,
        // and none starts until the Thaw (see `checkpointer`).
        let catalog = self.catalog.clone();
        let _checkpoints = catalog.hold_checkpoints();
        let state = catalog.snapshot();
        for entry in state.databases.values().filter(|d| d.mounted) {
            database::checkpoint(&database::open(&entry.file)?).map_err(|_| {
                Error::Conflict(format!("{} is busy; try Freeze again", entry.name))
            })?;
        }
        self.frozen_until = Some(self.clock.now() + timeout);
        self.frozen_flag.store(true, Ordering::Release);
        tracing::info!("writes frozen for at most {} s", timeout.as_secs());
        Ok(format!(
            "writes are frozen and every database file is complete: copy them now, then Thaw \
             (writes resume by themselves after {} s)",
            timeout.as_secs()
        ))
    }

    pub(super) fn thaw(&mut self) -> String {
        self.frozen_flag.store(false, Ordering::Release);
        match self.frozen_until.take() {
            Some(_) => "writes resumed".to_string(),
            None => "writes were not frozen".to_string(),
        }
    }
}
