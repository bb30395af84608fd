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
//! - **A member from a newer epoch** is refused ([`NewerEpoch`]): it followed a primary that
//!   took over after this one, so this one is stale (a frozen primary that thawed, say) and
//!   knows nothing of that epoch. Told to keep only what this primary made durable, the member
//!   would drop records that were committed — and applied — in the newer epoch. Found by the
//!   simulation, with an async member that tried the failover members in turn.
//!
//! The member checks the cut it is told to make ([`check_cut`]), in depth behind the primary's
//! rules: a cut of records never made durable undoes nothing, so it must not reach below what
//! the member already applied.
//!
//! Pure, so the superserver ([`crate::mirror::server`]), the receiver
//! ([`crate::mirror::receiver`]) and the simulation ([`crate::simulation`]) decide alike, and
//! its tests sit beside it.

use crate::config::mirror::{EpochStart, fork_point};
use crate::journal::{Epoch, JournalPos};

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
    pub last_epoch: Epoch,
    /// It keeps nothing and receives from the primary's durable end on.
    pub fresh: bool,
}

/// A hello from a member whose newest record is from a newer epoch than the primary's own: the
/// primary is stale and must turn it away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewerEpoch {
    /// The epoch of the member's newest record.
    pub member: Epoch,
    /// The primary's epoch.
    pub primary: Epoch,
}

/// A cut the member refuses to make (see [`check_cut`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnsafeCut {
    /// Where the primary said to cut.
    pub after: JournalPos,
    /// How far the member's databases have applied.
    pub applied: JournalPos,
}

impl std::fmt::Display for UnsafeCut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the primary says to drop journal records after {} as never made durable, but this \
             member applied records up to {}: refusing, so that no applied row loses its record",
            self.after, self.applied
        )
    }
}

/// The member's check of the cut the primary asked for, given how far its databases have
/// applied. A divergent cut undoes what was applied of the tail first, so it may reach
/// anywhere. A cut of records the primary never made durable undoes nothing: below `applied`
/// it would leave rows in the databases that no record explains, and the member would diverge
/// from the primary unnoticed. A member only applies what the primary announced durable, so
/// the primary's own rules ([`at_hello`]) never ask that: this is defence in depth.
pub fn check_cut(cut: Cut, applied: JournalPos) -> Result<(), UnsafeCut> {
    if !cut.divergent && cut.after < applied {
        return Err(UnsafeCut {
            after: cut.after,
            applied,
        });
    }
    Ok(())
}

/// The primary's decision for `hello`, given where each epoch after the first began, the
/// primary's own epoch and its durable end (see the module essay).
pub fn at_hello(
    epochs: &[EpochStart],
    epoch: Epoch,
    durable: JournalPos,
    hello: Hello,
) -> Result<AtHello, NewerEpoch> {
    if hello.fresh {
        return Ok(AtHello {
            cut: None,
            from: durable.next(),
        });
    }
    if hello.last_epoch > epoch {
        return Err(NewerEpoch {
            member: hello.last_epoch,
            primary: epoch,
        });
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
    Ok(AtHello {
        cut,
        from: cut.map_or(hello.end, |c| c.after).next(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(end: u64, last_epoch: u64) -> Hello {
        Hello {
            end: JournalPos(end),
            last_epoch: Epoch(last_epoch),
            fresh: false,
        }
    }

    /// Epoch 2 began at 11, epoch 3 at 21.
    const EPOCHS: [EpochStart; 2] = [
        EpochStart {
            epoch: Epoch(2),
            first: 11,
        },
        EpochStart {
            epoch: Epoch(3),
            first: 21,
        },
    ];

    /// The decision of a primary in epoch 3 with a durable end of 30.
    fn decide(hello: Hello) -> AtHello {
        at_hello(&EPOCHS, Epoch(3), JournalPos(30), hello).expect("not from a newer epoch")
    }

    #[test]
    fn a_stale_primary_turns_away_a_member_from_a_newer_epoch() {
        // The member followed a primary of epoch 3; this one still believes in epoch 2, and
        // would have it cut records committed in epoch 3.
        assert_eq!(
            at_hello(&EPOCHS[..1], Epoch(2), JournalPos(18), hello(25, 3)),
            Err(NewerEpoch {
                member: Epoch(3),
                primary: Epoch(2)
            })
        );
        // A fresh member keeps nothing, so there is nothing to lose.
        let mut fresh = hello(25, 3);
        fresh.fresh = true;
        assert!(at_hello(&EPOCHS[..1], Epoch(2), JournalPos(18), fresh).is_ok());
    }

    #[test]
    fn a_member_of_the_current_epoch_behind_the_primary_keeps_all_and_gets_the_rest() {
        let decision = decide(hello(25, 3));
        assert_eq!(decision.cut, None);
        assert_eq!(decision.from, JournalPos(26));
    }

    #[test]
    fn an_old_primary_cuts_its_divergent_tail_at_the_next_epochs_start() {
        // Its newest record is from epoch 1, and it went on to 14 while epoch 2 began at 11.
        let decision = decide(hello(14, 1));
        assert_eq!(
            decision.cut,
            Some(Cut {
                after: JournalPos(10),
                divergent: true
            })
        );
        assert_eq!(decision.from, JournalPos(11));
        // From epoch 2, it shares everything up to where epoch 3 began.
        let decision = decide(hello(23, 2));
        assert_eq!(
            decision.cut.map(|c| (c.after, c.divergent)),
            Some((JournalPos(20), true))
        );
    }

    #[test]
    fn records_beyond_the_primarys_durable_end_are_dropped_not_quarantined() {
        let decision = decide(hello(32, 3));
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
        let decision = decide(hello(9, 1));
        assert_eq!(decision.cut, None);
        assert_eq!(decision.from, JournalPos(10));
    }

    #[test]
    fn a_member_refuses_to_drop_applied_records_that_nothing_undoes() {
        let cut = |after: u64, divergent: bool| Cut {
            after: JournalPos(after),
            divergent,
        };
        // Records beyond what was applied may go; so may applied ones that are undone first.
        assert_eq!(check_cut(cut(20, false), JournalPos(20)), Ok(()));
        assert_eq!(check_cut(cut(25, false), JournalPos(20)), Ok(()));
        assert_eq!(check_cut(cut(10, true), JournalPos(20)), Ok(()));
        // Applied records dropped without being undone: refused.
        let refused = check_cut(cut(19, false), JournalPos(20)).unwrap_err();
        assert_eq!(refused.after, JournalPos(19));
        assert!(refused.to_string().contains("applied records up to 20"));
    }

    #[test]
    fn a_fresh_member_keeps_nothing_and_starts_after_the_durable_end() {
        let mut fresh = hello(14, 1);
        fresh.fresh = true;
        let decision = decide(fresh);
        assert_eq!(decision.cut, None);
        assert_eq!(decision.from, JournalPos(31));
    }
}
