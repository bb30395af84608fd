//! A member's start-up, between the instance's preparation and its writer: the mirror state,
//! the member's role, and its mirror journal.
//!
//! The role a member starts in follows from its configuration alone:
//! - a member that was not primary starts as backup (a failover member) or async;
//! - a former primary with no other failover member resumes as primary at once;
//! - a former primary *with* one starts read-only and *deciding*: the other member may have
//!   taken over while this one was down, and the failover driver finds out before this member
//!   writes anything ([`super::driver`]).
//!
//! The mirror journal is opened when its files exist (or must: a former primary's). A primary
//! keeps it for its writer; any other member hands it to the receiver, which appends what the
//! primary sends. On a primary, an Add to Mirror a crash interrupted is finished (or dropped)
//! before recovery reads the databases.

use std::path::Path;
use std::sync::Arc;

use crate::config::ConfigStore;
use crate::config::mirror::{DEFAULT_QOS_MS, MemberKind};
use crate::error::Result;
use crate::instance::Prepared;
use crate::journal::{Journal, JournalOptions, JournalPos, JournalShared, RecordBody};
use crate::storage::CatalogState;
use crate::storage::database;

use super::events::EventKind;
use super::state::{MirrorState, Role};

/// What a member starts with.
pub struct MemberStart {
    /// The mirror's runtime state, shared by the mirror's threads (and the instance's answers
    /// about its role).
    pub state: Arc<MirrorState>,
    /// The mirror journal, for the writer when this member starts as primary.
    pub primary_journal: Option<Journal>,
    /// The mirror journal, for the receiver when this member starts as anything else.
    pub receiver_journal: Option<Journal>,
}

/// Decides the role `prepared` starts in and opens its mirror journal (see the module essay);
/// the member's events ([`super::events`]) are kept from here on, beginning with the start.
pub fn open_member(prepared: &Prepared) -> Result<MemberStart> {
    let start = decide_role(prepared)?;
    let state = &start.state;
    if let Err(err) = state.events.attach(
        &prepared.settings.data_dir,
        prepared.config.clone(),
        &prepared.settings.instance_name,
    ) {
        // The events explain; the member runs without them rather than not at all.
        tracing::warn!("mirror events will not be kept: {err}");
    }
    if prepared.config.get().mirror.membership.is_some() {
        let role = state.role().display();
        state.record(
            EventKind::Started,
            if state.deciding() {
                "the instance started as a former primary: it asks the other failover member \
                 whether it took over before it writes anything"
                    .to_string()
            } else {
                format!("the instance started as {role}")
            },
        );
    }
    Ok(start)
}

fn decide_role(prepared: &Prepared) -> Result<MemberStart> {
    let settings = &prepared.settings;
    let config = &prepared.config;
    let membership = config.get().mirror.membership.clone();
    let state = Arc::new(MirrorState::with_clock(
        membership
            .as_ref()
            .map(|m| m.mirror.qos_timeout_ms)
            .unwrap_or(DEFAULT_QOS_MS),
        settings.clock.clone(),
    ));
    let Some(m) = &membership else {
        return Ok(MemberStart {
            state,
            primary_journal: None,
            receiver_journal: None,
        });
    };
    let id = m.mirror.id;
    let options = JournalOptions::mirror(&m.mirror.name, settings.max_segment_bytes, JournalPos(1))
        .with_io(settings.journal_io.clone());
    let mut journal = None;
    if crate::journal::files_exist(&prepared.journal_dir, &options.prefix)? || m.was_primary {
        let (mj, report) = Journal::open(&prepared.journal_dir, id, options)?;
        if let Some((segment, offset, bytes)) = &report.truncated {
            tracing::warn!(
                "mirror journal file {segment}: cut {bytes} bytes of an incomplete write at byte {offset}"
            );
        }
        state.set_journal(Some(mj.shared()));
        journal = Some(mj);
    }
    let other_failover = m.other_failover().is_some();
    if m.was_primary && other_failover {
        // The other failover member may have taken over while this one was down: start
        // read-only and let the failover driver find out (see mirror::driver).
        state.set_role(Role::Backup);
        state.set_deciding(true);
    } else if m.was_primary {
        state.set_role(Role::Primary);
        if let Some(mj) = &journal {
            state.hub.reset(mj.end());
        }
    } else {
        state.set_role(if m.this.kind == MemberKind::Failover {
            Role::Backup
        } else {
            Role::Async(m.this.kind)
        });
    }
    if state.role() == Role::Primary {
        if let Some(mj) = &journal {
            finish_pending_adds(config, &settings.data_dir, m, &mj.shared())?;
        }
        return Ok(MemberStart {
            state,
            primary_journal: journal,
            receiver_journal: None,
        });
    }
    Ok(MemberStart {
        state,
        primary_journal: None,
        receiver_journal: journal,
    })
}

/// Finishes (or drops) Add to Mirror steps a crash interrupted on the primary: when the journal
/// holds the event, the database is switched to the mirror journal and recorded as mirrored;
/// when it does not, the intent is forgotten.
fn finish_pending_adds(
    config: &ConfigStore,
    data_dir: &Path,
    membership: &crate::config::mirror::Membership,
    journal: &JournalShared,
) -> Result<()> {
    for pending in &membership.pending_adds {
        let pos = JournalPos(pending.added_at);
        let written = journal.read_range(JournalPos(pos.0.saturating_sub(1)), pos).next().transpose()?.is_some_and(|r| {
            matches!(&r.body, RecordBody::Event(e) if e.db.as_deref() == Some(pending.name.as_str()))
        });
        if written {
            let directory = config
                .get()
                .databases
                .iter()
                .find(|d| d.name == pending.name)
                .map(|d| d.directory.clone());
            if let Some(directory) = directory {
                database::switch_stream(
                    &CatalogState::file_path(data_dir, &directory),
                    membership.mirror.id,
                    pos,
                )?;
            }
            tracing::warn!(
                "finished adding {} to the mirror after a restart",
                pending.name
            );
        }
        config.update(|c| {
            if let Some(m) = c.mirror.membership.as_mut() {
                m.pending_adds.retain(|p| p.name != pending.name);
                if written && m.database(&pending.name).is_none() {
                    m.databases.push(pending.clone());
                }
            }
            if written && let Ok(db) = c.database_mut(&pending.name) {
                db.mirrored = true;
            }
            Ok(())
        })?;
    }
    Ok(())
}
