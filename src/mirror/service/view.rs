//! The Mirror Monitor's view of the mirror: the rows and blocks the pages and `GET /api/mirror` show,
//! built in one pass from one copy of the member's published status
//! ([`MemberStatus`](crate::mirror::state::MemberStatus)), the configuration and the catalog.

use super::*;
use crate::mirror::core::Refusal;

/// One row of the Mirror Member Status table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberRow {
    /// Member Name.
    pub name: String,
    /// Type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Status.
    pub status: String,
    /// Journal Transfer.
    pub journal_transfer: String,
    /// Dejournaling.
    pub dejournaling: String,
}

/// One row of the Mirrored Databases list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DatabaseRow {
    /// Name.
    pub name: String,
    /// `:mirror:MIRRORSET:COMPANY`.
    pub mirror_path: String,
    /// Directory.
    pub directory: String,
    /// Status.
    pub status: String,
    /// Next Record to Dejournal.
    pub next_record: String,
    /// Whether the database is read-only here.
    pub read_only: bool,
    /// Actions offered for the row (`mount`, `activate`, `catchup`).
    pub actions: Vec<&'static str>,
    /// A message about the row (Catchup progress, why it is obsolete).
    pub message: Option<String>,
}

/// This member's view of the mirror, for the Mirror Monitor and `GET /api/mirror`.
#[derive(Debug, Clone, Serialize)]
pub struct MirrorView {
    /// Whether the mirror service is enabled.
    pub service_enabled: bool,
    /// This member's name.
    pub member_name: Option<String>,
    /// The mirror's name.
    pub mirror_name: Option<String>,
    /// `Primary`, `Backup`, `Not Member`…
    pub role: String,
    /// This member's status (`Primary`, `Backup`, `Synchronizing`, `Waiting`, `Not Initialized`).
    pub status: String,
    /// `Agent Controlled` or `Arbiter Controlled`.
    pub failover_mode: Option<String>,
    /// The failover members' addresses: (name, superserver, mirror private) for this and the other.
    pub failover_info: Vec<(String, String, String)>,
    /// Arbiter address and connection status.
    pub arbiter: Option<ArbiterView>,
    /// The Mirror Member Status table.
    pub members: Vec<MemberRow>,
    /// Incoming Journal Transfer Rate (backup).
    pub transfer_rate: Option<String>,
    /// The Mirrored Databases list.
    pub databases: Vec<DatabaseRow>,
    /// Mirrored databases this member has no copy of (`:mirror:MIRRORSET:COMPANY`).
    pub missing: Vec<String>,
    /// Their names (for Copy from Primary).
    pub missing_names: Vec<String>,
    /// Copy from Primary: each database's latest copy, with its progress.
    pub copies: Vec<crate::mirror::copy::CopyProgress>,
    /// The no-click mirror's latest pass (with `--auto-mirror`).
    pub auto_mirror: Option<crate::mirror::auto::AutoMirrorReport>,
    /// The QoS timeout (ms).
    pub qos_timeout_ms: Option<u64>,
    /// The link's last problem (backup).
    pub link_error: Option<String>,
    /// The mirror journal's end here.
    pub journal_end: Option<u64>,
    /// What the failover driver last did or found (a takeover, why a restarted primary waits).
    pub failover_note: Option<String>,
    /// Rows of divergent tails kept in quarantine here (the newest last), and how many in all.
    pub quarantine: (Vec<crate::mirror::divergence::QuarantinedRow>, usize),
    /// No Failover is set (the member that must stay primary).
    pub no_failover: Option<String>,
    /// This failover member sees no primary: why no takeover happened, and what to do.
    pub no_primary: Option<String>,
    /// Stop Mirror On This Member is in effect.
    pub stopped: bool,
    /// Whether this member may be forced to become primary (a failover member that is not
    /// primary and not connected to one).
    pub may_force: bool,
    /// Require SSL/TLS is set.
    pub require_tls: bool,
    /// This member's certificate fingerprint.
    pub certificate: String,
    /// Pending New Members (on the primary of a mirror that requires SSL/TLS).
    pub pending: PendingLists,
}

/// Pending New Members as the Edit Mirror page and `GET /api/mirror/pending` show them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PendingLists {
    /// The requests waiting, oldest first.
    pub waiting: Vec<PendingRow>,
    /// The rejected certificates remembered.
    pub rejected: Vec<PendingMember>,
}

