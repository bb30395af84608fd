//! The mirror's steps that change database files, run on the instance's writer thread.
//!
//! The writer is the one thread that changes databases; the mirror's lifecycle steps (create a
//! mirror, add databases, become primary, be demoted, roll a divergent tail back, leave) and a
//! backup's dejournaling change them too, so they must run there, in order with the writes. They
//! are the mirror's, though, not the instance's: [`MirrorSteps`] is the writer's extension
//! (`instance::writer::extension`), installed when the member starts, and [`MirrorCommand`]s
//! reach it through the writer's queue (`WriterHandle::extension`). The writer lends its means
//! — the journals, the catalog, parking work until the backup acknowledges it — and knows
//! nothing of what the steps mean.
//!
//! # Files
//!
//! [`lifecycle`] the steps of the mirror's life; [`apply`] a backup's (or async's) side:
//! Activate, Catchup and dejournaling — applying the mirror journal to the copies in gathered
//! rounds, never beyond what the primary committed.
//!
//! # Invariants
//!
//! - A copy is applied only up to the *dejournal target*, the position the primary announced as
//!   committed: no reader on a backup sees a row a takeover could undo.
//! - Becoming primary applies every record held durably to every copy before the first write of
//!   the new epoch, and stores the new role and epoch first (see [`lifecycle`]).
//! - Add to Mirror's switch of the files follows its events only once the active backup holds
//!   them, like any mirrored write.

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::config::mirror::{Membership, MirroredDatabase};
use crate::error::{Error, Result};
use crate::instance::writer::extension::{ExtensionCommand, WriterExtension};
use crate::instance::writer::{Fatal, Reply, Writer, answer_or_stop};
use crate::journal::{Journal, JournalPos, ReadResume};
use crate::names::DbName;
use crate::storage::{CatalogState, DatabaseEntry};

use super::receiver::SharedJournal;
use super::state::{CatchupPhase, MirrorState};

mod apply;
mod lifecycle;

/// Records a dejournal round applies before other work gets a turn.
const DEJOURNAL_CHUNK: u64 = 2_000;
/// How long dejournaling lets received records gather before a round (unless many are waiting):
/// one round applies them with one transaction per database instead of one per batch.
///
/// Each round pays for its own transaction and for SQLite preparing the changeset's statements
/// again. At 5 ms these costs made up half of a backup's dejournaling CPU under a 16-client
/// load; at 20 ms a backup spent about 40 % less per commit, and at 50 ms the pair committed a
/// few per cent more on a two-core machine, where the primary shares the backup's CPU. Nothing
/// waits for a round but readers on the backup, who see a write up to this much later (commits
/// wait for the journal, not for dejournaling).
const DEJOURNAL_GATHER: Duration = Duration::from_millis(50);
/// How often dejournaling that stopped on a full disk tries again by itself.
const DISK_FULL_RETRY: Duration = Duration::from_secs(2);

/// Mirror work, done by the writer in order with the writes.
pub enum MirrorCommand {
    /// Become the primary of a new mirror: `journal` is its new, empty journal. The membership is
    /// stored and the mirror's first record written.
    Create {
        /// The new mirror journal.
        journal: Journal,
        /// The membership to store.
        membership: Box<Membership>,
        /// Answer.
        reply: Reply<String>,
    },
    /// Add databases to the mirror (primary).
    AddDatabases {
        /// The databases.
        dbs: Vec<DbName>,
        /// Answer.
        reply: Reply<String>,
    },
    /// Activate a mirrored database's copy (backup).
    Activate {
        /// The database.
        db: DbName,
        /// Answer.
        reply: Reply<String>,
    },
    /// Start applying the journal to an activated copy (backup).
    Catchup {
        /// The database.
        db: DbName,
        /// Answer.
        reply: Reply<String>,
    },
    /// Leave the mirror: copies of mirrored databases become local databases.
    Leave {
        /// Answer.
        reply: Reply<String>,
    },
    /// Become the primary: a backup taking over (`new_epoch`), or a restarted former primary
    /// that learned it still is one. The journal is taken from `source` only once every copy
    /// holds everything in it; on a refusal it stays there.
    BecomePrimary {
        /// The receiver's mirror journal.
        source: SharedJournal,
        /// Start a new epoch (a takeover).
        new_epoch: bool,
        /// Answer.
        reply: Reply<String>,
    },
    /// A restarted former primary learned that `primary` took over: follow it as backup.
    Demote {
        /// The member now primary.
        primary: crate::config::mirror::MemberName,
        /// Answer.
        reply: Reply<String>,
    },
    /// Undo what the copies here applied after `after` (a divergent tail), keeping its rows in
    /// quarantine, before the journal is cut there.
    RollBack {
        /// The last position shared with the primary.
        after: JournalPos,
        /// Answer.
        reply: Reply<String>,
    },
    /// Add to Mirror's second half, once the active backup holds its events: parked by
    /// [`MirrorCommand::AddDatabases`], never sent by anyone else.
    FinishAdd {
        /// The databases with their events.
        added: Vec<(DatabaseEntry, MirroredDatabase)>,
        /// Answer.
        reply: Reply<String>,
    },
}

