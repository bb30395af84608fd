//! The catalog: which databases and namespaces exist, where their files are, and whether each
//! database is mounted, read-only or mirrored — the runtime view of the instance configuration.
//!
//! The configuration file is the source of truth; the catalog is rebuilt from it after every
//! change and gets a new *generation* number. Connections remember the generation they were
//! built for and are rebuilt when it moves on, so a dismounted database disappears from every
//! namespace connection before its file is handed to the user.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::error::{Error, Result};
use crate::names::{DbName, NamespaceName};

use super::database::DB_FILE_NAME;

/// One database as the instance sees it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseEntry {
    /// Its name.
    pub name: DbName,
    /// Its folder, relative to the data directory (`mgr/company`), as shown to users.
    pub directory: String,
    /// Full path of its SQLite file.
    pub file: PathBuf,
    /// Whether connections may use it.
    pub mounted: bool,
    /// Whether writes to it are refused (mirrored databases on a backup).
    pub read_only: bool,
    /// A mirrored database's copy on a Read-Write Reporting async: writable here, but its own
    /// changes are neither journaled nor sent anywhere (SQLite makes each commit durable). What
    /// the primary sends still applies, and wins over a local change of the same row.
    pub local_writes: bool,
    /// Its mirrored name (`:mirror:MIRRORSET:COMPANY`) when it belongs to a mirror.
    pub mirrored: Option<String>,
}

/// One namespace: a default database plus mapped databases, all reachable from one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceEntry {
    /// Its name.
    pub name: NamespaceName,
    /// The database unqualified names resolve to first, and where new tables are created.
    pub default_db: DbName,
    /// Further databases attached under their own names, searched after the default.
    pub mapped: Vec<DbName>,
}

impl NamespaceEntry {
    /// The default database followed by the mapped ones.
    pub fn databases(&self) -> impl Iterator<Item = &DbName> {
        std::iter::once(&self.default_db).chain(self.mapped.iter())
    }
}

/// A snapshot of the catalog at one generation.
#[derive(Debug, Clone, Default)]
pub struct CatalogState {
    /// Increases with every change.
    pub generation: u64,
    /// Databases by name.
    pub databases: BTreeMap<DbName, DatabaseEntry>,
    /// Namespaces by name.
    pub namespaces: BTreeMap<NamespaceName, NamespaceEntry>,
}

impl DatabaseEntry {
    /// How applying the mirror journal treats a row that does not match:
    /// [`OnConflict::PrimaryWins`](super::database::OnConflict::PrimaryWins) where this copy
    /// takes local writes, else abort.
    pub fn on_conflict(&self) -> super::database::OnConflict {
        if self.local_writes {
            super::database::OnConflict::PrimaryWins
        } else {
            super::database::OnConflict::Abort
        }
    }
}

impl CatalogState {
    /// The database called `name`, or a "does not exist" error.
    pub fn database(&self, name: &DbName) -> Result<&DatabaseEntry> {
        self.databases
            .get(name)
            .ok_or_else(|| Error::NotFound(format!("database {name} does not exist")))
    }

    /// The namespace called `name`, or a "does not exist" error.
    pub fn namespace(&self, name: &NamespaceName) -> Result<&NamespaceEntry> {
        self.namespaces
            .get(name)
            .ok_or_else(|| Error::NotFound(format!("namespace {name} does not exist")))
    }

    /// The path of a database file in `data_dir/directory`.
    pub fn file_path(data_dir: &Path, directory: &str) -> PathBuf {
        data_dir.join(directory).join(DB_FILE_NAME)
    }
}

/// The shared catalog.
#[derive(Default)]
pub struct Catalog {
    state: RwLock<Arc<CatalogState>>,
    /// Held shared by every read that has a database file open, and exclusively by a dismount
    /// while it waits for those reads to finish before the file is released.
    file_gate: RwLock<()>,
    /// Held by whoever checkpoints the mounted databases (see [`Catalog::hold_checkpoints`]).
    checkpoints: Mutex<()>,
}

impl Catalog {
    /// An empty catalog.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<CatalogState> {
        self.state.read().unwrap().clone()
    }

    /// The current generation.
    pub fn generation(&self) -> u64 {
        self.state.read().unwrap().generation
    }

    /// Installs new contents under the next generation.
    pub fn replace(&self, mut next: CatalogState) {
        let mut state = self.state.write().unwrap();
        next.generation = state.generation + 1;
        *state = Arc::new(next);
    }

    /// Taken by readers for as long as they use database files.
    pub fn enter_files(&self) -> RwLockReadGuard<'_, ()> {
        self.file_gate.read().unwrap()
    }

    /// Taken by a dismount: returns once no read of an older generation is in flight.
    pub fn exclusive_files(&self) -> RwLockWriteGuard<'_, ()> {
        self.file_gate.write().unwrap()
    }

    /// Held by whoever checkpoints the mounted databases — the instance's checkpointer for a
    /// pass, a Freeze while it folds every WAL and raises its flag, a journal purge — so they
    /// take turns: SQLite runs one checkpoint of a database at a time and answers any other
    /// "busy" at once, without waiting. Taken before the file gate, never after it.
    pub fn hold_checkpoints(&self) -> MutexGuard<'_, ()> {
        self.checkpoints.lock().unwrap()
    }
}
