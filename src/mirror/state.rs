//! What this member knows about its mirror while it runs, in two parts.
//!
//! # The published status
//!
//! [`MemberStatus`] is what the member's threads *say about themselves*: its role, whether a
//! restarted former primary is still deciding, the link to the primary (the receiver's), the
//! failover mode and status (the failover driver's), the arbiter connection (the arbiter link's)
//! and each mirrored database's Catchup and dejournaling (the writer's); the role changes in
//! the writer's lifecycle steps and in the portal's Join, Remove and Demote. Every change goes
//! through [`MirrorState::publish`], which changes the status in place, under the status's one
//! lock, and publishes it whole, as a `tokio::sync::watch` value; a change edits only its own
//! fields, so two threads changing different parts never undo each other. Readers take what
//! they need with [`MirrorState::read`], or a whole copy with [`MirrorState::status`]: the
//! Mirror Monitor builds its page from one copy, so a page never mixes a role from before a
//! takeover with a link state from after it, as reading part by part under separate locks
//! could.
//!
//! Invariant: a change takes none of the mirror's other locks, and nobody publishes or reads
//! the status again while reading it, so the status's lock is always the innermost one held.
//!
//! # What the threads hand each other
//!
//! The rest is how the threads coordinate. Whatever may move the failover rules reaches the
//! failover driver as a message on its one channel ([`DriverInput`], [`MirrorState::tell_driver`]):
//! the hub's and the receiver's link events, the arbiter link's reports, a stalled receive
//! round, a demotion request, the agents' answers. What the driver decides that other threads
//! only read is part of its published status ([`FailoverView`]: whether its rules hold the
//! receiver back, whether a takeover is under way — the superserver answers a restarted former
//! primary from it); what one thread must *do* is a message to it (the receiver's
//! [`ReceiverInput`](super::receiver::ReceiverInput): reconnect, or tell the primary something
//! on the data channel), and what the arbiter link must say or keep is a message on its
//! channel ([`ArbiterInput`]). The hub is the primary's replication.
//!
//! Beside both, the member's event log ([`MirrorState::record`], [`super::events`]): any thread
//! records a decision or a change there without waiting, for the Mirror Monitor's timeline.
//!
//! # Left out
//!
//! The simulation drives the member core without these threads.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, mpsc};

use tokio::sync::watch;

use crate::clock::{Clock, SystemClock};
use crate::journal::{JournalPos, JournalShared};
use crate::names::DbName;
use crate::util::now_ms;

use super::events::{EventKind, EventLog};
use super::failover::{AgentAnswer, Event, Restart};
use super::hub::Hub;
use crate::config::mirror::{MemberInfo, MemberKind, MemberName};

/// This member's role right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    /// Not in a mirror.
    #[default]
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