impl ExtensionCommand for MirrorCommand {
    fn refuse(self: Box<Self>, err: Error) {
        let reply = match *self {
            MirrorCommand::Create { reply, .. }
            | MirrorCommand::AddDatabases { reply, .. }
            | MirrorCommand::Activate { reply, .. }
            | MirrorCommand::Catchup { reply, .. }
            | MirrorCommand::Leave { reply }
            | MirrorCommand::BecomePrimary { reply, .. }
            | MirrorCommand::Demote { reply, .. }
            | MirrorCommand::RollBack { reply, .. }
            | MirrorCommand::FinishAdd { reply, .. } => reply,
        };
        let _ = reply.send(Err(err));
    }

    fn writes_replicated(&self) -> bool {
        matches!(self, MirrorCommand::AddDatabases { .. })
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any + Send> {
        self
    }
}

/// The mirror's part of the writer thread: the steps' shared state, and a backup's apply state.
pub struct MirrorSteps {
    mirror: Arc<MirrorState>,
    /// Backup: databases the mirror journal is applied to, with the position applied so far.
    cursors: BTreeMap<DbName, JournalPos>,
    /// Backup: the connections dejournaling uses, kept open between rounds.
    appliers: HashMap<DbName, Connection>,
    /// Backup: where the last dejournal round stopped reading the mirror journal, so the next
    /// round reads on from there instead of searching from a seek mark.
    dejournal_resume: Option<ReadResume>,
    /// Backup: databases whose dejournaling stopped on a full disk, and when to try again.
    disk_full: BTreeMap<DbName, Instant>,
    last_dejournal: Instant,
}

impl MirrorSteps {
    /// The steps of the member whose mirror state is `mirror`.
    pub fn new(mirror: Arc<MirrorState>) -> MirrorSteps {
        MirrorSteps {
            mirror,
            cursors: BTreeMap::new(),
            appliers: HashMap::new(),
            dejournal_resume: None,
            disk_full: BTreeMap::new(),
            last_dejournal: Instant::now(),
        }
    }
}

impl WriterExtension for MirrorSteps {
    fn start(&mut self, writer: &mut Writer) {
        self.follow_activated_copies(writer);
        // After every copy's own update: whoever sees this sees them all.
        self.mirror.publish(|s| s.copies_resumed = true);
    }

    fn command(
        &mut self,
        writer: &mut Writer,
        command: Box<dyn ExtensionCommand>,
    ) -> Result<(), Fatal> {
        match command.into_any().downcast::<MirrorCommand>() {
            Ok(command) => self.run(writer, *command),
            Err(_) => Err(Fatal(
                "the writer was sent a command of another kind".into(),
            )),
        }
    }

    fn turn(&mut self, writer: &mut Writer) {
        self.dejournal(writer);
    }

    fn postpone(&mut self) -> Option<Instant> {
        self.dejournal_later()
    }

    fn retry_at(&self) -> Option<Instant> {
        self.disk_full.values().min().copied()
    }

    fn copy_mounted(&mut self, writer: &mut Writer, db: &DbName) -> Option<String> {
        Some(if writer.config().get().mirror.activated(db) {
            let _ = self.start_catchup(writer, db);
            "; catching up from the mirror journal".to_string()
        } else {
            " as a copy of the mirrored database: it needs Activate, then Catchup".to_string()
        })
    }

    fn dismounted(&mut self, db: &DbName) {
        self.cursors.remove(db);
        self.appliers.remove(db);
        self.mirror.update_database(db, |d| {
            d.dejournaling = false;
            d.phase = CatchupPhase::Idle;
        });
    }
}

impl MirrorSteps {
    fn run(&mut self, w: &mut Writer, command: MirrorCommand) -> Result<(), Fatal> {
        match command {
            MirrorCommand::Create {
                journal,
                membership,
                reply,
            } => {
                let result = self.create_mirror(w, journal, *membership);
                return answer_or_stop(reply, result);
            }
            MirrorCommand::AddDatabases { dbs, reply } => {
                return self.add_databases(w, &dbs, reply);
            }
            MirrorCommand::FinishAdd { added, reply } => {
                let result = self.finish_add(w, added);
                return answer_or_stop(reply, result);
            }
            MirrorCommand::Activate { db, reply } => {
                let _ = reply.send(self.activate(w, &db));
            }
            MirrorCommand::Catchup { db, reply } => {
                let result = self
                    .require_activated(w, &db)
                    .and_then(|_| self.start_catchup(w, &db));
                let _ = reply.send(result);
            }
            MirrorCommand::Leave { reply } => {
                let _ = reply.send(self.leave(w));
            }
            MirrorCommand::BecomePrimary {
                source,
                new_epoch,
                reply,
            } => {
                let result = self.become_primary(w, &source, new_epoch);
                return answer_or_stop(reply, result);
            }
            MirrorCommand::Demote { primary, reply } => {
                let _ = reply.send(self.demote(w, primary));
            }
            MirrorCommand::RollBack { after, reply } => {
                let _ = reply.send(self.roll_back(w, after));
            }
        }
        Ok(())
    }
}

/// `name`'s entry when it is mounted and a copy of a mirrored database.
fn mounted_copy<'s>(state: &'s CatalogState, name: &DbName) -> Option<&'s DatabaseEntry> {
    state
        .databases
        .get(name)
        .filter(|e| e.mounted && e.mirrored.is_some())
}
