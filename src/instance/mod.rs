//! The instance: the database server process.
//!
//! # What it is
//!
//! The analogue of an IRIS instance. It owns a data directory (`--data-dir`) holding its
//! configuration (`mirrorlab.cpf`), its databases (`mgr/<db>/database.sqlite`), its journal
//! (`mgr/journal/`) and its log (`mgr/messages.log`). It serves the management portal, the demo
//! applications and the `/api` endpoints on the web port.
//!
//! # How it starts
//!
//! [`Instance::prepare`], then [`Prepared::start`] ([`Instance::open`] does both for an instance
//! outside any mirror; a mirror member starts through [`crate::node`], which lets the mirror
//! decide the member's role between the two):
//! 1. locks the data directory (two instances on one directory would corrupt it);
//! 2. loads or creates the configuration, with the default user;
//! 3. installs what `install/` lists and the configuration lacks ([`install`]);
//! 4. opens the journal: cuts a torn tail, stops on corruption;
//! 5. replays into every mounted database the journal records it lacks ([`recovery`]) — this is
//!    crash recovery, and it is the same code that a mount runs;
//! 6. starts the writer thread ([`writer`]).
//!
//! # Threads
//!
//! One writer thread owns the journal and every write connection; all writes, mounts and
//! dismounts go through it in order. Reads run on tokio's blocking threads with pooled read-only
//! connections ([`reader`]). Nothing that touches SQLite or a file runs on an async task.
//!
//! # Left out
//!
//! Creating and deleting databases and namespaces from the portal (the install manifest does it),
//! per-database journaling switches, and anything mirror-related, which lives in its own module
//! and reaches the instance only through the seams the instance owns: [`role`] (whether this
//! member writes mirrored databases), [`writer::replication`] (where mirrored batches go) and
//! [`writer::extension`] (the mirror's work on the writer thread).

pub(crate) mod install;
pub(crate) mod productions;
pub(crate) mod purge;
pub(crate) mod reader;
pub(crate) mod recovery;
pub(crate) mod role;
pub(crate) mod sql;
pub(crate) mod users;
pub(crate) mod writer;

use std::borrow::Cow;
use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::error::{Error, IoContext, Result};
use crate::journal::{
    DEFAULT_MAX_SEGMENT_BYTES, Journal, JournalIo, JournalOptions, JournalPos, JournalShared,
    OpenReport, StreamId,
};
use crate::names::{DbName, NamespaceName};
use crate::storage::Catalog;
use crate::storage::database;

use crate::config::{ConfigStore, InstanceConfig, catalog_state};
use install::{InstallReport, InstallSource};
use reader::{ReadOutcome, ReadPool};
use recovery::CatchUp;
use sql::{QueryResult, SqlValue};
use writer::{FatalHook, WriteRequest, Writer, WriterHandle, WriterSetup};

use crate::config::mirror::Membership;
use role::MemberRole;
use writer::extension::WriterExtension;
use writer::replication::Replication;

/// The IRIS instance name this lab reports by default (the article joins an instance called IRIS).
pub const DEFAULT_INSTANCE_NAME: &str = "IRIS";