impl Role {
    /// The role as the Mirror Monitor names it (`Primary`, `Backup`, `Disaster Recovery`, …).
    pub fn display(self) -> &'static str {
        match self {
            Role::Primary => "Primary",
            Role::Backup => "Backup",
            Role::Async(kind) => kind.display(),
            Role::NotMember => "Not Member",
        }
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
    /// When (ms since the Unix epoch) records from the primary were last made durable here:
    /// just before the primary could acknowledge them, the closest this member knows to the
    /// old primary's last acknowledged write when it takes over.
    pub stored_ms: Option<i64>,
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

/// What the failover driver is told, on its one channel (see [`MirrorState::tell_driver`]).
/// Everything that may move the failover rules arrives here, in the order it happened on each
/// thread; the driver also looks every tick, since time alone moves the rules too.
#[derive(Debug)]
pub enum DriverInput {
    /// The hub (primary): the link with the backup changed. `term` is the hub's term when it
    /// happened; an event from before the hub last started serving is stale (see
    /// [`Hub::term`]).
    Hub { event: Event, term: u64 },
    /// The receiver (backup): the link to the primary changed.
    Receiver(Event),
    /// The arbiter link: what the arbiter said, or the connection to it changed.
    Arbiter(Event),
    /// The arbiter relayed the backup's stand-down, naming the activation it ends (checked
    /// again when the driver handles it: see `driver`).
    ArbiterStoodDown { activation: u64 },
    /// The receiver noticed that one of its rounds took half a QoS (a stalled disk or thread):
    /// this member must stop counting as the active backup.
    ReceiverStalled,
    /// The primary asked this backup to become a DR async (Demote Other Member).
    DemoteRequested,
    /// The primary's agent answered a question asked about the loss of the data link of this
    /// generation (see [`MemberCore::link_generation`](super::core::MemberCore::link_generation)).
    AgentAnswer(AgentAnswer, u64),
    /// The other failover member's agent answered a restarted former primary: the decision,
    /// and the member it came from.
    RestartAnswer(Restart, Option<MemberName>),
}

/// What the member's threads publish about themselves (see the module essay): each changes
/// its own part, and readers get the whole at one moment.
#[derive(Debug, Clone, Default)]
pub struct MemberStatus {
    /// The role (set by the writer's lifecycle steps and the monitor's actions).
    pub role: Role,
    /// A former primary that restarted and has not yet learned whether it is still the primary.
    pub deciding: bool,
    /// The link to the primary (backup and async; the receiver's).
    pub link: LinkStatus,
    /// The failover mode and status, and what the failover driver last did or found.
    pub failover: FailoverView,
    /// The link to the arbiter (the arbiter link's).
    pub arbiter: ArbiterStatus,
    /// Per mirrored database: Catchup and dejournaling (the writer's).
    pub databases: BTreeMap<DbName, DatabaseRuntime>,
    /// The writer has, since this start, resumed following the copies activated before it:
    /// until then a copy that needs Catchup may only be waiting for it.
    pub copies_resumed: bool,
}

impl MemberStatus {
    /// One database's runtime facts (the defaults before anything was published for it).
    pub fn database(&self, db: &DbName) -> DatabaseRuntime {
        self.databases.get(db).cloned().unwrap_or_default()
    }
}

/// The arbiter connection as the Mirror Monitor shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArbiterStatus {
    /// Connected to the arbiter.
    pub connected: bool,
    /// What the arbiter last said about the other failover member.
    pub sees_partner: Option<bool>,
}

impl ArbiterStatus {
    /// The Connection Status line of the Mirror Monitor.
    pub fn connection_status(&self) -> &'static str {
        match (self.connected, self.sees_partner) {
            (true, Some(true)) => "Both failover members are connected to the arbiter",
            (true, _) => "Only this member is connected to the arbiter",
            (false, _) => "This member is not connected to the arbiter",
        }
    }
}

/// The mirror state shared inside the instance.
pub struct MirrorState {
    /// The primary's replication hub.
    pub hub: Arc<Hub>,
    /// The failover driver's channel: every thread's sender side (the hub holds a clone).
    driver_tx: mpsc::Sender<DriverInput>,
    /// Its receiving side, taken by the driver thread when it starts.
    driver_rx: Mutex<Option<mpsc::Receiver<DriverInput>>>,
    /// What the threads publish about themselves (see the module essay).
    status: watch::Sender<MemberStatus>,
    journal: RwLock<Option<Arc<JournalShared>>>,
    /// Highest position this member may dejournal: durable here and announced durable by the
    /// primary.
    dejournal_target: AtomicU64,
    /// The arbiter link's channel ([`ArbiterInput`]): the driver's sender side.
    arbiter_tx: mpsc::Sender<ArbiterInput>,
    /// Its receiving side, taken by the arbiter link thread when it starts.
    arbiter_rx: Mutex<Option<mpsc::Receiver<ArbiterInput>>>,
    /// Where the member's decisions and changes are recorded ([`super::events`]).
    pub events: EventLog,
    /// The clock the member's timing decisions read ([`crate::clock`]): the hub's waits, the
    /// failover driver's looks and the receiver's last-heard times.
    pub clock: Arc<dyn Clock>,
}

