//! The primary's decisions about its backup's acknowledgements: when a backup becomes active
//! (activation), when an acknowledgement is refused, and when a backup that does not answer
//! loses its active status (QoS revocation).
//!
//! - **Activation.** A failover member becomes the *active* backup — the one every mirrored
//!   commit waits for — once it acknowledged the journal end the primary had when it connected
//!   (its *activation point*): from then on it holds everything the primary committed, so it
//!   may take over without losing an acknowledged write. A member that stood down on this link
//!   (it is leaving), or whose link the failover rules were already told is lost, is never made
//!   active on it again: it must connect anew.
//! - **A forged acknowledgement.** Nobody acknowledges what was never sent: a position beyond the
//!   primary's appended end ends the link, and the member never counts as active on it.
//! - **QoS revocation.** A batch waits for the active backup's acknowledgement. When none came
//!   within the quality of service timeout, the backup stops being active (and the trouble
//!   state begins, which the failover rules end). Suspended acknowledgements (the trouble state)
//!   keep the batch waiting whatever the backup says; a closing hub answers no; no active backup
//!   means the primary commits alone.
//!
//! Pure: the hub ([`crate::mirror::hub`]) gathers the facts under its lock, asks, and carries
//! out; the time waited is passed in, so the tests here need no clock.

use std::time::Duration;

use crate::journal::JournalPos;

/// What the primary knows of one member's link when an acknowledgement arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkFacts {
    /// The member is a failover member (an async never becomes active).
    pub failover: bool,
    /// It is the active backup already.
    pub active: bool,
    /// The failover rules were told this link is lost (revoked before it closed).
    pub reported_lost: bool,
    /// It stood down on this link.
    pub stood_down: bool,
    /// The journal end when it connected.
    pub activation_point: JournalPos,
}

/// What an acknowledgement does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtAck {
    /// Beyond what was sent: the link ends.
    Forged,
    /// The member becomes the active backup now.
    Activate,
    /// Recorded; nothing changes.
    Recorded,
}

/// The verdict for an acknowledgement of `pos` (its highest so far: `acked`) on `link`, the
/// primary having appended up to `appended`.
pub fn at_ack(link: LinkFacts, pos: JournalPos, acked: JournalPos, appended: JournalPos) -> AtAck {
    if pos > appended {
        return AtAck::Forged;
    }
    let may_become_active =
        link.failover && !link.active && !link.reported_lost && !link.stood_down;
    if may_become_active && acked.max(pos) >= link.activation_point {
        AtAck::Activate
    } else {
        AtAck::Recorded
    }
}

/// Where the acknowledgement of a batch stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The hub is closing: the batch is not acknowledged.
    Closed,
    /// It waits (for the active backup, or for the trouble state to end).
    Waiting,
    /// Acknowledged (by the active backup, or there is none: the primary commits alone).
    Yes,
    /// The active backup did not answer within the QoS timeout: it is no longer active, and the
    /// batch waits in the trouble state that this begins.
    Revoke,
}

/// The verdict for the batch ending at `last` that has waited `waited`, given whether the hub
/// is closing, whether acknowledgements are suspended, and how far the active backup (if any)
/// acknowledged.
pub fn acknowledgement(
    closing: bool,
    suspended: bool,
    active_acked: Option<JournalPos>,
    last: JournalPos,
    waited: Duration,
    qos: Duration,
) -> Verdict {
    if closing {
        return Verdict::Closed;
    }
    if suspended {
        return Verdict::Waiting;
    }
    match active_acked {
        None => Verdict::Yes,
        Some(acked) if acked >= last => Verdict::Yes,
        Some(_) if waited < qos => Verdict::Waiting,
        Some(_) => Verdict::Revoke,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QOS: Duration = Duration::from_secs(2);

    fn backup(activation_point: u64) -> LinkFacts {
        LinkFacts {
            failover: true,
            active: false,
            reported_lost: false,
            stood_down: false,
            activation_point: JournalPos(activation_point),
        }
    }

    #[test]
    fn a_backup_becomes_active_once_it_acknowledged_what_the_primary_had_when_it_connected() {
        let link = backup(10);
        let ack =
            |pos: u64, acked: u64| at_ack(link, JournalPos(pos), JournalPos(acked), JournalPos(12));
        assert_eq!(ack(9, 9), AtAck::Recorded);
        assert_eq!(ack(10, 9), AtAck::Activate);
        // An older acknowledgement arriving late changes nothing the newer one did not.
        assert_eq!(ack(8, 11), AtAck::Activate);
        // Already active: nothing to do.
        let active = LinkFacts {
            active: true,
            ..link
        };
        assert_eq!(
            at_ack(active, JournalPos(12), JournalPos(12), JournalPos(12)),
            AtAck::Recorded
        );
    }

    #[test]
    fn an_async_a_leaving_backup_or_a_lost_link_never_becomes_active() {
        for link in [
            LinkFacts {
                failover: false,
                ..backup(0)
            },
            LinkFacts {
                stood_down: true,
                ..backup(0)
            },
            LinkFacts {
                reported_lost: true,
                ..backup(0)
            },
        ] {
            assert_eq!(
                at_ack(link, JournalPos(5), JournalPos(5), JournalPos(5)),
                AtAck::Recorded,
                "{link:?}"
            );
        }
    }

    #[test]
    fn an_acknowledgement_beyond_what_was_sent_is_forged() {
        assert_eq!(
            at_ack(backup(0), JournalPos(13), JournalPos(0), JournalPos(12)),
            AtAck::Forged
        );
    }

    #[test]
    fn a_batch_waits_for_the_active_backup_until_the_qos_timeout_revokes_it() {
        let verdict = |acked: Option<u64>, waited_ms: u64| {
            acknowledgement(
                false,
                false,
                acked.map(JournalPos),
                JournalPos(20),
                Duration::from_millis(waited_ms),
                QOS,
            )
        };
        assert_eq!(
            verdict(None, 5_000),
            Verdict::Yes,
            "no active backup: alone"
        );
        assert_eq!(verdict(Some(20), 5_000), Verdict::Yes);
        assert_eq!(verdict(Some(19), 1_999), Verdict::Waiting);
        assert_eq!(verdict(Some(19), 2_000), Verdict::Revoke);
    }

    #[test]
    fn suspended_acknowledgements_wait_and_a_closing_hub_answers_no() {
        let acked = Some(JournalPos(20));
        let long = Duration::from_secs(60);
        assert_eq!(
            acknowledgement(false, true, acked, JournalPos(20), long, QOS),
            Verdict::Waiting,
            "the trouble state holds even an acknowledged batch"
        );
        assert_eq!(
            acknowledgement(true, true, acked, JournalPos(20), long, QOS),
            Verdict::Closed
        );
    }
}
