//! The mirror actions of the portal and `/api`: Enable Mirror Service, Create a Mirror, Join as
//! Failover, Join as Async, Add to Mirror, Activate, Catchup, Freeze, Thaw, Backup, Edit Mirror
//! and Remove Mirror Configuration; the Mirror Monitor's actions (Set / Clear No Failover, Stop /
//! Start Mirror On This Member, Demote To DR Member, Demote Other Member, Promote to Failover
//! Member, Force This Member To Become The Primary); the hand-over of a primary that stops
//! gracefully — and the Mirror Monitor's view of the mirror.
//!
//! Each action checks what a person could get wrong (service disabled, names, addresses, the
//! local agent not running, a second click) and answers with a message that says what happened
//! or what to do instead. Work on databases goes to the writer; network work to the receiver.

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::agent::{self, AgentRequest};
use crate::error::{Error, Result};
use crate::instance::writer::MirrorCommand;
use crate::journal::{Journal, JournalOptions, JournalPos};
use crate::names::DbName;
use crate::util::{format_time, now_ms, random_hex};

use super::MirrorContext;
use super::config::{
    self, DEFAULT_AGENT_PORT, DEFAULT_QOS_MS, DEFAULT_SUPERSERVER_PORT, MAX_QOS_MS, MIN_QOS_MS,
    MemberInfo, MemberKind, Membership, MirrorDefinition, PendingMember,
};
use super::pending;
use super::protocol::{Control, MirrorDescription};
use super::receiver::{self, SharedJournal};
use super::state::{CatchupPhase, Role};
use super::status::{self, Transfer};

/// Create a Mirror, as the form and `POST /api/mirror/create` send it.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CreateRequest {
    /// Mirror Name.
    pub mirror_name: String,
    /// Use Arbiter.
    #[serde(default)]
    pub use_arbiter: bool,
    /// Arbiter host.
    #[serde(default)]
    pub arbiter_address: String,
    /// Arbiter port (2188).
    #[serde(default)]
    pub arbiter_port: Option<u16>,
    /// Mirror Member Name (default HOST/INSTANCE).
    #[serde(default)]
    pub member_name: Option<String>,
    /// Superserver Address (default: this host).
    #[serde(default)]
    pub superserver_address: Option<String>,
    /// Agent Port (default: the local agent's).
    #[serde(default)]
    pub agent_port: Option<u16>,
    /// Quality of Service Timeout (ms).
    #[serde(default)]
    pub qos_timeout_ms: Option<u64>,
    /// Require SSL/TLS.
    #[serde(default)]
    pub require_tls: bool,
    /// Use Virtual IP.
    #[serde(default)]
    pub use_virtual_ip: bool,
    /// Mirror Private Address (default: the superserver address).
    #[serde(default)]
    pub mirror_private_address: Option<String>,
    /// Agent Address (default: the superserver address's host).
    #[serde(default)]
    pub agent_address: Option<String>,
}

/// Join as Failover, first step: where the mirror's primary is.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct JoinInfoRequest {
    /// Mirror Name.
    pub mirror_name: String,
    /// Agent Address on Other System.
    pub agent_address: String,
    /// Agent Port.
    #[serde(default)]
    pub agent_port: Option<u16>,
    /// InterSystems IRIS Instance Name.
    #[serde(default)]
    pub instance_name: Option<String>,
}

/// Join as Failover, both steps (`POST /api/mirror/join-failover`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct JoinRequest {
    /// The first step's fields.
    #[serde(flatten)]
    pub info: JoinInfoRequest,
    /// Mirror Member Name (default HOST/INSTANCE).
    #[serde(default)]
    pub member_name: Option<String>,
    /// Superserver Address.
    #[serde(default)]
    pub superserver_address: Option<String>,
    /// Mirror Private Address.
    #[serde(default)]
    pub mirror_private_address: Option<String>,
    /// This member's Agent Address.
    #[serde(default)]
    pub agent_address_local: Option<String>,
    /// This member's Agent Port.
    #[serde(default)]
    pub agent_port_local: Option<u16>,
    /// Join as Async: `dr`, `reporting_ro` or `reporting_rw` (Async Member System Type).
    #[serde(default)]
    pub async_type: Option<String>,
}