/// What the failover driver asks of the arbiter link, in order, on the link's one channel (the
/// link keeps what outlives a connection: see `arbiter_link`; its connection state is
/// published in [`MemberStatus::arbiter`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArbiterInput {
    /// Say this on the current connection (forgotten when it ends first: the rules ask again).
    Say(crate::arbiter::ToArbiter),
    /// The primary's failover mode as the arbiter booked it for these rules: arbiter
    /// controlled with this activation of the backup, or `None` (agent controlled). Said in
    /// every hello, so a new connection never loses a mode change meant for the old one.
    Booked(Option<u64>),
    /// A backup stood down, ending this activation (0: none): carried by the first connection
    /// that can, however many fail first — a stand-down the arbiter never hears leaves a
    /// takeover booked that nobody carries out.
    StandDown(u64),
    /// The driver started fresh rules: the mode booked for the old ones is forgotten, and a
    /// fresh backup owes a stand-down naming no activation (it must not end one these rules
    /// have not even seen yet, only what older rules were granted).
    FreshRules {
        /// The fresh rules are a backup's.
        backup: bool,
    },
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
    /// A backup waiting without its primary: why it did not take over (see
    /// [`super::core::Refusal`]).
    pub refusal: Option<super::core::Refusal>,
    /// The rules hold the receiver back: it may not open the data channel now (see
    /// [`Failover::may_connect`](super::failover::Failover::may_connect)).
    pub holds_link: bool,
    /// A backup that lost the primary has not settled what follows (it waits for the arbiter's
    /// verdict or asks the primary's agent): it may still take over, so a restarted former
    /// primary asking now must wait (see
    /// [`Failover::undecided`](super::failover::Failover::undecided)).
    pub undecided: bool,
    /// A takeover is under way (the journal is being applied before the role changes): a
    /// restarted former primary asking now must wait, not resume.
    pub taking_over: bool,
}

impl FailoverView {
    /// Whether the rules were in arbiter mode at the driver's last look.
    pub fn arbiter_controlled(&self) -> bool {
        self.mode == Some(super::failover::Mode::Arbiter.display())
    }
}

impl MirrorState {
    /// State of an instance that is not (yet) a member, on the machine's clock.
    pub fn new(qos_ms: u64) -> MirrorState {
        MirrorState::with_clock(qos_ms, Arc::new(SystemClock))
    }

    /// [`MirrorState::new`] reading time from `clock`.
    pub fn with_clock(qos_ms: u64, clock: Arc<dyn Clock>) -> MirrorState {
        let (driver_tx, driver_rx) = mpsc::channel();
        let (arbiter_tx, arbiter_rx) = mpsc::channel();
        let events = EventLog::detached();
        MirrorState {
            hub: Arc::new(Hub::with_clock(
                qos_ms,
                driver_tx.clone(),
                events.clone(),
                clock.clone(),
            )),
            events,
            clock,
            driver_tx,
            driver_rx: Mutex::new(Some(driver_rx)),
            status: watch::Sender::new(MemberStatus::default()),
            journal: RwLock::new(None),
            dejournal_target: AtomicU64::new(0),
            arbiter_tx,
            arbiter_rx: Mutex::new(Some(arbiter_rx)),
        }
    }

    /// Tells the failover driver something, and wakes it (never blocks). Nothing is lost when
    /// the driver is not running yet: it reads what waits when it starts.
    pub fn tell_driver(&self, input: DriverInput) {
        // The driver's receiving side lives as long as this state: a send cannot fail.
        let _ = self.driver_tx.send(input);
    }

    /// A sender for helper threads that outlive a borrow of this state (agent questions).
    pub fn driver_sender(&self) -> mpsc::Sender<DriverInput> {
        self.driver_tx.clone()
    }

    /// The driver's receiving side, for the one failover driver thread (None once taken).
    pub fn take_driver_inbox(&self) -> Option<mpsc::Receiver<DriverInput>> {
        self.driver_rx.lock().unwrap().take()
    }

