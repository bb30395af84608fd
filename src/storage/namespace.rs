//! Namespace connections and the statement guard.
//!
//! A namespace is one SQLite connection: its default database is `main`, and each mapped database
//! is attached under its own name. SQLite resolves unqualified table names in `main` first and
//! then in the attached databases in order, so in PHONEBOOK (`PERSONAL` + `COMPANY` + `CUSTOMER`)
//! `SELECT ... FROM Contact JOIN Company ...` joins across databases exactly as an IRIS namespace
//! mapping would.
//!
//! Every connection carries a *statement guard*, an SQLite authorizer that sees each statement
//! as it is prepared. It refuses what a user statement must not do — write to a read-only
//! database, open its own transaction, attach files, change pragmas, touch the bookkeeping table —
//! with a message a person understands, and it notes whether the statement changes the schema,
//! which the writer journals differently from row changes.

use std::sync::{Arc, Mutex};

use rusqlite::Connection;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};

use crate::error::{Error, Result};
use crate::names::{DbName, NamespaceName};

use super::catalog::CatalogState;
use super::database::{self, META_TABLE};

/// Pragmas a user statement may run with an argument naming what to describe
/// (`PRAGMA table_info(Company)`): they only read.
const DESCRIBING_PRAGMAS: &[&str] = &[
    "table_info",
    "table_xinfo",
    "table_list",
    "index_list",
    "index_info",
    "index_xinfo",
    "foreign_key_list",
    "integrity_check",
    "quick_check",
];

/// Pragmas a user statement may read but never set (an argument would set them).
const READABLE_PRAGMAS: &[&str] = &[
    "database_list",
    "page_count",
    "page_size",
    "freelist_count",
    "journal_mode",
    "user_version",
    "compile_options",
    "function_list",
    "collation_list",
];

/// What the guard learned about the statement being prepared.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StatementFacts {
    /// Why the statement was refused, when it was.
    pub denied: Option<String>,
    /// The database a schema statement changes.
    pub ddl_db: Option<String>,
    /// True for `CREATE TRIGGER`: SQLite judges a trigger's body only when the trigger fires,
    /// so the statement's text is checked instead (see `instance::sql`).
    pub creates_trigger: bool,
}

#[derive(Debug, Default)]
struct GuardState {
    /// True only while the instance runs its own bookkeeping statements; everything else —
    /// including a cached statement SQLite re-prepares in the middle of running it, and the
    /// statements inside triggers — is judged as a user statement.
    internal: bool,
    facts: StatementFacts,
}

/// The authorizer's shared state for one connection.
#[derive(Clone)]
pub struct StatementGuard {
    state: Arc<Mutex<GuardState>>,
    main: String,
    read_only: Arc<Vec<String>>,
    read_only_reason: Arc<str>,
}

impl StatementGuard {
    fn new(main: &DbName, read_only: Vec<String>, read_only_reason: &str) -> Self {
        StatementGuard {
            state: Arc::new(Mutex::new(GuardState::default())),
            main: main.to_string(),
            read_only: Arc::new(read_only),
            read_only_reason: read_only_reason.into(),
        }
    }

    fn db_name<'a>(&'a self, schema: Option<&'a str>) -> &'a str {
        schema.unwrap_or("main")
    }