/// Most async members a mirror has (16 members in all).
pub const MAX_ASYNC_MEMBERS: usize = 14;

/// The Async Member System Type named in a request.
pub fn async_kind(raw: Option<&str>) -> Result<MemberKind> {
    match raw.map(|t| t.trim().to_ascii_lowercase()).as_deref() {
        Some("dr") | Some("disaster recovery") | None => Ok(MemberKind::Dr),
        Some("reporting_ro") | Some("read-only reporting") => Ok(MemberKind::ReportingRo),
        Some("reporting_rw") | Some("read-write reporting") => Ok(MemberKind::ReportingRw),
        Some(other) => Err(Error::InvalidInput(format!(
            "Async Member System Type {other:?} is not one of dr, reporting_ro, reporting_rw"
        ))),
    }
}

/// Edit Mirror (`POST /api/mirror/edit`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct EditRequest {
    /// New QoS timeout (primary only).
    #[serde(default)]
    pub qos_timeout_ms: Option<u64>,
}

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
    /// Mirrored databases this member has no copy of.
    pub missing: Vec<String>,
    /// The QoS timeout (ms).
    pub qos_timeout_ms: Option<u64>,
    /// The link's last problem (backup).
    pub link_error: Option<String>,
    /// The mirror journal's end here.
    pub journal_end: Option<u64>,
    /// What the failover driver last did or found (a takeover, why a restarted primary waits).
    pub failover_note: Option<String>,
    /// Rows of divergent tails kept in quarantine here (the newest last), and how many in all.
    pub quarantine: (Vec<super::divergence::QuarantinedRow>, usize),
    /// No Failover is set (the member that must stay primary).
    pub no_failover: Option<String>,
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

    fn of(list: &[PendingMember], now_ms: i64) -> PendingLists {
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

/// A running thread, the flag that stops it, and (for the listener) its address.
type Running<T> = Mutex<Option<(JoinHandle<()>, Arc<AtomicBool>, T)>>;

/// The mirror service of an instance.
pub struct MirrorService {
    context: Arc<MirrorContext>,
    receiver_journal: SharedJournal,
    receiver: Running<()>,
    listener: Running<std::net::SocketAddr>,
    driver: Running<()>,
    arbiter_link: Running<()>,
    /// Reads the quarantine file for the monitor, a little at a time.
    quarantine: Mutex<super::divergence::QuarantineReader>,
}

fn host_of(address: &str) -> String {
    config::split_address(address, DEFAULT_SUPERSERVER_PORT)
        .map(|(h, _)| h)
        .unwrap_or_else(|_| address.to_string())
}

/// An address others can reach for a bind address: this host's name for a wildcard, with the
/// port when it is not the default.
fn reachable(bind: &str, host: &str, default_port: u16) -> String {
    let (bind_host, port) =
        config::split_address(bind, default_port).unwrap_or((host.to_string(), default_port));
    let name = if bind_host == "0.0.0.0" || bind_host == "::" {
        host.to_string()
    } else {
        bind_host
    };
    if port == default_port {
        name
    } else {
        format!("{name}:{port}")
    }
}

/// Stores the mirror's No Failover setting.
pub fn store_no_failover(context: &MirrorContext, defined_primary: Option<String>) -> Result<()> {
    context.config.update(|c| {
        if let Some(m) = c.mirror.membership.as_mut() {
            m.mirror.defined_primary = defined_primary;
        }
        Ok(())
    })
}

impl MirrorService {
    /// Starts the superserver listener (and, on a backup, the receiver).
    pub fn start(
        context: Arc<MirrorContext>,
        listener: TcpListener,
        backup_journal: Option<Journal>,
    ) -> Arc<MirrorService> {
        let address = listener.local_addr().expect("bound listener");
        let stop = Arc::new(AtomicBool::new(false));
        let thread = super::server::start(listener, context.clone(), stop.clone());
        let service = Arc::new(MirrorService {
            context,
            receiver_journal: Arc::new(Mutex::new(backup_journal)),
            receiver: Mutex::new(None),
            listener: Mutex::new(Some((thread, stop, address))),
            driver: Mutex::new(None),
            arbiter_link: Mutex::new(None),
            quarantine: Mutex::new(Default::default()),
        });
        let stopped = service.context.config.get().mirror.stopped();
        if matches!(service.context.mirror.role(), Role::Backup | Role::Async(_)) && !stopped {
            service.start_receiver();
        }
        let stop = Arc::new(AtomicBool::new(false));
        let driver = super::driver::start(service.clone(), stop.clone());
        *service.driver.lock().unwrap() = Some((driver, stop, ()));
        let stop = Arc::new(AtomicBool::new(false));
        let link = super::arbiter_link::start(service.context.clone(), stop.clone());
        *service.arbiter_link.lock().unwrap() = Some((link, stop, ()));
        service
    }

    /// What the mirror's threads share.
    pub fn context(&self) -> &Arc<MirrorContext> {
        &self.context
    }

    /// The receiver's mirror journal (a backup's; empty on the primary).
    pub fn receiver_journal(&self) -> SharedJournal {
        self.receiver_journal.clone()
    }

    /// The address the superserver listens on.
    pub fn superserver_address(&self) -> Option<std::net::SocketAddr> {
        self.listener.lock().unwrap().as_ref().map(|(_, _, a)| *a)
    }

    /// Starts the receiver thread unless it runs.
    pub fn start_receiver(&self) {
        let mut slot = self.receiver.lock().unwrap();
        if slot.is_some() {
            return;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let thread = receiver::start(
            self.context.clone(),
            self.receiver_journal.clone(),
            stop.clone(),
        );
        *slot = Some((thread, stop, ()));
    }

    /// Stops the receiver thread and waits for it.
    pub fn stop_receiver(&self) {
        if let Some((thread, stop, ())) = self.receiver.lock().unwrap().take() {
            stop.store(true, Ordering::Release);
            let _ = thread.join();
        }
    }

    /// On a graceful shutdown (writes already stopped). The primary tells its active backup
    /// to take over: the message follows every batch on the link, so the backup has them all.
    /// It then waits until the backup closed the link (taking over, it stops receiving) or a
    /// QoS timeout passed, so that this member, restarted, never finds the backup with the
    /// handover still unread (a backup stalled for half a QoS drops what it had not read).
    /// A backup tells the primary that it no longer counts as active, so the primary does not
    /// wait for it in the trouble state.
    pub fn hand_over(&self) {
        let hub = &self.context.mirror.hub;
        let qos = hub.qos();
        match self.context.mirror.role() {
            Role::Primary
                if !self.context.mirror.deciding()
                    && !hub.suspended()
                    && hub.has_active_backup() =>
            {
                tracing::warn!("mirror: shutting down: handing over to the active backup");
                let backups: Vec<String> = hub
                    .links()
                    .into_iter()
                    .filter(|l| l.active)
                    .map(|l| l.member.name)
                    .collect();
                for name in &backups {
                    hub.tell(name, super::protocol::Control::HandOver);
                }
                let deadline = Instant::now() + qos;
                while Instant::now() < deadline
                    && hub.links().iter().any(|l| backups.contains(&l.member.name))
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            Role::Backup if self.stand_down_over_link(qos) => {
                tracing::info!("mirror: shutting down: told the primary this backup stands down");
            }
            _ => {}
        }
    }

    /// Tells the primary over the data channel that this backup no longer counts as active
    /// (it stops receiving: Stop Mirror, Demote To DR, shutdown), and waits up to `timeout`
    /// for the receiver to send it. False when not connected.
    fn stand_down_over_link(&self, timeout: Duration) -> bool {
        if !self.context.mirror.link.lock().unwrap().connected {
            return false;
        }
        self.context
            .mirror
            .link_outbox
            .lock()
            .unwrap()
            .push_back(super::protocol::Control::StoodDown);
        // The receiver sends it on its next round (at least every quarter QoS).
        let deadline = Instant::now() + timeout;
        while !self.context.mirror.link_outbox.lock().unwrap().is_empty()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    /// Stops the threads (instance shutdown).
    pub fn stop(&self) {
        for running in [&self.driver, &self.arbiter_link] {
            if let Some((thread, stop, ())) = running.lock().unwrap().take() {
                stop.store(true, Ordering::Release);
                let _ = thread.join();
            }
        }
        self.stop_receiver();
        if let Some((thread, stop, address)) = self.listener.lock().unwrap().take() {
            stop.store(true, Ordering::Release);
            let wake = if address.ip().is_unspecified() {
                std::net::SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), address.port())
            } else {
                address
            };
            let _ = std::net::TcpStream::connect_timeout(&wake, Duration::from_secs(1));
            let _ = thread.join();
        }
        self.context
            .mirror
            .hub
            .close_all("the instance is stopping");
    }

    fn require_service(&self) -> Result<()> {
        if !self.context.config.get().mirror.service_enabled {
            return Err(Error::Conflict("the mirror service is disabled: enable it first (Mirror Settings › Enable Mirror Service)".into()));
        }
        Ok(())
    }

    fn require_not_member(&self) -> Result<()> {
        if let Some(m) = &self.context.config.get().mirror.membership {
            return Err(Error::Conflict(format!(
                "this instance already belongs to mirror {}",
                m.mirror.name
            )));
        }
        Ok(())
    }

    /// The local agent must run for Create and Join (as IRIS requires of the ISCAgent).
    async fn require_local_agent(&self) -> Result<()> {
        let address = reachable(&self.context.agent, "127.0.0.1", DEFAULT_AGENT_PORT);
        let address = config::connect_address(&address, DEFAULT_AGENT_PORT)?;
        agent::call(&address, AgentRequest::Status).await.map(|_| ()).map_err(|_| {
            Error::Conflict(format!(
                "the agent of this instance does not answer on {address}: start the instance with `mirrorlab member`"
            ))
        })
    }

    /// Enable (or disable) the mirror service.
    pub fn set_service(&self, enabled: bool) -> Result<String> {
        if !enabled && self.context.config.get().mirror.membership.is_some() {
            return Err(Error::Conflict(
                "remove the mirror configuration before disabling the mirror service".into(),
            ));
        }
        let changed = self.context.config.update(|c| {
            let changed = c.mirror.service_enabled != enabled;
            c.mirror.service_enabled = enabled;
            Ok(changed)
        })?;
        Ok(match (enabled, changed) {
            (true, true) => "the mirror service is enabled".into(),
            (true, false) => "the mirror service was already enabled".into(),
            (false, true) => "the mirror service is disabled".into(),
            (false, false) => "the mirror service was already disabled".into(),
        })
    }

    /// The defaults the Create and Join pages show.
    pub fn defaults(&self) -> (String, String, u16) {
        let host = &self.context.host_name;
        let member = config::default_member_name(host, &self.context.instance_name);
        let superserver = reachable(&self.context.superserver, host, DEFAULT_SUPERSERVER_PORT);
        let agent_port = config::split_address(&self.context.agent, DEFAULT_AGENT_PORT)
            .map(|(_, p)| p)
            .unwrap_or(DEFAULT_AGENT_PORT);
        (member, superserver, agent_port)
    }

    fn this_member(
        &self,
        kind: MemberKind,
        name: Option<&str>,
        superserver: Option<&str>,
        private: Option<&str>,
        agent_address: Option<&str>,
        agent_port: Option<u16>,
    ) -> Result<MemberInfo> {
        let (default_name, default_superserver, default_agent_port) = self.defaults();
        let name = config::member_name(
            name.filter(|n| !n.trim().is_empty())
                .unwrap_or(&default_name),
        )?;
        let superserver = config::normalize_address(
            superserver
                .filter(|s| !s.trim().is_empty())
                .unwrap_or(&default_superserver),
            DEFAULT_SUPERSERVER_PORT,
        )?;
        let private = config::normalize_address(
            private
                .filter(|s| !s.trim().is_empty())
                .unwrap_or(&superserver),
            DEFAULT_SUPERSERVER_PORT,
        )?;
        let agent_port = agent_port.unwrap_or(default_agent_port);
        let agent_address = match agent_address.filter(|s| !s.trim().is_empty()) {
            Some(a) => config::normalize_address(a, agent_port)?,
            None => host_of(&superserver),
        };
        Ok(MemberInfo {
            name,
            kind,
            superserver_address: superserver,
            mirror_private_address: private,
            agent_address,
            agent_port,
            instance_guid: self.context.config.get().instance_guid.clone(),
            certificate: Some(self.context.identity.fingerprint().to_string()),
        })
    }

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
        let id = random_hex(16);
        let definition = MirrorDefinition {
            name: name.clone(),
            id: id.clone(),
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
        let stream = crate::util::parse_hex16(&id).expect("fresh id");
        let options = JournalOptions::mirror(&name, self.context.max_segment_bytes, JournalPos(1));
        if super::journal_exists(&self.context.journal_dir, &options.prefix)? {
            return Err(Error::Conflict(format!(
                "journal files of an earlier mirror named {name} are still in the journal folder: choose another name \
                 (or move those files away)"
            )));
        }
        let (journal, _) = Journal::open(&self.context.journal_dir, stream, options)?;
        self.context
            .writer
            .mirror(|reply| MirrorCommand::Create {
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
            primary_name: Some(description.primary.clone()),
            pending_adds: Vec::new(),
            epochs: Vec::new(),
            stopped: false,
            pending: Vec::new(),
        };
        let name = membership.mirror.name.clone();
        let prefix = JournalOptions::mirror(&name, 0, JournalPos(1)).prefix;
        if super::journal_exists(&self.context.journal_dir, &prefix)? {
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
        self.context
            .catalog
            .replace(crate::instance::config::catalog_state(
                &self.context.config.get(),
                &self.context.data_dir,
                false,
            ));
        *self.context.mirror.link.lock().unwrap() = Default::default();
        self.start_receiver();
        // Wait for the primary's answer, so a refusal is reported here and undone.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let link = self.context.mirror.link.lock().unwrap().clone();
            if link.connected {
                return Ok(format!(
                    "joined mirror {name} as {} member; the primary is {}",
                    kind.display().to_lowercase(),
                    description.primary
                ));
            }
            // In a mirror that requires SSL/TLS the primary keeps this member waiting until
            // someone authorizes it: the join stands, and the receiver keeps asking.
            if link
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains(super::server::AWAITING_AUTHORIZATION))
            {
                return Ok(format!(
                    "joined mirror {name}; this member waits for authorization: on the primary ({}), \
                     Edit Mirror → Pending New Members → Authorize",
                    description.primary
                ));
            }
            if let Some(err) = link.last_error.clone().filter(|e| e.contains("refused")) {
                self.stop_receiver();
                self.context.config.update(|c| {
                    c.mirror.membership = None;
                    Ok(())
                })?;
                self.context.mirror.set_role(Role::NotMember);
                *self.receiver_journal.lock().unwrap() = None;
                self.context.mirror.set_journal(None);
                return Err(Error::Conflict(err));
            }
            if Instant::now() > deadline {
                return Ok(format!(
                    "joined mirror {name}; not connected to the primary yet ({}): the Mirror Monitor shows the progress",
                    link.last_error.unwrap_or_else(|| "still trying".into())
                ));
            }
        }
    }

    /// Add to Mirror (primary).
    pub async fn add_databases(&self, dbs: Vec<DbName>) -> Result<String> {
        self.context
            .writer
            .mirror(|reply| MirrorCommand::AddDatabases { dbs, reply })
            .await
    }

    /// Activate a copy (backup).
    pub async fn activate(&self, db: DbName) -> Result<String> {
        self.context
            .writer
            .mirror(|reply| MirrorCommand::Activate { db, reply })
            .await
    }

    /// Catchup a copy (backup): fetches older journal from the primary first when needed.
    pub async fn catchup(&self, db: DbName) -> Result<String> {
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
            .mirror(|reply| MirrorCommand::Catchup { db, reply })
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
        self.context.mirror.update_database(db, |d| {
            d.phase = CatchupPhase::Running {
                done: 0,
                total: to.0 + 1 - from.0,
            }
        });
        tracing::info!("catchup of {db}: fetching journal records {from}..={to} from the primary");
        let fetched = tokio::task::spawn_blocking(move || {
            receiver::fetch(&tls_identity, &membership, &primary, from, to)
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

    /// Freeze writes (so database files may be copied while applications run).
    pub async fn freeze(&self, timeout: Duration) -> Result<String> {
        self.context
            .writer
            .mirror(|reply| MirrorCommand::Freeze { timeout, reply })
            .await
    }

    /// Thaw writes.
    pub async fn thaw(&self) -> Result<String> {
        self.context
            .writer
            .mirror(|reply| MirrorCommand::Thaw { reply })
            .await
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
    /// rejected certificates remembered (see [`super::pending`]).
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
            if info.kind == MemberKind::Failover
                && m.others.iter().any(|o| o.kind == MemberKind::Failover)
            {
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
        let role = self.context.mirror.role();
        let connected = self.context.mirror.link.lock().unwrap().connected;
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
        let control = super::protocol::Control::NoFailover { defined_primary };
        if role == Role::Primary {
            self.context.mirror.hub.announce(control);
        } else {
            self.context
                .mirror
                .link_outbox
                .lock()
                .unwrap()
                .push_back(control);
        }
        Ok(if on {
            format!("No Failover is set: the backup will not take over while {primary} is down")
        } else {
            "No Failover is cleared".into()
        })
    }

    /// Stores the mirror's No Failover setting (also when the other member reports it).
    pub fn store_no_failover(&self, defined_primary: Option<String>) -> Result<()> {
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
        if !self
            .context
            .mirror
            .hub
            .tell(&backup.member.name, super::protocol::Control::Demote)
        {
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
        let link = self.context.mirror.link.lock().unwrap().clone();
        // Losing the link resets `active`: what counts is whether it was active then.
        let active = link.active || (!link.connected && link.active_when_lost);
        let other = config
            .mirror
            .membership
            .as_ref()
            .and_then(|m| m.primary_name.clone())
            .unwrap_or_else(|| "the other member".into());
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
        if self.context.mirror.role() == Role::Primary && !self.context.mirror.deciding() {
            return Ok("this member is already the primary".into());
        }
        if self.context.mirror.link.lock().unwrap().connected {
            return Err(Error::Conflict(format!(
                "this member is connected to the primary {}: it cannot be forced while the primary runs",
                m.primary_name.clone().unwrap_or_default()
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
            .mirror(|reply| MirrorCommand::BecomePrimary {
                source,
                new_epoch: true,
                reply,
            })
            .await;
        match result {
            Ok(message) => {
                self.context.mirror.set_deciding(false);
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
            .mirror(|reply| MirrorCommand::Leave { reply })
            .await;
        if result.is_ok() {
            *self.receiver_journal.lock().unwrap() = None;
            *self.context.mirror.link.lock().unwrap() = Default::default();
        } else if was_receiving {
            self.start_receiver();
        }
        result
    }

    /// The Mirror Monitor's facts.
    pub fn view(&self) -> MirrorView {
        let context = &self.context;
        let config = context.config.get();
        let role = context.mirror.role();
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
                qos_timeout_ms: None,
                link_error: None,
                journal_end: None,
                failover_note: None,
                quarantine: (Vec::new(), 0),
                no_failover: None,
                stopped: false,
                may_force: false,
                require_tls: false,
                certificate: context.identity.fingerprint().to_string(),
                pending: PendingLists::default(),
            };
        };
        let failover = context.mirror.failover_view.lock().unwrap().clone();
        let now = now_ms();
        let link = context.mirror.link.lock().unwrap().clone();
        let primary = role == Role::Primary;
        let mut members = Vec::new();
        let this_status;
        if primary {
            this_status = failover.status.unwrap_or("Primary").to_string();
            members.push(MemberRow {
                name: m.this.name.clone(),
                kind: m.this.kind.display().into(),
                status: this_status.clone(),
                journal_transfer: "N/A".into(),
                dejournaling: "N/A".into(),
            });
            let links = context.mirror.hub.links();
            for other in &m.others {
                let row = match links.iter().find(|l| l.member.name == other.name) {
                    Some(l) => MemberRow {
                        name: other.name.clone(),
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
                            name: other.name.clone(),
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
                .filter(|p| *p != m.this.name)
                .and_then(|p| m.member(p))
                .or_else(|| {
                    m.others
                        .iter()
                        .find(|o| o.kind == MemberKind::Failover)
                        .filter(|_| m.this.kind == MemberKind::Failover)
                });
            if let Some(p) = partner {
                members.push(MemberRow {
                    name: p.name.clone(),
                    kind: p.kind.display().into(),
                    status: if link.connected {
                        "Primary".into()
                    } else {
                        "Down".into()
                    },
                    journal_transfer: if link.connected {
                        "N/A".into()
                    } else {
                        status::journal_transfer(transfer)
                    },
                    dejournaling: if link.connected {
                        "N/A".into()
                    } else {
                        status::journal_transfer(transfer)
                    },
                });
            }
            members.push(MemberRow {
                name: m.this.name.clone(),
                kind: m.this.kind.display().into(),
                status: this_status.clone(),
                journal_transfer: status::journal_transfer(transfer),
                dejournaling: if link.connected {
                    context.dejournal_summary()
                } else {
                    status::journal_transfer(transfer)
                },
            });
        }
        let other_failover = m.others.iter().find(|o| o.kind == MemberKind::Failover);
        let mut failover_info = vec![(
            m.this.name.clone(),
            m.this.superserver_address.clone(),
            m.this.mirror_private_address.clone(),
        )];
        failover_info.push(match other_failover {
            Some(o) => (
                o.name.clone(),
                o.superserver_address.clone(),
                o.mirror_private_address.clone(),
            ),
            None => ("n/a".into(), "n/a".into(), "n/a".into()),
        });
        let journal = context.mirror.journal();
        let state = context.catalog.snapshot();
        let mut databases = Vec::new();
        let mut missing = Vec::new();
        for db in &m.databases {
            let facts = context.database_facts(&db.name);
            let Some(status) = status::database_status(facts) else {
                missing.push(db.mirror_path(&m.mirror.name));
                continue;
            };
            let runtime = context.mirror.database(&db.name);
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
            let actions: Vec<&'static str> = match status {
                "Database Dismounted" => vec!["mount"],
                "Needs Activation" => vec!["activate", "catchup"],
                "Needs Catchup" | "Dejournaling Stopped" => vec!["catchup"],
                _ => Vec::new(),
            };
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
            member_name: Some(m.this.name.clone()),
            mirror_name: Some(m.mirror.name.clone()),
            role: match role {
                Role::Primary => "Primary".into(),
                Role::Backup => "Backup".into(),
                Role::Async(kind) => kind.display().into(),
                Role::NotMember => "Not Member".into(),
            },
            status: this_status,
            failover_mode: Some(failover.mode.unwrap_or("Agent Controlled").into()),
            failover_info,
            arbiter: Some(ArbiterView {
                address: m.mirror.arbiter_display(),
                connection_status: context
                    .mirror
                    .arbiter
                    .lock()
                    .unwrap()
                    .connection_status()
                    .into(),
            }),
            members,
            transfer_rate: (!primary).then(|| link.transfer_rate()),
            databases,
            missing,
            qos_timeout_ms: Some(m.mirror.qos_timeout_ms),
            link_error: if primary || link.connected {
                None
            } else {
                link.last_error.clone()
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
            no_failover: m.mirror.defined_primary.clone(),
            stopped: m.stopped,
            may_force: m.this.kind == MemberKind::Failover
                && (!primary || context.mirror.deciding())
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

    /// `Disconnected on <time>` helper for pages.
    pub fn now_text() -> String {
        format_time(now_ms())
    }
}
