//! Running one request inside a batch: its statement under a savepoint, the row changes its
//! databases' SQLite sessions record, and the journal frames they become (one record per
//! journal for the requests since the last schema statement). Also the checks that refuse what
//! the session extension cannot journal.

use super::*;

/// How one request ended.
pub(super) enum Step {
    /// The request ran (or failed on its own); whether it changed rows; the batch goes on.
    Done(Result<QueryResult>, bool),
    /// The request failed and SQLite rolled back the whole batch transaction with it.
    TransactionLost(Error),
}

/// The requests of a batch between schema statements. One SQLite session per writable database
/// records their row changes; a session keeps the *net* effect between a row's first change and
/// the moment the changeset is taken, so a request rolled back to its savepoint leaves nothing
/// in it. At the end the segment becomes at most one journal record per journal: its
/// transactions are committed together anyway, and one record per group commit means one
/// changeset to build here and one to apply on the backup, instead of one per request.
pub(super) struct Segment<'c> {
    pub(super) sessions: Vec<(&'c DbName, Session<'c>)>,
    /// Indexes (in the batch's outcomes) of the requests that changed rows, to receive the
    /// segment's position.
    pub(super) members: Vec<usize>,
}

impl<'c> Segment<'c> {
    pub(super) fn open(conn: &'c NamespaceConn) -> Result<Segment<'c>> {
        let mut sessions = Vec::with_capacity(conn.journaled.len());
        for db in &conn.journaled {
            let mut session = Session::new_with_name(&conn.conn, db.as_str())?;
            session.table_filter(Some(|table: &str| table != META_TABLE));
            session.attach::<&str>(None)?;
            sessions.push((db, session));
        }
        Ok(Segment {
            sessions,
            members: Vec::new(),
        })
    }

    /// Journals the segment's row changes, records the applied positions (same transaction as
    /// the rows), and gives its members their position.
    pub(super) fn flush(
        mut self,
        conn: &NamespaceConn,
        streams: &mut Streams<'_>,
        outcomes: &mut [Outcome],
    ) -> Result<()> {
        let local_pos = streams.next_local;
        let mirror_pos = streams.next_mirror;
        let mut local_frame =
            FrameBuilder::begin(streams.local, local_pos, streams.epoch, streams.time_ms);
        let mut mirror_frame = streams
            .mirror
            .as_deref_mut()
            .map(|m| FrameBuilder::begin(m, mirror_pos, streams.epoch, streams.time_ms));
        let mut changed: Vec<(&DbName, JournalPos)> = Vec::new();
        let outcome = (|| -> Result<()> {
            for (db, session) in self.sessions.iter_mut() {
                if session.is_empty() {
                    continue;
                }
                let (frame, pos) = if conn.mirrored.contains(db) {
                    (mirror_frame.as_mut().ok_or_else(not_primary)?, mirror_pos)
                } else {
                    (&mut local_frame, local_pos)
                };
                // Generating a changeset runs SQLite's own SAVEPOINT: the instance's, not a user's.
                let write = |buf: &mut Vec<u8>| {
                    conn.guard
                        .internal(|| session.changeset_strm(buf))
                        .map_err(Error::from)
                };
                if frame.add_changes(db.as_str(), write)? {
                    changed.push((db, pos));
                }
            }
            for (db, pos) in &changed {
                conn.internal(|c| {
                    c.prepare_cached(&set_applied_sql(db.as_str()))
                        .and_then(|mut s| s.execute([pos.0 as i64]))
                })
                .map_err(|e| Error::Internal(format!("record applied position of {db}: {e}")))?;
            }
            Ok(())
        })();
        if let Err(err) = outcome {
            local_frame.abandon();
            if let Some(frame) = mirror_frame {
                frame.abandon();
            }
            return Err(err);
        }
        let mut position = None;
        if local_frame.is_empty() {
            local_frame.abandon();
        } else {
            local_frame.finish();
            position = Some(local_pos);
            streams.next_local = local_pos.next();
        }
        if let Some(frame) = mirror_frame {
            if frame.is_empty() {
                frame.abandon();
            } else {
                frame.finish();
                position = Some(mirror_pos);
                streams.next_mirror = mirror_pos.next();
            }
        }
        for i in self.members {
            if let Ok(result) = &mut outcomes[i].0 {
                result.position = position;
            }
        }
        Ok(())
    }
}

/// Runs one request inside the batch transaction, under its own savepoint. A schema statement
/// first closes the current segment (so records keep the statements' order) and is journaled as
/// its own record. `Err` is fatal (a savepoint that cannot be undone).
pub(super) fn run_request<'c>(
    conn: &'c NamespaceConn,
    request: &WriteRequest,
    segment: &mut Option<Segment<'c>>,
    streams: &mut Streams<'_>,
    outcomes: &mut [Outcome],
) -> Result<Step, Fatal> {
    // The applications' cached statements are never schema statements; a user's might be.
    let ddl = if request.cached {
        None
    } else {
        match with_statement(conn, &request.sql, false, |_, facts| {
            Ok(facts.ddl_db.clone())
        }) {
            Ok(ddl) => ddl,
            Err(err) => return Ok(Step::Done(Err(err), false)),
        }
    };
    if ddl.is_some()
        && let Some(open) = segment.take()
        && let Err(err) = open.flush(conn, streams, outcomes)
    {
        return Err(Fatal(format!(
            "could not journal the changes before a schema statement: {err}"
        )));
    }
    if ddl.is_none() && segment.is_none() {
        match Segment::open(conn) {
            Ok(open) => *segment = Some(open),
            Err(err) => return Ok(Step::Done(Err(err), false)),
        }
    }
    if let Err(err) = conn.internal(|c| {
        c.prepare_cached("SAVEPOINT request")
            .and_then(|mut s| s.execute([]))
    }) {
        return Ok(Step::Done(Err(Error::from(err)), false));
    }
    let local_before = streams.local.len();
    let mirror_before = streams.mirror.as_ref().map(|m| m.len()).unwrap_or(0);
    let (next_local, next_mirror) = (streams.next_local, streams.next_mirror);
    let result = match &ddl {
        None => run_statement(conn, request),
        Some(db) => run_schema_statement(conn, request, db, streams),
    };
    if let Err(err) = result {
        streams.local.truncate(local_before);
        if let Some(m) = streams.mirror.as_mut() {
            m.truncate(mirror_before);
        }
        streams.next_local = next_local;
        streams.next_mirror = next_mirror;
        if conn.conn.is_autocommit() {
            return Ok(Step::TransactionLost(err));
        }
        conn.internal(|c| {
            c.prepare_cached("ROLLBACK TO request")
                .and_then(|mut s| s.execute([]))
        })
        .map_err(|e| Fatal(format!("could not undo a failed statement: {e}")))?;
        conn.internal(|c| {
            c.prepare_cached("RELEASE request")
                .and_then(|mut s| s.execute([]))
        })
        .map_err(|e| Fatal(format!("could not release a statement's savepoint: {e}")))?;
        return Ok(Step::Done(Err(err), false));
    }
    conn.internal(|c| {
        c.prepare_cached("RELEASE request")
            .and_then(|mut s| s.execute([]))
    })
    .map_err(|e| Fatal(format!("could not release a statement's savepoint: {e}")))?;
    let changed = ddl.is_none() && result.as_ref().is_ok_and(|r| r.rows_affected > 0);
    Ok(Step::Done(result, changed))
}

