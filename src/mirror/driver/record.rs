//! The failover driver's account of a look as mirror events ([`crate::mirror::events`]): what
//! the links reported, and how the failover mode and the trouble state changed.

use std::time::Instant;

use crate::config::mirror::Membership;
use crate::mirror::core::After;
use crate::mirror::events::EventKind;
use crate::mirror::failover::{Event, FailoverRole};
use crate::mirror::state::MirrorState;

/// Records what the links reported in one look as mirror events ([`crate::mirror::events`]).
pub(super) fn links(
    context: &crate::mirror::MirrorContext,
    m: &Membership,
    role: FailoverRole,
    link_events: &[Event],
    arbiter_events: &[Event],
) {
    let other = m
        .other_failover()
        .map(|o| o.name.to_string())
        .unwrap_or_else(|| "the other member".into());
    let primary = role == FailoverRole::Primary;
    let said = link_events.iter().map(|e| (e, false));
    for (event, relayed) in said.chain(arbiter_events.iter().map(|e| (e, true))) {
        let (kind, reason) = match (event, primary) {
            (Event::PartnerConnected, true) => (
                EventKind::MemberConnected,
                format!("the backup {other} connected"),
            ),
            (Event::PartnerConnected, false) => (
                EventKind::MemberConnected,
                format!("connected to the primary {other}"),
            ),
            (Event::PartnerActive, true) => (
                EventKind::BackupActivated,
                format!("{other} caught up and acknowledges: it is the active backup"),
            ),
            (Event::PartnerActive, false) => (
                EventKind::BackupActivated,
                format!("the primary {other} made this member its active backup"),
            ),
            (Event::PartnerLost, true) => (
                EventKind::MemberLost,
                format!("lost the backup {other}: its link broke or was silent for a QoS timeout"),
            ),
            (Event::PartnerLost, false) => {
                let error = context.mirror.read(|s| s.link.last_error.clone());
                let why = error.map(|e| format!(" ({e})")).unwrap_or_default();
                (
                    EventKind::MemberLost,
                    format!("lost the primary {other}{why}"),
                )
            }
            (Event::PartnerStoodDown, _) => (
                EventKind::BackupDeactivated,
                format!(
                    "{other} stood down{}: it is no longer the active backup",
                    if relayed {
                        " (relayed by the arbiter)"
                    } else {
                        ""
                    }
                ),
            ),
            (Event::PartnerHandsOver, _) => (
                EventKind::MemberLost,
                format!("the primary {other} is shutting down gracefully and hands over"),
            ),
            (Event::ArbiterConnected, _) => (
                EventKind::ArbiterConnected,
                "connected to the arbiter".into(),
            ),
            (Event::ArbiterLost, _) => (EventKind::ArbiterLost, "lost the arbiter".into()),
            _ => continue,
        };
        context.mirror.record(kind, reason);
    }
}

/// Records a change of the failover mode, and the trouble state entered or left (with how long
/// it held the primary's mirrored commits, on the member's clock: the look's time is `now`).
pub(super) fn mode_and_trouble(
    mirror: &MirrorState,
    (mode_before, status_before): (Option<&'static str>, Option<&'static str>),
    after: &After,
    (trouble_since, now): (&mut Option<Instant>, Instant),
) {
    if mode_before.is_some_and(|before| before != after.mode) {
        mirror.record(
            EventKind::ModeChanged,
            format!("{} → {}", mode_before.unwrap_or_default(), after.mode),
        );
    }
    let in_trouble = after.status == "In Trouble";
    match (status_before == Some("In Trouble"), in_trouble) {
        (false, true) => {
            *trouble_since = Some(now);
            mirror.record(
                EventKind::TroubleEntered,
                "lost the active backup: mirrored commits wait until it is known not to \
                 take over",
            );
        }
        (true, false) => {
            let held = trouble_since
                .take()
                .map(|t| now.saturating_duration_since(t).as_millis());
            mirror.record(
                EventKind::TroubleLeft,
                format!(
                    "out of trouble: mirrored commits were held {} ms",
                    held.unwrap_or_default()
                ),
            );
        }
        _ => {}
    }
}
