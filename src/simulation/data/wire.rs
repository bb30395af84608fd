//! The data channel between a simulated primary and its backup, as the bytes the real member
//! would send — no socket, no sender thread.
//!
//! When a backup connects, the primary's real hub registers its link: from then on the hub
//! queues everything for it in the link's real [`Outbox`] (every batch the writer publishes,
//! the committed end it announces, activation and mode reports). Before that outbox opens, the
//! primary sends what the backup lacks from its journal files, up to the hub's snapshot, and
//! the committed end: the superserver's own [`catch_up`], written here into the link's
//! buffer. When the world delivers the channel, the backup reads those bytes, then everything
//! the outbox queued since ([`Outbox::take_queued`]), as real messages ([`read_message`]),
//! and stores their frames with the receiver's own [`Round`]: contiguous, whole, checked,
//! after its journal's end, one append and one fsync.
//!
//! So what a backup holds is what the primary's code *sent*, not what its journal holds, and
//! it applies what it holds only up to the committed end it read on the channel (as its
//! receiver sets its dejournaling target), not up to what the world knows the primary
//! committed: a hub that dropped, repeated or reordered a batch for a link, or announced as
//! committed what its writer had not committed, is caught here. After a delivery the backup
//! must hold everything the primary's journal holds (the world delivers all that is in
//! flight); the announcement of the last commit may still be on its way.
//!
//! The async member's link is one more link of the same hub, with bytes of its own: it is
//! registered at its hello and dropped when its link breaks.
//!
//! The other way, what a backup says to its primary — its acknowledgements, its stand-down —
//! is encoded as the receiver writes it and read back by the superserver's own code
//! ([`hear_member`]), which hands it to the hub ([`hear`]).
//!
//! Left out: the messages a member reads other than frames and the committed end (activation,
//! mode, hand-over: the world tells the cores itself).

use std::sync::Arc;

use crate::journal::{JournalPos, JournalShared};
use crate::mirror::hub::Hub;
use crate::mirror::outbox::Outbox;
use crate::mirror::protocol::{Control, Message, read_message};
use crate::mirror::receiver::round::Round;
use crate::mirror::server::{MemberSaid, catch_up, hear_member};
use crate::mirror::state::LinkError;

use super::{ASYNC, Data, io};

/// A backup's data channel as the primary's hub knows it.
pub(super) struct Link {
    /// The world's generation of the channel.
    pub(super) generation: u8,
    /// The hub's id for the link.
    pub(super) id: u64,
    /// Where the hub queues what it has for the backup.
    outbox: Arc<Outbox>,
    /// What the primary sent before the outbox opened (the records the backup lacked, then
    /// the committed end), not delivered yet.
    catch_up: Vec<u8>,
    /// The highest committed end the backup read on this channel: it applies nothing beyond
    /// it (nor beyond what it stored), as its receiver sets its dejournaling target.
    durable: JournalPos,
}

impl Link {
    /// The link the hub registered as `id` with `outbox`, for a backup whose journal ends at
    /// `backup_end` (after the hello's cut), of a primary whose hub took `snapshot` and had
    /// committed up to `committed`.
    pub(super) fn new(
        generation: u8,
        (id, outbox, snapshot): (u64, Arc<Outbox>, JournalPos),
        journal: &JournalShared,
        backup_end: JournalPos,
        committed: JournalPos,
    ) -> Result<Link, String> {
        let mut catch_up_bytes = Vec::new();
        io(
            "catch up from the journal files",
            catch_up(
                &mut catch_up_bytes,
                journal,
                backup_end,
                snapshot,
                committed,
            ),
        )?;
        Ok(Link {
            generation,
            id,
            outbox,
            catch_up: catch_up_bytes,
            durable: JournalPos::ZERO,
        })
    }
}

