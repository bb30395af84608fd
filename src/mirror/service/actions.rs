//! What a person does to a running mirror: Freeze and Thaw, Edit Mirror, Pending New Members
//! (Authorize, Reject, Remove), Remove Other Mirror Member, the Mirror Monitor's actions (No Failover,
//! Stop / Start Mirror, Demote, Promote, Force) and Remove Mirror Configuration.

use super::*;

impl MirrorService {
    /// Freeze writes (so database files may be copied while applications run).
    pub async fn freeze(&self, timeout: Duration) -> Result<String> {
        self.operator("Freeze", self.context.writer.freeze(timeout).await)
    }

    /// Thaw writes.
    pub async fn thaw(&self) -> Result<String> {
        self.operator("Thaw", self.context.writer.thaw().await)
    }

    /// Edit Mirror: the QoS timeout (on the primary; the others learn it when they connect).
    pub async fn edit(&self, request: EditRequest) -> Result<String> {
        let config = self.context.config.get();
        let m = config.mirror.member()?;
        let Some(qos) = request.qos_timeout_ms else {
            return Ok("nothing to change".into());
        };
        if self.context.mirror.role() != Role::Primary {
            return Err(Error::Conflict(
                "the QoS timeout can be changed on the primary only".into(),
            ));
        }
        if !(MIN_QOS_MS..=MAX_QOS_MS).contains(&qos) {
            return Err(Error::InvalidInput(format!(
                "the QoS timeout must be between {MIN_QOS_MS} and {MAX_QOS_MS} ms"
            )));
        }
        let name = m.mirror.name.clone();
        self.context.config.update(|c| {
            if let Some(m) = c.mirror.membership.as_mut() {
                m.mirror.qos_timeout_ms = qos;
            }
            Ok(())
        })?;
        self.context.mirror.hub.set_qos(qos);
        Ok(format!("mirror {name}: QoS timeout set to {qos} ms"))
    }

    /// Pending New Members on this primary: the requests waiting now, oldest first, and the
    /// rejected certificates remembered (see [`crate::mirror::pending`]).
    pub fn pending(&self) -> PendingLists {
        let config = self.context.config.get();
        let Some(m) = config.mirror.membership.as_ref() else {
            return PendingLists::default();
        };
        PendingLists::of(&m.pending, now_ms())
    }

    /// Authorize the request of `name` with `certificate` (primary of a mirror that requires
    /// SSL/TLS): that certificate, and no other, becomes the member's, and its next attempt is
    /// welcomed. A rejected certificate may be authorized too.
    pub fn authorize(&self, name: &str, certificate: &str) -> Result<String> {
        let (name, certificate) = pending_request(name, certificate)?;
        self.require_primary_for_pending()?;
        let info = self.context.config.update(|c| {
            let m = c.mirror.member_mut()?;
            let admitted = pending::authorize(&mut m.pending, &name, &certificate, now_ms())?;
            let info = admitted.info;
            if let Some(known) = m.others.iter().find(|o| o.name == info.name) {
                return Err(Error::Conflict(format!(
                    "{} is a member already, with certificate {}: Remove Other Mirror Member \
                     first to give it another",
                    info.name,
                    known.certificate.as_deref().unwrap_or("none")
                )));
            }
            if info.kind == MemberKind::Failover && m.other_failover().is_some() {
                return Err(Error::Conflict(
                    "the mirror already has two failover members: reject this one".into(),
                ));
            }
            m.others.push(info.clone());
            Ok(info)
        })?;
        tracing::info!("mirror: authorized {} ({certificate})", info.name);
        if let Some(description) = self.context.describe() {
            self.context
                .mirror
                .hub
                .announce(Control::MirrorChanged { description });
        }
        Ok(format!(
            "authorized {} with certificate {certificate}; it connects at its next attempt \
             (within seconds)",
            info.name
        ))
    }

    /// Reject the request of `name` with `certificate`: every request showing that certificate
    /// leaves Pending New Members, and its hellos are refused from now on, unlisted.
    pub fn reject(&self, name: &str, certificate: &str) -> Result<String> {
        let (name, certificate) = pending_request(name, certificate)?;
        self.require_primary_for_pending()?;
        let rejected = self.context.config.update(|c| {
            let m = c.mirror.member_mut()?;
            pending::reject(&mut m.pending, &name, &certificate, now_ms())
        })?;
        Ok(match rejected {
            pending::Rejected::Already => format!("{name}'s certificate was already rejected"),
            pending::Rejected::Now { others } => {
                let also = match others {
                    0 => String::new(),
                    1 => " (and 1 other request showing it)".into(),
                    n => format!(" (and {n} other requests showing it)"),
                };
                format!(
                    "rejected {name}'s certificate {certificate}{also}; its requests are refused \
                     and not listed again (Authorize still admits it; Remove forgets the \
                     rejection)"
                )
            }
        })
    }

