//! Tests of the instance with real SQLite files and a real journal in a temporary folder.

use std::sync::Arc;

use rusqlite::types::Value;

use super::sql::QueryResult;
use super::*;
use crate::journal::RecordBody;

fn open(dir: &std::path::Path) -> Arc<Instance> {
    Instance::open(
        InstanceSettings::for_dir(dir),
        Box::new(|why| panic!("fatal: {why}")),
    )
    .unwrap()
}

pub(crate) fn ns(name: &str) -> NamespaceName {
    NamespaceName::new(name).unwrap()
}

pub(crate) async fn sql(instance: &Instance, namespace: &str, text: &str) -> Result<QueryResult> {
    instance.sql(&ns(namespace), text.to_string(), vec![]).await
}

pub(crate) async fn count(instance: &Instance, namespace: &str, table: &str) -> i64 {
    let result = sql(
        instance,
        namespace,
        &format!("SELECT count(*) FROM {table}"),
    )
    .await
    .unwrap();
    match result.rows[0][0] {
        Value::Integer(n) => n,
        ref other => panic!("count gave {other:?}"),
    }
}

/// Row operations journaled in all records (decoded from the changesets): what a replay of
/// the journal would do.
fn journaled_row_changes(instance: &Instance) -> usize {
    use fallible_streaming_iterator::FallibleStreamingIterator;
    let mut operations = 0;
    for record in instance.journal.read_after(JournalPos::ZERO) {
        if let RecordBody::Changes(changes) = record.unwrap().body {
            for change in changes {
                let mut input: &[u8] = &change.changeset;
                let reader: &mut dyn std::io::Read = &mut input;
                let mut items = rusqlite::session::ChangesetIter::start_strm(&reader).unwrap();
                while items.next().unwrap().is_some() {
                    operations += 1;
                }
            }
        }
    }
    operations
}

