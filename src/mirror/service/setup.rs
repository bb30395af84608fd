//! Setting a mirror up: Create a Mirror, Join as Failover or Async (and the join information they
//! start from), Add to Mirror, Activate and Catchup.

use super::*;
use crate::mirror::state::LinkError;

impl MirrorService {
    /// Create a Mirror: this member becomes its primary at once.
    pub async fn create(&self, request: CreateRequest) -> Result<String> {
        self.require_service()?;
        self.require_not_member()?;
        let name = config::mirror_name(&request.mirror_name)?;
        if request.use_virtual_ip {
            return Err(Error::Conflict(
                "Use Virtual IP is not available in this lab yet: create the mirror without it"
                    .into(),
            ));
        }
        let qos = request.qos_timeout_ms.unwrap_or(DEFAULT_QOS_MS);
        if !(MIN_QOS_MS..=MAX_QOS_MS).contains(&qos) {
            return Err(Error::InvalidInput(format!(
                "the QoS timeout must be between {MIN_QOS_MS} and {MAX_QOS_MS} ms"
            )));
        }
        let (arbiter_address, arbiter_port) = if request.use_arbiter {
            let port = request.arbiter_port.unwrap_or(DEFAULT_AGENT_PORT);
            let (host, port) = config::split_address(&request.arbiter_address, port)
                .map_err(|e| Error::InvalidInput(format!("Arbiter: {e}")))?;
            (host, port)
        } else {
            (String::new(), DEFAULT_AGENT_PORT)
        };
        let this = self.this_member(
            MemberKind::Failover,
            request.member_name.as_deref(),
            request.superserver_address.as_deref(),
            request.mirror_private_address.as_deref(),
            request.agent_address.as_deref(),
            request.agent_port,
        )?;
        self.require_local_agent().await?;
        let id = StreamId::random();
        let definition = MirrorDefinition {
            name: name.clone(),
            id,
            qos_timeout_ms: qos,
            use_arbiter: request.use_arbiter,
            arbiter_address,
            arbiter_port,
            require_tls: request.require_tls,
            parallel_dejournaling: "Failover Members and DR".into(),
            compression_failover: "System Selected".into(),
            compression_async: "System Selected".into(),
            defined_primary: None,
        };
        let membership = Membership {
            mirror: definition,
            primary_name: Some(this.name.clone()),
            this,
            others: Vec::new(),
            was_primary: true,
            databases: Vec::new(),
            activated: Vec::new(),
            pending_adds: Vec::new(),
            epochs: Vec::new(),
            stopped: false,
            pending: Vec::new(),
        };
        let options = JournalOptions::mirror(&name, self.context.max_segment_bytes, JournalPos(1))
            .with_io(self.context.journal_io.clone());
        if crate::journal::files_exist(&self.context.journal_dir, &options.prefix)? {
            return Err(Error::Conflict(format!(
                "journal files of an earlier mirror named {name} are still in the journal folder: choose another name \
                 (or move those files away)"
            )));
        }
        let (journal, _) = Journal::open(&self.context.journal_dir, id, options)?;
        self.context
            .writer
            .extension(|reply| MirrorCommand::Create {
                journal,
                membership: Box::new(membership),
                reply,
            })
            .await
    }

    /// Join as Failover, first step: the mirror's description from the other member's agent.
    pub async fn join_info(&self, request: &JoinInfoRequest) -> Result<MirrorDescription> {
        self.require_service()?;
        let mirror_name = config::mirror_name(&request.mirror_name)?;
        let port = request.agent_port.unwrap_or(DEFAULT_AGENT_PORT);
        let address = config::connect_address(&request.agent_address, port)
            .map_err(|e| Error::InvalidInput(format!("Agent Address on Other System: {e}")))?;
        let instance = request
            .instance_name
            .clone()
            .unwrap_or_else(|| crate::instance::DEFAULT_INSTANCE_NAME.into());
        // Always over TLS: in a mirror that requires it, the certificate the agent shows is
        // checked against the mirror's description before this member trusts it.
        let target = agent::Target {
            address,
            tls: Some((self.context.identity.clone(), None)),
        };
        let reply = agent::call_to(
            &target,
            AgentRequest::MirrorInfo {
                mirror_name: mirror_name.clone(),
                instance_name: instance.to_ascii_uppercase(),
            },
        )
        .await;
        // One answer for every way of failing — closed port, another service, a member without
        // that mirror — so the form cannot be used to tell ports apart or to read their bytes.
        // The reason is in this member's log, for its administrator.
        let no_mirror = || {
            Error::Conflict(format!(
                "no mirror {mirror_name} answered at {}: check the mirror name, the agent's \
                 address and its port",
                target.address
            ))
        };
        let (reply, shown) = match reply {
            Ok(answer) if answer.0.ok => answer,
            Ok((refused, _)) => {
                tracing::info!(
                    "mirror: join information from {}: refused: {}",
                    target.address,
                    refused.message
                );
                return Err(no_mirror());
            }
            Err(err) => {
                tracing::info!("mirror: join information from {}: {err}", target.address);
                return Err(no_mirror());
            }
        };
        let description = reply.mirror.ok_or_else(no_mirror)?;
        if description.mirror.require_tls
            && !description
                .members
                .iter()
                .any(|m| m.certificate.is_some() && m.certificate == shown)
        {
            return Err(Error::Conflict(format!(
                "the agent at {} showed a certificate that belongs to no member of mirror {}",
                target.address, description.mirror.name
            )));
        }
        Ok(description)
    }

