//! Copy from Primary, as a member runs it: the button per missing database on the Mirror
//! Monitor and `POST /api/databases/<db>/copy`.
//!
//! A copy runs in the background ([`MirrorService::copy_from_primary`] answers at once): the
//! transfer and its check on a blocking thread ([`super::super::copy::fetch`]), then the steps a
//! person takes after a manual copy, in order — Dismount, the verified copy renamed over the
//! database file, Mount (which checks every page), Activate, Catchup. Its progress (bytes, rate,
//! time left, the outcome) is in [`MirrorService::copies`] for the monitor and `/api/mirror`.
//!
//! A transfer cut off by a lost connection is tried again a few times; one cut off by a stop or
//! a kill resumes when the instance starts again ([`MirrorService::resume_copies`]), from the
//! bytes it holds when the primary still has the same snapshot.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::MirrorService;
use crate::error::{Error, Result};
use crate::mirror::copy::{self, CopyProgress, CopyState};
use crate::mirror::events::EventKind;
use crate::mirror::state::{CatchupPhase, Role};
use crate::names::DbName;

/// How many times a transfer that lost its connection is tried again before the copy fails.
const ATTEMPTS: u32 = 5;

impl MirrorService {
    /// Copy from Primary (a backup or an async member): starts fetching a consistent copy of
    /// the mirrored database `db` from the primary, then installs, activates and catches it up.
    /// Answers at once; a second click while it runs says so and changes nothing.
    pub fn copy_from_primary(
        self: &Arc<Self>,
        db: DbName,
        max_bytes_per_s: Option<u64>,
    ) -> Result<String> {
        let what = format!("Copy {db} from Primary");
        let result = self.check_copy(&db).and_then(|()| {
            if !self.copies.begin(&db) {
                let p = self.copies.get(&db).expect("a running copy is listed");
                return Err(Error::Conflict(format!(
                    "a copy of {db} is already running ({}%)",
                    p.percent()
                )));
            }
            self.spawn_copy(db.clone(), max_bytes_per_s);
            Ok(format!(
                "copying {db} from the primary: the Mirror Monitor shows the progress; it is then \
                 mounted, activated and caught up"
            ))
        });
        self.operator(&what, result)
    }

    /// The copies this member ran since it started, by database.
    pub fn copies(&self) -> Vec<CopyProgress> {
        self.copies.list()
    }

    /// Resumes every copy a stop or a kill cut off (a partial copy lies beside its database).
    pub fn resume_copies(self: &Arc<Self>) {
        if !matches!(self.context.mirror.role(), Role::Backup | Role::Async(_)) {
            return;
        }
        let state = self.context.catalog.snapshot();
        for entry in state.databases.values() {
            let Some(partial) = copy::read_partial(&entry.file) else {
                continue;
            };
            if self.copies.begin(&entry.name) {
                tracing::info!(
                    "resuming the copy of {} from the primary (snapshot {})",
                    entry.name,
                    partial.snapshot
                );
                self.spawn_copy(entry.name.clone(), partial.max_bytes_per_s);
            }
        }
    }

    /// Refuses a copy a person could not mean: not a member that follows a primary, a database
    /// the mirror does not have or this member lacks, or one already in use here.
    fn check_copy(&self, db: &DbName) -> Result<()> {
        let role = self.context.mirror.role();
        if !matches!(role, Role::Backup | Role::Async(_)) {
            return Err(Error::Conflict(format!(
                "Copy from Primary runs on a backup or an async member; this member is {}",
                role.display()
            )));
        }
        let config = self.context.config.get();
        let m = config.mirror.member()?;
        if m.database(db).is_none() {
            return Err(Error::NotFound(format!(
                "{db} is not a mirrored database: Add to Mirror on the primary first"
            )));
        }
        let state = self.context.catalog.snapshot();
        let entry = state.database(db).map_err(|_| {
            Error::NotFound(format!(
                "this member has no database {db} to copy into: create it first"
            ))
        })?;
        let runtime = self.context.mirror.database(db);
        let in_use = entry.mounted
            && entry.mirrored.is_some()
            && config.mirror.activated(db)
            && (runtime.dejournaling || matches!(runtime.phase, CatchupPhase::Running { .. }));
        if in_use {
            return Err(Error::Conflict(format!(
                "{db} is a caught-up copy already (it follows the primary's journal): nothing to copy"
            )));
        }
        Ok(())
    }

