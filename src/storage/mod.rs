//! Storage: database files, the catalog of databases and namespaces, and namespace connections.
//!
//! # What it is
//!
//! Each database is one SQLite file (`mgr/<name>/database.sqlite`) that also records, inside
//! itself, how far it has applied the journal ([`database`]). A namespace is one connection that
//! sees several databases at once ([`namespace`]), so an application's SQL can join tables that
//! live in different databases. The [`catalog`] says what exists and what is mounted.
//!
//! # Invariants
//!
//! - A database file's applied position and its rows change in the same SQLite transaction.
//! - Once a dismount returns, no connection of this instance has the file open: the user may
//!   overwrite it.
//! - A statement can only write to a mounted, writable database; refusals carry a reason.
//!
//! # Left out
//!
//! Database size limits, resource names and collation settings that IRIS keeps per database.

pub(crate) mod catalog;
pub mod database;
pub(crate) mod namespace;

pub use catalog::{Catalog, CatalogState, DatabaseEntry, NamespaceEntry};
pub use namespace::{NamespaceConn, Purpose, StatementFacts};
