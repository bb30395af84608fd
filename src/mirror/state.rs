//! What this member knows about its mirror while it runs: its role, the mirror journal's view,
//! the state of its link to the primary (on a backup or async), and the progress of each
//! mirrored database's Catchup. Written by the writer and the receiver, read by the portal.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::Duration;

use crate::journal::{JournalPos, JournalShared};
use crate::names::DbName;
use crate::util::now_ms;

use super::failover::Event;
use super::hub::Hub;
use crate::config::mirror::{MemberInfo, MemberKind, MemberName};

/// This member's role right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Not in a mirror.
    NotMember,
    /// The primary: the only member that accepts writes to mirrored databases.
    Primary,
    /// The backup failover member.
    Backup,
    /// An async member.
    Async(MemberKind),
}

/// Why the link of a backup or async to its primary is down: what Join and the monitor act on
/// (and show).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkError {
    /// The primary keeps this member waiting in Pending New Members (a mirror requiring SSL/TLS)
    /// until someone authorizes it there; the receiver keeps asking.
    AwaitingAuthorization(String),
    /// The primary refused this member's hello: it may not follow that primary as it asked.
    Refused(String),
    /// The link could not be made, or broke; the receiver tries again.
    Broken(String),
    /// This member's mirror journal failed a write, an fsync or a cut: the instance stops (see
    /// the receiver's essay).
    JournalFailed(String),
}

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkError::AwaitingAuthorization(why) | LinkError::Broken(why) => f.write_str(why),
            LinkError::JournalFailed(why) => write!(f, "the mirror journal failed: {why}"),
            LinkError::Refused(why) => write!(f, "the primary refused: {why}"),
        }
    }
}

impl From<crate::error::Error> for LinkError {
    fn from(err: crate::error::Error) -> LinkError {
        LinkError::Broken(err.to_string())
    }
}

impl From<std::io::Error> for LinkError {
    fn from(err: std::io::Error) -> LinkError {
        LinkError::from(crate::error::Error::from(err))
    }
}

/// The link of a backup or async to its primary.
#[derive(Debug, Clone, Default)]
pub struct LinkStatus {
    /// Whether the data channel is up.
    pub connected: bool,
    /// The primary, when known.
    pub primary: Option<MemberInfo>,
    /// Whether the primary counts this member as its active backup.
    pub active: bool,
    /// Whether it was the active backup when the link was last lost (for the Force warning).
    pub active_when_lost: bool,
    /// The primary's token for this member's latest activation (0: never activated).
    pub activation: u64,
    /// When the link came up or went down.
    pub since_ms: i64,
    /// When it went down (shown as `Disconnected on <time>`).
    pub disconnected_ms: Option<i64>,
    /// The last connection problem.
    pub last_error: Option<LinkError>,
    /// The primary's durable end as last announced.
    pub primary_durable: JournalPos,
    /// Last position this member holds durably.
    pub received_end: JournalPos,
    /// Bytes of journal received since start.
    pub received_bytes: u64,
    /// (time ms, bytes) samples for the transfer rate, oldest first, at most four a second.
    pub rate_samples: VecDeque<(i64, u64)>,
    /// When the primary was last heard from. The backup lost it *then*, not when it noticed:
    /// a backup that was itself stalled must not count as active on waking up.
    pub last_heard: Option<std::time::Instant>,
}

impl LinkStatus {
    /// `NNN KB/s (Ns interval)` over the last samples, or the IRIS placeholder before a second
    /// sample exists.
    pub fn transfer_rate(&self) -> String {
        match (self.rate_samples.front(), self.rate_samples.back()) {
            (Some((t0, b0)), Some((t1, b1))) if t1 > t0 => {
                let seconds = (t1 - t0) as f64 / 1000.0;
                let kb = (b1 - b0) as f64 / 1024.0 / seconds;
                format!("{kb:.0} KB/s ({:.0}s interval)", seconds)
            }
            _ => "--- (will be displayed on refresh)".into(),
        }
    }

    /// Adds a rate sample (kept for the last 10 seconds). Called after every receive round, so
    /// it keeps one sample per quarter second: the rate needs no more, and the receiver's hot
    /// loop stays cheap.
    pub fn sample(&mut self) {
        let now = now_ms();
        if let Some((last, _)) = self.rate_samples.back()
            && now - last < 250
        {
            return;
        }
        self.rate_samples.push_back((now, self.received_bytes));
        while let Some((t, _)) = self.rate_samples.front()
            && now - t > 10_000
        {
            self.rate_samples.pop_front();
        }
    }
}

/// Where a mirrored database's Catchup stands on this member.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CatchupPhase {
    /// Nothing running; see the activated and dejournaling flags.
    #[default]
    Idle,
    /// Fetching older journal from the primary or applying records.
    Running {
        /// Records applied so far.
        done: u64,
        /// Records to apply in all (as far as known).
        total: u64,
    },
    /// The copy is older than any journal still kept: it must be replaced.
    Obsolete(String),
    /// Catchup stopped with an error.
    Failed(String),
}