    /// Asks something of the arbiter link (never blocks; nothing is lost when the link is not
    /// running yet: it reads what waits when it starts).
    pub fn tell_arbiter_link(&self, input: ArbiterInput) {
        // The receiving side lives as long as this state: a send cannot fail.
        let _ = self.arbiter_tx.send(input);
    }

    /// Says a message to the arbiter on the current connection.
    pub fn tell_arbiter(&self, message: crate::arbiter::ToArbiter) {
        self.tell_arbiter_link(ArbiterInput::Say(message));
    }

    /// The arbiter link's receiving side, for the one arbiter link thread (None once taken).
    pub fn take_arbiter_inbox(&self) -> Option<mpsc::Receiver<ArbiterInput>> {
        self.arbiter_rx.lock().unwrap().take()
    }

    /// Whether the failover rules let the receiver connect (see
    /// [`Failover::may_connect`](super::failover::Failover::may_connect)).
    pub fn rules_allow_connect(&self) -> bool {
        self.read(|s| !s.failover.holds_link)
    }

    /// Whether the receiver may connect to the primary now: the rules let it, and this is not
    /// a restarted former primary still deciding (both read at one moment).
    pub fn may_connect(&self) -> bool {
        self.read(|s| !s.failover.holds_link && !s.deciding)
    }

    /// The whole published status at one moment (what the Mirror Monitor shows).
    pub fn status(&self) -> MemberStatus {
        self.status.borrow().clone()
    }

    /// Reads part of the published status. `read` must not publish or read the status again.
    pub fn read<R>(&self, read: impl FnOnce(&MemberStatus) -> R) -> R {
        read(&self.status.borrow())
    }

    /// Changes the published status in place and publishes it. `change` must take no lock and
    /// not read the status again (the status's lock is the innermost one).
    pub fn publish(&self, change: impl FnOnce(&mut MemberStatus)) {
        self.status.send_modify(change);
    }

    /// Whether this restarted former primary still has to learn its role.
    pub fn deciding(&self) -> bool {
        self.read(|s| s.deciding)
    }

    /// Marks the start (or end) of the restart decision.
    pub fn set_deciding(&self, deciding: bool) {
        self.publish(|s| s.deciding = deciding);
    }

    /// The current role.
    pub fn role(&self) -> Role {
        self.read(|s| s.role)
    }

    /// The primary, and not a restarted former primary still learning whether it is one (both
    /// read at one moment).
    pub fn is_settled_primary(&self) -> bool {
        self.read(|s| s.role == Role::Primary && !s.deciding)
    }

    /// Records an event at the end of this member's mirror journal (see [`super::events`]).
    pub fn record(&self, kind: EventKind, reason: impl Into<String>) {
        let end = self.journal().map(|j| j.durable_end()).unwrap_or_default();
        self.events.record(kind, reason, end);
    }

    /// Changes the role; a change is recorded as an event.
    pub fn set_role(&self, role: Role) {
        let mut before = role;
        self.publish(|s| before = std::mem::replace(&mut s.role, role));
        if before != role {
            self.record(
                EventKind::RoleChanged,
                format!("{} → {}", before.display(), role.display()),
            );
        }
    }

    /// Changes the link to the primary (the receiver's part of the status).
    pub fn update_link(&self, change: impl FnOnce(&mut LinkStatus)) {
        self.publish(|s| change(&mut s.link));
    }

    /// Changes the failover mode, status or note (the failover driver's part of the status).
    pub fn update_failover(&self, change: impl FnOnce(&mut FailoverView)) {
        self.publish(|s| change(&mut s.failover));
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
        self.publish(|s| change(s.databases.entry(db.clone()).or_default()));
    }

    /// One database's runtime facts.
    pub fn database(&self, db: &DbName) -> DatabaseRuntime {
        self.read(|s| s.database(db))
    }
}