/// How the instance is started.
#[derive(Debug, Clone)]
pub struct InstanceSettings {
    /// The data directory.
    pub data_dir: PathBuf,
    /// Address the portal and API listen on.
    pub web: String,
    /// Address of the superserver port (the mirror data channel).
    pub superserver: String,
    /// Address of this host's agent.
    pub agent: String,
    /// This host's name, shown in the portal and used in default member names.
    pub host_name: String,
    /// The instance name (`IRIS`).
    pub instance_name: String,
    /// Folder with `manifest.json` to install from (built-in copy when absent).
    pub install_dir: PathBuf,
    /// Segment size at which the journal starts a new file.
    pub max_segment_bytes: u64,
    /// How long one user statement may run on a reader before it is stopped (ms).
    pub statement_timeout_ms: i64,
    /// How long one write statement may run before it is stopped (ms): shorter, because while it
    /// runs no other write of the member can commit.
    pub write_timeout_ms: i64,
    /// `GET /metrics` asks for a login (see [`crate::web`]'s routes).
    pub metrics_login: bool,
    /// The portal has a Lab page (faults and the ledger; see `crate::lab`).
    pub lab: bool,
    /// A file holding the superuser's password for a fresh instance (see [`users`]); none: `SYS`.
    pub superuser_password_file: Option<PathBuf>,
    /// The write path's file operations of the journals opened at start (the instance's, and a
    /// primary's mirror journal): [`DirectIo`](crate::journal::DirectIo) but in fault tests.
    pub journal_io: Arc<dyn JournalIo>,
    /// The clock every timing decision of the member reads — the writer's waits, the
    /// replication hub's, the failover driver's and the receiver's ([`crate::clock`]): the
    /// machine's but in tests that move time themselves.
    pub clock: Arc<dyn crate::clock::Clock>,
    /// Where the superserver listens and the mirror's connections to other members go
    /// ([`crate::transport`]): TCP but in tests that run members in one process.
    pub network: Arc<dyn crate::transport::Network>,
}

impl InstanceSettings {
    /// Settings for a data directory with every address on loopback port 0 (tests).
    pub fn for_dir(data_dir: impl Into<PathBuf>) -> Self {
        InstanceSettings {
            data_dir: data_dir.into(),
            web: "127.0.0.1:0".into(),
            superserver: "127.0.0.1:0".into(),
            agent: "127.0.0.1:0".into(),
            host_name: "localhost".into(),
            instance_name: DEFAULT_INSTANCE_NAME.into(),
            install_dir: PathBuf::from("/nonexistent-install-folder"),
            max_segment_bytes: DEFAULT_MAX_SEGMENT_BYTES,
            statement_timeout_ms: crate::storage::namespace::STATEMENT_TIMEOUT_MS,
            write_timeout_ms: crate::storage::namespace::WRITE_TIMEOUT_MS,
            metrics_login: false,
            lab: false,
            superuser_password_file: None,
            journal_io: Arc::new(crate::journal::DirectIo),
            clock: Arc::new(crate::clock::SystemClock),
            network: Arc::new(crate::transport::Tcp),
        }
    }
}

/// What start-up found and did.
#[derive(Debug, Clone)]
pub struct StartupReport {
    /// Installation.
    pub install: InstallReport,
    /// Opening the journal.
    pub journal: OpenReport,
    /// Replay per mounted database.
    pub recovered: Vec<(DbName, CatchUp)>,
    /// Problems met (databases left dismounted), shown on the home page.
    pub warnings: Vec<String>,
}

/// A database as the portal and `/api/databases` show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseStatus {
    /// Name.
    pub name: DbName,
    /// Folder relative to the data directory.
    pub directory: String,
    /// Mounted or not.
    pub mounted: bool,
    /// Read-only (`R`) or read-write (`RW`).
    pub read_only: bool,
    /// Mirrored name, when it belongs to a mirror.
    pub mirrored: Option<String>,
    /// Size of the database file (and its WAL) in bytes.
    pub size_bytes: u64,
    /// Journal position applied (mounted databases only).
    pub applied_pos: Option<JournalPos>,
}

/// A running instance.
pub struct Instance {
    /// How it was started.
    pub settings: InstanceSettings,
    /// The configuration file.
    pub config: Arc<ConfigStore>,
    /// Databases and namespaces.
    pub catalog: Arc<Catalog>,
    /// The journal, as other threads see it.
    pub journal: Arc<JournalShared>,
    /// Its place in a mirror, as the instance needs to know it.
    pub role: Arc<dyn MemberRole>,
    /// What start-up did.
    pub startup: StartupReport,
    /// When it started (ms since the Unix epoch).
    pub started_ms: i64,
    readers: Arc<ReadPool>,
    writer: WriterHandle,
    writer_thread: Mutex<Option<JoinHandle<()>>>,
    replication: Arc<dyn Replication>,
    /// The manifest's productions (background jobs run on the primary only).
    pub productions: Vec<productions::Production>,
    /// Their states.
    pub productions_board: productions::ProductionBoard,
    _lock: File,
}