/// Runs a row-changing statement; the segment's sessions record what it changes.
pub(super) fn run_statement(conn: &NamespaceConn, request: &WriteRequest) -> Result<QueryResult> {
    let mut result = with_statement(conn, &request.sql, request.cached, |stmt, _| {
        collect_rows(conn, stmt, &request.params)
    })?;
    result.rows_affected = conn.conn.changes() as usize;
    Ok(result)
}

/// Runs a schema statement and journals it as its own record, with the applied position of the
/// database it changes.
pub(super) fn run_schema_statement(
    conn: &NamespaceConn,
    request: &WriteRequest,
    db: &str,
    streams: &mut Streams<'_>,
) -> Result<QueryResult> {
    let mut result = with_statement(conn, &request.sql, false, |stmt, _| {
        collect_rows(conn, stmt, &request.params)
    })?;
    check_primary_keys(conn, db)?;
    let name = DbName::new(db)?;
    if !conn.writable.contains(&name) {
        return Err(Error::Conflict(format!(
            "database {db} cannot be changed here"
        )));
    }
    let (buffer, pos) = if conn.mirrored.contains(&name) {
        (
            streams.mirror.as_deref_mut().ok_or_else(not_primary)?,
            &mut streams.next_mirror,
        )
    } else {
        (&mut *streams.local, &mut streams.next_local)
    };
    let mut frame = FrameBuilder::begin(buffer, *pos, streams.epoch, streams.time_ms);
    // Namespace connections attach every database under its name: DDL always names it.
    frame.set_schema(db, true, &request.sql);
    frame.finish();
    conn.internal(|c| {
        c.prepare_cached(&set_applied_sql(db))
            .and_then(|mut s| s.execute([pos.0 as i64]))
    })
    .map_err(|e| Error::Internal(format!("record applied position of {db}: {e}")))?;
    result.position = Some(*pos);
    result.rows_affected = 0;
    *pos = pos.next();
    Ok(result)
}

