//! The mirror's events as people read them: both failover members' lists merged
//! (`GET /api/mirror/events`), and the Mirror Monitor's timeline built from them — grouped per
//! fault, newest first, with the write outage of each takeover.
//!
//! This member's events are read from its own files; the other failover member's through its
//! agent, which reads them from that member's files, so a member whose instance is down still
//! answers. A member that cannot be reached is named in the answer, never silently left out.

use super::*;
use crate::mirror::events::{self, EventKind, MirrorEvent};

/// How long the other member's agent may take to answer.
const PEER_TIMEOUT: Duration = Duration::from_secs(2);
/// Events further apart than this belong to different faults on the timeline.
const FAULT_GAP_MS: i64 = 10_000;
/// A fault's signs this close together are one fault.
const SAME_FAULT_MS: i64 = 5_000;
/// How many events the Mirror Monitor shows (the newest).
const MONITOR_EVENTS: usize = 100;

/// The merged events and where they came from.
#[derive(Debug, Clone, Serialize)]
pub struct EventsAnswer {
    /// Both failover members' events at or after the time asked, oldest first.
    pub events: Vec<MirrorEvent>,
    /// Each failover member asked, and whether its events are in the list.
    pub members: Vec<EventSource>,
}

/// One member whose events were asked for.
#[derive(Debug, Clone, Serialize)]
pub struct EventSource {
    /// The member's name.
    pub member: String,
    /// Whether its events are in the list.
    pub reachable: bool,
    /// Why not, when they are not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One fault (or a run of changes) on the Mirror Monitor's timeline.
#[derive(Debug, Clone)]
pub struct FaultGroup {
    /// What happened, in a few words (`Takeover by MIRRORB`, `Link lost`, `Changes`).
    pub title: String,
    /// When it began and ended (UTC).
    pub began: String,
    /// The write outage of a takeover in this group (ms), as the new primary measured it.
    pub outage_ms: Option<i64>,
    /// Its events, newest first.
    pub events: Vec<TimelineRow>,
}

/// One event as the timeline shows it.
#[derive(Debug, Clone)]
pub struct TimelineRow {
    /// `08:04:10.123`.
    pub time: String,
    /// The member that recorded it.
    pub member: String,
    /// The kind, in words.
    pub kind: String,
    /// Why.
    pub reason: String,
    /// The epoch then.
    pub epoch: u64,
    /// The journal position then.
    pub position: u64,
    /// Part of a fault (shown stronger).
    pub fault: bool,
}

/// The Mirror Monitor's timeline.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    /// Newest group first.
    pub groups: Vec<FaultGroup>,
    /// Members whose events could not be read.
    pub unreachable: Vec<String>,
}

impl MirrorService {
    /// This member's events and the other failover member's, merged, at or after `since_ms`.
    pub async fn events(&self, since_ms: i64) -> EventsAnswer {
        let config = self.context.config.get();
        let dir = self.context.data_dir.clone();
        let own = tokio::task::spawn_blocking(move || events::read(&dir, since_ms))
            .await
            .unwrap_or_default();
        let Some(m) = config.mirror.membership.as_ref() else {
            return EventsAnswer {
                events: own,
                members: vec![],
            };
        };
        let mut members = vec![EventSource {
            member: m.this.name.to_string(),
            reachable: true,
            error: None,
        }];
        let mut lists = vec![own];
        if let Some(other) = m.other_failover() {
            let asked = async {
                let target = super::super::agent_target(&self.context.identity, m, other)?;
                let request = AgentRequest::MirrorEvents { since_ms };
                let (reply, _) =
                    tokio::time::timeout(PEER_TIMEOUT, agent::call_to(&target, request))
                        .await
                        .map_err(|_| {
                            Error::Unavailable("its agent did not answer in time".into())
                        })??;
                match reply.events {
                    Some(events) if reply.ok => Ok(events),
                    _ => Err(Error::Unavailable(reply.message)),
                }
            };
            let (reachable, error) = match asked.await {
                Ok(events) => {
                    lists.push(events);
                    (true, None)
                }
                Err(err) => (false, Some(err.to_string())),
            };
            members.push(EventSource {
                member: other.name.to_string(),
                reachable,
                error,
            });
        }
        EventsAnswer {
            events: events::merge(lists),
            members,
        }
    }

    /// The Mirror Monitor's timeline: the newest merged events, grouped per fault.
    pub async fn timeline(&self) -> Timeline {
        let answer = self.events(0).await;
        let unreachable = answer
            .members
            .iter()
            .filter(|m| !m.reachable)
            .map(|m| m.member.clone())
            .collect();
        let skip = answer.events.len().saturating_sub(MONITOR_EVENTS);
        Timeline {
            groups: group_by_fault(&answer.events[skip..]),
            unreachable,
        }
    }
}

