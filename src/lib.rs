//! # mirrorlab
//!
//! An open, license-free lab kit that reproduces IRIS-style database mirroring: real SQLite
//! databases, a real journal with fsync and crash recovery, a management portal that shows the
//! true state, a primary and a backup kept identical by shipping that
//! journal, an arbiter, and automatic failover. It is an independent project that imitates how
//! IRIS mirroring behaves; it is not affiliated with InterSystems.
//!
//! ## Layout
//!
//! The folders follow the architecture, from the disk up:
//!
//! - [`journal`] — the durable, ordered history of committed transactions: segment files of
//!   CRC-framed records carrying SQLite changesets; torn-tail repair and corruption reports.
//! - [`storage`] — database files (one SQLite file each, with its applied journal position inside
//!   it), the catalog of databases and namespaces, and namespace connections with the statement
//!   guard.
//! - [`config`] — the configuration file (the CPF analogue): the instance's databases,
//!   namespaces and users, and the mirror's section ([`config::mirror`]) — data both the
//!   instance and the mirror read, so neither has to import the other for it.
//! - [`instance`] — the database server: first-start install, crash recovery, the writer thread
//!   with group commit, the reader pool.
//! - [`mirror`] — mirroring: the data channel, the replication hub, the backup's receiver and
//!   dejournaling, the failover rules and their driver; [`arbiter`] — the arbiter process.
//! - [`node`] — the composition root: one member's instance, mirror and web, wired together.
//! - [`web`] — the management portal and the `/api` endpoints; [`apps`] — the COMPANY and
//!   PHONEBOOK demo applications (pages and API); [`lab`] — the Lab page's faults and its
//!   acknowledged-write ledger.
//! - [`agent`] — the process beside the instance that starts it and reports whether it runs.
//! - [`server`], [`cli`], [`ctl`] — running the processes, the command line, a shell client. The
//!   benchmark is a program of its own (`src/bin/mirrorlab-bench/`): it drives members from
//!   outside, and the member does not ship it.
//! - [`metrics`] — what a member counts for Prometheus (the portal serves it at `/metrics`).
//! - [`error`], [`names`], [`util`], [`clock`], [`os`], [`wire`], [`tls`], [`transport`] —
//!   shared small pieces (the clock that timing decisions read, passed in so tests move time
//!   themselves; identities and mutual TLS, async for the agent and blocking for the data
//!   channel; the network between members, passed in so tests run members in one process and
//!   cut the network between them).
//!
//! ## Who may call whom
//!
//! `journal` knows nothing of SQLite or tokio. `storage` knows SQLite but not the journal's
//! writer or the web. `instance` ties them together and owns every thread that touches a file;
//! it imports nothing from `mirror`, which it knows only through seams it owns
//! ([`instance::role`], [`instance::writer::replication`], [`instance::writer::extension`]).
//! `mirror` uses the instance (its writer handle, its catalog) and implements those seams.
//! Only [`node`] knows them all. `web` and `apps` reach data only through `instance` (writes
//! through its writer, reads through its reader pool) and never open a database or journal file
//! themselves.
//!
//! ## The one rule of the write path
//!
//! A write is acknowledged only after its journal record is fsynced — and, once mirroring
//! exists, acknowledged by the active backup. The database files follow the journal, never lead
//! it; see [`instance::writer`] for the ordering argument.

// The module essays are read with the code (`cargo doc --document-private-items`, which CI
// checks): they link the private files and items they describe.
#![allow(rustdoc::private_intra_doc_links)]

pub mod agent;
pub mod apps;
pub mod arbiter;
pub mod cli;
pub mod clock;
pub mod config;
pub mod ctl;
pub mod error;
pub mod instance;
pub mod journal;
pub mod lab;
pub mod limits;
pub mod metrics;
pub mod mirror;
pub mod names;
pub mod node;
pub mod os;
pub mod server;
pub mod simulation;
pub mod storage;
pub mod tls;
pub mod transport;
pub mod util;
pub mod web;
pub mod wire;