    fn decide(&self, ctx: AuthContext<'_>) -> Authorization {
        let mut state = self.state.lock().unwrap();
        let internal = state.internal;
        let refuse = |state: &mut GuardState, why: String| {
            state.facts.denied.get_or_insert(why);
            Authorization::Deny
        };
        // ALTER TABLE names its database in the action, not in the context.
        let db = match ctx.action {
            AuthAction::AlterTable { database_name, .. } => self.db_name(Some(database_name)),
            _ => self.db_name(ctx.database_name),
        };
        let writes_table = match ctx.action {
            AuthAction::Insert { table_name }
            | AuthAction::Delete { table_name }
            | AuthAction::Update { table_name, .. } => Some(table_name),
            _ => None,
        };
        let schema_table = match ctx.action {
            AuthAction::CreateTable { table_name }
            | AuthAction::CreateIndex { table_name, .. }
            | AuthAction::CreateTrigger { table_name, .. }
            | AuthAction::DropTable { table_name }
            | AuthAction::DropIndex { table_name, .. }
            | AuthAction::DropTrigger { table_name, .. }
            | AuthAction::AlterTable { table_name, .. } => Some(table_name),
            AuthAction::CreateView { view_name } | AuthAction::DropView { view_name } => {
                Some(view_name)
            }
            _ => None,
        };
        // The bookkeeping table: only the instance's own top-level statements write it, and
        // nobody changes its schema or hangs a trigger on it.
        if writes_table == Some(META_TABLE) && (!internal || ctx.accessor.is_some()) {
            return refuse(
                &mut state,
                format!("{META_TABLE} is kept by the instance and cannot be changed"),
            );
        }
        if schema_table == Some(META_TABLE) {
            return refuse(
                &mut state,
                format!(
                    "{META_TABLE} is kept by the instance: no schema changes or triggers on it"
                ),
            );
        }
        // Read-only databases refuse writes from every statement, the instance's own included.
        if (writes_table.is_some() || schema_table.is_some())
            && db != "temp"
            && self.read_only.iter().any(|r| r == db)
        {
            return refuse(
                &mut state,
                format!("database {db} is read-only{}", self.read_only_reason),
            );
        }
        if internal {
            return Authorization::Allow;
        }
        if schema_table.is_some() && db == "main" {
            return refuse(
                &mut state,
                format!(
                    "name the database the object belongs to, e.g. CREATE TABLE {}.Notes (...): in a namespace every \
                     table lives in one of its databases",
                    self.main
                ),
            );
        }
        if schema_table.is_some() {
            let db = db.to_string();
            state.facts.ddl_db.get_or_insert(db);
            if matches!(ctx.action, AuthAction::CreateTrigger { .. }) {
                state.facts.creates_trigger = true;
            }
            return Authorization::Allow;
        }
        match ctx.action {
            AuthAction::CreateTempTable { .. }
            | AuthAction::CreateTempIndex { .. }
            | AuthAction::CreateTempView { .. }
            | AuthAction::CreateTempTrigger { .. }
            | AuthAction::DropTempTable { .. }
            | AuthAction::DropTempIndex { .. }
            | AuthAction::DropTempView { .. }
            | AuthAction::DropTempTrigger { .. } => {
                refuse(&mut state, "temporary tables, views and triggers are not supported".into())
            }
            AuthAction::Transaction { .. } | AuthAction::Savepoint { .. } => refuse(
                &mut state,
                "transactions are managed by the instance: each statement commits on its own".into(),
            ),
            AuthAction::Attach { .. } | AuthAction::Detach { .. } => refuse(
                &mut state,
                "ATTACH and DETACH are not allowed: the namespace decides which databases a statement sees".into(),
            ),
            AuthAction::Pragma { pragma_name, pragma_value } => {
                let name = pragma_name.to_ascii_lowercase();
                if DESCRIBING_PRAGMAS.contains(&name.as_str())
                    || (pragma_value.is_none() && READABLE_PRAGMAS.contains(&name.as_str()))
                {
                    Authorization::Allow
                } else {
                    refuse(&mut state, format!("PRAGMA {pragma_name} cannot be run from a statement"))
                }
            }
            AuthAction::CreateVtable { .. }
            | AuthAction::DropVtable { .. }
            | AuthAction::Analyze { .. }
            | AuthAction::Reindex { .. } => refuse(&mut state, "this kind of statement is not supported".into()),
            _ => Authorization::Allow,
        }
    }

    /// Prepares a user statement under the guard; returns what the guard learned.
    pub fn judge<T>(&self, prepare: impl FnOnce() -> T) -> (T, StatementFacts) {
        self.state.lock().unwrap().facts = StatementFacts::default();
        let result = prepare();
        let facts = std::mem::take(&mut self.state.lock().unwrap().facts);
        (result, facts)
    }

    /// Runs the instance's own bookkeeping (savepoints, applied positions, checkpoints).
    pub fn internal<T>(&self, run: impl FnOnce() -> T) -> T {
        self.state.lock().unwrap().internal = true;
        let result = run();
        self.state.lock().unwrap().internal = false;
        result
    }
}