/// One waiting request, with what a person needs to judge it.
#[derive(Debug, Clone, Serialize)]
pub struct PendingRow {
    /// The request.
    pub request: PendingMember,
    /// When it leaves the list unless it asks again (ms since the Unix epoch).
    pub expires_ms: i64,
    /// Why to look twice: another certificate asked under the same name.
    pub warning: Option<&'static str>,
}

impl PendingRow {
    /// When it last asked, as the page shows times.
    pub fn last_asked_text(&self) -> String {
        format_time(self.request.last_ms.max(self.request.since_ms))
    }

    /// When it leaves the list unless it asks again, as the page shows times.
    pub fn expires_text(&self) -> String {
        format_time(self.expires_ms)
    }
}

impl PendingLists {
    /// Whether more than one certificate asks under the same name.
    pub fn flagged(&self) -> bool {
        self.waiting.iter().any(|row| row.warning.is_some())
    }

    pub(super) fn of(list: &[PendingMember], now_ms: i64) -> PendingLists {
        let waiting: Vec<&PendingMember> = pending::waiting(list, now_ms).collect();
        let rows = waiting
            .iter()
            .map(|&p| PendingRow {
                request: p.clone(),
                expires_ms: pending::expires_ms(p),
                warning: if p.another_certificate {
                    Some("another certificate already asked under this name")
                } else if waiting
                    .iter()
                    .any(|o| o.info.name == p.info.name && o.info.certificate != p.info.certificate)
                {
                    Some("another certificate has asked under this name since")
                } else {
                    None
                },
            })
            .collect();
        PendingLists {
            waiting: rows,
            rejected: pending::rejected(list).cloned().collect(),
        }
    }
}

/// Quarantined rows the monitor lists at most.
const QUARANTINE_SHOWN: usize = 100;

/// The arbiter block of the monitor.
#[derive(Debug, Clone, Serialize)]
pub struct ArbiterView {
    /// `host|port`, or empty without an arbiter.
    pub address: String,
    /// Connection Status text.
    pub connection_status: String,
}

