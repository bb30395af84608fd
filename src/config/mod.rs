//! The configuration file: the analogue of IRIS's CPF file.
//!
//! One JSON file, `<data dir>/mirrorlab.cpf`, holds everything about the instance that is not
//! data: its identity, its journal's id, the databases and namespaces, the users and the mirror
//! settings ([`mirror`], IRIS's `[MirrorMember]` and `[Mirrors]` sections). It sits below both the
//! instance and the mirror: each reads what it needs from it, and neither imports the other to
//! know the configuration. It is read once at start and rewritten atomically (temporary file, fsync, rename)
//! after every change, so a crash leaves either the old or the new configuration.
//!
//! [`ConfigStore::update`] is the only way to change it: the change is made to a copy, written
//! to disk, and only then becomes the current configuration — a failed write changes nothing.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

pub mod mirror;

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::journal::{Epoch, StreamId};
use crate::names::{DbName, NamespaceName};
use crate::storage::{CatalogState, DatabaseEntry, NamespaceEntry};
use crate::util::{random_hex, write_file_atomically};
use mirror::MirrorConfig;

/// File name of the configuration inside the data directory.
pub const CONFIG_FILE: &str = "mirrorlab.cpf";
/// The configuration format this build writes.
const FORMAT: u32 = 1;

/// Everything about the instance that is not data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceConfig {
    /// Format version of this file.
    pub format: u32,
    /// Random id of this instance, given at first start.
    pub instance_guid: String,
    /// Hex id of this instance's journal (see `journal::segment`).
    pub journal_stream: StreamId,
    /// The mirror epoch new journal records carry.
    pub epoch: Epoch,
    /// Databases, in creation order.
    pub databases: Vec<DatabaseConfig>,
    /// Namespaces, in creation order.
    pub namespaces: Vec<NamespaceConfig>,
    /// Portal and API users.
    pub users: Vec<UserConfig>,
    /// Mirror settings.
    #[serde(default)]
    pub mirror: MirrorConfig,
}

/// A database of the instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseConfig {
    /// Its name.
    pub name: DbName,
    /// Its folder relative to the data directory, e.g. `mgr/company`.
    pub directory: String,
    /// Whether it is mounted. A dismount survives a restart, so a database being replaced by a
    /// copied file is not reopened halfway through the copy.
    pub mounted: bool,
    /// Whether the file here is this member's copy of a mirrored database (its journal position
    /// refers to the mirror's journal).
    #[serde(default)]
    pub mirrored: bool,
}

/// A namespace of the instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceConfig {
    /// Its name.
    pub name: NamespaceName,
    /// Its default database.
    pub default_database: DbName,
    /// Further databases mapped into it.
    #[serde(default)]
    pub mapped: Vec<DbName>,
}

/// A user who may log in to the portal and call the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserConfig {
    /// Login name.
    pub name: String,
    /// Argon2id hash in PHC string form.
    pub password_hash: String,
    /// True until the password is changed from the installed default.
    #[serde(default)]
    pub default_password: bool,
}

impl InstanceConfig {
    /// A configuration for a brand-new instance, with no databases yet.
    pub fn fresh(users: Vec<UserConfig>) -> Self {
        InstanceConfig {
            format: FORMAT,
            instance_guid: random_hex(16),
            journal_stream: StreamId::random(),
            epoch: Epoch(1),
            databases: Vec::new(),
            namespaces: Vec::new(),
            users,
            mirror: MirrorConfig::default(),
        }
    }

    /// The configured database called `name`.
    pub fn database_mut(&mut self, name: &DbName) -> Result<&mut DatabaseConfig> {
        self.databases
            .iter_mut()
            .find(|d| &d.name == name)
            .ok_or_else(|| Error::NotFound(format!("database {name} does not exist")))
    }
}

/// The configuration file and its current contents.
///
/// Readers get the current configuration as a shared snapshot without waiting for a write in
/// progress: a change takes the write lock, writes and fsyncs the file, and only then swaps the
/// snapshot in (a brief lock).
pub struct ConfigStore {
    path: PathBuf,
    current: RwLock<Arc<InstanceConfig>>,
    writing: Mutex<()>,
}