/// The largest value (string, blob or row) a user statement may make or read. SQLite refuses a
/// larger one before it allocates it (`SQLITE_LIMIT_LENGTH`), so `zeroblob(300000000)` costs
/// nothing.
pub const MAX_VALUE_BYTES: usize = 16 << 20;

/// How long one user statement may run on a reader, by default, before SQLite is told to stop it.
pub const STATEMENT_TIMEOUT_MS: i64 = 30_000;
/// How long one write statement may run, by default. The writer runs one statement at a time
/// for the whole member, so a runaway write (a recursive CTE in an `UPDATE`) holds every other
/// write back while it runs: it is stopped after a few seconds, fails alone, and the statements
/// queued behind it go on in the next group commit.
pub const WRITE_TIMEOUT_MS: i64 = 5_000;

/// A connection for one namespace, built for one catalog generation.
pub struct NamespaceConn {
    /// The SQLite connection.
    pub conn: Connection,
    /// Which namespace.
    pub namespace: NamespaceName,
    /// The catalog generation it reflects.
    pub generation: u64,
    /// The default database (attached first, so unqualified names resolve to it).
    pub main: DbName,
    /// All databases reachable, default first.
    pub attached: Vec<DbName>,
    /// Mapped databases left out because they are dismounted.
    pub missing: Vec<DbName>,
    /// The databases writes may go to (mounted, not read-only).
    pub writable: Vec<DbName>,
    /// The databases whose changes belong in the mirror's journal.
    pub mirrored: Vec<DbName>,
    /// The writable databases whose row changes are journaled: all of them but the copies on a
    /// Read-Write Reporting async (see [`DatabaseEntry::local_writes`](super::DatabaseEntry::local_writes)).
    pub journaled: Vec<DbName>,
    /// The authorizer state.
    pub guard: StatementGuard,
    /// When the running user statement must stop (ms since the Unix epoch; 0 = no limit).
    deadline: Arc<std::sync::atomic::AtomicI64>,
    /// How long a user statement may run (ms).
    timeout_ms: i64,
}

/// Whether a connection is for reading only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// The writer's connection.
    Write,
    /// A pooled reader connection (`query_only`).
    Read,
}