/// An instance half started: its data directory locked, its configuration loaded, its
/// installation done and its journal open — what a mirror needs to decide this member's role
/// before the instance recovers its databases and starts its writer ([`Prepared::start`]).
pub struct Prepared {
    /// How it is started.
    pub settings: InstanceSettings,
    /// The configuration file.
    pub config: Arc<ConfigStore>,
    /// The journal folder (`mgr/journal`), where a mirror journal lives too.
    pub journal_dir: PathBuf,
    journal: Journal,
    journal_report: OpenReport,
    install: InstallReport,
    source: InstallSource,
    lock: File,
}

/// What the layer above attaches to an instance: its answers about the member's role, where
/// mirrored batches go, the work it runs on the writer thread, and the mirror journal when this
/// member starts as its primary.
pub struct Attachments {
    /// Whether this member writes mirrored databases (see [`role`]).
    pub role: Arc<dyn MemberRole>,
    /// Where mirrored batches go (see [`writer::replication`]).
    pub replication: Arc<dyn Replication>,
    /// Work that runs on the writer thread (see [`writer::extension`]).
    pub extension: Option<Box<dyn WriterExtension>>,
    /// The mirror journal, when this member starts as its primary: recovery replays mirrored
    /// databases from it and the writer writes it.
    pub mirror_journal: Option<Journal>,
}

impl Attachments {
    /// An instance that belongs to no mirror.
    pub fn standalone() -> Attachments {
        Attachments {
            role: Arc::new(role::Standalone),
            replication: Arc::new(writer::replication::Unreplicated),
            extension: None,
            mirror_journal: None,
        }
    }
}

impl Instance {
    /// Starts an instance that belongs to no mirror on `settings.data_dir` (blocking: installs,
    /// recovers, starts the writer). A mirror member starts through [`crate::node`].
    pub fn open(settings: InstanceSettings, on_fatal: FatalHook) -> Result<Arc<Instance>> {
        Instance::prepare(settings)?.start(Attachments::standalone(), on_fatal)
    }

    /// Steps 1–4 of the module essay: lock, configuration, installation, journal.
    pub fn prepare(settings: InstanceSettings) -> Result<Prepared> {
        let data_dir = settings.data_dir.clone();
        let mgr = data_dir.join("mgr");
        let lock = lock_data_dir(&data_dir)?;

        // Read at every start, used only by a fresh configuration: a missing or unfit secret
        // stops the start with a clear error, rather than the member coming up with `SYS`.
        let password = match &settings.superuser_password_file {
            Some(path) => Some(users::read_password_file(path)?),
            None => None,
        };
        let config = Arc::new(ConfigStore::load_or_create(&data_dir, || {
            InstanceConfig::fresh(users::initial_users(password.as_deref()))
        })?);
        let source = InstallSource::load(&settings.install_dir)?;
        let install = install::install(&config, &data_dir, &source)?;
        if !install.created_databases.is_empty() || !install.created_namespaces.is_empty() {
            let join = |names: Vec<String>| names.join(", ");
            tracing::info!(
                "installed from {}: databases {}; namespaces {}",
                source.origin,
                join(
                    install
                        .created_databases
                        .iter()
                        .map(|d| d.to_string())
                        .collect()
                ),
                join(
                    install
                        .created_namespaces
                        .iter()
                        .map(|n| n.to_string())
                        .collect()
                )
            );
        }

        let stream = config.get().journal_stream;
        let journal_dir = mgr.join("journal");
        let (journal, journal_report) = Journal::open(
            &journal_dir,
            stream,
            JournalOptions::local(settings.max_segment_bytes).with_io(settings.journal_io.clone()),
        )?;
        if let Some((segment, offset, bytes)) = &journal_report.truncated {
            tracing::warn!(
                "journal file {segment}: cut {bytes} bytes of an incomplete write at byte {offset}"
            );
        }
        Ok(Prepared {
            settings,
            config,
            journal_dir,
            journal,
            journal_report,
            install,
            source,
            lock,
        })
    }
}