impl ConfigStore {
    /// Loads `<data_dir>/mirrorlab.cpf`, or creates it with `fresh()` when it does not exist.
    pub fn load_or_create(
        data_dir: &Path,
        fresh: impl FnOnce() -> InstanceConfig,
    ) -> Result<ConfigStore> {
        let path = data_dir.join(CONFIG_FILE);
        let config = match std::fs::read(&path) {
            Ok(bytes) => {
                let config: InstanceConfig = serde_json::from_slice(&bytes).map_err(|e| {
                    Error::Corrupt(format!(
                        "configuration file {} is not valid: {e}",
                        path.display()
                    ))
                })?;
                if config.format != FORMAT {
                    return Err(Error::Corrupt(format!(
                        "configuration file {} has format {}, this build reads {FORMAT}",
                        path.display(),
                        config.format
                    )));
                }
                config
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                let config = fresh();
                write_file_atomically(
                    &path,
                    &serde_json::to_vec_pretty(&config).expect("config serializes"),
                )?;
                config
            }
            Err(err) => return Err(err).io_context(format!("read {}", path.display())),
        };
        Ok(ConfigStore {
            path,
            current: RwLock::new(Arc::new(config)),
            writing: Mutex::new(()),
        })
    }

    /// The current configuration.
    pub fn get(&self) -> Arc<InstanceConfig> {
        self.current.read().unwrap().clone()
    }

    /// Changes the configuration: `change` edits a copy, the copy is written to disk atomically,
    /// and only then does it replace the current configuration. When `change` fails, or the
    /// write fails, nothing changes.
    pub fn update<R>(&self, change: impl FnOnce(&mut InstanceConfig) -> Result<R>) -> Result<R> {
        let _one_writer = self.writing.lock().unwrap();
        let current = self.get();
        let mut next = (*current).clone();
        let result = change(&mut next)?;
        if next != *current {
            write_file_atomically(
                &self.path,
                &serde_json::to_vec_pretty(&next).expect("config serializes"),
            )?;
            *self.current.write().unwrap() = Arc::new(next);
        }
        Ok(result)
    }
}

/// Reads `<data_dir>/mirrorlab.cpf` without creating or changing anything (the agent reads a
/// down instance's configuration this way). None when there is none.
pub fn read_config(data_dir: &Path) -> Result<Option<InstanceConfig>> {
    let path = data_dir.join(CONFIG_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            Error::Corrupt(format!(
                "configuration file {} is not valid: {e}",
                path.display()
            ))
        }),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err).io_context(format!("read {}", path.display())),
    }
}

/// The catalog (runtime view) that a configuration describes, for a member that is (or is not)
/// the primary. A mirrored database is writable only on the primary; everywhere else it is a
/// read-only copy the journal is applied to — except on a Read-Write Reporting async, whose
/// copies also take local writes that are never propagated.
pub fn catalog_state(config: &InstanceConfig, data_dir: &Path, primary: bool) -> CatalogState {
    let mirror = config
        .mirror
        .membership
        .as_ref()
        .map(|m| m.mirror.name.clone());
    let read_write_reporting = config
        .mirror
        .membership
        .as_ref()
        .is_some_and(|m| m.this.kind == crate::config::mirror::MemberKind::ReportingRw);
    let databases = config
        .databases
        .iter()
        .map(|d| {
            let mirrored = match (&mirror, d.mirrored) {
                (Some(name), true) => Some(format!(":mirror:{name}:{}", d.name)),
                _ => None,
            };
            let entry = DatabaseEntry {
                name: d.name.clone(),
                directory: d.directory.clone(),
                file: CatalogState::file_path(data_dir, &d.directory),
                mounted: d.mounted,
                read_only: mirrored.is_some() && !primary && !read_write_reporting,
                local_writes: mirrored.is_some() && !primary && read_write_reporting,
                mirrored,
            };
            (d.name.clone(), entry)
        })
        .collect();
    let namespaces = config
        .namespaces
        .iter()
        .map(|n| {
            let entry = NamespaceEntry {
                name: n.name.clone(),
                default_db: n.default_database.clone(),
                mapped: n.mapped.clone(),
            };
            (n.name.clone(), entry)
        })
        .collect();
    CatalogState {
        generation: 0,
        databases,
        namespaces,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_persists_and_failed_update_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            ConfigStore::load_or_create(dir.path(), || InstanceConfig::fresh(vec![])).unwrap();
        store
            .update(|c| {
                c.mirror.service_enabled = true;
                Ok(())
            })
            .unwrap();
        let failed: Result<()> = store.update(|c| {
            c.epoch = Epoch(99);
            Err(Error::InvalidInput("no".into()))
        });
        assert!(failed.is_err());
        let reloaded = ConfigStore::load_or_create(dir.path(), || panic!("exists")).unwrap();
        assert!(reloaded.get().mirror.service_enabled);
        assert_eq!(reloaded.get().epoch, Epoch(1));
        assert_eq!(reloaded.get(), store.get());
        assert_ne!(store.get().journal_stream, StreamId([0; 16]));
    }

    #[test]
    fn damaged_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CONFIG_FILE), b"{not json").unwrap();
        let err = ConfigStore::load_or_create(dir.path(), || panic!("exists"))
            .err()
            .unwrap();
        assert!(matches!(err, Error::Corrupt(_)), "{err:?}");
    }
}
