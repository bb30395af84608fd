//! A following member's decisions about its link to the primary: whether to connect now, to
//! whom, and what follows when a connection ends.
//!
//! A backup or an async member keeps one connection to the primary (the
//! [`receiver`](crate::mirror::receiver) thread). Around each connection it decides:
//!
//! - **Whether to connect now.** Not while the failover rules say no (a backup whose primary's
//!   agent is being asked whether the primary is down must not reconnect meanwhile:
//!   [`Failover::may_connect`](crate::mirror::failover::Failover::may_connect)), not while a
//!   restarted former primary still learns its role, and not while Stop Mirror On This Member
//!   is in effect. It looks again after [`POLL`].
//! - **To whom.** The primary its configuration names. But after a failover the primary is
//!   another member, and an async member hears of it only from the new primary: an async whose
//!   attempts keep failing tries the failover members in turn (the one it knows first, then
//!   the others by name), since only the primary welcomes it and its welcome names itself. A
//!   backup always asks the primary it knows: the failover rules, not the receiver, decide
//!   when the other failover member is gone.
//! - **What follows an end.** A connection that ended after it was welcomed starts the count
//!   of failures afresh; one that failed adds to it. Either way the next attempt comes after
//!   [`RETRY`]. A mirror journal that failed a write, an fsync or a cut ends the following for
//!   good: the instance stops (see the receiver's essay for why reconnecting would lose
//!   acknowledged writes).
//!
//! Pure, so the receiver and the simulation's async member ([`crate::simulation`]) decide
//! alike, and its tests sit beside it.

use std::time::Duration;

/// How often a member that may not connect looks again.
pub const POLL: Duration = Duration::from_millis(50);
/// How long after a connection ended the next attempt comes.
pub const RETRY: Duration = Duration::from_secs(1);

/// What the member knows before an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Before {
    /// The failover rules let the receiver connect (always true on an async member).
    pub rules_allow: bool,
    /// A restarted former primary that has not yet learned its role.
    pub deciding: bool,
    /// Stop Mirror On This Member is in effect.
    pub stopped: bool,
}

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// It was welcomed and then closed (the member was told to stop, or to reconnect).
    Closed,
    /// It could not be made, was refused, or broke.
    Failed,
    /// This member's mirror journal failed a write, an fsync or a cut.
    JournalFailed,
}

/// What the member does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Connect now.
    Connect,
    /// Look again after this long.
    Wait(Duration),
    /// Follow no more: the instance stops.
    Stop,
}

/// One member's following: failed attempts in a row, and whether it still may follow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Follow {
    failures: usize,
    stopped_for_good: bool,
}

impl Follow {
    /// A member that has not tried yet.
    pub fn new() -> Follow {
        Follow::default()
    }

    /// Whether to connect now.
    pub fn next(&self, before: Before) -> Next {
        if self.stopped_for_good {
            Next::Stop
        } else if !before.rules_allow || before.deciding || before.stopped {
            Next::Wait(POLL)
        } else {
            Next::Connect
        }
    }

    /// Whom to connect to: the index into `failover` (the mirror's failover members other than
    /// this one, in any order) or `None` for the primary the configuration names. `primary` is
    /// the index in `failover` of that primary, when it is one of them.
    pub fn target<N: Ord>(&self, is_async: bool, primary: Option<usize>, failover: &[N]) -> Target {
        if !is_async || self.failures == 0 || failover.is_empty() {
            return Target::Primary;
        }
        // The known primary first, then every failover member by name, in turn: an order that
        // does not depend on how the list was stored, so every attempt moves on.
        let mut order: Vec<usize> = (0..failover.len()).collect();
        order.sort_by(|a, b| failover[*a].cmp(&failover[*b]));
        if let Some(p) = primary
            && let Some(at) = order.iter().position(|i| *i == p)
        {
            order.remove(at);
            order.insert(0, p);
        }
        Target::Member(order[self.failures % order.len()])
    }

    /// A connection ended: what follows.
    pub fn ended(&mut self, how: Ended) -> Next {
        match how {
            Ended::Closed => self.failures = 0,
            Ended::Failed => self.failures += 1,
            Ended::JournalFailed => {
                self.stopped_for_good = true;
                return Next::Stop;
            }
        }
        Next::Wait(RETRY)
    }
}

/// Whom a member connects to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The primary the configuration names.
    Primary,
    /// This failover member (an index into the list given to [`Follow::target`]).
    Member(usize),
}

#[cfg(test)]
mod tests {
    use super::*;

    const FREE: Before = Before {
        rules_allow: true,
        deciding: false,
        stopped: false,
    };

    #[test]
    fn a_member_connects_only_when_the_rules_its_role_and_the_mirror_allow() {
        let follow = Follow::new();
        assert_eq!(follow.next(FREE), Next::Connect);
        for before in [
            Before {
                rules_allow: false,
                ..FREE
            },
            Before {
                deciding: true,
                ..FREE
            },
            Before {
                stopped: true,
                ..FREE
            },
        ] {
            assert_eq!(follow.next(before), Next::Wait(POLL), "{before:?}");
        }
    }

    #[test]
    fn an_async_that_keeps_failing_tries_every_failover_member_in_turn() {
        let mut follow = Follow::new();
        let failover = ["MIRRORB", "MIRRORA"];
        // It knows MIRRORB as the primary: first the configuration's primary, then (after
        // failures) MIRRORB again, MIRRORA, MIRRORB… — each failover member in turn.
        assert_eq!(follow.target(true, Some(0), &failover), Target::Primary);
        let mut tried = Vec::new();
        for _ in 0..4 {
            assert_eq!(follow.ended(Ended::Failed), Next::Wait(RETRY));
            tried.push(follow.target(true, Some(0), &failover));
        }
        assert_eq!(
            tried,
            [
                Target::Member(1),
                Target::Member(0),
                Target::Member(1),
                Target::Member(0)
            ]
        );
        // Welcomed, then closed: the count starts afresh, at the primary it now knows.
        follow.ended(Ended::Closed);
        assert_eq!(follow.target(true, Some(1), &failover), Target::Primary);
    }

    #[test]
    fn the_order_of_the_list_does_not_change_whom_an_async_tries() {
        let mut one = Follow::new();
        let mut other = Follow::new();
        for _ in 0..3 {
            one.ended(Ended::Failed);
            other.ended(Ended::Failed);
            let a = one.target(true, None, &["A", "B", "C"]);
            let b = other.target(true, None, &["C", "A", "B"]);
            let name = |t: Target, list: [&'static str; 3]| match t {
                Target::Member(i) => list[i],
                Target::Primary => "primary",
            };
            assert_eq!(name(a, ["A", "B", "C"]), name(b, ["C", "A", "B"]));
        }
    }

    #[test]
    fn a_backup_always_asks_the_primary_it_knows() {
        let mut follow = Follow::new();
        for _ in 0..3 {
            follow.ended(Ended::Failed);
            assert_eq!(follow.target(false, Some(0), &["MIRRORA"]), Target::Primary);
        }
    }

    #[test]
    fn a_failed_journal_ends_the_following_for_good() {
        let mut follow = Follow::new();
        assert_eq!(follow.ended(Ended::JournalFailed), Next::Stop);
        assert_eq!(follow.next(FREE), Next::Stop);
        // Nothing after it brings it back.
        assert_eq!(follow.ended(Ended::Closed), Next::Wait(RETRY));
        assert_eq!(follow.next(FREE), Next::Stop);
    }
}