impl Prepared {
    /// Steps 5 and 6 of the module essay: recovery, then the writer, with what the layer above
    /// attached.
    pub fn start(self, attach: Attachments, on_fatal: FatalHook) -> Result<Arc<Instance>> {
        let Prepared {
            settings,
            config,
            journal_dir: _,
            journal,
            journal_report,
            install,
            source,
            lock,
        } = self;
        let Attachments {
            role,
            replication,
            extension,
            mirror_journal,
        } = attach;
        let data_dir = settings.data_dir.clone();
        let shared = journal.shared();
        let local_stream = shared.stream();
        let membership = config.get().mirror.membership.clone();
        let primary = role.is_primary();

        let catalog = Arc::new(Catalog::new());
        catalog.replace(catalog_state(&config.get(), &data_dir, primary));
        let mut recovered = Vec::new();
        let mut warnings = Vec::new();
        for entry in catalog.snapshot().databases.values().filter(|d| d.mounted) {
            match recover_database(
                entry,
                &shared,
                local_stream,
                membership.as_ref(),
                mirror_journal.as_ref(),
            ) {
                Ok(Some(caught_up)) => {
                    if caught_up.applied > 0 {
                        tracing::info!(
                            "recovery: applied {} journal records to {}",
                            caught_up.applied,
                            entry.name
                        );
                    }
                    recovered.push((entry.name.clone(), caught_up));
                }
                Ok(None) => {}
                Err(err @ Error::Conflict(_)) => {
                    // A file that is not what this instance expects (replaced while it was
                    // down): leave it dismounted and say so, rather than refusing to start.
                    let warning = format!("{} was left dismounted: {err}", entry.name);
                    tracing::error!("{warning}");
                    config.update(|c| {
                        c.database_mut(&entry.name)?.mounted = false;
                        Ok(())
                    })?;
                    warnings.push(warning);
                }
                Err(err) => return Err(err),
            }
        }
        if !warnings.is_empty() {
            catalog.replace(catalog_state(&config.get(), &data_dir, primary));
        }

        let readers = Arc::new(ReadPool::new(
            catalog.clone(),
            settings.statement_timeout_ms,
        ));
        let (writer, writer_thread) = Writer::spawn(WriterSetup {
            data_dir,
            catalog: catalog.clone(),
            config: config.clone(),
            local: journal,
            mirror_journal,
            readers: readers.clone(),
            role: role.clone(),
            replication: replication.clone(),
            clock: settings.clock.clone(),
            extension,
            write_timeout_ms: settings.write_timeout_ms,
            on_fatal,
        });
        Ok(Arc::new(Instance {
            settings,
            config,
            catalog,
            journal: shared,
            role,
            startup: StartupReport {
                install,
                journal: journal_report,
                recovered,
                warnings,
            },
            started_ms: crate::util::now_ms(),
            productions: source.manifest.productions.clone(),
            productions_board: Default::default(),
            readers,
            writer,
            writer_thread: Mutex::new(Some(writer_thread)),
            replication,
            _lock: lock,
        }))
    }
}

impl Instance {
    /// Runs a user's statement (SQL page, `/api/sql`): on a reader when it only reads, through the
    /// writer when it writes.
    pub async fn sql(
        &self,
        namespace: &NamespaceName,
        sql: String,
        params: Vec<SqlValue>,
    ) -> Result<QueryResult> {
        let readers = self.readers.clone();
        let ns = namespace.clone();
        let (outcome, sql, params) = tokio::task::spawn_blocking(move || {
            let outcome = readers.run(&ns, &sql, &params, false);
            (outcome, sql, params)
        })
        .await
        .map_err(|e| Error::Internal(format!("read task failed: {e}")))?;
        match outcome? {
            ReadOutcome::Done(result) => Ok(result),
            ReadOutcome::NeedsWriter => {
                let request = WriteRequest {
                    namespace: namespace.clone(),
                    sql: Cow::Owned(sql),
                    params,
                    cached: false,
                };
                self.writer.write(request).await
            }
        }
    }

