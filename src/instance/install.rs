//! First-start installation from `install/`: the demo databases, their schemas and namespaces.
//!
//! The analogue of the install script in the article's Docker project. `install/manifest.json`
//! lists databases (each with a schema file), namespaces and productions (background jobs). The instance reads it on *every*
//! start and installs only what its configuration does not have yet, so restarting changes
//! nothing, and a database added to the manifest later is installed on the next start.
//!
//! The manifest is read from the `--install` folder when it holds a `manifest.json`; otherwise a
//! copy of the repository's `install/` built into the binary is used, so the binary alone can
//! start a complete lab instance.
//!
//! Crash safety: a database file is created under a temporary name and renamed into place
//! before the configuration mentions it. A crash between the two leaves a complete file that the
//! next start recognises by its identity row and adopts.

use std::collections::BTreeMap;
use std::path::{Component, Path};

use serde::Deserialize;

use crate::error::{Error, IoContext, Result};
use crate::names::{DbName, NamespaceName};
use crate::storage::CatalogState;
use crate::storage::database;

use crate::config::{ConfigStore, DatabaseConfig, NamespaceConfig};

const EMBEDDED_MANIFEST: &str = include_str!("../../install/manifest.json");
const EMBEDDED_SCHEMAS: &[(&str, &str)] = &[
    (
        "schema/company.sql",
        include_str!("../../install/schema/company.sql"),
    ),
    (
        "schema/customer.sql",
        include_str!("../../install/schema/customer.sql"),
    ),
    (
        "schema/personal.sql",
        include_str!("../../install/schema/personal.sql"),
    ),
];

/// The manifest file.
#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    /// Databases to create.
    pub databases: Vec<ManifestDatabase>,
    /// Namespaces to create.
    #[serde(default)]
    pub namespaces: Vec<NamespaceConfig>,
    /// Background jobs that run on the primary only (see [`super::productions`]).
    #[serde(default)]
    pub productions: Vec<super::productions::Production>,
}

/// A database in the manifest.
#[derive(Debug, Clone, Deserialize)]
pub struct ManifestDatabase {
    /// Its name.
    pub name: DbName,
    /// Its schema file, relative to the install folder.
    pub schema: String,
}

/// A manifest and its schema files, from a folder or from the built-in copy.
#[derive(Debug, Clone)]
pub struct InstallSource {
    /// Where it came from, for the log.
    pub origin: String,
    /// The manifest.
    pub manifest: Manifest,
    schemas: BTreeMap<String, String>,
}

impl InstallSource {
    /// The copy of `install/` built into the binary.
    pub fn embedded() -> InstallSource {
        let manifest =
            serde_json::from_str(EMBEDDED_MANIFEST).expect("the built-in manifest is valid");
        let schemas = EMBEDDED_SCHEMAS
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        InstallSource {
            origin: "the built-in copy of install/".into(),
            manifest,
            schemas,
        }
    }

    /// Reads `dir/manifest.json` and its schema files; falls back to the built-in copy when the
    /// folder or the manifest does not exist.
    pub fn load(dir: &Path) -> Result<InstallSource> {
        let manifest_path = dir.join("manifest.json");
        if !manifest_path.is_file() {
            return Ok(InstallSource::embedded());
        }
        let bytes = std::fs::read(&manifest_path)
            .io_context(format!("read {}", manifest_path.display()))?;
        let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
            Error::InvalidInput(format!(
                "{} is not a valid manifest: {e}",
                manifest_path.display()
            ))
        })?;
        let mut schemas = BTreeMap::new();
        for db in &manifest.databases {
            let relative = Path::new(&db.schema);
            if relative
                .components()
                .any(|c| !matches!(c, Component::Normal(_)))
            {
                return Err(Error::InvalidInput(format!(
                    "schema path {:?} for {} must stay inside the install folder",
                    db.schema, db.name
                )));
            }
            let path = dir.join(relative);
            let sql = std::fs::read_to_string(&path)
                .io_context(format!("read schema {}", path.display()))?;
            schemas.insert(db.schema.clone(), sql);
        }
        Ok(InstallSource {
            origin: dir.display().to_string(),
            manifest,
            schemas,
        })
    }

    fn schema(&self, db: &ManifestDatabase) -> Result<&str> {
        self.schemas
            .get(&db.schema)
            .map(String::as_str)
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                    "schema file {} for {} is missing",
                    db.schema, db.name
                ))
            })
    }
}