pub(crate) async fn insert_company(instance: &Instance, name: &str) -> Result<QueryResult> {
    instance
        .write(
            &ns("COMPANY"),
            "INSERT INTO Company(name, created_at) VALUES (?1, '2026-01-01') RETURNING id",
            vec![Value::Text(name.into())],
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_share_fsyncs_and_every_write_lands() {
    let dir = tempfile::tempdir().unwrap();
    let instance = open(dir.path());
    let syncs_before = instance.journal.syncs();
    let mut tasks = Vec::new();
    for writer in 0..32 {
        let instance = instance.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..20 {
                let result = insert_company(&instance, &format!("w{writer}-{i}"))
                    .await
                    .unwrap();
                assert!(result.position.is_some());
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(count(&instance, "COMPANY", "Company").await, 640);
    let syncs = instance.journal.syncs() - syncs_before;
    let records = instance.journal.appended();
    assert!(
        syncs < 640,
        "group commit should share fsyncs: {syncs} fsyncs for 640 writes"
    );
    // One record per group commit, holding every row of it.
    assert_eq!(records, syncs);
    assert_eq!(journaled_row_changes(&instance), 640);
    // Positions are dense and ordered.
    let positions: Vec<u64> = instance
        .journal
        .read_after(JournalPos::ZERO)
        .map(|r| r.unwrap().pos.0)
        .collect();
    assert_eq!(positions, (1..=records).collect::<Vec<_>>());
}

/// Writes held behind a Freeze commit together once it is thawed — one journal record, one
/// fsync — instead of one fsync each.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_held_behind_a_freeze_commit_together_after_the_thaw() {
    use std::task::{Context, Waker};
    let dir = tempfile::tempdir().unwrap();
    let instance = open(dir.path());
    let writer = instance.writer().clone();
    writer
        .freeze(std::time::Duration::from_secs(60))
        .await
        .unwrap();
    let names: Vec<String> = (0..20).map(|i| format!("held {i}")).collect();
    let mut writes: Vec<_> = names
        .iter()
        .map(|name| Box::pin(insert_company(&instance, name)))
        .collect();
    // The first poll sends each write; none may be answered behind the Freeze.
    for write in &mut writes {
        let mut context = Context::from_waker(Waker::noop());
        assert!(write.as_mut().poll(&mut context).is_pending());
    }
    // Every one of them is held before the Thaw.
    let settled = writer.clone();
    tokio::task::spawn_blocking(move || settled.settled())
        .await
        .unwrap()
        .unwrap();
    let (records, syncs) = (instance.journal.appended(), instance.journal.syncs());
    writer.thaw().await.unwrap();
    for write in writes {
        write.await.unwrap();
    }
    assert_eq!(count(&instance, "COMPANY", "Company").await, 20);
    assert_eq!(
        instance.journal.appended() - records,
        1,
        "one record for the held writes"
    );
    assert_eq!(
        instance.journal.syncs() - syncs,
        1,
        "one fsync for the held writes"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_statement_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let instance = open(dir.path());
    let mut tasks = Vec::new();
    for i in 0..40 {
        let instance = instance.clone();
        // Every fifth name is empty, which the CHECK constraint refuses.
        let name = if i % 5 == 0 {
            String::new()
        } else {
            format!("ok-{i}")
        };
        tasks.push(tokio::spawn(async move {
            (i, insert_company(&instance, &name).await)
        }));
    }
    for task in tasks {
        let (i, result) = task.await.unwrap();
        if i % 5 == 0 {
            assert!(
                matches!(result, Err(Error::Sql(ref m)) if m.contains("CHECK")),
                "{result:?}"
            );
        } else {
            result.unwrap();
        }
    }
    assert_eq!(count(&instance, "COMPANY", "Company").await, 32);
    // The failed statements left nothing in the journal.
    assert_eq!(journaled_row_changes(&instance), 32);
}

#[tokio::test(flavor = "multi_thread")]
async fn records_carry_row_changes_not_sql() {
    let dir = tempfile::tempdir().unwrap();
    let instance = open(dir.path());
    sql(&instance, "COMPANY", "INSERT INTO Company(name, mission, created_at) VALUES ('Acme', hex(randomblob(8)), datetime('now'))")
        .await
        .unwrap();
    let record = instance
        .journal
        .read_after(JournalPos::ZERO)
        .next()
        .unwrap()
        .unwrap();
    match record.body {
        RecordBody::Changes(changes) => {
            assert_eq!(changes.len(), 1);
            assert_eq!(changes[0].db, "COMPANY");
            let text = String::from_utf8_lossy(&changes[0].changeset);
            assert!(
                text.contains("Acme") && !text.contains("randomblob"),
                "{text}"
            );
        }
        other => panic!("expected row changes, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn start_up_replays_what_a_database_file_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mgr/company/database.sqlite");
    let saved = dir.path().join("older-copy.sqlite");
    {
        let instance = open(dir.path());
        for i in 0..5 {
            insert_company(&instance, &format!("before-{i}"))
                .await
                .unwrap();
        }
        instance
            .dismount(DbName::new("COMPANY").unwrap())
            .await
            .unwrap();
        std::fs::copy(&file, &saved).unwrap();
        instance
            .mount(DbName::new("COMPANY").unwrap())
            .await
            .unwrap();
        for i in 0..7 {
            insert_company(&instance, &format!("after-{i}"))
                .await
                .unwrap();
        }
        sql(
            &instance,
            "COMPANY",
            "CREATE TABLE COMPANY.Audit(id INTEGER PRIMARY KEY, note TEXT)",
        )
        .await
        .unwrap();
        sql(&instance, "COMPANY", "INSERT INTO Audit(note) VALUES ('x')")
            .await
            .unwrap();
        sql(
            &instance,
            "COMPANY",
            "UPDATE Company SET mission = 'm' WHERE name = 'before-1'",
        )
        .await
        .unwrap();
        sql(
            &instance,
            "COMPANY",
            "DELETE FROM Company WHERE name = 'before-2'",
        )
        .await
        .unwrap();
        // A trigger's effects are in the changesets; replay must not fire it a second time.
        let trigger = "CREATE TRIGGER COMPANY.audit_company AFTER INSERT ON Company \
                       BEGIN INSERT INTO Audit(note) VALUES (new.name); END";
        sql(&instance, "COMPANY", trigger).await.unwrap();
        insert_company(&instance, "triggered").await.unwrap();
        assert_eq!(count(&instance, "COMPANY", "Audit").await, 2);
    }
    // The database file goes back to its older state, as if its last pages never reached the
    // disk; the journal still has everything.
    std::fs::copy(&saved, &file).unwrap();
    let instance = open(dir.path());
    let (_, replay) = &instance
        .startup
        .recovered
        .iter()
        .find(|(n, _)| n.as_str() == "COMPANY")
        .unwrap();
    assert_eq!(replay.applied, 13);
    assert_eq!(count(&instance, "COMPANY", "Company").await, 12);
    assert_eq!(count(&instance, "COMPANY", "Audit").await, 2);
    let m = sql(
        &instance,
        "COMPANY",
        "SELECT mission FROM Company WHERE name = 'before-1'",
    )
    .await
    .unwrap();
    assert_eq!(m.rows[0][0], Value::Text("m".into()));
    // Replay is idempotent: a second start applies nothing.
    drop(instance);
    let instance = open(dir.path());
    assert!(
        instance
            .startup
            .recovered
            .iter()
            .all(|(_, r)| r.applied == 0)
    );
    assert_eq!(count(&instance, "COMPANY", "Company").await, 12);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_guard_refuses_what_user_statements_must_not_do() {
    let dir = tempfile::tempdir().unwrap();
    let instance = open(dir.path());
    let refused = [
        (
            "UPDATE mirrorlab_meta SET value = 99 WHERE key = 'applied_pos'",
            "kept by the instance",
        ),
        ("BEGIN", "transactions are managed"),
        ("ATTACH DATABASE '/tmp/x.db' AS x", "ATTACH"),
        ("PRAGMA journal_mode = DELETE", "PRAGMA journal_mode"),
        ("CREATE TEMP TABLE t(x)", "temporary"),
        ("CREATE TABLE COMPANY.NoKey(x TEXT)", "no PRIMARY KEY"),
        (
            "CREATE TABLE Unnamed(id INTEGER PRIMARY KEY)",
            "name the database",
        ),
        ("SELECT 1; SELECT 2", "one statement at a time"),
    ];
    for (statement, why) in refused {
        let err = sql(&instance, "COMPANY", statement).await.unwrap_err();
        assert!(err.to_string().contains(why), "{statement}: {err}");
    }
    // Nothing of it reached the journal or the schema.
    assert_eq!(instance.journal.appended(), 0);
    let tables = sql(
        &instance,
        "COMPANY",
        "SELECT name FROM sqlite_schema WHERE name = 'NoKey'",
    )
    .await
    .unwrap();
    assert!(tables.rows.is_empty());
    // Reading pragmas is fine.
    let info = sql(&instance, "COMPANY", "PRAGMA table_info(Company)")
        .await
        .unwrap();
    assert!(info.rows.len() >= 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn phonebook_joins_across_databases() {
    let dir = tempfile::tempdir().unwrap();
    let instance = open(dir.path());
    let id = match &insert_company(&instance, "Acme").await.unwrap().rows[0][0] {
        Value::Integer(id) => *id,
        other => panic!("{other:?}"),
    };
    sql(&instance, "PHONEBOOK", &format!(
        "INSERT INTO Contact(name, phone, company_id, created_at) VALUES ('Ann', '555', {id}, 'now')"
    ))
    .await
    .unwrap();
    let joined = sql(
        &instance,
        "PHONEBOOK",
        "SELECT c.name, co.name FROM Contact c JOIN Company co ON co.id = c.company_id",
    )
    .await
    .unwrap();
    assert_eq!(
        joined.rows,
        vec![vec![Value::Text("Ann".into()), Value::Text("Acme".into())]]
    );
    // One record for the contact, touching PERSONAL only.
    let last = instance
        .journal
        .read_after(JournalPos(1))
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(last.databases().collect::<Vec<_>>(), ["PERSONAL"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn dismount_releases_the_file_and_mount_brings_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let instance = open(dir.path());
    insert_company(&instance, "Acme").await.unwrap();
    // A read leaves a pooled connection on the file, and the checkpointer opens it for a pass;
    // the dismount must leave none of them holding it.
    count(&instance, "PHONEBOOK", "Company").await;
    tokio::time::sleep(
        super::writer::checkpointer::CHECKPOINT_EVERY + std::time::Duration::from_millis(500),
    )
    .await;
    let company = DbName::new("COMPANY").unwrap();
    let message = instance.dismount(company.clone()).await.unwrap();
    assert!(message.contains("dismounted"), "{message}");
    let held = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter(|target| target.starts_with(dir.path().join("mgr/company")))
        .collect::<Vec<_>>();
    assert!(held.is_empty(), "still open after the dismount: {held:?}");
    assert!(
        instance
            .dismount(company.clone())
            .await
            .unwrap()
            .contains("already dismounted")
    );
    let file = dir.path().join("mgr/company/database.sqlite");
    assert!(
        !crate::storage::database::wal_path(&file).exists(),
        "WAL folded into the file"
    );
    // The file alone is complete: it holds the row.
    let copy = rusqlite::Connection::open(&file).unwrap();
    let n: i64 = copy
        .query_row("SELECT count(*) FROM Company", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
    drop(copy);

    let err = sql(&instance, "COMPANY", "SELECT * FROM Company")
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("default database COMPANY is dismounted"),
        "{err}"
    );
    let err = insert_company(&instance, "Nope").await.unwrap_err();
    assert!(matches!(err, Error::Conflict(_)), "{err:?}");
    let err = sql(&instance, "PHONEBOOK", "SELECT * FROM Company")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("dismounted: COMPANY"), "{err}");
    // Contacts still work while COMPANY is away.
    count(&instance, "PHONEBOOK", "Contact").await;

    // The dismount survives a restart.
    drop(instance);
    let instance = open(dir.path());
    assert!(sql(&instance, "COMPANY", "SELECT 1").await.is_err());
    assert_eq!(
        instance.mount(company.clone()).await.unwrap(),
        "COMPANY mounted"
    );
    assert!(
        instance
            .mount(company)
            .await
            .unwrap()
            .contains("already mounted")
    );
    assert_eq!(count(&instance, "COMPANY", "Company").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_foreign_file_is_refused_at_mount() {
    let dir = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    drop(open(other.path()));
    let instance = open(dir.path());
    let company = DbName::new("COMPANY").unwrap();
    instance.dismount(company.clone()).await.unwrap();
    // Another instance's COMPANY: same name, different journal.
    std::fs::copy(
        other.path().join("mgr/company/database.sqlite"),
        dir.path().join("mgr/company/database.sqlite"),
    )
    .unwrap();
    let err = instance.mount(company.clone()).await.unwrap_err();
    assert!(err.to_string().contains("from another instance"), "{err}");
    // PERSONAL's file in COMPANY's place: wrong database.
    std::fs::copy(
        dir.path().join("mgr/personal/database.sqlite"),
        dir.path().join("mgr/company/database.sqlite"),
    )
    .unwrap();
    let err = instance.mount(company).await.unwrap_err();
    assert!(err.to_string().contains("holds database PERSONAL"), "{err}");
}

#[test]
fn a_second_instance_on_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = open(dir.path());
    let err = Instance::open(InstanceSettings::for_dir(dir.path()), Box::new(|_| {}))
        .err()
        .unwrap();
    assert!(err.to_string().contains("already using"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn cascades_are_replayed_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mgr/company/database.sqlite");
    let saved = dir.path().join("older.sqlite");
    {
        let instance = open(dir.path());
        for statement in [
            "CREATE TABLE COMPANY.P(id INTEGER PRIMARY KEY)",
            "CREATE TABLE COMPANY.K(id INTEGER PRIMARY KEY, p INTEGER REFERENCES P(id) ON DELETE CASCADE)",
            "INSERT INTO P(id) VALUES (1), (2)",
            "INSERT INTO K(id, p) VALUES (10, 1), (11, 1), (12, 2)",
        ] {
            sql(&instance, "COMPANY", statement).await.unwrap();
        }
        instance
            .dismount(DbName::new("COMPANY").unwrap())
            .await
            .unwrap();
        std::fs::copy(&file, &saved).unwrap();
        instance
            .mount(DbName::new("COMPANY").unwrap())
            .await
            .unwrap();
        // The cascade deletes K 10 and 11; the changeset holds all three deletes.
        sql(&instance, "COMPANY", "DELETE FROM P WHERE id = 1")
            .await
            .unwrap();
        assert_eq!(count(&instance, "COMPANY", "K").await, 1);
    }
    std::fs::copy(&saved, &file).unwrap();
    let instance = open(dir.path());
    assert_eq!(count(&instance, "COMPANY", "P").await, 1);
    assert_eq!(count(&instance, "COMPANY", "K").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_bookkeeping_table_cannot_be_reached_through_triggers_or_schema_changes() {
    let dir = tempfile::tempdir().unwrap();
    let instance = open(dir.path());
    for statement in [
        "ALTER TABLE mirrorlab_meta RENAME TO x",
        "CREATE TRIGGER COMPANY.t AFTER UPDATE ON mirrorlab_meta BEGIN DELETE FROM Company; END",
        "CREATE INDEX COMPANY.i ON mirrorlab_meta(value)",
        "DROP TABLE COMPANY.mirrorlab_meta",
    ] {
        let err = sql(&instance, "COMPANY", statement).await.unwrap_err();
        assert!(
            err.to_string().contains("kept by the instance"),
            "{statement}: {err}"
        );
    }
    // A trigger on a user table whose body writes the bookkeeping table is refused when it is
    // created (SQLite would judge its body only when it fires, failing every insert after),
    // however the table is spelled.
    for body in [
        "UPDATE mirrorlab_meta SET value = 'x' WHERE key = 'stream'",
        "DELETE FROM \"MirrorLab_Meta\"",
        "INSERT INTO [mirrorlab_meta] VALUES ('k', 1)",
    ] {
        let statement =
            format!("CREATE TRIGGER COMPANY.sneaky AFTER INSERT ON Company BEGIN {body}; END");
        let err = sql(&instance, "COMPANY", &statement).await.unwrap_err();
        assert!(
            err.to_string().contains("kept by the instance"),
            "{statement}: {err}"
        );
    }
    let stream = sql(
        &instance,
        "COMPANY",
        "SELECT value FROM mirrorlab_meta WHERE key = 'stream'",
    )
    .await
    .unwrap();
    assert_ne!(stream.rows[0][0], Value::Text("x".into()));
    // Inserts go on, and an ordinary trigger is still allowed.
    sql(
        &instance,
        "COMPANY",
        "CREATE TRIGGER COMPANY.fine AFTER INSERT ON Company BEGIN SELECT 1; END",
    )
    .await
    .unwrap();
    insert_company(&instance, "Acme").await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn tables_whose_rows_could_not_be_journaled_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let instance = open(dir.path());
    let err = sql(
        &instance,
        "COMPANY",
        "CREATE TABLE COMPANY.T1(name TEXT PRIMARY KEY, v)",
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("may be NULL"), "{err}");
    sql(
        &instance,
        "COMPANY",
        "CREATE TABLE COMPANY.T2(name TEXT PRIMARY KEY NOT NULL, v)",
    )
    .await
    .unwrap();
    sql(
        &instance,
        "COMPANY",
        "CREATE TABLE COMPANY.T3(a TEXT, b TEXT, PRIMARY KEY (a, b)) WITHOUT ROWID",
    )
    .await
    .unwrap();
    let written = sql(
        &instance,
        "COMPANY",
        "INSERT INTO T2(name, v) VALUES ('k', 1)",
    )
    .await
    .unwrap();
    assert!(written.position.is_some(), "the row is journaled");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_runaway_statement_is_stopped_and_does_not_block_dismount() {
    let dir = tempfile::tempdir().unwrap();
    let settings = InstanceSettings {
        statement_timeout_ms: 300,
        write_timeout_ms: 300,
        ..InstanceSettings::for_dir(dir.path())
    };
    let instance = Instance::open(settings, Box::new(|why| panic!("fatal: {why}"))).unwrap();
    let forever =
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n";
    let started = std::time::Instant::now();
    let (read, dismount) = tokio::join!(sql(&instance, "PHONEBOOK", forever), async {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        instance.dismount(DbName::new("CUSTOMER").unwrap()).await
    });
    let err = read.unwrap_err();
    assert!(err.to_string().contains("was stopped"), "{err}");
    dismount.unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    // Runaway writes are stopped the same way.
    let err = sql(&instance, "COMPANY", "INSERT INTO Company(name, created_at) SELECT 'x', 'y' FROM (WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT i FROM n) LIMIT 1 OFFSET 100000000")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("was stopped"), "{err}");
    assert_eq!(count(&instance, "COMPANY", "Company").await, 0);

    // Alongside a runaway write, other writes of the same batches either land (and are
    // journaled) or are told to try again (and are nowhere): never half of each.
    let journaled_before = journaled_row_changes(&instance);
    let runaway = "INSERT INTO Company(name, created_at) SELECT 'runaway', 'y' FROM (WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT i FROM n) LIMIT 1 OFFSET 100000000";
    let mut tasks = Vec::new();
    for i in 0..30 {
        let instance = instance.clone();
        tasks.push(tokio::spawn(async move {
            if i == 3 {
                (None, sql(&instance, "COMPANY", runaway).await.map(|_| ()))
            } else {
                (
                    Some(format!("n{i}")),
                    insert_company(&instance, &format!("n{i}"))
                        .await
                        .map(|_| ()),
                )
            }
        }));
    }
    let mut landed = 0;
    for task in tasks {
        let (name, result) = task.await.unwrap();
        let Some(name) = name else {
            assert!(result.is_err());
            continue;
        };
        let found = sql(
            &instance,
            "COMPANY",
            &format!("SELECT count(*) FROM Company WHERE name = '{name}'"),
        )
        .await
        .unwrap();
        let present = found.rows[0][0] == Value::Integer(1);
        assert_eq!(present, result.is_ok(), "{name}: {result:?}");
        landed += result.is_ok() as u64;
    }
    assert_eq!(
        journaled_row_changes(&instance) - journaled_before,
        landed as usize
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_journal_fsync_stops_the_writer_and_a_restart_loses_no_acknowledged_write() {
    use crate::journal::{Fault, InjectedFaults, JournalOp};
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(InjectedFaults::default());
    let fatal = Arc::new(std::sync::Mutex::new(None::<String>));
    let settings = InstanceSettings {
        journal_io: faults.clone(),
        ..InstanceSettings::for_dir(dir.path())
    };
    let hook = fatal.clone();
    let instance = Instance::open(
        settings,
        Box::new(move |why| *hook.lock().unwrap() = Some(why.to_string())),
    )
    .unwrap();
    for i in 0..10 {
        insert_company(&instance, &format!("acknowledged {i}"))
            .await
            .unwrap();
    }
    // The next group commit's fdatasync fails: its write is not acknowledged, and the writer
    // stops rather than trust a file whose state it no longer knows.
    faults.next(JournalOp::Sync, Fault::Fail(libc::EIO));
    let err = insert_company(&instance, "never acknowledged")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err}");
    // The client hears first; the writer calls the hook as it stops.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let why = loop {
        if let Some(why) = fatal.lock().unwrap().clone() {
            break why;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the fatal hook never ran"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    assert!(why.contains("fsync journal"), "{why}");
    let err = insert_company(&instance, "after the failure")
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("stopped accepting writes after a failure"),
        "{err}"
    );
    drop(instance);
    // The next start recovers from the journal on disk: every acknowledged write is there, and
    // nothing written after the failure.
    let instance = open(dir.path());
    let names = sql(&instance, "COMPANY", "SELECT name FROM Company")
        .await
        .unwrap();
    let names: Vec<String> = names
        .rows
        .iter()
        .map(|r| match &r[0] {
            Value::Text(t) => t.clone(),
            other => panic!("name {other:?}"),
        })
        .collect();
    for i in 0..10 {
        assert!(names.contains(&format!("acknowledged {i}")), "{names:?}");
    }
    assert!(
        !names.contains(&"after the failure".to_string()),
        "{names:?}"
    );
    insert_company(&instance, "after the restart")
        .await
        .unwrap();
}

/// The checkpointer folds committed pages into the database file while writes go on: the file
/// alone (copied without its WAL) soon holds a row, although the writer never stops long enough
/// for a quiet moment and the WAL stays far below SQLite's own threshold.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_checkpointer_folds_commits_into_the_file_while_writes_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let instance = open(dir.path());
    insert_company(&instance, "marker").await.unwrap();
    let file = dir.path().join("mgr/company/database.sqlite");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut n = 0;
    loop {
        // A write every 20 ms: never a quiet moment.
        n += 1;
        insert_company(&instance, &format!("busy-{n}"))
            .await
            .unwrap();
        // A new name each time: SQLite leaves files beside a copy it opened. Copied with the
        // file gate held alone, as a Dismount holds it, so never in the middle of a pass (a copy
        // taken while a pass writes pages could be torn).
        let alone = dir.path().join(format!("alone-{n}.sqlite"));
        {
            let _no_pass = instance.catalog.exclusive_files();
            std::fs::copy(&file, &alone).unwrap();
        }
        let copy = rusqlite::Connection::open(&alone).unwrap();
        let found: i64 = copy
            .query_row(
                "SELECT count(*) FROM Company WHERE name = 'marker'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        drop(copy);
        if found == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the file alone still lacks the row after {n} more writes"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // And the WAL never grew to SQLite's own checkpoint threshold.
    let wal = std::fs::metadata(crate::storage::database::wal_path(&file))
        .unwrap()
        .len();
    assert!(wal < 10_000 * 4096, "WAL of {wal} bytes");
}
