//! The restart rule: what a former primary that restarted does, from what the other failover
//! member says (through its agent). It resumes only when the other member confirms that it did
//! not take over; the epoch settles who has the newer history, since every takeover starts a
//! new one. Pure, like the rest of the rules.

use crate::journal::Epoch;

/// What the other failover member says, as its agent reports it, to a former primary that
/// restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OtherMember {
    /// Its agent did not answer.
    Unreachable,
    /// It is not (or no longer) a member of the mirror.
    NotMember,
    /// Its view of the mirror.
    Says {
        /// It names itself as the primary.
        claims_primary: bool,
        /// It names this member as the primary.
        names_this_primary: bool,
        /// Its epoch.
        epoch: Epoch,
        /// It does not know its role yet: it restarted too, or it is taking over right now.
        deciding: bool,
    },
}

/// What a restarted former primary does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Restart {
    /// It is still the primary: resume (same epoch).
    Primary,
    /// The other member took over: follow it as backup.
    Backup,
    /// It cannot tell: stay out of the way and ask again (or let a person force it).
    Wait(&'static str),
}

/// The restart rule: a former primary resumes only when the other failover member confirms that
/// it did not take over. The epoch settles who has the newer history: a takeover always starts a
/// new one.
pub fn restart_as(my_epoch: Epoch, other: OtherMember) -> Restart {
    match other {
        OtherMember::Unreachable => Restart::Wait(
            "the other failover member's agent does not answer: this member cannot tell whether it took over",
        ),
        OtherMember::NotMember => Restart::Primary,
        OtherMember::Says {
            claims_primary,
            names_this_primary,
            epoch,
            deciding,
        } => {
            if deciding && epoch == my_epoch {
                // It may be taking over this very moment (its epoch moves on only when done).
                Restart::Wait(
                    "the other failover member is deciding its role or taking over: asking again",
                )
            } else if claims_primary && epoch > my_epoch {
                Restart::Backup
            } else if claims_primary && epoch < my_epoch {
                // It is a former primary of an older epoch: this member's history is newer.
                Restart::Primary
            } else if claims_primary {
                Restart::Wait(
                    "both failover members claim to be primary in the same epoch: force one of them",
                )
            } else if names_this_primary && epoch <= my_epoch {
                Restart::Primary
            } else {
                Restart::Wait(
                    "the other failover member names neither member as primary, or has a newer epoch without claiming it",
                )
            }
        }
    }
}
