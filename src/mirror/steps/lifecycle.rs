//! The steps of the mirror's life that run on the writer thread: create a mirror, add databases
//! (their events are mirrored writes), become the primary, be demoted, roll a divergent tail
//! back, leave.

use super::*;
use crate::config::mirror::MemberName;
use crate::instance::recovery;
use crate::mirror::state::Role;
use crate::storage::database;

impl MirrorSteps {
    /// See [`MirrorCommand::BecomePrimary`].
    pub(super) fn become_primary(
        &mut self,
        w: &mut Writer,
        source: &SharedJournal,
        new_epoch: bool,
    ) -> Result<Result<String>, Fatal> {
        let config = w.config().get();
        let Some(m) = config.mirror.membership.clone() else {
            return Ok(Err(Error::Conflict("not a mirror member".into())));
        };
        let Some(journal) = self.mirror.journal() else {
            return Ok(Err(Error::Conflict(
                "this member has no mirror journal".into(),
            )));
        };
        let end = journal.durable_end();
        // Everything this member holds durably counts now — including records the old primary
        // had not yet announced as durable: they may have been acknowledged to clients. Every
        // copy of the mirror here is brought up to the journal's end before any write.
        let state = w.catalog().snapshot();
        for db in &m.databases {
            if self.cursors.contains_key(&db.name) {
                continue;
            }
            let Some(entry) = mounted_copy(&state, &db.name) else {
                continue;
            };
            if let Ok(identity) = recovery::identity_of(entry)
                && identity.stream == m.mirror.id
            {
                self.cursors.insert(db.name.clone(), identity.applied_pos);
            }
        }
        self.mirror.set_dejournal_target(end);
        while let Some(from) = self.cursors.values().min().copied()
            && from < end
        {
            let until = JournalPos(end.0.min(from.0 + DEJOURNAL_CHUNK));
            if let Err((failed, err)) = self.apply_range(w, &journal, from, until) {
                let names: Vec<String> = failed.iter().map(|d| d.to_string()).collect();
                return Ok(Err(Error::Conflict(format!(
                    "cannot become primary: applying the mirror journal to {} failed: {err}",
                    names.join(", ")
                ))));
            }
        }
        let last_epoch = journal.last_epoch().unwrap_or_default();
        let epoch = if new_epoch {
            config.epoch.max(last_epoch).next()
        } else {
            config.epoch.max(last_epoch)
        };
        let Some(taken) = source.lock().unwrap().take() else {
            return Ok(Err(Error::Conflict("the mirror journal is in use".into())));
        };
        let this = m.this.name.clone();
        // Durability: the new role and epoch are on disk before the first write of the epoch,
        // so a crash right after restarts this member as the former primary of that epoch.
        let stored = w.config().update(|c| {
            c.epoch = epoch;
            if let Some(m) = c.mirror.membership.as_mut() {
                m.was_primary = true;
                m.primary_name = Some(this.clone());
                // No Failover ends when the member it protected resumes as primary.
                if !new_epoch && m.mirror.defined_primary.as_deref() == Some(this.as_str()) {
                    m.mirror.defined_primary = None;
                }
                if new_epoch {
                    m.epochs.push(crate::config::mirror::EpochStart {
                        epoch,
                        first: end.0 + 1,
                    });
                }
            }
            Ok(())
        });
        if let Err(err) = stored {
            *source.lock().unwrap() = Some(taken);
            return Ok(Err(err));
        }
        w.set_epoch(epoch);
        self.cursors.clear();
        self.appliers.clear();
        for db in &m.databases {
            self.mirror.update_database(&db.name, |d| {
                d.dejournaling = false;
                d.phase = CatchupPhase::Idle;
                d.applied = end;
            });
        }
        self.mirror.hub.reset(taken.end());
        w.set_mirror_journal(Some(taken));
        self.mirror.set_role(Role::Primary);
        w.reload_catalog();
        if new_epoch {
            let json = serde_json::json!({
                "event": "became_primary", "member": this, "epoch": epoch
            })
            .to_string();
            w.commit_event_alone(&json)?;
            // The outage runs from the old primary's last write this member holds to the first
            // write here after the takeover's own record. That last write was acknowledged
            // (if at all) just after this member made it durable: when the receiver stored it
            // — or, for records fetched through the old primary's agent, their commit time
            // there, whichever is later.
            let committed_ms = journal
                .read_range(JournalPos(end.0.saturating_sub(1)), end)
                .next()
                .and_then(|record| record.ok())
                .map(|record| record.time_ms);
            let stored_ms = self.mirror.read(|s| s.link.stored_ms);
            let last_old = committed_ms.max(stored_ms);
            if let Some(last_old_ms) = last_old {
                self.mirror
                    .hub
                    .watch_outage(self.mirror.hub.ends().1, last_old_ms);
            }
            tracing::warn!(
                "{this} took over as primary of mirror {} (epoch {epoch})",
                m.mirror.name
            );
            Ok(Ok(format!("{this} is the primary now (epoch {epoch})")))
        } else {
            tracing::info!(
                "{this} resumes as primary of mirror {} (epoch {epoch})",
                m.mirror.name
            );
            Ok(Ok(format!("{this} is the primary again (epoch {epoch})")))
        }
    }

