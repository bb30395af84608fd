//! The primary's decision at a member's `hello`: what of the member's mirror journal it may
//! keep, and where the primary starts sending.
//!
//! A member shares the mirror's history up to where it diverged, and no further:
//!
//! - **A divergent tail.** A member whose newest record is from an older epoch shares the history
//!   only up to where the next epoch began ([`fork_point`]): whatever it holds after that, it
//!   wrote as an old primary, and the new primary never had it. It must cut there — and undo
//!   what it applied of it, keeping those rows in quarantine.
//! - **Records never made durable.** Otherwise, a member that holds records beyond the primary's
//!   durable end (the primary restarted before its own fsync) drops them: nothing was applied
//!   from them, nothing was acknowledged.
//! - **A fresh member** (joining, or whose copies are about to be taken) keeps nothing and gets
//!   everything after the primary's durable end.
//!
//! Pure, so the superserver ([`crate::mirror::server`]) and the simulation
//! ([`crate::simulation`]) decide alike, and its tests sit beside it.

use crate::config::mirror::{EpochStart, fork_point};
use crate::journal::JournalPos;

/// Where a member must cut its journal before it receives, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cut {
    /// Keep everything up to here.
    pub after: JournalPos,
    /// What is cut is a divergent tail: undo what was applied of it, and quarantine its rows.
    pub divergent: bool,
}

/// The decision at one `hello`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AtHello {
    /// The cut the member makes first, if any.
    pub cut: Option<Cut>,
    /// The first position the primary sends.
    pub from: JournalPos,
}

/// What the member said: its journal's end and the epoch of its newest record, and whether it
/// is fresh (it keeps nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// The last position its journal holds.
    pub end: JournalPos,
    /// The epoch of its newest record (0 when it has none).
    pub last_epoch: u64,
    /// It keeps nothing and receives from the primary's durable end on.
    pub fresh: bool,
}

/// The primary's decision for `hello`, given where each epoch after the first began and the
/// primary's durable end (see the module essay).
pub fn at_hello(epochs: &[EpochStart], durable: JournalPos, hello: Hello) -> AtHello {
    if hello.fresh {
        return AtHello {
            cut: None,
            from: durable.next(),
        };
    }
    let fork = fork_point(epochs, hello.last_epoch).map(JournalPos);
    let cut = match fork {
        Some(fork) if hello.end > fork => Some(Cut {
            after: fork,
            divergent: true,
        }),
        _ if hello.end > durable => Some(Cut {
            after: durable,
            divergent: false,
        }),
        _ => None,
    };
    AtHello {
        cut,
        from: cut.map_or(hello.end, |c| c.after).next(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(end: u64, last_epoch: u64) -> Hello {
        Hello {
            end: JournalPos(end),
            last_epoch,
            fresh: false,
        }
    }

    /// Epoch 2 began at 11, epoch 3 at 21.
    const EPOCHS: [EpochStart; 2] = [
        EpochStart {
            epoch: 2,
            first: 11,
        },
        EpochStart {
            epoch: 3,
            first: 21,
        },
    ];

    #[test]
    fn a_member_of_the_current_epoch_behind_the_primary_keeps_all_and_gets_the_rest() {
        let decision = at_hello(&EPOCHS, JournalPos(30), hello(25, 3));
        assert_eq!(decision.cut, None);
        assert_eq!(decision.from, JournalPos(26));
    }

    #[test]
    fn an_old_primary_cuts_its_divergent_tail_at_the_next_epochs_start() {
        // Its newest record is from epoch 1, and it went on to 14 while epoch 2 began at 11.
        let decision = at_hello(&EPOCHS, JournalPos(30), hello(14, 1));
        assert_eq!(
            decision.cut,
            Some(Cut {
                after: JournalPos(10),
                divergent: true
            })
        );
        assert_eq!(decision.from, JournalPos(11));
        // From epoch 2, it shares everything up to where epoch 3 began.
        let decision = at_hello(&EPOCHS, JournalPos(30), hello(23, 2));
        assert_eq!(
            decision.cut.map(|c| (c.after, c.divergent)),
            Some((JournalPos(20), true))
        );
    }

    #[test]
    fn records_beyond_the_primarys_durable_end_are_dropped_not_quarantined() {
        let decision = at_hello(&EPOCHS, JournalPos(30), hello(32, 3));
        assert_eq!(
            decision.cut,
            Some(Cut {
                after: JournalPos(30),
                divergent: false
            })
        );
        assert_eq!(decision.from, JournalPos(31));
    }

    #[test]
    fn an_old_member_that_never_went_past_the_fork_keeps_everything() {
        let decision = at_hello(&EPOCHS, JournalPos(30), hello(9, 1));
        assert_eq!(decision.cut, None);
        assert_eq!(decision.from, JournalPos(10));
    }

    #[test]
    fn a_fresh_member_keeps_nothing_and_starts_after_the_durable_end() {
        let mut fresh = hello(14, 1);
        fresh.fresh = true;
        let decision = at_hello(&EPOCHS, JournalPos(30), fresh);
        assert_eq!(decision.cut, None);
        assert_eq!(decision.from, JournalPos(31));
    }
}
