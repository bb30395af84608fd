//! The instance configuration: the analogue of IRIS's CPF file.
//!
//! One JSON file, `<data dir>/mirrorlab.cpf`, holds everything about the instance that is not
//! data: its identity, its journal's id, the databases and namespaces, the users and the mirror
//! settings. It is read once at start and rewritten atomically (temporary file, fsync, rename)
//! after every change, so a crash leaves either the old or the new configuration.
//!
//! [`ConfigStore::update`] is the only way to change it: the change is made to a copy, written
//! to disk, and only then becomes the current configuration — a failed write changes nothing.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::names::{DbName, NamespaceName};
use crate::storage::{CatalogState, DatabaseEntry, NamespaceEntry};
use crate::util::{random_hex, write_file_atomically};

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
    pub journal_stream: String,
    /// The mirror epoch new journal records carry.
    pub epoch: u64,
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

/// Mirror settings (IRIS: `%Service_Mirror` and the `[Mirrors]` sections).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorConfig {
    /// Whether the mirror service is enabled.
    #[serde(default)]
    pub service_enabled: bool,
}

impl InstanceConfig {
    /// A configuration for a brand-new instance, with no databases yet.
    pub fn fresh(users: Vec<UserConfig>) -> Self {
        InstanceConfig {
            format: FORMAT,
            instance_guid: random_hex(16),
            journal_stream: random_hex(16),
            epoch: 1,
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

    /// The journal id as bytes.
    pub fn stream_id(&self) -> Result<[u8; 16]> {
        let bytes = self.journal_stream.as_bytes();
        if bytes.len() != 32 {
            return Err(Error::Corrupt(
                "journal_stream in the configuration is not 32 hex digits".into(),
            ));
        }
        let mut out = [0u8; 16];
        for (i, chunk) in bytes.chunks(2).enumerate() {
            let hex = std::str::from_utf8(chunk)
                .map_err(|_| Error::Corrupt("bad journal_stream".into()))?;
            out[i] = u8::from_str_radix(hex, 16)
                .map_err(|_| Error::Corrupt("bad journal_stream".into()))?;
        }
        Ok(out)
    }
}

/// The configuration file and its current contents.
pub struct ConfigStore {
    path: PathBuf,
    current: Mutex<InstanceConfig>,
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
            current: Mutex::new(config),
        })
    }

    /// A copy of the current configuration.
    pub fn get(&self) -> InstanceConfig {
        self.current.lock().unwrap().clone()
    }

    /// Changes the configuration: `change` edits a copy, the copy is written to disk atomically,
    /// and only then does it replace the current configuration. When `change` fails, or the
    /// write fails, nothing changes.
    pub fn update<R>(&self, change: impl FnOnce(&mut InstanceConfig) -> Result<R>) -> Result<R> {
        let mut current = self.current.lock().unwrap();
        let mut next = current.clone();
        let result = change(&mut next)?;
        if next != *current {
            write_file_atomically(
                &self.path,
                &serde_json::to_vec_pretty(&next).expect("config serializes"),
            )?;
            *current = next;
        }
        Ok(result)
    }
}

/// The catalog (runtime view) that a configuration describes. Mirror state (read-only and
/// mirrored databases) is folded in here as well, so every connection sees one consistent view.
pub fn catalog_state(config: &InstanceConfig, data_dir: &Path) -> CatalogState {
    let databases = config
        .databases
        .iter()
        .map(|d| {
            let entry = DatabaseEntry {
                name: d.name.clone(),
                directory: d.directory.clone(),
                file: CatalogState::file_path(data_dir, &d.directory),
                mounted: d.mounted,
                read_only: false,
                mirrored: None,
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
            c.epoch = 99;
            Err(Error::InvalidInput("no".into()))
        });
        assert!(failed.is_err());
        let reloaded = ConfigStore::load_or_create(dir.path(), || panic!("exists")).unwrap();
        assert!(reloaded.get().mirror.service_enabled);
        assert_eq!(reloaded.get().epoch, 1);
        assert_eq!(reloaded.get(), store.get());
        assert_eq!(store.get().stream_id().unwrap().len(), 16);
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