    fn spawn_copy(self: &Arc<Self>, db: DbName, max_bytes_per_s: Option<u64>) {
        let this = self.clone();
        tokio::spawn(async move {
            let result = this.run_copy(&db, max_bytes_per_s).await;
            let (state, message) = match &result {
                Ok(message) => (CopyState::Done, message.clone()),
                Err(err) => (CopyState::Failed, err.to_string()),
            };
            this.copies.update(&db, |p| {
                p.state = state;
                p.seconds_left = None;
                p.message = Some(message.clone());
            });
            this.context.mirror.record(
                EventKind::Operator,
                format!("Copy {db} from Primary {state}: {message}"),
            );
        });
    }

    async fn run_copy(&self, db: &DbName, max_bytes_per_s: Option<u64>) -> Result<String> {
        let mut attempt = 1;
        let copied = loop {
            match self.transfer(db, max_bytes_per_s).await {
                Ok(path) => break path,
                // The connection was lost or the primary is changing: the bytes held are kept
                // and the next attempt resumes from them.
                Err(err @ (Error::Unavailable(_) | Error::Io(_))) if attempt < ATTEMPTS => {
                    tracing::warn!("copy of {db}, attempt {attempt}: {err}; trying again");
                    self.copies
                        .update(db, |p| p.message = Some(format!("{err}; trying again")));
                    attempt += 1;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(err) => return Err(err),
            }
        };
        self.copies.update(db, |p| {
            p.state = CopyState::Installing;
            p.message = None;
        });
        self.install(db, copied).await
    }

    /// One transfer from the primary the configuration names now.
    async fn transfer(&self, db: &DbName, max_bytes_per_s: Option<u64>) -> Result<PathBuf> {
        let config = self.context.config.get();
        let m = config.mirror.member()?.clone();
        let primary = m
            .primary_name
            .as_deref()
            .and_then(|p| m.member(p))
            .cloned()
            .ok_or_else(|| Error::Unavailable("the primary is not known yet".into()))?;
        let file = self.context.catalog.snapshot().database(db)?.file.clone();
        let identity = self.context.identity.clone();
        let network = self.context.network.clone();
        let copies = self.copies.clone();
        let name = db.clone();
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let mut report = |at: u64, total: u64, from: u64| {
                let seconds = started.elapsed().as_secs_f64();
                let rate = if seconds > 0.2 {
                    ((at - from) as f64 / seconds) as u64
                } else {
                    0
                };
                copies.update(&name, |p| {
                    p.state = if at == total {
                        CopyState::Verifying
                    } else {
                        CopyState::Copying
                    };
                    p.bytes = at;
                    p.total = total;
                    p.resumed_from = from;
                    p.rate_bytes_per_s = rate;
                    p.seconds_left = (total - at).checked_div(rate);
                });
            };
            copy::fetch(
                &*network,
                &identity,
                &m,
                &primary,
                &name,
                &file,
                max_bytes_per_s,
                &mut report,
            )
        })
        .await
        .map_err(|e| Error::Internal(format!("copy task failed: {e}")))?
    }

    /// The steps after a manual copy: Dismount, the copy in place of the file, Mount,
    /// Activate, Catchup.
    async fn install(&self, db: &DbName, copied: PathBuf) -> Result<String> {
        self.context.writer.dismount(db.clone()).await?;
        let file = self.context.catalog.snapshot().database(db)?.file.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            // The old file's WAL and shared-memory index would be read as the new file's: they
            // go before the copy takes its place (a dismounted database has folded its WAL in).
            for extra in [
                crate::storage::database::wal_path(&file),
                PathBuf::from(format!("{}-shm", file.display())),
            ] {
                if extra.exists() {
                    std::fs::remove_file(&extra)
                        .map_err(|e| Error::Io(format!("remove {}: {e}", extra.display())))?;
                }
            }
            // The rename is the only moment the file changes: before it the old database,
            // after it the whole verified copy; never half a file.
            std::fs::rename(&copied, &file)
                .map_err(|e| Error::Io(format!("put the copy in place: {e}")))?;
            let folder = file.parent().expect("a database file has a folder");
            crate::util::sync_dir(folder)?;
            copy::discard_partial(&file)?;
            crate::util::sync_dir(folder)
        })
        .await
        .map_err(|e| Error::Internal(format!("install task failed: {e}")))??;
        self.context.writer.mount(db.clone()).await?;
        if !self.context.config.get().mirror.activated(db) {
            self.activate(db.clone()).await?;
        }
        let runtime = self.context.mirror.database(db);
        if !runtime.dejournaling && !matches!(runtime.phase, CatchupPhase::Running { .. }) {
            self.catchup(db.clone()).await?;
        }
        Ok(format!(
            "{db} copied from the primary, mounted, activated and caught up"
        ))
    }
}