/// What an install run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstallReport {
    /// Databases created now.
    pub created_databases: Vec<DbName>,
    /// Databases whose file existed from an interrupted earlier install and was adopted.
    pub adopted_databases: Vec<DbName>,
    /// Namespaces created now.
    pub created_namespaces: Vec<NamespaceName>,
}

/// Installs whatever of `source` the configuration does not have yet.
pub fn install(
    store: &ConfigStore,
    data_dir: &Path,
    source: &InstallSource,
) -> Result<InstallReport> {
    let mut report = InstallReport::default();
    let stream = store.get().journal_stream;
    for db in &source.manifest.databases {
        if store.get().databases.iter().any(|d| d.name == db.name) {
            continue;
        }
        let directory = format!("mgr/{}", db.name.directory_name());
        let file = CatalogState::file_path(data_dir, &directory);
        if file.exists() {
            let conn = database::open(&file)?;
            let identity = database::read_identity(&conn, "main")?;
            if identity.name != db.name.as_str() || identity.stream != stream {
                return Err(Error::Conflict(format!(
                    "cannot install database {}: {} already holds another database ({} of another instance or name)",
                    db.name,
                    file.display(),
                    identity.name
                )));
            }
            report.adopted_databases.push(db.name.clone());
        } else {
            database::create(&file, &db.name, stream, source.schema(db)?)?;
            report.created_databases.push(db.name.clone());
        }
        store.update(|config| {
            config.databases.push(DatabaseConfig {
                name: db.name.clone(),
                directory,
                mounted: true,
                mirrored: false,
            });
            Ok(())
        })?;
    }
    for ns in &source.manifest.namespaces {
        store.update(|config| {
            if config.namespaces.iter().any(|n| n.name == ns.name) {
                return Ok(());
            }
            for db in std::iter::once(&ns.default_database).chain(&ns.mapped) {
                if !config.databases.iter().any(|d| &d.name == db) {
                    return Err(Error::InvalidInput(format!(
                        "namespace {} maps database {db}, which does not exist",
                        ns.name
                    )));
                }
            }
            config.namespaces.push(ns.clone());
            report.created_namespaces.push(ns.name.clone());
            Ok(())
        })?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::InstanceConfig;

    #[test]
    fn built_in_manifest_lists_the_demo() {
        let source = InstallSource::embedded();
        let names: Vec<&str> = source
            .manifest
            .databases
            .iter()
            .map(|d| d.name.as_str())
            .collect();
        assert_eq!(names, ["COMPANY", "CUSTOMER", "PERSONAL"]);
        for db in &source.manifest.databases {
            assert!(source.schema(db).unwrap().contains("PRIMARY KEY"));
        }
    }

    #[test]
    fn install_twice_changes_nothing_the_second_time() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            ConfigStore::load_or_create(dir.path(), || InstanceConfig::fresh(vec![])).unwrap();
        let source = InstallSource::embedded();
        let first = install(&store, dir.path(), &source).unwrap();
        assert_eq!(first.created_databases.len(), 3);
        assert_eq!(first.created_namespaces.len(), 2);
        let config = store.get();
        let file = dir.path().join("mgr/company/database.sqlite");
        let modified = std::fs::metadata(&file).unwrap().modified().unwrap();
        let second = install(&store, dir.path(), &source).unwrap();
        assert_eq!(second, InstallReport::default());
        assert_eq!(store.get(), config);
        assert_eq!(
            std::fs::metadata(&file).unwrap().modified().unwrap(),
            modified
        );
    }

    #[test]
    fn an_interrupted_install_is_adopted() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            ConfigStore::load_or_create(dir.path(), || InstanceConfig::fresh(vec![])).unwrap();
        install(&store, dir.path(), &InstallSource::embedded()).unwrap();
        // Forget the databases in the configuration, as if the crash came before it was written.
        store
            .update(|c| {
                c.databases.clear();
                c.namespaces.clear();
                Ok(())
            })
            .unwrap();
        let report = install(&store, dir.path(), &InstallSource::embedded()).unwrap();
        assert_eq!(report.adopted_databases.len(), 3);
        assert!(report.created_databases.is_empty());
    }

    #[test]
    fn manifest_paths_cannot_escape_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("manifest.json"),
            r#"{"databases":[{"name":"X","schema":"../secret.sql"}]}"#,
        )
        .unwrap();
        let err = InstallSource::load(dir.path()).unwrap_err();
        assert!(
            err.to_string().contains("inside the install folder"),
            "{err}"
        );
    }
}
