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
//! [`Instance::open`]:
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
//! per-database journaling switches, and anything mirror-related, which lives in its own module.

pub mod config;
pub mod install;
pub mod reader;
pub mod recovery;
pub mod sql;
pub mod users;
pub mod writer;

use std::borrow::Cow;
use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::error::{Error, IoContext, Result};
use crate::journal::{DEFAULT_MAX_SEGMENT_BYTES, Journal, JournalOptions, JournalPos, JournalShared, OpenReport};
use crate::names::{DbName, NamespaceName};
use crate::storage::Catalog;
use crate::storage::database;
use crate::util::hex;

use config::{ConfigStore, InstanceConfig, catalog_state};
use install::{InstallReport, InstallSource};
use reader::{ReadOutcome, ReadPool};
use recovery::CatchUp;
use sql::{QueryResult, SqlValue};
use writer::{FatalHook, Standalone, WriteRequest, Writer, WriterHandle};

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
    /// What start-up did.
    pub startup: StartupReport,
    /// When it started (ms since the Unix epoch).
    pub started_ms: i64,
    readers: Arc<ReadPool>,
    writer: WriterHandle,
    writer_thread: Mutex<Option<JoinHandle<()>>>,
    _lock: File,
}

impl Instance {
    /// Starts an instance on `settings.data_dir` (blocking: installs, recovers, starts the writer).
    pub fn open(settings: InstanceSettings, on_fatal: FatalHook) -> Result<Arc<Instance>> {
        let data_dir = settings.data_dir.clone();
        let mgr = data_dir.join("mgr");
        std::fs::create_dir_all(&mgr).io_context(format!("create {}", mgr.display()))?;
        let lock =
            File::create(mgr.join("instance.lck")).io_context("create the instance lock file")?;
        lock.try_lock().map_err(|_| {
            Error::Conflict(format!(
                "another instance is already using the data directory {}",
                data_dir.display()
            ))
        })?;

        let config = Arc::new(ConfigStore::load_or_create(&data_dir, || {
            InstanceConfig::fresh(users::default_users())
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

        let stream = config.get().stream_id()?;
        let (journal, journal_report) =
            Journal::open(&mgr.join("journal"), stream, JournalOptions::local(settings.max_segment_bytes))?;
        if let Some((segment, offset, bytes)) = &journal_report.truncated {
            tracing::warn!(
                "journal file {segment}: cut {bytes} bytes of an incomplete write at byte {offset}"
            );
        }
        let shared = journal.shared();

        let catalog = Arc::new(Catalog::new());
        catalog.replace(catalog_state(&config.get(), &data_dir));
        let stream_hex = hex(&stream);
        let mut recovered = Vec::new();
        for entry in catalog.snapshot().databases.values().filter(|d| d.mounted) {
            let caught_up = recovery::catch_up(entry, &shared, &stream_hex)?;
            if caught_up.applied > 0 {
                tracing::info!(
                    "recovery: applied {} journal records to {}",
                    caught_up.applied,
                    entry.name
                );
            }
            recovered.push((entry.name.clone(), caught_up));
        }

        let readers = Arc::new(ReadPool::new(catalog.clone()));
        let (writer, writer_thread) = Writer::spawn(
            data_dir,
            catalog.clone(),
            config.clone(),
            journal,
            readers.clone(),
            Box::new(Standalone),
            on_fatal,
        );
        Ok(Arc::new(Instance {
            settings,
            config,
            catalog,
            journal: shared,
            startup: StartupReport {
                install,
                journal: journal_report,
                recovered,
            },
            started_ms: crate::util::now_ms(),
            readers,
            writer,
            writer_thread: Mutex::new(Some(writer_thread)),
            _lock: lock,
        }))
    }

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

    /// Why the writer stopped, if it failed.
    pub fn failure(&self) -> Option<String> {
        self.writer.failure()
    }

    /// Stops the writer after the work already queued (blocking).
    pub fn close(&self) {
        self.writer.shutdown();
        if let Some(thread) = self.writer_thread.lock().unwrap().take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests;