    /// Remove the request of `name` with `certificate` from Pending New Members (it is listed
    /// again if it asks again), or forget that certificate's rejection.
    pub fn remove_pending(&self, name: &str, certificate: &str) -> Result<String> {
        let (name, certificate) = pending_request(name, certificate)?;
        self.require_primary_for_pending()?;
        let removed = self.context.config.update(|c| {
            let m = c.mirror.member_mut()?;
            pending::remove(&mut m.pending, &name, &certificate, now_ms())
        })?;
        Ok(match removed {
            pending::Removed::Request => format!(
                "removed {name}'s request from Pending New Members; it is listed again if it \
                 asks again"
            ),
            pending::Removed::Rejection => format!(
                "forgot the rejection of {name}'s certificate; it is listed again if it asks again"
            ),
        })
    }

    fn require_primary_for_pending(&self) -> Result<()> {
        let config = self.context.config.get();
        let m = config.mirror.member()?;
        if !m.mirror.require_tls {
            return Err(Error::Conflict(format!(
                "mirror {} does not require SSL/TLS: members join without authorization",
                m.mirror.name
            )));
        }
        if self.context.mirror.role() != Role::Primary {
            return Err(Error::Conflict(
                "pending members are authorized on the primary".into(),
            ));
        }
        Ok(())
    }

    /// Edit Mirror › Remove Other Mirror Member (primary; the member must be disconnected).
    pub fn remove_member(&self, name: &str) -> Result<String> {
        if self.context.mirror.role() != Role::Primary {
            return Err(Error::Conflict(
                "other members are removed on the primary".into(),
            ));
        }
        if self
            .context
            .mirror
            .hub
            .links()
            .iter()
            .any(|l| l.member.name == name)
        {
            return Err(Error::Conflict(format!(
                "{name} is connected: remove the mirror configuration on {name} first"
            )));
        }
        let removed = self.context.config.update(|c| {
            let m = c
                .mirror
                .membership
                .as_mut()
                .ok_or_else(|| Error::Conflict("not a member".into()))?;
            let before = m.others.len();
            m.others.retain(|o| o.name != name);
            Ok(before != m.others.len())
        })?;
        Ok(if removed {
            format!("{name} removed from the mirror")
        } else {
            format!("{name} is not a member")
        })
    }

    /// Carries out one of the Mirror Monitor's actions (its buttons and `/api/mirror/*` both
    /// come here). All but Force write the configuration, stop or start threads, or wait for
    /// the writer: they run on a blocking thread, never on one of the async runtime's.
    pub async fn monitor_action(self: &Arc<Self>, action: MonitorAction) -> Result<String> {
        if let MonitorAction::ForcePrimary { confirmed } = action {
            let result = self.force_primary(confirmed).await;
            if let Ok(message) = &result {
                self.context
                    .mirror
                    .record(EventKind::ForcedPrimary, message.clone());
            }
            return result;
        }
        let service = self.clone();
        let result = tokio::task::spawn_blocking(move || match action {
            MonitorAction::NoFailover(on) => service.set_no_failover(on),
            MonitorAction::StopMirror => service.stop_mirror(),
            MonitorAction::StartMirror => service.start_mirror(),
            MonitorAction::DemoteToDr => service.demote_to_dr(),
            MonitorAction::DemoteOther => service.demote_other(),
            MonitorAction::Promote => service.promote_to_failover(),
            MonitorAction::ForcePrimary { .. } => unreachable!("carried out above"),
        })
        .await
        .map_err(|e| Error::Internal(format!("the monitor action failed: {e}")))?;
        self.operator(action.title(), result)
    }