    /// See [`MirrorCommand::Demote`]. The former primary's own files are full copies of the
    /// mirrored databases: they are activated and follow the new primary's journal.
    pub(super) fn demote(&mut self, w: &mut Writer, primary: MemberName) -> Result<String> {
        let config = w.config().get();
        let m = config.mirror.member()?;
        let state = w.catalog().snapshot();
        let copies: Vec<DbName> = m
            .databases
            .iter()
            .filter(|db| mounted_copy(&state, &db.name).is_some())
            .map(|db| db.name.clone())
            .collect();
        w.config().update(|c| {
            if let Some(m) = c.mirror.membership.as_mut() {
                m.was_primary = false;
                m.primary_name = Some(primary.clone());
                for db in &copies {
                    if !m.activated.contains(db) {
                        m.activated.push(db.clone());
                    }
                }
            }
            Ok(())
        })?;
        self.mirror.set_role(Role::Backup);
        w.reload_catalog();
        self.follow_activated_copies(w);
        Ok(format!("following {primary} as backup"))
    }

    /// See [`MirrorCommand::RollBack`].
    pub(super) fn roll_back(&mut self, w: &mut Writer, after: JournalPos) -> Result<String> {
        let config = w.config().get();
        let m = config.mirror.member()?;
        let journal = self
            .mirror
            .journal()
            .ok_or_else(|| Error::Conflict("no mirror journal".into()))?;
        let quarantined =
            super::super::divergence::quarantine(&journal, after, w.data_dir(), &m.mirror.name)?;
        let state = w.catalog().snapshot();
        let mut undone = Vec::new();
        for db in &m.databases {
            let Some(entry) = mounted_copy(&state, &db.name) else {
                continue;
            };
            // The applier's open connection must not outlive the undo.
            self.appliers.remove(&db.name);
            let records = super::super::divergence::undo(entry, &journal, after)?;
            if records > 0 {
                undone.push(format!("{} ({records} records)", db.name));
            }
            if let Some(cursor) = self.cursors.get_mut(&db.name) {
                *cursor = (*cursor).min(after);
            }
            self.mirror
                .update_database(&db.name, |d| d.applied = d.applied.min(after));
        }
        let message = format!(
            "divergent tail after position {after}: {quarantined} row changes kept in quarantine; undone in {}",
            if undone.is_empty() {
                "no database (none had applied it)".to_string()
            } else {
                undone.join(", ")
            }
        );
        if quarantined > 0 {
            self.mirror.record(
                crate::mirror::events::EventKind::RowsQuarantined,
                message.clone(),
            );
        }
        Ok(message)
    }