    /// Runs one of the applications' fixed read statements.
    pub async fn read(
        &self,
        namespace: &NamespaceName,
        sql: &'static str,
        params: Vec<SqlValue>,
    ) -> Result<QueryResult> {
        let readers = self.readers.clone();
        let ns = namespace.clone();
        let outcome = tokio::task::spawn_blocking(move || readers.run(&ns, sql, &params, true))
            .await
            .map_err(|e| Error::Internal(format!("read task failed: {e}")))??;
        match outcome {
            ReadOutcome::Done(result) => Ok(result),
            ReadOutcome::NeedsWriter => {
                Err(Error::Internal(format!("read statement writes: {sql}")))
            }
        }
    }

    /// Runs one of the applications' fixed write statements; returns once it is durable.
    pub async fn write(
        &self,
        namespace: &NamespaceName,
        sql: &'static str,
        params: Vec<SqlValue>,
    ) -> Result<QueryResult> {
        let request = WriteRequest {
            namespace: namespace.clone(),
            sql: Cow::Borrowed(sql),
            params,
            cached: true,
        };
        self.writer.write(request).await
    }

    /// Mounts a database.
    pub async fn mount(&self, db: DbName) -> Result<String> {
        self.writer.mount(db).await
    }

    /// Dismounts a database.
    pub async fn dismount(&self, db: DbName) -> Result<String> {
        self.writer.dismount(db).await
    }

    /// The databases with their sizes and applied positions.
    pub async fn databases(self: &Arc<Self>) -> Result<Vec<DatabaseStatus>> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.databases_blocking())
            .await
            .map_err(|e| Error::Internal(format!("status task failed: {e}")))?
    }

    fn databases_blocking(&self) -> Result<Vec<DatabaseStatus>> {
        let _files = self.catalog.enter_files();
        let state = self.catalog.snapshot();
        let mut out = Vec::with_capacity(state.databases.len());
        for entry in state.databases.values() {
            let size_bytes = [entry.file.clone(), database::wal_path(&entry.file)]
                .iter()
                .filter_map(|p| std::fs::metadata(p).ok())
                .map(|m| m.len())
                .sum();
            let applied_pos = if entry.mounted {
                let conn = database::open(&entry.file)?;
                Some(database::read_identity(&conn, "main")?.applied_pos)
            } else {
                None
            };
            out.push(DatabaseStatus {
                name: entry.name.clone(),
                directory: entry.directory.clone(),
                mounted: entry.mounted,
                read_only: entry.read_only,
                mirrored: entry.mirrored.clone(),
                size_bytes,
                applied_pos,
            });
        }
        Ok(out)
    }

    /// The writer, for mirror work.
    pub fn writer(&self) -> &WriterHandle {
        &self.writer
    }

    /// Writes a consistent copy of a mounted database to `mgr/backup/<db>-<time>.sqlite`
    /// (SQLite's `VACUUM INTO` reads one snapshot), while applications keep writing. Returns the
    /// path of the copy, relative to the data directory.
    pub async fn backup_copy(self: &Arc<Self>, db: DbName) -> Result<String> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let _files = this.catalog.enter_files();
            let entry = this.catalog.snapshot().database(&db)?.clone();
            if !entry.mounted {
                return Err(Error::Conflict(format!(
                    "{db} is dismounted: mount it to back it up"
                )));
            }
            let stamp = crate::util::format_time(crate::util::now_ms())
                .replace([' ', ':'], "")
                .replace('-', "");
            let relative = format!("mgr/backup/{}-{stamp}.sqlite", db.directory_name());
            let target = this.settings.data_dir.join(&relative);
            std::fs::create_dir_all(target.parent().expect("has a folder"))
                .io_context("create the backup folder")?;
            if target.exists() {
                return Err(Error::Conflict(format!(
                    "{relative} already exists; try again in a second"
                )));
            }
            database::copy_consistent(&entry.file, &target)?;
            // Only once the new copy is on disk are the oldest ones removed.
            remove_old_backups(target.parent().expect("has a folder"), &db)?;
            Ok(relative)
        })
        .await
        .map_err(|e| Error::Internal(format!("backup task failed: {e}")))?
    }

    /// Deletes the journal files nothing needs any more (see [`purge`]).
    pub async fn purge_journals(self: &Arc<Self>) -> Result<purge::PurgeReport> {
        self.writer.stamp_positions().await?;
        let this = self.clone();
        tokio::task::spawn_blocking(move || purge::purge(&this))
            .await
            .map_err(|e| Error::Internal(format!("purge task failed: {e}")))?
    }

    /// Why the writer stopped, if it failed.
    pub fn failure(&self) -> Option<String> {
        self.writer.failure()
    }

    /// Stops the writer after the work already queued (blocking). A batch still waiting for an
    /// acknowledgement after a moment is answered as not acknowledged: replication is closed.
    /// (A mirror member then hands over: see [`crate::node::Node::close`].)
    pub fn close(&self) {
        self.writer.shutdown();
        if let Some(thread) = self.writer_thread.lock().unwrap().take() {
            // A writer waiting for a backup in the trouble state would wait forever: after a
            // moment, closing the hub answers those writes as not acknowledged.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while !thread.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            if !thread.is_finished() {
                self.replication.close("the instance is stopping");
            }
            let _ = thread.join();
        }
    }
}