pub(super) fn not_primary() -> Error {
    Error::Conflict("mirrored databases are written on the mirror's primary only".into())
}

/// Refuses a schema change that leaves a table in `db` whose rows could not be journaled:
/// without a primary key, or with a primary key that may be NULL (SQLite sessions identify rows
/// by primary key and skip rows whose key is NULL).
pub(super) fn check_primary_keys(conn: &NamespaceConn, db: &str) -> Result<()> {
    let schema = db;
    let sql = format!(
        "SELECT m.name,
                (SELECT count(*) FROM pragma_table_info(m.name, '{schema}') WHERE pk > 0),
                (SELECT count(*) FROM pragma_table_info(m.name, '{schema}') WHERE pk > 0 AND \"notnull\" = 0
                   AND NOT (upper(type) = 'INTEGER' AND (SELECT count(*) FROM pragma_table_info(m.name, '{schema}') WHERE pk > 0) = 1))
         FROM \"{schema}\".sqlite_schema AS m
         WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite%' AND m.sql NOT LIKE '%WITHOUT ROWID%'
         UNION ALL
         SELECT m.name, (SELECT count(*) FROM pragma_table_info(m.name, '{schema}') WHERE pk > 0), 0
         FROM \"{schema}\".sqlite_schema AS m
         WHERE m.type = 'table' AND m.sql LIKE '%WITHOUT ROWID%'"
    );
    let tables: Vec<(String, i64, i64)> = conn
        .internal(|c| -> rusqlite::Result<Vec<(String, i64, i64)>> {
            let mut stmt = c.prepare(&sql)?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            rows.collect()
        })
        .map_err(|e| Error::Internal(format!("check primary keys: {e}")))?;
    for (table, keys, nullable) in tables {
        if keys == 0 {
            return Err(Error::InvalidInput(format!(
                "table {table} has no PRIMARY KEY: row changes are journaled by primary key, so \
                 every table in a journaled database needs one"
            )));
        }
        if nullable > 0 {
            return Err(Error::InvalidInput(format!(
                "table {table} has a PRIMARY KEY that may be NULL: declare its key columns NOT NULL \
                 (or use INTEGER PRIMARY KEY), since rows with a NULL key cannot be journaled"
            )));
        }
    }
    Ok(())
}