    pub(super) fn create_mirror(
        &mut self,
        w: &mut Writer,
        journal: Journal,
        membership: Membership,
    ) -> Result<Result<String>, Fatal> {
        if w.config().get().mirror.membership.is_some() {
            return Ok(Err(Error::Conflict(
                "this instance already belongs to a mirror".into(),
            )));
        }
        let shared = journal.shared();
        self.mirror.hub.reset(journal.end());
        self.mirror.hub.set_qos(membership.mirror.qos_timeout_ms);
        w.set_mirror_journal(Some(journal));
        self.mirror.set_journal(Some(shared));
        let name = membership.mirror.name.clone();
        let member = membership.this.name.clone();
        if let Err(err) = w.config().update(|c| {
            c.mirror.membership = Some(membership.clone());
            Ok(())
        }) {
            w.set_mirror_journal(None);
            self.mirror.set_journal(None);
            return Ok(Err(err));
        }
        self.mirror.set_role(Role::Primary);
        let json =
            serde_json::json!({ "event": "mirror_created", "mirror": name, "member": member })
                .to_string();
        w.commit_event_alone(&json)?;
        w.reload_catalog();
        tracing::info!("created mirror {name}; {member} is its primary");
        Ok(Ok(format!(
            "mirror {name} created; this member ({member}) is its primary"
        )))
    }

    /// Add to Mirror: one event per database in the mirror journal (its position is where the
    /// database's changes move to the mirror journal), then — once the active backup holds the
    /// events, like any mirrored write — the switch of each file and the configuration
    /// ([`MirrorSteps::finish_add`]). Meanwhile the writer goes on with other work.
    pub(super) fn add_databases(
        &mut self,
        w: &mut Writer,
        dbs: &[DbName],
        reply: Reply<String>,
    ) -> Result<(), Fatal> {
        let added = match self.journal_adds(w, dbs) {
            Ok(Ok(added)) => added,
            Ok(Err(answer)) => {
                let _ = reply.send(answer);
                return Ok(());
            }
            Err(fatal) => {
                let _ = reply.send(Err(Error::Unavailable(fatal.0.clone())));
                return Err(fatal);
            }
        };
        let Some(last) = added.last().map(|(_, db)| JournalPos(db.added_at)) else {
            return Ok(());
        };
        w.park(last, Box::new(MirrorCommand::FinishAdd { added, reply }));
        Ok(())
    }

    /// Checks the request and writes Add to Mirror's events: `Ok(Err(answer))` when there is
    /// nothing to add (the answer says why), else the databases with their events.
    #[allow(clippy::type_complexity)]
    pub(super) fn journal_adds(
        &mut self,
        w: &mut Writer,
        dbs: &[DbName],
    ) -> Result<std::result::Result<Vec<(DatabaseEntry, MirroredDatabase)>, Result<String>>, Fatal>
    {
        let config = w.config().get();
        let Some(membership) = config.mirror.membership.clone() else {
            return Ok(Err(Err(Error::Conflict(
                "this instance is not a mirror member".into(),
            ))));
        };
        if !w.is_primary() || w.mirror_journal().is_none() {
            return Ok(Err(Err(Error::Conflict(
                "databases are added to a mirror on its primary".into(),
            ))));
        }
        if dbs.is_empty() {
            return Ok(Err(Err(Error::InvalidInput(
                "select at least one database to add to the mirror".into(),
            ))));
        }
        let state = w.catalog().snapshot();
        let mut entries: Vec<DatabaseEntry> = Vec::new();
        let mut already = Vec::new();
        for name in dbs {
            let entry = match state.database(name) {
                Ok(entry) => entry.clone(),
                Err(err) => return Ok(Err(Err(err))),
            };
            if entry.mirrored.is_some() {
                already.push(name.to_string());
                continue;
            }
            if !entry.mounted {
                return Ok(Err(Err(Error::Conflict(format!(
                    "{name} is dismounted: mount it before adding it to the mirror"
                )))));
            }
            entries.push(entry);
        }
        if entries.is_empty() {
            return Ok(Err(Ok(format!(
                "already in mirror {}: {}",
                membership.mirror.name,
                already.join(", ")
            ))));
        }
        let mut identities = Vec::new();
        for entry in &entries {
            match recovery::identity_of(entry) {
                Ok(identity) => identities.push(identity),
                Err(err) => return Ok(Err(Err(err))),
            }
        }
        let mut added = Vec::new();
        for (entry, identity) in entries.into_iter().zip(identities) {
            let json = serde_json::json!({
                "event": "add_database",
                "db": entry.name,
                "guid": identity.guid,
                "mirror": membership.mirror.name,
            })
            .to_string();
            // Remember the intent first: a crash between the event and the switch is finished
            // (or dropped, if the event never got written) at the next start.
            let expected = w
                .mirror_journal()
                .map(|j| j.end().next())
                .unwrap_or(JournalPos(1));
            let pending = MirroredDatabase {
                name: entry.name.clone(),
                guid: identity.guid.clone(),
                added_at: expected.0,
            };
            let noted = w.config().update(|c| {
                if let Some(m) = c.mirror.membership.as_mut() {
                    m.pending_adds.push(pending.clone());
                }
                Ok(())
            });
            if let Err(err) = noted {
                return Ok(Err(Err(err)));
            }
            let pos = w.write_event(Some(&entry.name), &json)?;
            let database = MirroredDatabase {
                added_at: pos.0,
                ..pending
            };
            added.push((entry, database));
        }
        Ok(Ok(added))
    }