impl NamespaceConn {
    /// Opens the namespace's connection according to the catalog snapshot.
    pub fn open(
        state: &CatalogState,
        namespace: &NamespaceName,
        purpose: Purpose,
        timeout_ms: i64,
    ) -> Result<NamespaceConn> {
        let ns = state.namespace(namespace)?;
        let main = state.database(&ns.default_db)?;
        if !main.mounted {
            return Err(Error::Conflict(format!(
                "namespace {namespace} cannot be used: its default database {} is dismounted",
                main.name
            )));
        }
        // An empty main database, and every database attached under its own name, the default
        // first: unqualified names resolve to the default database, and `PERSONAL.Contact`
        // works for every database of the namespace, the default included.
        let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
            | rusqlite::OpenFlags::SQLITE_OPEN_CREATE
            | rusqlite::OpenFlags::SQLITE_OPEN_URI
            | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn = rusqlite::Connection::open_with_flags(":memory:", flags)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.set_limit(
            rusqlite::limits::Limit::SQLITE_LIMIT_LENGTH,
            MAX_VALUE_BYTES as i32,
        )?;
        database::statement_journal_in_memory(&conn)?;
        let mut attached = Vec::new();
        let mut missing = Vec::new();
        for name in ns.databases() {
            let entry = state.database(name)?;
            if !entry.mounted {
                missing.push(name.clone());
                continue;
            }
            conn.execute(
                "ATTACH DATABASE ?1 AS ?2",
                rusqlite::params![entry.file.to_string_lossy(), name.as_str()],
            )
            .map_err(|e| Error::Io(format!("attach {name} to namespace {namespace}: {e}")))?;
            database::configure(&conn, name.as_str())?;
            if purpose == Purpose::Write && entry.local_writes {
                // No journal makes these commits durable, so SQLite itself must: every commit
                // is fsynced in the WAL before the writer answers.
                conn.execute_batch(&format!("PRAGMA \"{name}\".synchronous = FULL"))?;
            }
            attached.push(name.clone());
        }
        // Reader connections are `query_only`: a writing statement prepared there is noticed
        // (`Statement::readonly`) and handed to the writer, whose guard judges it.
        let read_only: Vec<String> = attached
            .iter()
            .filter(|db| state.databases[*db].read_only)
            .map(|db| db.to_string())
            .collect();
        let writable = match purpose {
            Purpose::Read => Vec::new(),
            Purpose::Write => attached
                .iter()
                .filter(|db| !read_only.contains(&db.to_string()))
                .cloned()
                .collect(),
        };
        let reason =
            " on this member (it is a mirrored database and this member is not the primary)";
        if purpose == Purpose::Read {
            conn.execute_batch("PRAGMA query_only = 1")?;
        }
        let guard = StatementGuard::new(&main.name, read_only, reason);
        let judge = guard.clone();
        conn.authorizer(Some(move |ctx: AuthContext<'_>| judge.decide(ctx)))?;
        // A statement past its deadline is interrupted: no read holds a file (or the writer)
        // forever.
        let deadline = Arc::new(std::sync::atomic::AtomicI64::new(0));
        let watch = deadline.clone();
        conn.progress_handler(
            20_000,
            Some(move || {
                let until = watch.load(std::sync::atomic::Ordering::Relaxed);
                until != 0 && crate::util::now_ms() > until
            }),
        )?;
        let journaled = writable
            .iter()
            .filter(|db| !state.databases[*db].local_writes)
            .cloned()
            .collect();
        let mirrored = attached
            .iter()
            .filter(|db| {
                let entry = &state.databases[*db];
                entry.mirrored.is_some() && !entry.local_writes
            })
            .cloned()
            .collect();
        Ok(NamespaceConn {
            conn,
            namespace: namespace.clone(),
            generation: state.generation,
            main: main.name.clone(),
            attached,
            missing,
            writable,
            mirrored,
            journaled,
            guard,
            deadline,
            timeout_ms,
        })
    }

    /// Runs the instance's own statements on this connection (see [`StatementGuard::internal`]).
    pub fn internal<T>(&self, run: impl FnOnce(&Connection) -> T) -> T {
        self.guard.internal(|| run(&self.conn))
    }

    /// Runs a user statement with the statement deadline armed.
    pub fn with_deadline<T>(&self, run: impl FnOnce() -> T) -> T {
        use std::sync::atomic::Ordering;
        self.deadline
            .store(crate::util::now_ms() + self.timeout_ms, Ordering::Relaxed);
        let result = run();
        self.deadline.store(0, Ordering::Relaxed);
        result
    }

    /// Explains a SQLite error from a user statement, adding what the guard knows: the reason for
    /// a refusal, or which mapped database is dismounted when a table is missing.
    pub fn explain(&self, err: rusqlite::Error, facts: &StatementFacts) -> Error {
        if let Some(denied) = &facts.denied {
            return Error::Conflict(denied.clone());
        }
        if let rusqlite::Error::MultipleStatement = err {
            return Error::InvalidInput("run one statement at a time".into());
        }
        if err.sqlite_error_code() == Some(rusqlite::ErrorCode::TooBig) {
            return Error::InvalidInput(format!(
                "a value or row would be larger than {} MiB, the most this member makes or returns",
                MAX_VALUE_BYTES >> 20
            ));
        }
        if err.sqlite_error_code() == Some(rusqlite::ErrorCode::OperationInterrupted) {
            return Error::Conflict(format!(
                "the statement ran longer than {} ms and was stopped",
                self.timeout_ms
            ));
        }
        let mut message = match &err {
            rusqlite::Error::SqliteFailure(_, Some(msg)) => msg.clone(),
            rusqlite::Error::SqlInputError { msg, .. } => msg.clone(),
            other => other.to_string(),
        };
        if message.contains("no such table") && !self.missing.is_empty() {
            let names: Vec<&str> = self.missing.iter().map(|d| d.as_str()).collect();
            message.push_str(&format!(
                " (mapped into namespace {} but dismounted: {})",
                self.namespace,
                names.join(", ")
            ));
        }
        Error::Sql(message)
    }
}
