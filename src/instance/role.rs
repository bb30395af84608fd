//! What the instance needs to know of its place in a mirror, asked of the layer that decides it.
//!
//! The instance is a database server; whether it belongs to a mirror, and as what, is decided
//! above it. Three things of the instance depend on the answer: which databases the writer may
//! write (a backup's copies of mirrored databases are read-only), whether the manifest's
//! background productions run (on the primary only), and how much of the mirror journal a purge
//! must keep (what the other members have not yet acknowledged). [`MemberRole`] asks exactly
//! that; the mirror's state answers it, and [`Standalone`] answers for an instance that belongs
//! to no mirror.

use std::sync::Arc;

use crate::config::mirror::{MemberName, Membership};
use crate::journal::{JournalPos, JournalShared};

/// The instance's questions about its place in a mirror (see the module essay).
pub trait MemberRole: Send + Sync {
    /// Whether this member writes the mirror's databases: it is the mirror's primary.
    fn is_primary(&self) -> bool;

    /// Whether background productions may run here now: on a lone instance, or on a primary
    /// that is sure of its role.
    fn may_run_productions(&self) -> bool;

    /// The mirror journal this member holds, if any.
    fn mirror_journal(&self) -> Option<Arc<JournalShared>>;

    /// On the primary: for each other member of `membership`, by name, the first position of
    /// the mirror journal it still needs — `None` when it is not connected (it may need
    /// anything).
    fn members_need(&self, membership: &Membership) -> Vec<(MemberName, Option<JournalPos>)>;
}

/// An instance that belongs to no mirror: it writes everything and runs every production.
pub struct Standalone;

impl MemberRole for Standalone {
    fn is_primary(&self) -> bool {
        false
    }

    fn may_run_productions(&self) -> bool {
        true
    }

    fn mirror_journal(&self) -> Option<Arc<JournalShared>> {
        None
    }

    fn members_need(&self, _: &Membership) -> Vec<(MemberName, Option<JournalPos>)> {
        Vec::new()
    }
}
