//! Running one statement on a namespace connection and collecting its result.
//!
//! Shared by the reader pool and the writer. A statement is prepared under the connection's
//! statement guard (see `storage::namespace`), so refusals carry their reason; rows are copied
//! out as SQLite values, at most [`MAX_ROWS`] of them and [`MAX_RESULT_BYTES`] in all. (SQLite
//! itself refuses to make one value larger than that: see `storage::namespace`.) A result over
//! the bytes is an error, not a cut: a page that silently lost half a value would mislead.

use rusqlite::Statement;
use rusqlite::types::Value;

use crate::error::Result;
use crate::journal::JournalPos;
use crate::storage::{NamespaceConn, StatementFacts};

/// A SQL value as SQLite stores it.
pub type SqlValue = Value;

/// Most rows a statement returns; the rest are cut off and `truncated` is set.
pub const MAX_ROWS: usize = 10_000;

/// Most bytes of values a statement returns (text and blobs by length, numbers as 8).
pub const MAX_RESULT_BYTES: usize = crate::storage::namespace::MAX_VALUE_BYTES;

/// The result of one statement.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct QueryResult {
    /// Column names, in order.
    pub columns: Vec<String>,
    /// Rows, at most [`MAX_ROWS`].
    pub rows: Vec<Vec<SqlValue>>,
    /// True when more rows existed than were returned.
    pub truncated: bool,
    /// Rows inserted, updated or deleted by a write.
    pub rows_affected: usize,
    /// The journal record that holds the write, when it changed anything.
    pub position: Option<JournalPos>,
}

/// Prepares `sql` under the guard and runs `run` with the statement. `cached` reuses a prepared
/// statement across calls (for the applications' fixed statements); user SQL is never cached, so
/// the guard sees every statement a person types.
pub fn with_statement<R>(
    ns: &NamespaceConn,
    sql: &str,
    cached: bool,
    run: impl FnOnce(&mut Statement<'_>, &StatementFacts) -> Result<R>,
) -> Result<R> {
    if cached {
        let (prepared, facts) = ns.guard.judge(|| ns.conn.prepare_cached(sql));
        let mut stmt = prepared.map_err(|e| ns.explain(e, &facts))?;
        refuse_trigger_on_bookkeeping(sql, &facts)?;
        run(&mut stmt, &facts)
    } else {
        let (prepared, facts) = ns.guard.judge(|| ns.conn.prepare(sql));
        let mut stmt = prepared.map_err(|e| ns.explain(e, &facts))?;
        refuse_trigger_on_bookkeeping(sql, &facts)?;
        run(&mut stmt, &facts)
    }
}

/// Refuses a trigger whose text names the instance's bookkeeping table. The guard refuses a
/// trigger *on* that table, but SQLite judges the statements of a trigger's body only when it
/// fires: a trigger on `Company` that updates the table would be accepted, then break every
/// insert into `Company` until dropped. A table name cannot be built at run time in SQL, so its
/// text is where any such body names it (quoted or not, in any case).
fn refuse_trigger_on_bookkeeping(sql: &str, facts: &StatementFacts) -> Result<()> {
    let table = crate::storage::database::META_TABLE;
    if facts.creates_trigger && sql.to_ascii_lowercase().contains(table) {
        return Err(crate::error::Error::Conflict(format!(
            "{table} is kept by the instance: a trigger may not use it"
        )));
    }
    Ok(())
}

/// Runs a prepared statement and copies out its rows.
pub fn collect_rows(
    ns: &NamespaceConn,
    stmt: &mut Statement<'_>,
    params: &[SqlValue],
) -> Result<QueryResult> {
    let columns: Vec<String> = stmt.column_names().map(String::from).collect();
    let width = columns.len();
    let no_facts = StatementFacts::default();
    ns.with_deadline(|| {
        let mut rows = stmt
            .query(rusqlite::params_from_iter(params.iter()))
            .map_err(|e| ns.explain(e, &no_facts))?;
        let mut out = Vec::new();
        let mut truncated = false;
        let mut bytes = 0usize;
        while let Some(row) = rows.next().map_err(|e| ns.explain(e, &no_facts))? {
            if out.len() == MAX_ROWS {
                truncated = true;
                break;
            }
            let mut values = Vec::with_capacity(width);
            for i in 0..width {
                let value = row.get_ref(i).map_err(|e| ns.explain(e, &no_facts))?;
                // Counted before the copy: a result over the cap is never held twice.
                bytes += match value {
                    rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) => {
                        t.len()
                    }
                    _ => 8,
                };
                if bytes > MAX_RESULT_BYTES {
                    return Err(crate::error::Error::InvalidInput(format!(
                        "the result is larger than {} MiB, the most a statement returns here: \
                         select fewer rows or shorter values (LIMIT, substr())",
                        MAX_RESULT_BYTES >> 20
                    )));
                }
                values.push(Value::try_from(value).map_err(|e| ns.explain(e.into(), &no_facts))?);
            }
            out.push(values);
        }
        Ok(QueryResult {
            columns,
            rows: out,
            truncated,
            rows_affected: 0,
            position: None,
        })
    })
}

/// Shows a value the way the SQL page and the applications print it.
pub fn display_value(value: &SqlValue) -> String {
    match value {
        Value::Null => String::new(),
        Value::Integer(i) => i.to_string(),
        Value::Real(f) => f.to_string(),
        Value::Text(s) => s.clone(),
        Value::Blob(b) => format!("x'{}'", crate::util::hex(b)),
    }
}