    /// Set (or Clear) No Failover, on either failover member: the backup must not take over
    /// while the primary named here is down. The primary's setting is the mirror's; a backup
    /// asks the primary to change it.
    pub fn set_no_failover(&self, on: bool) -> Result<String> {
        let config = self.context.config.get();
        let m = config.mirror.member()?;
        if m.this.kind != MemberKind::Failover {
            return Err(Error::Conflict(
                "No Failover is set on a failover member".into(),
            ));
        }
        let (role, connected) = self.context.mirror.read(|s| (s.role, s.link.connected));
        if role != Role::Primary && !connected && !on {
            // A person must be able to clear it whenever they need to: with the primary gone,
            // this backup may then take over (it asks the primary's agent). The primary, back,
            // resumes and clears it too.
            if m.mirror.defined_primary.is_none() {
                return Ok("No Failover was not set".into());
            }
            self.store_no_failover(None)?;
            return Ok(
                "No Failover is cleared on this member (the primary is not connected): it may \
                 take over if the primary is down"
                    .into(),
            );
        }
        let primary = match role {
            Role::Primary => m.this.name.clone(),
            _ => match (&m.primary_name, connected) {
                (Some(p), true) => p.clone(),
                _ => {
                    return Err(Error::Conflict(
                        "this member is not connected to the primary: No Failover is set while \
                         both failover members are connected"
                            .into(),
                    ));
                }
            },
        };
        let defined_primary = on.then(|| primary.clone());
        if m.mirror.defined_primary == defined_primary {
            return Ok(if on {
                "No Failover was already set".into()
            } else {
                "No Failover was not set".into()
            });
        }
        self.store_no_failover(defined_primary.clone())?;
        let control = crate::mirror::protocol::Control::NoFailover { defined_primary };
        if role == Role::Primary {
            self.context.mirror.hub.announce(control);
        } else {
            self.tell_receiver(super::super::receiver::ReceiverInput::say(control));
        }
        Ok(if on {
            format!("No Failover is set: the backup will not take over while {primary} is down")
        } else {
            "No Failover is cleared".into()
        })
    }

    /// Stores the mirror's No Failover setting (also when the other member reports it).
    pub fn store_no_failover(&self, defined_primary: Option<MemberName>) -> Result<()> {
        store_no_failover(&self.context, defined_primary)
    }

    /// Stop Mirror On This Member (a backup): disconnect and stay disconnected, across
    /// restarts, until Start Mirror On This Member.
    pub fn stop_mirror(&self) -> Result<String> {
        let config = self.context.config.get();
        let m = config.mirror.member()?;
        if self.context.mirror.role() == Role::Primary {
            return Err(Error::Conflict(
                "the primary cannot stop mirroring: only another member can".into(),
            ));
        }
        if m.stopped {
            return Ok("mirroring was already stopped on this member".into());
        }
        // The primary hears first that this member no longer counts as active, so it does not
        // wait for it (in the trouble state) once the link closes.
        self.stand_down_over_link(Duration::from_millis(m.mirror.qos_timeout_ms));
        self.context.config.update(|c| {
            if let Some(m) = c.mirror.membership.as_mut() {
                m.stopped = true;
            }
            Ok(())
        })?;
        self.stop_receiver();
        Ok("mirroring stopped on this member: it neither receives nor takes over until Start Mirror On This Member".into())
    }

    /// Start Mirror On This Member.
    pub fn start_mirror(&self) -> Result<String> {
        let config = self.context.config.get();
        let m = config.mirror.member()?;
        if !m.stopped {
            return Ok("mirroring was not stopped on this member".into());
        }
        self.context.config.update(|c| {
            if let Some(m) = c.mirror.membership.as_mut() {
                m.stopped = false;
            }
            Ok(())
        })?;
        self.start_receiver();
        Ok("mirroring started on this member".into())
    }

    /// Demote To DR Member (on the backup): this member stops being a failover member and
    /// follows the primary as a disaster recovery async. The primary hears first that it stood
    /// down, so it does not wait for it.
    pub fn demote_to_dr(&self) -> Result<String> {
        let config = self.context.config.get();
        let m = config.mirror.member()?;
        if m.this.kind != MemberKind::Failover || self.context.mirror.role() != Role::Backup {
            return Err(Error::Conflict(
                "only the backup can be demoted to a DR async".into(),
            ));
        }
        if m.mirror.defined_primary.is_some() {
            return Err(Error::Conflict(
                "No Failover is set: clear it before demoting the backup".into(),
            ));
        }
        self.stand_down_over_link(Duration::from_millis(m.mirror.qos_timeout_ms));
        self.context.config.update(|c| {
            if let Some(m) = c.mirror.membership.as_mut() {
                m.this.kind = MemberKind::Dr;
            }
            Ok(())
        })?;
        self.stop_receiver();
        self.context.mirror.set_role(Role::Async(MemberKind::Dr));
        self.start_receiver();
        Ok(format!(
            "{} is now a disaster recovery async of mirror {}",
            m.this.name, m.mirror.name
        ))
    }

