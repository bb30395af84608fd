//! The writer's one seam to replication: what a group commit asks of whoever ships mirrored
//! records to other members.
//!
//! The writer knows nothing of members, links or failover. For a batch with mirrored records it
//! needs exactly this: append the frames and hand them on before its own fsync
//! ([`Replication::publish`]), learn whether the batch is acknowledged without ever blocking
//! ([`Replication::acknowledgement`], with a [`Waker`] that pokes the writer when that may have
//! changed), say what it committed ([`Replication::committed`]), and know whether mirrored
//! writes may begin at all ([`Replication::may_commit`], false in the trouble state). The
//! mirror's hub implements it ([`Unreplicated`] stands in on an instance outside any mirror),
//! and the writer never needs to know more of the mirror than this; the ordering argument that
//! makes it safe is the writer's (see the module essay of [`super`]).

use std::time::{Duration, Instant};

use crate::error::Result;
use crate::journal::{Journal, JournalPos};

/// Where a batch's acknowledgement stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acknowledged {
    /// The active backup holds the batch, or there is no active backup to wait for: it may
    /// commit and its clients be answered.
    Yes,
    /// Not yet: the active backup has not acknowledged it, or the trouble state holds
    /// acknowledgements.
    Waiting,
    /// Replication closed (shutdown, or this member stopped being primary): the batch's clients
    /// must not be told it is safe.
    Closed,
}

/// What replication calls when a wait may have ended (the writer's wake-up; it must not block).
pub type Waker = Box<dyn Fn() + Send + Sync>;

/// What the writer asks of replication (see the module essay).
pub trait Replication: Send + Sync {
    /// Appends a batch (`frames` holds records `first..=last`) to the mirror journal and hands
    /// it to the members — before the writer's fsync, so their disks and ours work at once.
    fn publish(
        &self,
        journal: &mut Journal,
        frames: &[u8],
        first: JournalPos,
        last: JournalPos,
    ) -> Result<()>;

    /// Where the acknowledgement of the batch ending at `last`, durable here since `since`,
    /// stands. Never blocks.
    fn acknowledgement(&self, last: JournalPos, since: Instant) -> Acknowledged;

    /// Everything up to `pos` is committed here: the members may apply it.
    fn committed(&self, pos: JournalPos);

    /// Whether mirrored writes may begin now.
    fn may_commit(&self) -> bool;

    /// How long a batch may wait for its acknowledgement before replication gives up on the
    /// backup (the writer looks again then).
    fn qos(&self) -> Duration;

    /// What to call when an acknowledgement may have come.
    fn set_waker(&self, waker: Waker);

    /// Gives up on every waiting batch (they are answered [`Acknowledged::Closed`]): the
    /// instance is stopping and no acknowledgement will come.
    fn close(&self, why: &str);
}

/// Replication of an instance that belongs to no mirror: it never has mirrored records to ship,
/// and nothing ever waits.
pub struct Unreplicated;

impl Replication for Unreplicated {
    fn publish(
        &self,
        journal: &mut Journal,
        frames: &[u8],
        first: JournalPos,
        last: JournalPos,
    ) -> Result<()> {
        journal.append(frames, last, last.0 + 1 - first.0)
    }

    fn acknowledgement(&self, _: JournalPos, _: Instant) -> Acknowledged {
        Acknowledged::Yes
    }

    fn committed(&self, _: JournalPos) {}

    fn may_commit(&self) -> bool {
        true
    }

    fn qos(&self) -> Duration {
        Duration::from_millis(crate::config::mirror::DEFAULT_QOS_MS)
    }

    fn set_waker(&self, _: Waker) {}

    fn close(&self, _: &str) {}
}
