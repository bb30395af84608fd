//! The checkpointer: folds each database's WAL into its file from a thread of its own, so that
//! no commit waits for it.
//!
//! # Why a thread of its own
//!
//! In WAL mode a commit appends pages to the `-wal` file; a *checkpoint* copies them into the
//! database file and fsyncs it. Left to SQLite, the commit that crosses the autocheckpoint
//! threshold does that copy itself, on the writer thread: every client queued behind it waits
//! for two fsyncs and megabytes of copying — the long tail of the latency under many clients.
//! WAL mode lets another connection checkpoint beside the writer, so this thread does.
//!
//! # How
//!
//! The writer marks the files dirty after every command it carried out ([`Checkpointer::dirty`],
//! one relaxed store; dirty from the start, for what start-up recovery applied). Every
//! [`CHECKPOINT_EVERY`] (2 s) this thread, if they are dirty, takes the catalog's checkpoint lock
//! and then its file gate (shared: a Dismount waits for the pass to end), opens each mounted
//! database and runs a `PASSIVE` checkpoint, which never waits for the writer or a reader: what
//! it cannot copy yet (pages a reader's snapshot still needs) it copies on a later pass, marked
//! dirty again.
//!
//! # Invariants
//!
//! - **Nothing during a Freeze.** Freeze takes the same checkpoint lock
//!   ([`Catalog::hold_checkpoints`]) while it folds every WAL and raises its flag, and a pass
//!   looks at the flag only once it holds the lock: a pass either ends before the Freeze
//!   begins or starts after the Thaw, so a file a person copies is never written to (Mount's
//!   replay may commit during a Freeze; it stays in the WAL until the Thaw). A purge holds the
//!   lock too: SQLite runs one checkpoint of a database at a time and answers any other "busy"
//!   at once, without waiting.
//! - **No connection is kept between passes**, so a dismounted file is never held open and a
//!   replaced one is never seen through a stale handle; the gate keeps a pass and a Dismount
//!   apart.
//! - **The thread ends with the writer**: dropping the [`Checkpointer`] (the writer thread's
//!   last act) wakes it and waits for it, so no pass runs after the instance closed.
//! - **Durability does not depend on it**: commits are durable in the journal; a checkpoint only
//!   moves pages SQLite already holds (crash-safe on its own). SQLite's autocheckpoint stays set
//!   on the writer's connections as a ceiling, reached only if this thread fell far behind.
//!
//! # Left out
//!
//! No `RESTART`/`TRUNCATE` here (they wait for readers): the WAL file keeps its largest size and
//! is reused from its start; Freeze, Dismount and purge truncate it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::storage::Catalog;
use crate::storage::database;

/// How often the checkpointer folds the WALs in, while there were commits.
///
/// Every pass ends in an fsync of each database file, which competes with the journal's
/// `fdatasync` on the same disk; and a hot page (a table's last leaf, the upper levels of its
/// B-tree) is in the WAL once per commit but written to the file once per pass. So fewer,
/// larger passes cost the writer less: at a quarter second the clients' 99th-percentile latency
/// at 16 clients rose from 6 to 26–32 ms on a 2-core VM; at 2 s it stays at 5–8 ms, and at 64
/// clients mirrored it falls from 105–148 ms (SQLite's checkpoints on the writer thread) to
/// 51–57 ms (`mirrorlab-bench --mode both --clients 16,64 --seconds 8`, builds interleaved).
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(2);

/// The checkpointer thread, owned by the writer: dropping it stops the thread and waits for it.
#[derive(Debug)]
pub struct Checkpointer {
    shared: Arc<Shared>,
    /// Dropped to stop the thread: its wait between passes then ends at once.
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    /// Something may have committed since the last pass.
    dirty: AtomicBool,
    /// Writes are frozen (the writer's flag).
    frozen: Arc<AtomicBool>,
}

impl Checkpointer {
    /// Starts the checkpointer for the databases of `catalog`.
    pub fn start(catalog: Arc<Catalog>, frozen: Arc<AtomicBool>) -> Checkpointer {
        let shared = Arc::new(Shared {
            // Start-up recovery may have committed before the first command.
            dirty: AtomicBool::new(true),
            frozen,
        });
        let (stop, stopped) = mpsc::channel();
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("checkpointer".into())
                .spawn(move || run(&catalog, &shared, &stopped))
                .expect("spawn the checkpointer")
        };
        Checkpointer {
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Called by the writer after each command it carried out: the files may have changed.
    #[inline]
    pub fn dirty(&self) {
        self.shared.dirty.store(true, Ordering::Relaxed);
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(catalog: &Catalog, shared: &Shared, stopped: &mpsc::Receiver<()>) {
    // Nothing is ever sent: the wait ends by its timeout, or at once when the writer drops the
    // sender (a pass under way finishes first).
    while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(CHECKPOINT_EVERY) {
        if !shared.dirty.swap(false, Ordering::Relaxed) {
            continue;
        }
        let whole = {
            // A Freeze takes this lock before it raises its flag: looked at under the lock, the
            // flag cannot go up while the pass runs.
            let _checkpoints = catalog.hold_checkpoints();
            !shared.frozen.load(Ordering::Acquire) && pass(catalog)
        };
        if !whole {
            // Frozen, or a WAL not copied whole: look again at the next pass.
            shared.dirty.store(true, Ordering::Relaxed);
        }
    }
}

/// Checkpoints every mounted database; says whether every WAL was copied whole.
fn pass(catalog: &Catalog) -> bool {
    // The gate first, then the catalog: a database a Dismount took out is not in the snapshot,
    // and one it is taking out waits until this pass is over.
    let _files = catalog.enter_files();
    let state = catalog.snapshot();
    let mut whole = true;
    for entry in state.databases.values().filter(|d| d.mounted) {
        let checkpointed = database::open(&entry.file).and_then(|conn| {
            let (busy, log, done): (i64, i64, i64) =
                conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?;
            Ok(busy == 0 && log == done)
        });
        match checkpointed {
            Ok(done) => whole &= done,
            Err(err) => {
                whole = false;
                tracing::warn!("checkpoint of {} failed: {err}", entry.name);
            }
        }
    }
    whole
}