    /// Demote Other Member (on the primary): the connected backup becomes a DR async.
    pub fn demote_other(&self) -> Result<String> {
        let config = self.context.config.get();
        let m = config.mirror.member()?;
        if self.context.mirror.role() != Role::Primary {
            return Err(Error::Conflict(
                "Demote Other Member is done on the primary".into(),
            ));
        }
        let backup = self
            .context
            .mirror
            .hub
            .links()
            .into_iter()
            .find(|l| l.member.kind == MemberKind::Failover)
            .ok_or_else(|| {
                Error::Conflict(
                    "no backup is connected: the other failover member must be reachable to be demoted"
                        .into(),
                )
            })?;
        if m.mirror.defined_primary.is_some() {
            return Err(Error::Conflict(
                "No Failover is set: clear it before demoting the backup".into(),
            ));
        }
        if !self.context.mirror.hub.tell(
            &backup.member.name,
            crate::mirror::protocol::Control::Demote,
        ) {
            return Err(Error::Conflict(format!(
                "{} disconnected meanwhile",
                backup.member.name
            )));
        }
        Ok(format!(
            "{} was asked to become a disaster recovery async",
            backup.member.name
        ))
    }

    /// Promote to Failover Member (on a DR async): it becomes the backup (when it reaches the
    /// primary and the mirror has no other backup), or, with no primary, a failover member that
    /// can then be forced to become the primary.
    pub fn promote_to_failover(&self) -> Result<String> {
        let config = self.context.config.get();
        let m = config.mirror.member()?;
        match m.this.kind {
            MemberKind::Dr => {}
            MemberKind::Failover => return Ok("this member is already a failover member".into()),
            _ => {
                return Err(Error::Conflict(
                    "a reporting async can never be promoted: only a disaster recovery (DR) async can"
                        .into(),
                ));
            }
        }
        if let Some(other) = m.others.iter().find(|o| {
            o.kind == MemberKind::Failover && Some(o.name.as_str()) != m.primary_name.as_deref()
        }) {
            return Err(Error::Conflict(format!(
                "the mirror already has two failover members ({} is the other): demote or remove it first",
                other.name
            )));
        }
        self.context.config.update(|c| {
            if let Some(m) = c.mirror.membership.as_mut() {
                m.this.kind = MemberKind::Failover;
            }
            Ok(())
        })?;
        self.stop_receiver();
        self.context.mirror.set_role(Role::Backup);
        self.start_receiver();
        Ok(format!(
            "{} is now a failover member of mirror {}",
            m.this.name, m.mirror.name
        ))
    }

    /// What forcing this member to become primary would risk, for the warning.
    fn force_warning(&self) -> String {
        let config = self.context.config.get();
        let journal = self.context.mirror.journal();
        let end = journal
            .as_ref()
            .map(|j| j.durable_end())
            .unwrap_or_default();
        let (file, _) = journal
            .as_ref()
            .and_then(|j| j.locate(end))
            .unwrap_or_default();
        let link = self.context.mirror.read(|s| s.link.clone());
        // Losing the link resets `active`: what counts is whether it was active then.
        let active = link.active || (!link.connected && link.active_when_lost);
        let other = config
            .mirror
            .membership
            .as_ref()
            .and_then(|m| m.primary_name.clone())
            .map_or_else(|| "the other member".into(), |p| p.to_string());
        format!(
            "This member {} the active backup when it lost the primary; it holds mirror journal \
             data up to position {end}{}. If {other} acknowledged writes after that, they are \
             lost, and {other} will have to be rebuilt before it can join again. Confirm to force \
             this member to become the primary.",
            if active { "was" } else { "was NOT" },
            if file.is_empty() {
                String::new()
            } else {
                format!(" (file {file})")
            }
        )
    }

    /// Force this member to become the primary (the operator's override when no automatic
    /// takeover happened). Refused while a primary is connected; needs `confirm` after the
    /// warning.
    pub async fn force_primary(&self, confirm: bool) -> Result<String> {
        let config = self.context.config.get();
        let m = config.mirror.member()?;
        if m.this.kind != MemberKind::Failover {
            return Err(Error::Conflict(
                "only a failover member can become primary (promote a DR member to failover first)"
                    .into(),
            ));
        }
        if self.context.mirror.is_settled_primary() {
            return Ok("this member is already the primary".into());
        }
        if self.context.mirror.read(|s| s.link.connected) {
            return Err(Error::Conflict(format!(
                "this member is connected to the primary {}: it cannot be forced while the primary runs",
                m.primary_name.as_deref().unwrap_or_default()
            )));
        }
        if !confirm {
            return Err(Error::Conflict(self.force_warning()));
        }
        self.stop_receiver();
        let source = self.receiver_journal.clone();
        let result = self
            .context
            .writer
            .extension(|reply| MirrorCommand::BecomePrimary {
                source,
                new_epoch: true,
                reply,
            })
            .await;
        match result {
            Ok(message) => {
                self.context.mirror.set_deciding(false);
                crate::metrics::failover("forced");
                tracing::warn!("mirror: forced to become the primary: {message}");
                Ok(format!("forced: {message}"))
            }
            Err(err) => {
                if self.context.mirror.role() != Role::Primary {
                    self.start_receiver();
                }
                Err(err)
            }
        }
    }