/// The instance asks the mirror's state about its place in the mirror.
impl crate::instance::role::MemberRole for MirrorState {
    fn is_primary(&self) -> bool {
        self.role() == Role::Primary
    }

    fn may_run_productions(&self) -> bool {
        let (role, deciding) = self.read(|s| (s.role, s.deciding));
        match role {
            Role::NotMember => true,
            // Not while a restarted former primary is still finding out whether it is one, nor
            // while the trouble state holds its writes.
            Role::Primary => !deciding && !self.hub.suspended(),
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;

    /// The receiver reads the driver's hold on the link from the published status, with the
    /// restart decision of the same moment; a member starts free to connect.
    #[test]
    fn the_receiver_may_connect_unless_the_rules_hold_it_back_or_the_member_is_deciding() {
        let state = MirrorState::new(1_000);
        assert!(state.may_connect() && state.rules_allow_connect());
        state.update_failover(|view| view.holds_link = true);
        assert!(!state.may_connect() && !state.rules_allow_connect());
        state.update_failover(|view| view.holds_link = false);
        state.set_deciding(true);
        assert!(
            !state.may_connect(),
            "a restarted former primary decides first"
        );
        assert!(state.rules_allow_connect());
    }

    /// A change published together is read together: a reader never sees the role of one moment
    /// with the failover status of another, however the threads interleave (what the Mirror
    /// Monitor relies on; with one lock per part it would see `Primary` beside `Backup`).
    #[test]
    fn a_reader_sees_every_change_whole() {
        let state = Arc::new(MirrorState::new(1_000));
        let stop = Arc::new(AtomicBool::new(false));
        let flipper = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut primary = false;
                while !stop.load(Ordering::Relaxed) {
                    primary = !primary;
                    state.publish(|s| {
                        s.role = if primary { Role::Primary } else { Role::Backup };
                        s.failover.status = Some(if primary { "Primary" } else { "Backup" });
                    });
                }
            })
        };
        let mut seen = std::collections::BTreeSet::new();
        let mut reads = 0;
        // At least 20 000 reads, and until both roles were seen (the flipper may start late on
        // a busy machine): a bound long enough for a few time slices, not a timing target.
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let both = |seen: &std::collections::BTreeSet<Option<&str>>| {
            seen.contains(&Some("Primary")) && seen.contains(&Some("Backup"))
        };
        while (reads < 20_000 || !both(&seen)) && std::time::Instant::now() < give_up {
            reads += 1;
            let status = state.status();
            let expected = match status.role {
                Role::Primary => Some("Primary"),
                Role::Backup => Some("Backup"),
                _ => None,
            };
            assert_eq!(
                status.failover.status, expected,
                "a torn status: {status:?}"
            );
            seen.insert(expected);
        }
        stop.store(true, Ordering::Relaxed);
        flipper.join().unwrap();
        assert!(
            both(&seen),
            "the reader saw the flipper's changes: {seen:?}"
        );
    }

    /// Two threads changing different parts never undo each other's changes.
    #[test]
    fn changes_to_different_parts_are_all_kept() {
        let state = Arc::new(MirrorState::new(1_000));
        let db = DbName::new("COMPANY").unwrap();
        let threads: Vec<_> = (0..2)
            .map(|part| {
                let (state, db) = (state.clone(), db.clone());
                std::thread::spawn(move || {
                    for _ in 0..5_000 {
                        if part == 0 {
                            state.update_link(|link| link.received_bytes += 1);
                        } else {
                            state.update_database(&db, |d| d.applied = d.applied.next());
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let status = state.status();
        assert_eq!(status.link.received_bytes, 5_000);
        assert_eq!(status.database(&db).applied, JournalPos(5_000));
        assert!(!state.is_settled_primary());
        state.publish(|s| {
            s.role = Role::Primary;
            s.deciding = true;
        });
        assert!(!state.is_settled_primary(), "still deciding");
        state.set_deciding(false);
        assert!(state.is_settled_primary());
    }
}