    /// Add to Mirror, once the backup holds the events: from each event's position on, the
    /// database's changes belong in the mirror's journal. The switch and the configuration
    /// follow the durable event, and are completed at start-up if a crash comes in between.
    pub(super) fn finish_add(
        &mut self,
        w: &mut Writer,
        added: Vec<(DatabaseEntry, MirroredDatabase)>,
    ) -> Result<Result<String>, Fatal> {
        let config = w.config().get();
        let Some(membership) = config.mirror.membership.clone() else {
            return Ok(Err(Error::Conflict(
                "this instance left the mirror meanwhile".into(),
            )));
        };
        let mirror_id = membership.mirror.id;
        let mut names = Vec::new();
        for (entry, database) in added {
            let pos = JournalPos(database.added_at);
            if let Err(err) = database::switch_stream(&entry.file, mirror_id, pos) {
                return Err(Fatal(format!(
                    "switching {} to the mirror journal failed: {err}",
                    entry.name
                )));
            }
            let update = w.config().update(|c| {
                c.database_mut(&entry.name)?.mirrored = true;
                if let Some(m) = c.mirror.membership.as_mut() {
                    m.pending_adds.retain(|p| p.name != entry.name);
                    if m.database(&entry.name).is_none() {
                        m.databases.push(database.clone());
                    }
                }
                Ok(())
            });
            if let Err(err) = update {
                return Err(Fatal(format!(
                    "recording {} as mirrored failed: {err}",
                    entry.name
                )));
            }
            self.mirror
                .hub
                .announce(super::super::protocol::Control::DatabaseAdded { database });
            names.push(entry.name.to_string());
        }
        w.reload_catalog();
        tracing::info!(
            "added to mirror {}: {}",
            membership.mirror.name,
            names.join(", ")
        );
        Ok(Ok(format!(
            "added to mirror {}: {}. The other members need a copy of each database: dismount it \
             there, copy mgr/<db>/database.sqlite from this member (while no one writes, or after \
             Freeze), mount it, then Activate and Catchup",
            membership.mirror.name,
            names.join(", ")
        )))
    }

    pub(super) fn leave(&mut self, w: &mut Writer) -> Result<String> {
        let config = w.config().get();
        let Some(membership) = config.mirror.membership.as_ref() else {
            return Ok("this instance is not a mirror member".into());
        };
        if w.is_primary() && !membership.others.is_empty() {
            return Err(Error::Conflict(
                "remove the other mirror members first (Edit Mirror), then remove the mirror configuration".into(),
            ));
        }
        let (local, local_stream) = w.local_journal();
        let local_end = local.end();
        let state = w.catalog().snapshot();
        for db in config.databases.iter().filter(|d| d.mirrored) {
            let entry = state.database(&db.name)?;
            if entry.file.is_file() {
                database::switch_stream(&entry.file, local_stream, local_end)?;
            }
        }
        let name = membership.mirror.name.clone();
        w.config().update(|c| {
            c.mirror.membership = None;
            for db in c.databases.iter_mut() {
                db.mirrored = false;
            }
            Ok(())
        })?;
        self.mirror
            .hub
            .close_all("the mirror configuration was removed");
        w.set_mirror_journal(None);
        self.mirror.set_journal(None);
        self.cursors.clear();
        self.appliers.clear();
        self.mirror.publish(|s| {
            s.databases.clear();
            s.role = Role::NotMember;
        });
        w.reload_catalog();
        Ok(format!(
            "this member left mirror {name}; its copies of the mirrored databases are now local databases"
        ))
    }
}
