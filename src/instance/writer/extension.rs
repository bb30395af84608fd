//! The writer's second seam: work of the layer above that must run on the writer thread.
//!
//! Some work changes database files and so must run in order with the writes, on the one thread
//! that changes them — yet belongs to another layer. The mirror's lifecycle steps (create a
//! mirror, add databases, become primary, demote, roll a divergent tail back, leave) and a
//! backup's dejournaling are such work. The writer does not know them: it knows a
//! [`WriterExtension`], installed once at start, and [`ExtensionCommand`]s sent to it through
//! [`WriterHandle::extension`](super::WriterHandle::extension), which the writer queues and holds
//! back like any other command and hands to the extension in turn. Where the extension needs the
//! writer's own means (its journals, the catalog, parking work until replication acknowledges
//! it) it calls the writer's `pub(crate)` methods listed under [`Writer`]'s *For extensions*.
//!
//! Besides commands, the extension gets:
//! - **turns**: [`WriterHandle::request_turn`](super::WriterHandle::request_turn) (coalesced:
//!   at most one waits in the queue) or a time the extension named ([`WriterExtension::retry_at`],
//!   or [`WriterExtension::postpone`] to let work gather) — a backup's dejournaling rounds;
//! - **parked work**: work that wrote replicated records and must finish only once the active
//!   backup holds them (Add to Mirror) is parked like a mirrored batch
//!   ([`Writer::park`]) and handed back to the extension as a command when acknowledged, or
//!   refused if replication closes first;
//! - **file events**: a mounted copy of a replicated database, a dismounted database.
//!
//! Commands arrive type-erased; the extension downcasts them to its own type
//! ([`ExtensionCommand::into_any`]) — the price of keeping the writer free of the layer above.

use std::any::Any;
use std::time::Instant;

use crate::error::Error;
use crate::names::DbName;

use super::{Fatal, Writer};

/// A command for the extension, carried through the writer's queue.
pub trait ExtensionCommand: Send + 'static {
    /// Answers the command with `err` without carrying it out (the writer stopped, or too much
    /// waits).
    fn refuse(self: Box<Self>, err: Error);

    /// Whether the command writes replicated records, and so waits like a mirrored write while
    /// those may not commit (the trouble state, a parked batch).
    fn writes_replicated(&self) -> bool {
        false
    }

    /// The command as `Any`, for the extension to downcast to its own type.
    fn into_any(self: Box<Self>) -> Box<dyn Any + Send>;
}

/// Work of the layer above that runs on the writer thread (see the module essay). Every method
/// runs on the writer thread, between two commands.
pub trait WriterExtension: Send + 'static {
    /// Runs once when the writer thread starts, before any command.
    fn start(&mut self, writer: &mut Writer);

    /// Carries out a command. A [`Fatal`] stops the writer (the state on disk is uncertain).
    fn command(
        &mut self,
        writer: &mut Writer,
        command: Box<dyn ExtensionCommand>,
    ) -> Result<(), Fatal>;

    /// The extension's turn.
    fn turn(&mut self, writer: &mut Writer);

    /// Asked when a turn comes: `Some(at)` puts it off until `at` (to let work gather).
    fn postpone(&mut self) -> Option<Instant>;

    /// When the extension wants a turn by itself (work that stopped and retries).
    fn retry_at(&self) -> Option<Instant>;

    /// A copy of a replicated database was mounted here; returns what to add to Mount's answer.
    fn copy_mounted(&mut self, writer: &mut Writer, db: &DbName) -> Option<String>;

    /// `db` was dismounted: forget whatever is kept open on it.
    fn dismounted(&mut self, db: &DbName);
}