/// Runtime facts about one mirrored database on this member.
#[derive(Debug, Clone, Default)]
pub struct DatabaseRuntime {
    /// Catchup progress.
    pub phase: CatchupPhase,
    /// Whether it follows the journal live (Dejournaling).
    pub dejournaling: bool,
    /// The journal position applied so far.
    pub applied: JournalPos,
}

/// Wakes the failover driver when something it decides on happened — an event queued by the
/// hub, the receiver or the arbiter link, an agent's answer — so that it looks at once rather
/// than at its next tick. Nudges that come while it looks are not lost: the next wait returns
/// at once.
#[derive(Debug, Default)]
pub struct Nudge {
    nudged: Mutex<bool>,
    wake: Condvar,
}

impl Nudge {
    /// Wakes the driver (never blocks).
    pub fn nudge(&self) {
        *self.nudged.lock().unwrap() = true;
        self.wake.notify_one();
    }

    /// Waits until nudged or `timeout` passed, and forgets the nudge.
    pub fn wait(&self, timeout: Duration) {
        let mut nudged = self.nudged.lock().unwrap();
        if !*nudged {
            nudged = self.wake.wait_timeout(nudged, timeout).unwrap().0;
        }
        *nudged = false;
    }
}

/// The mirror state shared inside the instance.
pub struct MirrorState {
    /// The primary's replication hub.
    pub hub: Arc<Hub>,
    /// Wakes the failover driver (shared with the hub).
    pub nudge: Arc<Nudge>,
    role: RwLock<Role>,
    journal: RwLock<Option<Arc<JournalShared>>>,
    /// The link to the primary (backup and async).
    pub link: Mutex<LinkStatus>,
    /// Per mirrored database.
    pub databases: Mutex<BTreeMap<DbName, DatabaseRuntime>>,
    /// Highest position this member may dejournal: durable here and announced durable by the
    /// primary.
    dejournal_target: AtomicU64,
    /// What happened to the link with the other failover member, in order, for the failover
    /// driver (pushed by the hub on the primary and the receiver on the backup).
    partner_events: Mutex<VecDeque<Event>>,
    /// Whether the receiver may open the data channel now (the failover rules decide).
    may_connect: AtomicBool,
    /// A former primary that restarted and has not yet learned whether it is still the primary.
    deciding: AtomicBool,
    /// The primary asked this backup to become a DR async (Demote Other Member); the failover
    /// driver carries it out.
    pub demote_requested: AtomicBool,
    /// The receiver must drop its connection and connect afresh (after this member stalled).
    pub reconnect_requested: AtomicBool,
    /// The receiver noticed that one of its rounds took half a QoS (a stalled disk or thread):
    /// the failover driver must stop counting this member as the active backup.
    pub receiver_stalled: AtomicBool,
    /// A takeover is under way (the journal is being applied before the role changes): a
    /// restarted former primary asking now must wait, not resume.
    pub taking_over: AtomicBool,
    /// The failover state as the monitor shows it.
    pub failover_view: Mutex<FailoverView>,
    /// The link to the arbiter.
    pub arbiter: Mutex<ArbiterLinkState>,
    /// Control messages the backup's receiver sends to the primary on its next round (its
    /// failover mode reports).
    pub link_outbox: Mutex<VecDeque<super::protocol::Control>>,
}

/// The link to the arbiter, shared by its thread, the failover driver and the monitor.
#[derive(Debug, Default)]
pub struct ArbiterLinkState {
    /// Connected to the arbiter.
    pub connected: bool,
    /// What the arbiter last said about the other failover member.
    pub sees_partner: Option<bool>,
    /// What happened, for the failover driver.
    pub events: VecDeque<Event>,
    /// The activation each `Event::PartnerStoodDown` in `events` ends, in the same order: the
    /// driver checks it again when it handles the event (see `driver`).
    pub stood_down_activations: VecDeque<u64>,
    /// What the driver wants said to the arbiter.
    pub outbox: VecDeque<crate::arbiter::ToArbiter>,
    /// The primary's failover mode is arbiter controlled, booked with this activation of the
    /// backup: said in every hello, so a new connection never loses a mode change queued on the
    /// old one.
    pub arbiter_mode_booked: Option<u64>,
    /// A backup's stand-down (naming the activation it ends) that no connection to the arbiter
    /// has carried yet. Unlike the outbox it outlives a connection: a stand-down the arbiter
    /// never hears leaves a takeover booked that nobody carries out.
    pub stand_down: Option<u64>,
}

impl ArbiterLinkState {
    /// The Connection Status line of the Mirror Monitor.
    pub fn connection_status(&self) -> &'static str {
        match (self.connected, self.sees_partner) {
            (true, Some(true)) => "Both failover members are connected to the arbiter",
            (true, _) => "Only this member is connected to the arbiter",
            (false, _) => "This member is not connected to the arbiter",
        }
    }
}

/// The failover driver's state, for the Mirror Monitor.
#[derive(Debug, Clone, Default)]
pub struct FailoverView {
    /// `Agent Controlled` or `Arbiter Controlled`.
    pub mode: Option<&'static str>,
    /// This member's status (`Primary`, `In Trouble`, `Backup`, `Waiting`, …).
    pub status: Option<&'static str>,
    /// What the driver last did or found, for people.
    pub note: Option<String>,
}