/// Takes the data directory's lock (`mgr/instance.lck`), held while the returned file is open:
/// by a running instance, and by its agent while it reads a down instance's journal.
pub fn lock_data_dir(data_dir: &std::path::Path) -> Result<File> {
    let mgr = data_dir.join("mgr");
    std::fs::create_dir_all(&mgr).io_context(format!("create {}", mgr.display()))?;
    let lock =
        File::create(mgr.join("instance.lck")).io_context("create the instance lock file")?;
    lock.try_lock().map_err(|_| {
        Error::Conflict(format!(
            "another process is already using the data directory {} (an instance, or its agent \
             reading its journal)",
            data_dir.display()
        ))
    })?;
    Ok(lock)
}

/// Recovery of one mounted database at start-up: replayed from the journal its file follows.
/// `Ok(None)` for a backup's mirrored copy, which is brought up to date by dejournaling once the
/// primary says how far its journal is durable.
fn recover_database(
    entry: &crate::storage::DatabaseEntry,
    local: &JournalShared,
    local_stream: StreamId,
    membership: Option<&Membership>,
    primary_journal: Option<&Journal>,
) -> Result<Option<CatchUp>> {
    let identity = recovery::identity_of(entry)?;
    if identity.stream == local_stream {
        return recovery::catch_up(entry, local, local_stream, local.durable_end()).map(Some);
    }
    let Some(m) = membership.filter(|m| m.mirror.id == identity.stream) else {
        return Err(Error::Conflict(format!(
            "the file in {} is a copy made by another instance or mirror",
            entry.directory
        )));
    };
    if m.database(&entry.name)
        .is_some_and(|d| d.guid != identity.guid)
    {
        return Err(Error::Conflict(format!(
            "the file in {} is another database named {}",
            entry.directory, entry.name
        )));
    }
    match primary_journal {
        Some(journal) => {
            let shared = journal.shared();
            recovery::catch_up(entry, &shared, m.mirror.id, shared.durable_end()).map(Some)
        }
        None => Ok(None),
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.close();
    }
}

/// Backup copies kept per database; a new one removes the oldest beyond this.
pub const BACKUPS_KEPT: usize = 3;

/// Removes all but the newest [`BACKUPS_KEPT`] backup copies of `db` in `folder` (their names
/// end in a time stamp, so name order is age order).
fn remove_old_backups(folder: &std::path::Path, db: &DbName) -> Result<()> {
    let prefix = format!("{}-", db.directory_name());
    let mut copies: Vec<std::path::PathBuf> = std::fs::read_dir(folder)
        .io_context("list the backup folder")?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with(&prefix)
                    && n.ends_with(".sqlite")
                    && n[prefix.len()..n.len() - ".sqlite".len()]
                        .bytes()
                        .all(|b| b.is_ascii_digit())
            })
        })
        .collect();
    copies.sort();
    let surplus = copies.len().saturating_sub(BACKUPS_KEPT);
    for old in &copies[..surplus] {
        std::fs::remove_file(old).io_context("remove an old backup copy")?;
        tracing::info!("removed the old backup copy {}", old.display());
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests;
