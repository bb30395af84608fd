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
//!
//! # Files
//!
//! - this file: the service itself — its threads (receiver, superserver listener, failover
//!   driver, arbiter link), Enable Mirror Service, the graceful hand-over, and the checks the
//!   actions share;
//! - [`requests`]: what the forms and `/api` send for Create, Join and Edit;
//! - `setup`: Create, the join information, Join as Failover / Async, Add to Mirror, Activate
//!   and Catchup;
//! - `copy`: Copy from Primary — a database's copy fetched over the data channel, then
//!   mounted, activated and caught up;
//! - `actions`: Freeze and Thaw, Edit Mirror, Pending New Members, Remove Other Mirror Member,
//!   the Mirror Monitor's actions and Remove Mirror Configuration;
//! - [`view`]: the Mirror Monitor's view, built in one pass from the shared state.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::agent::{self, AgentRequest};
use crate::config::mirror::MemberName;
use crate::error::{Error, Result};
use crate::journal::{Journal, JournalOptions, JournalPos, StreamId};
use crate::mirror::steps::MirrorCommand;
use crate::names::DbName;
use crate::util::{format_time, now_ms};

use super::MirrorContext;
use super::events::EventKind;
use super::pending;
use super::protocol::{Control, MirrorDescription};
use super::receiver::{self, ReceiverInput, SharedJournal};
use super::state::{CatchupPhase, Role};
use super::status::{self, Transfer};
use crate::config::mirror::{
    self as config, DEFAULT_AGENT_PORT, DEFAULT_QOS_MS, DEFAULT_SUPERSERVER_PORT, MAX_QOS_MS,
    MIN_QOS_MS, MemberInfo, MemberKind, Membership, MirrorDefinition, PendingMember,
};

mod actions;
mod copy;
pub mod requests;
mod setup;
pub mod timeline;
pub mod view;

pub use actions::MonitorAction;
pub use requests::{
    CreateRequest, EditRequest, JoinInfoRequest, JoinRequest, MAX_ASYNC_MEMBERS, async_kind,
};
pub use view::{MirrorView, PendingLists};

/// A running thread, the flag that stops it, and (for the listener) its address.
type Running<T> = Mutex<Option<(JoinHandle<()>, Arc<AtomicBool>, T)>>;

/// The mirror service of an instance.
pub struct MirrorService {
    context: Arc<MirrorContext>,
    receiver_journal: SharedJournal,
    /// The receiver thread, with its channel ([`ReceiverInput`]).
    receiver: Running<mpsc::Sender<ReceiverInput>>,
    listener: Running<std::net::SocketAddr>,
    driver: Running<()>,
    arbiter_link: Running<()>,
    /// Reads the quarantine file for the monitor, a little at a time.
    quarantine: Mutex<super::divergence::QuarantineReader>,
    /// Copy from Primary: each database's latest copy.
    copies: Arc<super::copy::Copies>,
    /// The no-click mirror's latest pass (with `--auto-mirror`).
    auto_report: Mutex<Option<super::auto::AutoMirrorReport>>,
    /// Held while a Catchup fetches older journal and puts it before the receiver's journal:
    /// two Catchups at once would both fetch what the journal's start lacked, and the second
    /// could not put it before a start the first had moved.
    catchup_fetch: tokio::sync::Mutex<()>,
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
pub fn store_no_failover(
    context: &MirrorContext,
    defined_primary: Option<MemberName>,
) -> Result<()> {
    context.config.update(|c| {
        if let Some(m) = c.mirror.membership.as_mut() {
            m.mirror.defined_primary = defined_primary;
        }
        Ok(())
    })
}

impl MirrorService {
    /// Records what an operator did (`what`) and how it ended as a mirror event, and hands the
    /// result on.
    pub(crate) fn operator(&self, what: &str, result: Result<String>) -> Result<String> {
        let reason = match &result {
            Ok(message) => format!("{what}: {message}"),
            Err(err) => format!("{what} refused: {err}"),
        };
        self.context.mirror.record(EventKind::Operator, reason);
        result
    }

    /// Starts the superserver listener (and, on a backup, the receiver).
    pub fn start(
        context: Arc<MirrorContext>,
        listener: crate::transport::Listener,
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
            copies: Default::default(),
            auto_report: Mutex::new(None),
            catchup_fetch: tokio::sync::Mutex::new(()),
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

    /// The no-click mirror's latest pass, if this member carries out a plan.
    pub fn auto_report(&self) -> Option<super::auto::AutoMirrorReport> {
        self.auto_report.lock().unwrap().clone()
    }

    /// Publishes the no-click mirror's latest pass.
    pub(crate) fn set_auto_report(&self, report: super::auto::AutoMirrorReport) {
        *self.auto_report.lock().unwrap() = Some(report);
    }

    /// Records an action the no-click mirror took, as an operator's.
    pub(crate) fn auto_event(&self, what: &str, message: &str) {
        self.context.mirror.record(
            EventKind::Operator,
            format!("No-click mirror: {what}: {message}"),
        );
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
        let (thread, inbox) = receiver::start(
            self.context.clone(),
            self.receiver_journal.clone(),
            stop.clone(),
        );
        *slot = Some((thread, stop, inbox));
    }

    /// Stops the receiver thread and waits for it.
    pub fn stop_receiver(&self) {
        // Taken out first: nobody telling the receiver something waits for the join.
        let running = self.receiver.lock().unwrap().take();
        if let Some((thread, stop, _)) = running {
            stop.store(true, Ordering::Release);
            let _ = thread.join();
        }
    }

    /// Asks something of the receiver's connection; false when no receiver runs (what it
    /// asks is then moot: a receiver that starts connects afresh, and says what it must
    /// itself).
    pub fn tell_receiver(&self, input: ReceiverInput) -> bool {
        let slot = self.receiver.lock().unwrap();
        slot.as_ref()
            .is_some_and(|(_, _, inbox)| inbox.send(input).is_ok())
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
                let backups: Vec<MemberName> = hub
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
        if !self.context.mirror.read(|s| s.link.connected) {
            return false;
        }
        let (sent, written) = mpsc::sync_channel(1);
        self.tell_receiver(ReceiverInput::Say(
            Box::new(super::protocol::Control::StoodDown),
            Some(sent),
        ));
        // The receiver sends it on its next round (at least every quarter QoS); an end of the
        // connection first drops it unsent, which ends the wait too.
        let _ = written.recv_timeout(timeout);
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
            crate::transport::Listener::wake(address, &*self.context.network);
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
        let name = MemberName::new(
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
}