    /// Join as Failover: store this member's information and connect to the primary.
    pub async fn join_failover(&self, request: JoinRequest) -> Result<String> {
        self.join(request, MemberKind::Failover).await
    }

    /// Join as Async: a disaster recovery or reporting member that receives the journal
    /// asynchronously (it never delays a commit and never takes over by itself).
    pub async fn join_async(&self, request: JoinRequest) -> Result<String> {
        let kind = async_kind(request.async_type.as_deref())?;
        self.join(request, kind).await
    }

    async fn join(&self, request: JoinRequest, kind: MemberKind) -> Result<String> {
        self.require_service()?;
        self.require_not_member()?;
        let description = self.join_info(&request.info).await?;
        let count = |failover: bool| {
            description
                .members
                .iter()
                .filter(|m| (m.kind == MemberKind::Failover) == failover)
                .count()
        };
        if kind == MemberKind::Failover && count(true) >= 2 {
            return Err(Error::Conflict(format!(
                "mirror {} already has two failover members",
                description.mirror.name
            )));
        }
        if kind != MemberKind::Failover && count(false) >= MAX_ASYNC_MEMBERS {
            return Err(Error::Conflict(format!(
                "mirror {} already has {MAX_ASYNC_MEMBERS} async members",
                description.mirror.name
            )));
        }
        let this = self.this_member(
            kind,
            request.member_name.as_deref(),
            request.superserver_address.as_deref(),
            request.mirror_private_address.as_deref(),
            request.agent_address_local.as_deref(),
            request.agent_port_local,
        )?;
        if description.members.iter().any(|m| m.name == this.name) {
            return Err(Error::Conflict(format!(
                "the mirror already has a member named {}",
                this.name
            )));
        }
        self.require_local_agent().await?;
        let membership = Membership {
            mirror: description.mirror.clone(),
            this,
            others: description.members.clone(),
            was_primary: false,
            databases: description.databases.clone(),
            activated: Vec::new(),
            primary_name: description.primary.clone(),
            pending_adds: Vec::new(),
            epochs: Vec::new(),
            stopped: false,
            pending: Vec::new(),
        };
        let name = membership.mirror.name.clone();
        let prefix = JournalOptions::mirror(&name, 0, JournalPos(1)).prefix;
        if crate::journal::files_exist(&self.context.journal_dir, &prefix)? {
            return Err(Error::Conflict(format!(
                "journal files of an earlier mirror named {name} are still in the journal folder: move them away first"
            )));
        }
        self.context
            .mirror
            .hub
            .set_qos(membership.mirror.qos_timeout_ms);
        self.context.config.update(|c| {
            c.mirror.membership = Some(membership.clone());
            Ok(())
        })?;
        self.context
            .mirror
            .set_role(if kind == MemberKind::Failover {
                Role::Backup
            } else {
                Role::Async(kind)
            });
        self.context.catalog.replace(crate::config::catalog_state(
            &self.context.config.get(),
            &self.context.data_dir,
            false,
        ));
        self.context
            .mirror
            .update_link(|link| *link = Default::default());
        self.start_receiver();
        // Wait for the primary's answer, so a refusal is reported here and undone.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let link = self.context.mirror.read(|s| s.link.clone());
            if link.connected {
                return Ok(format!(
                    "joined mirror {name} as {} member; the primary is {}",
                    kind.display().to_lowercase(),
                    description.primary.as_deref().unwrap_or("unknown")
                ));
            }
            // In a mirror that requires SSL/TLS the primary keeps this member waiting until
            // someone authorizes it: the join stands, and the receiver keeps asking.
            if matches!(link.last_error, Some(LinkError::AwaitingAuthorization(_))) {
                return Ok(format!(
                    "joined mirror {name}; this member waits for authorization: on the primary ({}), \
                     Edit Mirror → Pending New Members → Authorize",
                    description.primary.as_deref().unwrap_or("unknown")
                ));
            }
            if let Some(err @ LinkError::Refused(_)) = link.last_error.clone() {
                self.stop_receiver();
                self.context.config.update(|c| {
                    c.mirror.membership = None;
                    Ok(())
                })?;
                self.context.mirror.set_role(Role::NotMember);
                *self.receiver_journal.lock().unwrap() = None;
                self.context.mirror.set_journal(None);
                return Err(Error::Conflict(err.to_string()));
            }
            if Instant::now() > deadline {
                return Ok(format!(
                    "joined mirror {name}; not connected to the primary yet ({}): the Mirror Monitor shows the progress",
                    link.last_error
                        .map(|e| e.to_string())
                        .unwrap_or_else(|| "still trying".into())
                ));
            }
        }
    }

    /// Add to Mirror (primary).
    pub async fn add_databases(&self, dbs: Vec<DbName>) -> Result<String> {
        let result = self
            .context
            .writer
            .extension(|reply| MirrorCommand::AddDatabases { dbs, reply })
            .await;
        self.operator("Add to Mirror", result)
    }

    /// Activate a copy (backup).
    pub async fn activate(&self, db: DbName) -> Result<String> {
        let what = format!("Activate {db}");
        let result = self
            .context
            .writer
            .extension(|reply| MirrorCommand::Activate { db, reply })
            .await;
        self.operator(&what, result)
    }

    /// Catchup a copy (backup): fetches older journal from the primary first when needed.
    pub async fn catchup(&self, db: DbName) -> Result<String> {
        let what = format!("Catchup {db}");
        let result = self.catch_up_copy(db).await;
        self.operator(&what, result)
    }

    async fn catch_up_copy(&self, db: DbName) -> Result<String> {
        let entry = self.context.catalog.snapshot().database(&db)?.clone();
        let activated = self.context.config.get().mirror.activated(&db);
        // Nothing is fetched for a copy the user has not activated; the writer says why.
        if matches!(self.context.mirror.role(), Role::Backup | Role::Async(_))
            && activated
            && entry.mounted
            && entry.mirrored.is_some()
        {
            self.fetch_if_needed(&db, &entry).await?;
        }
        self.context
            .writer
            .extension(|reply| MirrorCommand::Catchup { db, reply })
            .await
    }

    /// Brings older journal records from the primary when a copy needs them.
    async fn fetch_if_needed(
        &self,
        db: &DbName,
        entry: &crate::storage::DatabaseEntry,
    ) -> Result<()> {
        let entry = entry.clone();
        let identity =
            tokio::task::spawn_blocking(move || crate::instance::recovery::identity_of(&entry))
                .await
                .map_err(|e| Error::Internal(e.to_string()))??;
        // The journal's start is read under the lock: another Catchup may have moved it.
        let _one_fetch_at_a_time = self.catchup_fetch.lock().await;
        let first = match self.receiver_journal.lock().unwrap().as_ref() {
            Some(journal) => journal.shared().first_pos(),
            None => return Ok(()),
        };
        let from = identity.applied_pos.next();
        if from >= first {
            return Ok(());
        }
        let to = JournalPos(first.0 - 1);
        let config = self.context.config.get();
        let m = config
            .mirror
            .membership
            .as_ref()
            .ok_or_else(|| Error::Conflict("not a member".into()))?;
        let primary = m
            .primary_name
            .as_deref()
            .and_then(|p| m.member(p))
            .ok_or_else(|| Error::Conflict("the primary is not known".into()))?;
        let (membership, primary) = (m.clone(), primary.clone());
        let tls_identity = self.context.identity.clone();
        let network = self.context.network.clone();
        self.context.mirror.update_database(db, |d| {
            d.phase = CatchupPhase::Running {
                done: 0,
                total: to.0 + 1 - from.0,
            }
        });
        tracing::info!("catchup of {db}: fetching journal records {from}..={to} from the primary");
        let fetched = tokio::task::spawn_blocking(move || {
            receiver::fetch(&*network, &tls_identity, &membership, &primary, from, to)
        })
        .await
        .map_err(|e| Error::Internal(e.to_string()))?;
        match fetched {
            Ok((first, last, frames)) => {
                let journal = self.receiver_journal.clone();
                tokio::task::spawn_blocking(move || {
                    let mut guard = journal.lock().unwrap();
                    let journal = guard
                        .as_mut()
                        .ok_or_else(|| Error::Conflict("no mirror journal".into()))?;
                    journal.prepend(&frames, first, last)
                })
                .await
                .map_err(|e| Error::Internal(e.to_string()))??;
                Ok(())
            }
            Err(Error::Conflict(reason)) => {
                let message = format!(
                    "{db} is Obsolete: its copy needs journal records from position {from}, which the primary no longer \
                     keeps ({reason}). Copy the database file from the primary again, then Activate and Catchup"
                );
                self.context
                    .mirror
                    .update_database(db, |d| d.phase = CatchupPhase::Obsolete(message.clone()));
                Err(Error::Conflict(message))
            }
            Err(err) => {
                self.context
                    .mirror
                    .update_database(db, |d| d.phase = CatchupPhase::Idle);
                Err(err)
            }
        }
    }
}