    /// Remove Mirror Configuration: this member leaves the mirror.
    pub async fn remove(&self) -> Result<String> {
        if self.context.config.get().mirror.membership.is_none() {
            return Ok("this instance is not a mirror member".into());
        }
        let was_receiving = self.context.mirror.role() != Role::Primary;
        if was_receiving {
            self.stop_receiver();
        }
        let result = self
            .context
            .writer
            .extension(|reply| MirrorCommand::Leave { reply })
            .await;
        if result.is_ok() {
            *self.receiver_journal.lock().unwrap() = None;
            self.context
                .mirror
                .update_link(|link| *link = Default::default());
        } else if was_receiving {
            self.start_receiver();
        }
        result
    }
}

/// A request as Authorize, Reject and Remove name it: the member name (upper-cased) and the
/// certificate fingerprint, both required.
fn pending_request(name: &str, certificate: &str) -> Result<(String, String)> {
    let name = config::member_name(name)?;
    let certificate = certificate.trim();
    if certificate.is_empty() {
        return Err(Error::InvalidInput(format!(
            "say which certificate of {name}: give the fingerprint (SHA256:…) Pending New Members \
             shows for it"
        )));
    }
    Ok((name, certificate.to_string()))
}

/// The Mirror Monitor's actions: one list for its buttons and for `/api/mirror/*`, carried out
/// by [`MirrorService::monitor_action`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MonitorAction {
    /// Set No Failover (`true`) or Clear No Failover (`false`).
    NoFailover(bool),
    /// Stop Mirror On This Member.
    StopMirror,
    /// Start Mirror On This Member.
    StartMirror,
    /// Demote To DR Member (this backup).
    DemoteToDr,
    /// Demote Other Member (the primary demotes its backup).
    DemoteOther,
    /// Promote to Failover Member (a DR async).
    Promote,
    /// Force This Member To Become Primary, `confirmed` once the person read the warning.
    ForcePrimary {
        /// The warning was read and the person insists.
        confirmed: bool,
    },
}

impl MonitorAction {
    /// The button's label.
    pub fn title(&self) -> &'static str {
        match self {
            MonitorAction::NoFailover(true) => "Set No Failover",
            MonitorAction::NoFailover(false) => "Clear No Failover",
            MonitorAction::StopMirror => "Stop Mirror On This Member",
            MonitorAction::StartMirror => "Start Mirror On This Member",
            MonitorAction::DemoteToDr => "Demote To DR Member",
            MonitorAction::DemoteOther => "Demote Other Member",
            MonitorAction::Promote => "Promote to Failover Member",
            MonitorAction::ForcePrimary { .. } => "Force This Member To Become The Primary",
        }
    }

    /// The action a monitor button names in its path (`/portal/mirror/monitor/<word>`; the
    /// API's paths use the same words).
    pub fn from_word(word: &str, confirmed: bool) -> Result<MonitorAction> {
        Ok(match word {
            "set-no-failover" => MonitorAction::NoFailover(true),
            "clear-no-failover" => MonitorAction::NoFailover(false),
            "stop" => MonitorAction::StopMirror,
            "start" => MonitorAction::StartMirror,
            "demote-to-dr" => MonitorAction::DemoteToDr,
            "demote-other" => MonitorAction::DemoteOther,
            "promote" => MonitorAction::Promote,
            "force-primary" => MonitorAction::ForcePrimary { confirmed },
            other => {
                return Err(Error::NotFound(format!(
                    "there is no monitor action {other:?}"
                )));
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_button_word_names_its_action_and_others_are_not_found() {
        let cases = [
            ("set-no-failover", MonitorAction::NoFailover(true)),
            ("clear-no-failover", MonitorAction::NoFailover(false)),
            ("stop", MonitorAction::StopMirror),
            ("start", MonitorAction::StartMirror),
            ("demote-to-dr", MonitorAction::DemoteToDr),
            ("demote-other", MonitorAction::DemoteOther),
            ("promote", MonitorAction::Promote),
            (
                "force-primary",
                MonitorAction::ForcePrimary { confirmed: true },
            ),
        ];
        for (word, action) in cases {
            assert_eq!(MonitorAction::from_word(word, true).unwrap(), action);
        }
        assert!(matches!(
            MonitorAction::from_word("format-disk", false),
            Err(Error::NotFound(_))
        ));
    }
}