/// A backup says something to its primary on link `id`: `write` encodes it as the receiver
/// does, and the primary's superserver code reads it and hands it to `hub`.
pub(super) fn hear(
    hub: &Hub,
    id: u64,
    write: impl FnOnce(&mut Vec<u8>) -> crate::error::Result<()>,
) -> Result<(), String> {
    let mut bytes = Vec::new();
    io("write to the data channel", write(&mut bytes))?;
    let message = io("read the data channel", read_message(&mut bytes.as_slice()))?;
    match hear_member(hub, id, message) {
        MemberSaid::Handled => Ok(()),
        other => Err(format!(
            "the primary took its backup's message as {other:?}"
        )),
    }
}

impl Data {
    /// Member `backup` (the backup, or the async member) reads everything in flight on its
    /// newest channel from `primary` and stores it with the receiver's code. The outer error is a violation; the inner one what
    /// the backup's journal said (its instance stops).
    pub(super) fn deliver(
        &mut self,
        primary: usize,
        backup: usize,
    ) -> Result<Result<(), LinkError>, String> {
        let p = &mut self.stores[primary];
        let link = match backup {
            ASYNC => self.async_link.as_mut(),
            _ => p.links.last_mut(),
        };
        let Some(link) = link else {
            return Err(format!(
                "the world delivers member {primary}'s data channel to member {backup}, but \
                 its hub holds no link"
            ));
        };
        let mut bytes = std::mem::take(&mut link.catch_up);
        link.outbox.take_queued(&mut bytes);
        let committed = p.committed;
        let mut round = Round::default();
        let mut input = bytes.as_slice();
        while let Some(message) = io("read the data channel", read_message(&mut input))? {
            match message {
                Message::Frames { first, last, bytes } => io(
                    &format!("member {backup} receives from member {primary}'s hub"),
                    round.take(first, last, &bytes),
                )?,
                Message::Control(control) => match *control {
                    Control::Durable { pos } | Control::Heartbeat { durable: pos, .. } => {
                        if pos > committed {
                            return Err(format!(
                                "member {primary}'s hub told its backup it may apply up to \
                                 {pos}, but its writer committed up to {committed}"
                            ));
                        }
                        link.durable = link.durable.max(pos);
                    }
                    Control::Refused { reason, .. } => {
                        return Err(format!(
                            "member {primary}'s hub closed the data channel the world still \
                             delivers ({reason})"
                        ));
                    }
                    _ => {}
                },
                other => {
                    return Err(format!("member {primary}'s hub sent its backup {other:?}"));
                }
            }
        }
        let durable = link.durable;
        let b = &mut self.stores[backup];
        let stored = match round.store(b.journal(backup)?) {
            Ok(end) => end,
            Err(err @ LinkError::JournalFailed(_)) => return Ok(Err(err)),
            Err(err) => {
                return Err(format!(
                    "member {backup} cannot store what member {primary}'s hub sent: {err}"
                ));
            }
        };
        // What it may apply: what it holds of what the primary said it committed.
        b.committed = b.committed.max(stored.min(durable));
        let holds = self.stores[primary].end();
        if stored != holds {
            return Err(format!(
                "member {primary}'s hub sent its backup records up to {stored}, but its journal \
                 holds records up to {holds}"
            ));
        }
        Ok(Ok(()))
    }

    /// Sends `member` what it lacks of `from`'s journal, read from the journal files — the
    /// journal a taking-over backup fetched through the old primary's agent — stored with the
    /// receiver's [`Round`].
    pub(super) fn send_from_files(
        &mut self,
        from: usize,
        member: usize,
    ) -> Result<Result<(), LinkError>, String> {
        let (after, until) = (self.stores[member].end(), self.stores[from].end());
        if after >= until {
            return Ok(Ok(()));
        }
        let mut frames = Vec::new();
        for record in self.stores[from].shared.read_range(after, until) {
            io("read", record)?.encode_into(&mut frames);
        }
        let mut round = Round::default();
        io("check frames", round.take(after.next(), until, &frames))?;
        Ok(round
            .store(self.stores[member].journal(member)?)
            .map(|_| ()))
    }
}