/// Groups events (oldest first) into faults, newest fault first, each newest event first. A
/// group ends after [`FAULT_GAP_MS`] without events, and a fault's first sign (a link lost,
/// the trouble state, a graceful stop) begins a group of its own unless the group holds one
/// from the last [`SAME_FAULT_MS`]: both members losing each other is one fault, and what led
/// up to it (a walk-through's setup) is another group.
fn group_by_fault(events: &[MirrorEvent]) -> Vec<FaultGroup> {
    let mut runs: Vec<Vec<&MirrorEvent>> = Vec::new();
    // When the current run's latest fault began (None: it holds no fault yet).
    let mut fault_at: Option<i64> = None;
    for event in events {
        let begins_fault = matches!(
            event.kind,
            EventKind::MemberLost
                | EventKind::ArbiterLost
                | EventKind::TroubleEntered
                | EventKind::Stopping
                | EventKind::Superseded
        );
        let quiet = runs
            .last()
            .and_then(|run| run.last())
            .is_none_or(|last| event.time_ms - last.time_ms > FAULT_GAP_MS);
        let new_fault =
            begins_fault && fault_at.is_none_or(|at| event.time_ms - at > SAME_FAULT_MS);
        if quiet || new_fault {
            runs.push(Vec::new());
            fault_at = None;
        }
        if begins_fault && fault_at.is_none() {
            fault_at = Some(event.time_ms);
        }
        runs.last_mut().expect("pushed above").push(event);
    }
    runs.into_iter()
        .rev()
        .map(|run| FaultGroup {
            title: title_of(&run),
            began: format_time(run[0].time_ms),
            outage_ms: run.iter().rev().find_map(|e| e.outage_ms),
            events: run
                .iter()
                .rev()
                .map(|e| TimelineRow {
                    time: clock_time(e.time_ms),
                    member: e.member.clone(),
                    kind: kind_words(e.kind).into(),
                    reason: e.reason.clone(),
                    epoch: e.epoch,
                    position: e.position,
                    fault: e.kind.is_fault(),
                })
                .collect(),
        })
        .collect()
}

/// A group's title: its takeover, else its first fault, else `Changes`.
fn title_of(run: &[&MirrorEvent]) -> String {
    if let Some(takeover) = run.iter().find(|e| e.kind == EventKind::Takeover) {
        return format!("Takeover by {}", takeover.member);
    }
    if let Some(forced) = run.iter().find(|e| e.kind == EventKind::ForcedPrimary) {
        return format!("{} forced to become the primary", forced.member);
    }
    match run.iter().find(|e| e.kind.is_fault()) {
        Some(fault) => format!("{} ({})", kind_words(fault.kind), fault.member),
        None => "Changes".into(),
    }
}

/// `08:04:10.123` (UTC).
fn clock_time(ms: i64) -> String {
    let text = format_time(ms);
    let clock = text.split(' ').nth(1).unwrap_or_default();
    format!("{clock}.{:03}", ms.rem_euclid(1_000))
}

/// An event kind in words.
fn kind_words(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Started => "Started",
        EventKind::Stopping => "Stopping",
        EventKind::RoleChanged => "Role changed",
        EventKind::Takeover => "Takeover",
        EventKind::TakeoverRefused => "No takeover",
        EventKind::StoodDown => "Stood down",
        EventKind::ForcedPrimary => "Forced primary",
        EventKind::ModeChanged => "Failover mode",
        EventKind::MemberConnected => "Link up",
        EventKind::MemberLost => "Link lost",
        EventKind::ArbiterConnected => "Arbiter connected",
        EventKind::ArbiterLost => "Arbiter lost",
        EventKind::TroubleEntered => "In trouble",
        EventKind::TroubleLeft => "Out of trouble",
        EventKind::BackupActivated => "Backup active",
        EventKind::BackupDeactivated => "Backup not active",
        EventKind::WritesResumed => "Writes resumed",
        EventKind::RowsQuarantined => "Rows quarantined",
        EventKind::Superseded => "Superseded",
        EventKind::Operator => "Operator",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(time_ms: i64, member: &str, kind: EventKind, outage_ms: Option<i64>) -> MirrorEvent {
        MirrorEvent {
            time_ms,
            member: member.into(),
            kind,
            reason: String::new(),
            epoch: 1,
            position: 0,
            outage_ms,
        }
    }

    #[test]
    fn events_far_apart_are_different_faults_newest_first_with_their_outage() {
        let events = [
            event(1_000, "MIRRORA", EventKind::Started, None),
            event(2_000, "MIRRORB", EventKind::MemberConnected, None),
            event(60_000, "MIRRORB", EventKind::MemberLost, None),
            event(60_040, "MIRRORB", EventKind::Takeover, None),
            event(60_090, "MIRRORB", EventKind::WritesResumed, Some(95)),
        ];
        let groups = group_by_fault(&events);
        assert_eq!(groups.len(), 2, "{groups:#?}");
        assert_eq!(groups[0].title, "Takeover by MIRRORB");
        assert_eq!(groups[0].outage_ms, Some(95));
        assert_eq!(groups[0].events[0].kind, "Writes resumed");
        assert_eq!(groups[0].events[0].time, "00:01:00.090");
        assert_eq!(groups[1].title, "Changes");
        assert_eq!(groups[1].outage_ms, None);
        assert_eq!(groups[1].events.len(), 2);
    }

    #[test]
    fn a_fault_right_after_other_changes_is_a_group_of_its_own_and_both_members_signs_are_one() {
        let events = [
            event(1_000, "MIRRORA", EventKind::Operator, None),
            event(3_000, "MIRRORB", EventKind::Operator, None),
            event(4_000, "MIRRORA", EventKind::MemberLost, None),
            event(4_010, "MIRRORB", EventKind::MemberLost, None),
            event(4_050, "MIRRORB", EventKind::Takeover, None),
            event(6_000, "MIRRORB", EventKind::MemberConnected, None),
            event(12_000, "MIRRORB", EventKind::ArbiterLost, None),
        ];
        let groups = group_by_fault(&events);
        let shape: Vec<_> = groups
            .iter()
            .map(|g| (g.title.as_str(), g.events.len()))
            .collect();
        assert_eq!(
            shape,
            vec![
                ("Arbiter lost (MIRRORB)", 1),
                ("Takeover by MIRRORB", 4),
                ("Changes", 2)
            ]
        );
    }
}