impl MirrorState {
    /// State of an instance that is not (yet) a member.
    pub fn new(qos_ms: u64) -> MirrorState {
        let hub = Arc::new(Hub::new(qos_ms));
        MirrorState {
            nudge: hub.driver_nudge(),
            hub,
            role: RwLock::new(Role::NotMember),
            journal: RwLock::new(None),
            link: Mutex::new(LinkStatus::default()),
            databases: Mutex::new(BTreeMap::new()),
            dejournal_target: AtomicU64::new(0),
            partner_events: Mutex::new(VecDeque::new()),
            may_connect: AtomicBool::new(true),
            deciding: AtomicBool::new(false),
            demote_requested: AtomicBool::new(false),
            reconnect_requested: AtomicBool::new(false),
            receiver_stalled: AtomicBool::new(false),
            taking_over: AtomicBool::new(false),
            failover_view: Mutex::new(FailoverView::default()),
            arbiter: Mutex::new(ArbiterLinkState::default()),
            link_outbox: Mutex::new(VecDeque::new()),
        }
    }

    /// Records something that happened to the link with the other failover member.
    pub fn partner_event(&self, event: Event) {
        self.partner_events.lock().unwrap().push_back(event);
        self.nudge.nudge();
    }

    /// Takes the link events recorded so far, oldest first.
    pub fn take_partner_events(&self) -> Vec<Event> {
        self.partner_events.lock().unwrap().drain(..).collect()
    }

    /// Queues a message for the arbiter (sent by the arbiter link while connected).
    pub fn tell_arbiter(&self, message: crate::arbiter::ToArbiter) {
        self.arbiter.lock().unwrap().outbox.push_back(message);
    }

    /// Whether the receiver may connect to the primary now.
    pub fn may_connect(&self) -> bool {
        self.may_connect.load(Ordering::Acquire) && !self.deciding()
    }

    /// Set by the failover driver.
    pub fn set_may_connect(&self, may: bool) {
        self.may_connect.store(may, Ordering::Release);
    }

    /// Whether this restarted former primary still has to learn its role.
    pub fn deciding(&self) -> bool {
        self.deciding.load(Ordering::Acquire)
    }

    /// Marks the start (or end) of the restart decision.
    pub fn set_deciding(&self, deciding: bool) {
        self.deciding.store(deciding, Ordering::Release);
    }

    /// The current role.
    pub fn role(&self) -> Role {
        *self.role.read().unwrap()
    }

    /// Changes the role.
    pub fn set_role(&self, role: Role) {
        *self.role.write().unwrap() = role;
    }

    /// The mirror journal, when this member has one.
    pub fn journal(&self) -> Option<Arc<JournalShared>> {
        self.journal.read().unwrap().clone()
    }

    /// Installs the mirror journal's view.
    pub fn set_journal(&self, journal: Option<Arc<JournalShared>>) {
        *self.journal.write().unwrap() = journal;
    }

    /// The highest position that may be dejournaled.
    pub fn dejournal_target(&self) -> JournalPos {
        JournalPos(self.dejournal_target.load(Ordering::Acquire))
    }

    /// Raises the dejournal target (never lowers it).
    pub fn raise_dejournal_target(&self, pos: JournalPos) {
        self.dejournal_target.fetch_max(pos.0, Ordering::AcqRel);
    }

    /// Sets the dejournal target (after a journal was cut back).
    pub fn set_dejournal_target(&self, pos: JournalPos) {
        self.dejournal_target.store(pos.0, Ordering::Release);
    }

    /// Updates one database's runtime facts.
    pub fn update_database(&self, db: &DbName, change: impl FnOnce(&mut DatabaseRuntime)) {
        change(
            self.databases
                .lock()
                .unwrap()
                .entry(db.clone())
                .or_default(),
        );
    }

    /// One database's runtime facts.
    pub fn database(&self, db: &DbName) -> DatabaseRuntime {
        self.databases
            .lock()
            .unwrap()
            .get(db)
            .cloned()
            .unwrap_or_default()
    }
}

/// The instance asks the mirror's state about its place in the mirror.
impl crate::instance::role::MemberRole for MirrorState {
    fn is_primary(&self) -> bool {
        self.role() == Role::Primary
    }

    fn may_run_productions(&self) -> bool {
        match self.role() {
            Role::NotMember => true,
            // Not while a restarted former primary is still finding out whether it is one, nor
            // while the trouble state holds its writes.
            Role::Primary => !self.deciding() && !self.hub.suspended(),
            _ => false,
        }
    }

    fn mirror_journal(&self) -> Option<Arc<JournalShared>> {
        self.journal()
    }

    fn members_need(
        &self,
        membership: &crate::config::mirror::Membership,
    ) -> Vec<(MemberName, Option<JournalPos>)> {
        let links = self.hub.links();
        membership
            .others
            .iter()
            .map(|member| {
                let need = links
                    .iter()
                    .find(|l| l.member.name == member.name)
                    .map(|link| link.acked.next());
                (member.name.clone(), need)
            })
            .collect()
    }
}