impl MirrorService {
    /// The Mirror Monitor's facts.
    pub fn view(&self) -> MirrorView {
        let context = &self.context;
        let config = context.config.get();
        // Everything the member's threads say about themselves, at one moment: the page never
        // mixes parts from before and after a change (see `state::MemberStatus`).
        let published = context.mirror.status();
        let role = published.role;
        let Some(m) = config.mirror.membership.as_ref() else {
            return MirrorView {
                service_enabled: config.mirror.service_enabled,
                member_name: None,
                mirror_name: None,
                role: "Not Member".into(),
                status: if config.mirror.service_enabled {
                    "Not Member".into()
                } else {
                    "Mirror service disabled".into()
                },
                failover_mode: None,
                failover_info: Vec::new(),
                arbiter: None,
                members: Vec::new(),
                transfer_rate: None,
                databases: Vec::new(),
                missing: Vec::new(),
                missing_names: Vec::new(),
                copies: Vec::new(),
                auto_mirror: self.auto_report(),
                qos_timeout_ms: None,
                link_error: None,
                journal_end: None,
                failover_note: None,
                quarantine: (Vec::new(), 0),
                no_failover: None,
                no_primary: None,
                stopped: false,
                may_force: false,
                require_tls: false,
                certificate: context.identity.fingerprint().to_string(),
                pending: PendingLists::default(),
            };
        };
        let failover = &published.failover;
        let now = now_ms();
        let link = &published.link;
        let primary = role == Role::Primary;
        let mut members = Vec::new();
        let this_status;
        if primary {
            this_status = failover.status.unwrap_or("Primary").to_string();
            members.push(MemberRow {
                name: m.this.name.to_string(),
                kind: m.this.kind.display().into(),
                status: this_status.clone(),
                journal_transfer: status::journal_transfer(status::Transfer::Primary),
                dejournaling: "N/A".into(),
            });
            let links = context.mirror.hub.links();
            for other in &m.others {
                let row = match links.iter().find(|l| l.member.name == other.name) {
                    Some(l) => MemberRow {
                        name: other.name.to_string(),
                        kind: other.kind.display().into(),
                        status: if other.kind == MemberKind::Failover {
                            "Backup".into()
                        } else {
                            "Connected".into()
                        },
                        journal_transfer: status::journal_transfer(if l.active {
                            Transfer::Active
                        } else if let Some(since) = l.behind_since_ms {
                            Transfer::Behind {
                                since_ms: since,
                                now_ms: now,
                            }
                        } else {
                            Transfer::CaughtUp
                        }),
                        dejournaling: if l.dejournaling.is_empty() {
                            "N/A".into()
                        } else {
                            l.dejournaling.clone()
                        },
                    },
                    None => {
                        let since = context.mirror.hub.disconnected_at(&other.name);
                        MemberRow {
                            name: other.name.to_string(),
                            kind: other.kind.display().into(),
                            status: "Down".into(),
                            journal_transfer: since
                                .map(status::disconnected_on)
                                .unwrap_or_else(|| "N/A".into()),
                            dejournaling: since
                                .map(status::disconnected_on)
                                .unwrap_or_else(|| "N/A".into()),
                        }
                    }
                };
                members.push(row);
            }
        } else {
            let caught_up = link.received_end >= link.primary_durable;
            let is_async = m.this.kind != MemberKind::Failover;
            this_status = match (link.connected, link.active) {
                _ if m.stopped => "Stopped",
                (true, _) if is_async => "Connected",
                (true, true) => "Backup",
                (true, false) => "Synchronizing",
                (false, _) => "Waiting",
            }
            .to_string();
            let transfer = if !link.connected {
                Transfer::Disconnected(link.disconnected_ms.unwrap_or(now))
            } else if link.active {
                Transfer::Active
            } else if caught_up {
                Transfer::CaughtUp
            } else {
                Transfer::Behind {
                    since_ms: link.since_ms,
                    now_ms: now,
                }
            };
            // The other failover member (the one this member follows, or — for a former primary
            // still deciding its role, which names itself — the other one), then this member.
            let partner = m
                .primary_name
                .as_deref()
                .filter(|p| m.this.name != *p)
                .and_then(|p| m.member(p))
                .or_else(|| {
                    m.other_failover()
                        .filter(|_| m.this.kind == MemberKind::Failover)
                });
            if let Some(p) = partner {
                members.push(MemberRow {
                    name: p.name.to_string(),
                    kind: p.kind.display().into(),
                    status: if link.connected {
                        "Primary".into()
                    } else {
                        "Down".into()
                    },
                    journal_transfer: status::journal_transfer(if link.connected {
                        status::Transfer::Primary
                    } else {
                        transfer
                    }),
                    dejournaling: if link.connected {
                        "N/A".into()
                    } else {
                        status::journal_transfer(transfer)
                    },
                });
            }
            members.push(MemberRow {
                name: m.this.name.to_string(),
                kind: m.this.kind.display().into(),
                status: this_status.clone(),
                journal_transfer: status::journal_transfer(transfer),
                dejournaling: if link.connected {
                    context.dejournal_summary_of(&published)
                } else {
                    status::journal_transfer(transfer)
                },
            });
        }
        let other_failover = m.other_failover();
        let mut failover_info = vec![(
            m.this.name.to_string(),
            m.this.superserver_address.clone(),
            m.this.mirror_private_address.clone(),
        )];
        failover_info.push(match other_failover {
            Some(o) => (
                o.name.to_string(),
                o.superserver_address.clone(),
                o.mirror_private_address.clone(),
            ),
            None => ("n/a".into(), "n/a".into(), "n/a".into()),
        });
        let journal = context.mirror.journal();
        let state = context.catalog.snapshot();
        let mut databases = Vec::new();
        let mut missing = Vec::new();
        let mut missing_names = Vec::new();
        let copies = self.copies();
        let copying =
            |name: &crate::names::DbName| copies.iter().any(|c| &c.database == name && c.running());
        for db in &m.databases {
            let runtime = published.database(&db.name);
            let facts = context.database_facts_of(&db.name, primary, &runtime);
            let Some(status) = status::database_status(facts) else {
                missing.push(db.mirror_path(&m.mirror.name));
                if !copying(&db.name) {
                    missing_names.push(db.name.to_string());
                }
                continue;
            };
            let entry = state.databases.get(&db.name);
            let following = facts.dejournaling || facts.catchup_running;
            let next_record = if primary || !facts.mounted || !following {
                "N/A".to_string()
            } else if facts.dejournaling && runtime.applied >= context.mirror.dejournal_target() {
                "Current".to_string()
            } else {
                match journal.as_ref() {
                    Some(j) if runtime.applied.next() <= j.appended_end() => {
                        let next = runtime.applied.next();
                        let time = j
                            .read_range(runtime.applied, next)
                            .next()
                            .and_then(|r| r.ok())
                            .map(|r| format_time(r.time_ms));
                        let (file, offset) = j.locate(next).unwrap_or_default();
                        format!(
                            "{} {file} (position {next}, near byte {offset})",
                            time.unwrap_or_default()
                        )
                    }
                    _ => "N/A".to_string(),
                }
            };
            let mut actions: Vec<&'static str> = match status {
                "Database Dismounted" => vec!["mount"],
                "Needs Activation" => vec!["activate", "catchup"],
                "Needs Catchup" | "Dejournaling Stopped" => vec!["catchup"],
                _ => Vec::new(),
            };
            // A copy that cannot be used as it is, on a member that follows a primary.
            let replaceable = matches!(
                status,
                "Database Dismounted" | "Obsolete" | "Dejournaling Stopped"
            );
            if !primary && replaceable && !copying(&db.name) {
                actions.push("copy");
            }
            let message = match &runtime.phase {
                CatchupPhase::Running { done, total } => {
                    Some(format!("{done} of {total} records applied"))
                }
                CatchupPhase::Obsolete(message) | CatchupPhase::Failed(message) => {
                    Some(message.clone())
                }
                CatchupPhase::Idle => None,
            };
            databases.push(DatabaseRow {
                name: db.name.to_string(),
                mirror_path: db.mirror_path(&m.mirror.name),
                directory: entry.map(|e| e.directory.clone()).unwrap_or_default(),
                status: status.to_string(),
                next_record,
                read_only: entry.is_some_and(|e| e.read_only),
                actions,
                message,
            });
        }
        MirrorView {
            service_enabled: config.mirror.service_enabled,
            member_name: Some(m.this.name.to_string()),
            mirror_name: Some(m.mirror.name.clone()),
            role: role.display().into(),
            status: this_status,
            failover_mode: Some(failover.mode.unwrap_or("Agent Controlled").into()),
            failover_info,
            arbiter: Some(ArbiterView {
                address: m.mirror.arbiter_display(),
                connection_status: published.arbiter.connection_status().into(),
            }),
            members,
            transfer_rate: (!primary).then(|| link.transfer_rate()),
            databases,
            missing,
            missing_names,
            copies,
            auto_mirror: self.auto_report(),
            qos_timeout_ms: Some(m.mirror.qos_timeout_ms),
            link_error: if primary || link.connected {
                None
            } else {
                link.last_error.as_ref().map(|e| e.to_string())
            },
            journal_end: journal.map(|j| j.durable_end().0),
            failover_note: failover.note.clone(),
            quarantine: {
                let summary = self
                    .quarantine
                    .lock()
                    .unwrap()
                    .summary(&context.data_dir, QUARANTINE_SHOWN);
                (summary.newest, summary.count)
            },
            no_failover: m.mirror.defined_primary.as_ref().map(|p| p.to_string()),
            no_primary: no_primary(m, &published),
            stopped: m.stopped,
            may_force: m.this.kind == MemberKind::Failover
                && (!primary || published.deciding)
                && !link.connected,
            require_tls: m.mirror.require_tls,
            certificate: context.identity.fingerprint().to_string(),
            pending: if primary {
                PendingLists::of(&m.pending, now_ms())
            } else {
                PendingLists::default()
            },
        }
    }

    /// Row changes of divergent tails kept in quarantine here (reads the quarantine file).
    pub fn quarantined_rows(&self) -> usize {
        self.quarantine
            .lock()
            .unwrap()
            .summary(&self.context.data_dir, 0)
            .count
    }

    /// `Disconnected on <time>` helper for pages.
    pub fn now_text() -> String {
        format_time(now_ms())
    }
}

/// Why this failover member sees no primary and no takeover happened, and what a person can
/// do — or None while it has (or is) a primary, or is only reconnecting to a running one.
fn no_primary(
    m: &crate::config::mirror::Membership,
    published: &crate::mirror::state::MemberStatus,
) -> Option<String> {
    if m.this.kind != MemberKind::Failover || published.link.connected {
        return None;
    }
    let other = m
        .other_failover()
        .map(|o| o.name.to_string())
        .unwrap_or_else(|| "the other failover member".into());
    if published.deciding {
        return Some(format!(
            "No primary yet: this member was the primary and restarted; it writes nothing until \
             {other} says whether it took over meanwhile. Start {other} if it is down, or Force \
             This Member To Become The Primary if it is gone for good."
        ));
    }
    match published.failover.refusal {
        Some(Refusal::PrimaryRunning) | None => None,
        Some(_) if published.role != Role::Backup => None,
        Some(refusal) => Some(format!(
            "No primary: this member lost the primary and did not take over — {}.",
            refusal.reason()
        )),
    }
}
