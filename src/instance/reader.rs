//! The reader pool: read-only namespace connections used from blocking tasks.
//!
//! Reads never go through the writer thread. Each read borrows an idle connection for its
//! namespace (or opens one), runs on a blocking thread (`spawn_blocking`, never on an async
//! task), and returns the connection to the pool. Connections remember the catalog generation
//! they were built for; a stale one is closed instead of reused. While a read has a file open it
//! holds the catalog's file gate shared, so a dismount can wait for it to finish.

use std::sync::{Arc, Mutex};

use crate::error::Result;
use crate::names::NamespaceName;
use crate::storage::{Catalog, NamespaceConn, Purpose};

use super::sql::{QueryResult, SqlValue, collect_rows, with_statement};

/// Idle connections kept per instance.
const MAX_IDLE: usize = 16;

/// What a read attempt came to.
#[derive(Debug)]
pub enum ReadOutcome {
    /// The statement was read-only and ran.
    Done(QueryResult),
    /// The statement writes; it must go to the writer.
    NeedsWriter,
}

/// Pooled read-only connections.
pub struct ReadPool {
    catalog: Arc<Catalog>,
    idle: Mutex<Vec<NamespaceConn>>,
    timeout_ms: i64,
}

impl ReadPool {
    /// An empty pool over `catalog`; user statements may run `timeout_ms`.
    pub fn new(catalog: Arc<Catalog>, timeout_ms: i64) -> Self {
        ReadPool {
            catalog,
            idle: Mutex::new(Vec::new()),
            timeout_ms,
        }
    }

    /// Runs `sql` if it is read-only (blocking; call from a blocking thread).
    pub fn run(
        &self,
        namespace: &NamespaceName,
        sql: &str,
        params: &[SqlValue],
        cached: bool,
    ) -> Result<ReadOutcome> {
        let _files = self.catalog.enter_files();
        let conn = self.checkout(namespace)?;
        let outcome = with_statement(&conn, sql, cached, |stmt, _| {
            if !stmt.readonly() {
                return Ok(ReadOutcome::NeedsWriter);
            }
            collect_rows(&conn, stmt, params).map(ReadOutcome::Done)
        });
        self.give_back(conn);
        outcome
    }

    fn checkout(&self, namespace: &NamespaceName) -> Result<NamespaceConn> {
        let state = self.catalog.snapshot();
        {
            let mut idle = self.idle.lock().unwrap();
            idle.retain(|c| c.generation == state.generation);
            if let Some(i) = idle.iter().position(|c| &c.namespace == namespace) {
                return Ok(idle.swap_remove(i));
            }
        }
        NamespaceConn::open(&state, namespace, Purpose::Read, self.timeout_ms)
    }

    fn give_back(&self, conn: NamespaceConn) {
        if conn.generation != self.catalog.generation() {
            return;
        }
        let mut idle = self.idle.lock().unwrap();
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }

    /// How long a user statement may run (ms).
    pub fn timeout_ms(&self) -> i64 {
        self.timeout_ms
    }

    /// Closes idle connections built for an older catalog generation.
    pub fn drop_stale(&self) {
        let generation = self.catalog.generation();
        self.idle
            .lock()
            .unwrap()
            .retain(|c| c.generation == generation);
    }
}
