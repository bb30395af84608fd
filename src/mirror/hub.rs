//! The primary's side of journal transfer: who is connected, what they have acknowledged, and
//! the wait that makes a commit synchronous.
//!
//! # Publishing
//!
//! The writer appends a batch to the mirror journal *through* the hub ([`Hub::publish`]): under
//! the hub's lock the frames are written to the journal file and put in every connected
//! member's [`Outbox`] — which usually means written to the member's socket right there, by the
//! writer, without waiting for another thread. A member that connects registers under the same
//! lock and learns the journal's appended end at that instant: it reads everything up to there
//! from the files and gets everything after it from its outbox. No batch can fall between the
//! two.
//!
//! Batches are shipped *before* the primary's own fsync, so the backup's disk write overlaps the
//! primary's. Once the active backup acknowledged a batch, the writer commits it and announces
//! it committed ([`Hub::committed`]); members apply (dejournal) nothing beyond what the primary
//! committed, so records a crashed primary never committed are never visible anywhere, and can
//! be cut from a member's journal.
//!
//! # Synchronous commit
//!
//! A failover member whose acknowledgements reach the journal end it was shown when it
//! connected becomes *active*: from then on a batch counts as acknowledged
//! ([`Hub::acknowledgement`]) only once the active backup acknowledged it — one round trip for
//! the whole batch (group commit). The writer never blocks on it: the hub wakes it when an
//! acknowledgement covers the batch it waits for. If the acknowledgement does not come within
//! the quality of service timeout, the backup loses its active status and its connection (it
//! reconnects and catches up). Asyncs never delay a commit. A member cannot acknowledge what it
//! was never sent: such an acknowledgement ends its link.
//!
//! # The trouble state
//!
//! Losing an active backup (its connection breaks, another connection replaces it, or the QoS
//! timeout revokes it) *suspends* acknowledgements at once, under the same lock that saw the
//! loss: waiting batches stay uncommitted and new mirrored writes wait before they begin
//! ([`Hub::may_commit`]), because the backup may be about to take over without them. Only the
//! failover rules lift the suspension ([`Hub::resume`]) — when the backup comes back
//! non-active, or when the trouble timeout has passed and the backup can no longer take over.
//! The hub sends every change of the failover link to the failover driver's channel as a
//! failover [`Event`], under its lock, so none is missed or reordered. A lift is refused when a newer loss happened since the
//! driver looked (the loss generation), so a stale decision can never release writes a fresh
//! loss must hold.
//!
//! # Time
//!
//! Every decision about time here — how long a batch waited (QoS revocation, and what load
//! balancers are told), how long writes were held, when a member was last heard from — reads
//! the hub's [`Clock`], passed in: the member's (the machine's, from
//! `InstanceSettings::clock`), one that moves only when told in the tests, so they check the
//! QoS boundary to the millisecond without sleeping. The writer's `since` comes from the same
//! clock: a member gives its writer, hub, failover driver and receiver one.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::journal::{Journal, JournalPos};

use super::core::replication::{self, AtAck, LinkFacts, Verdict, at_ack};
use super::events::EventLog;
use super::failover::Event;
use super::outbox::Outbox;
use super::protocol::Control;
use super::state::DriverInput;
use crate::config::mirror::{MemberInfo, MemberKind, MemberName};

#[derive(Debug)]
struct Link {
    id: u64,
    member: MemberInfo,
    outbox: Arc<Outbox>,
    acked: JournalPos,
    /// The journal end when the member connected; acknowledging it makes a backup active.
    activation_point: JournalPos,
    active: bool,
    connected_ms: i64,
    last_heard_ms: i64,
    dejournaling: String,
    /// The failover driver was already told this link is lost (revoked before it closed).
    reported_lost: bool,
    /// The member stood down on this link (it is leaving): it never becomes active on it again.
    stood_down: bool,
}

impl Link {
    /// The member stood down on this link: it stops being active and never becomes active on
    /// it again.
    fn stand_down(&mut self) {
        self.active = false;
        self.stood_down = true;
    }
}

impl Drop for Link {
    /// A link leaves the hub only when its connection is to end: the sender thread writes what
    /// is queued and closes.
    fn drop(&mut self) {
        self.outbox.hang_up();
    }
}

/// A connected member as the monitor shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkView {
    /// The member.
    pub member: MemberInfo,
    /// Its durable end.
    pub acked: JournalPos,
    /// Whether commits wait for it.
    pub active: bool,
    /// When it connected.
    pub connected_ms: i64,
    /// What it last said about its dejournaling.
    pub dejournaling: String,
    /// Commit time of the oldest record it lacks, if it lacks any.
    pub behind_since_ms: Option<i64>,
    /// Journal bytes published after its durable end (as far as the recent batches tell).
    pub behind_bytes: u64,
}

#[derive(Debug, Default)]
struct HubState {
    /// A new primary waits for its first write after a takeover, to record the outage.
    outage: Option<OutageWatch>,
    appended_end: JournalPos,
    /// What the writer committed: durable here and acknowledged by the active backup (or
    /// durable here with no backup active). Members apply nothing beyond it.
    committed_end: JournalPos,
    /// The batch the writer waits for: its last position and since when it waits.
    waiting_for: Option<(JournalPos, Instant)>,
    links: Vec<Link>,
    next_id: u64,
    /// (last position, commit time, journal bytes published up to it) of recent batches, to
    /// say how far behind a member is.
    batch_times: VecDeque<(u64, i64, u64)>,
    /// Journal bytes published since this process started, and up to the newest batch that
    /// `batch_times` no longer holds.
    published_bytes: u64,
    forgotten_bytes: u64,
    /// Time spent in the trouble state before the current one, and since when the current one
    /// lasts (for `mirrorlab_trouble_seconds_total`).
    trouble_before: Duration,
    trouble_since: Option<Instant>,
    /// When each member that is not connected lost its connection.
    disconnected: HashMap<MemberName, i64>,
    /// Acknowledgements are held (the trouble state, see the module essay).
    suspended: bool,
    /// Bumped whenever losing an active backup suspends acknowledgements.
    loss_gen: u64,
    /// The hub is closing: waiting batches are answered as not acknowledged.
    closing: bool,
    /// The token of the backup's latest activation (see `Control::Activated`); 0 before one.
    last_activation: u64,
    /// Bumped whenever the hub starts serving (on becoming primary): the failover driver drops
    /// the events of an earlier term.
    term: u64,
}

impl HubState {
    /// Journal bytes published after `pos`: what a member that acknowledged `pos` lacks (from
    /// the oldest batch remembered, for a member further behind).
    fn bytes_after(&self, pos: JournalPos) -> u64 {
        let through = self
            .batch_times
            .iter()
            .take_while(|(end, ..)| *end <= pos.0)
            .last()
            .map_or(self.forgotten_bytes, |(.., bytes)| *bytes);
        self.published_bytes.saturating_sub(through)
    }

    /// An active backup is gone (at `now`): hold acknowledgements until the failover rules
    /// decide.
    fn lost_active(&mut self, now: Instant) {
        self.set_suspended(true, now);
        self.loss_gen += 1;
    }

    /// Holds or releases acknowledgements (at `now`), and keeps the time spent holding them.
    fn set_suspended(&mut self, suspended: bool, now: Instant) -> bool {
        match (self.suspended, suspended) {
            (false, true) => self.trouble_since = Some(now),
            (true, false) => {
                if let Some(since) = self.trouble_since.take() {
                    self.trouble_before += now.saturating_duration_since(since);
                }
            }
            _ => {}
        }
        std::mem::replace(&mut self.suspended, suspended)
    }
}

/// What a new primary needs to tell, at its first write, how long writes stopped.
#[derive(Debug, Clone)]
struct OutageWatch {
    /// The takeover's own record: the first write is the first commit after it.
    after: JournalPos,
    /// When writes stopped: the old primary's last write this member holds (see the takeover
    /// step, which sets it).
    last_old_ms: i64,
}

use crate::instance::writer::replication::Replication;
pub use crate::instance::writer::replication::{Acknowledged, Waker};

/// Batches remembered for lag displays.
const BATCH_TIMES_KEPT: usize = 20_000;

/// The primary's replication state.
pub struct Hub {
    state: Mutex<HubState>,
    qos_ms: AtomicU64,
    waker: Mutex<Option<Waker>>,
    /// The failover driver's channel: the link's events go there, sent under the state lock
    /// so that they are in the channel, in order, before anyone can see the change they report.
    driver: mpsc::Sender<DriverInput>,
    /// Where the first write after a takeover is recorded ([`super::events`]).
    events: EventLog,
    /// What the waits and the times shown are read from ([`crate::clock`]).
    clock: Arc<dyn Clock>,
}

/// How long a batch may wait for the active backup's acknowledgement before this primary stops
/// telling load balancers it acknowledges writes: a quarter of the QoS timeout, but never less
/// than 500 ms nor more than half the QoS.
///
/// A quarter leaves a balancer three quarters of the QoS to move writes elsewhere before the
/// backup may take over (at the lab's 2 s, its HAProxy's two failed checks half a second apart
/// fit). The floor is for a healthy primary on a busy machine: a loaded disk's fsync or a
/// starved thread can hold one batch a few hundred milliseconds, and at a quarter of a 1 s QoS
/// (250 ms) that once made a healthy primary say FAILED. The ceiling keeps the floor from eating
/// the margin at short timeouts.
pub fn longest_ack_wait(qos: Duration) -> Duration {
    (qos / 4).max(Duration::from_millis(500)).min(qos / 2)
}

impl Hub {
    /// A hub with the given quality of service timeout, telling the failover driver through
    /// `driver`.
    pub fn new(qos_ms: u64, driver: mpsc::Sender<DriverInput>, events: EventLog) -> Hub {
        Hub::with_clock(qos_ms, driver, events, Arc::new(SystemClock))
    }

    /// [`Hub::new`] reading time from `clock` (a test's, which moves only when told).
    pub fn with_clock(
        qos_ms: u64,
        driver: mpsc::Sender<DriverInput>,
        events: EventLog,
        clock: Arc<dyn Clock>,
    ) -> Hub {
        Hub {
            state: Mutex::new(HubState::default()),
            qos_ms: AtomicU64::new(qos_ms),
            waker: Mutex::new(None),
            driver,
            events,
            clock,
        }
    }

    /// After a takeover: the first commit after `after` (the takeover's record) is the first
    /// write of the new primary, and writes stopped at `last_old_ms` (the old primary's last
    /// write this member holds). Recorded then as [`super::events::EventKind::WritesResumed`].
    pub fn watch_outage(&self, after: JournalPos, last_old_ms: i64) {
        self.state.lock().unwrap().outage = Some(OutageWatch { after, last_old_ms });
    }

    /// Tells the failover driver what happened to the link with the backup. Called with the
    /// state lock held (see `driver`).
    fn report(&self, state: &HubState, event: Event) {
        // The driver's receiving side lives as long as the mirror's state: a send cannot fail.
        let _ = self.driver.send(DriverInput::Hub {
            event,
            term: state.term,
        });
    }

    /// Tells the writer to look at its waiting batch again. Called after the change, with the
    /// state lock released; the waker never blocks.
    fn wake(&self) {
        if let Some(waker) = self.waker.lock().unwrap().as_ref() {
            waker();
        }
    }

    /// The quality of service timeout.
    pub fn qos(&self) -> Duration {
        Duration::from_millis(self.qos_ms.load(Ordering::Relaxed))
    }

    /// Changes the quality of service timeout.
    pub fn set_qos(&self, ms: u64) {
        self.qos_ms.store(ms, Ordering::Relaxed);
    }

    /// Starts serving a journal that ends at `end` (on becoming primary).
    pub fn reset(&self, end: JournalPos) {
        let mut state = self.state.lock().unwrap();
        state.appended_end = end;
        state.committed_end = end;
        state.waiting_for = None;
        state.set_suspended(false, self.clock.now());
        state.closing = false;
        state.outage = None;
        // Events reported before this are about an earlier term's links.
        state.term += 1;
    }

    /// The hub's term: bumped whenever it starts serving. An event reported in an earlier
    /// term is stale.
    pub fn term(&self) -> u64 {
        self.state.lock().unwrap().term
    }

    /// The loss generation: bumped whenever losing an active backup suspends acknowledgements.
    /// Read *before* taking the driver's messages, it is never newer than the events taken: the
    /// event of every loss it counts was sent under the same lock, so it is already in the
    /// channel.
    pub fn loss_generation(&self) -> u64 {
        self.state.lock().unwrap().loss_gen
    }

    /// Holds acknowledgements (the failover rules entered the trouble state).
    pub fn suspend(&self) {
        self.state
            .lock()
            .unwrap()
            .set_suspended(true, self.clock.now());
    }

    /// Releases acknowledgements, unless an active backup was lost after generation `seen`
    /// (the caller decided without knowing it). True when released.
    pub fn resume(&self, seen: u64) -> bool {
        let mut state = self.state.lock().unwrap();
        if state.loss_gen != seen {
            return false;
        }
        let was = state.set_suspended(false, self.clock.now());
        drop(state);
        if was {
            tracing::info!("mirror: the trouble state is over; commits are acknowledged again");
        }
        self.wake();
        true
    }

    /// Whether acknowledgements are held.
    pub fn suspended(&self) -> bool {
        self.state.lock().unwrap().suspended
    }

    /// Time mirrored commits were held in the trouble state since this process started.
    pub fn trouble_time(&self) -> Duration {
        let state = self.state.lock().unwrap();
        state.trouble_before
            + state
                .trouble_since
                .map_or(Duration::ZERO, |t| self.clock.since(t))
    }

    /// The last published and the last committed position.
    pub fn ends(&self) -> (JournalPos, JournalPos) {
        let state = self.state.lock().unwrap();
        (state.appended_end, state.committed_end)
    }

    /// The last committed position: what members may apply.
    pub fn committed_end(&self) -> JournalPos {
        self.state.lock().unwrap().committed_end
    }

    /// Registers a member that will receive everything after `snapshot` (returned) through its
    /// outbox, and must be sent what it lacks up to `snapshot` from the journal files first.
    pub fn register(&self, member: MemberInfo) -> Result<(u64, Arc<Outbox>, JournalPos)> {
        let mut state = self.state.lock().unwrap();
        if let Some(old) = state
            .links
            .iter()
            .position(|l| l.member.name == member.name)
        {
            // The same member reconnecting: its old connection is dead. Losing it counts as
            // losing any link — an active one suspends acknowledgements and the failover rules
            // decide — and the new link starts non-active: it becomes active only by catching
            // up (see `on_ack`).
            let old = state.links.remove(old);
            old.outbox.close("replaced by a new connection".into());
            if old.member.kind == MemberKind::Failover && !old.reported_lost {
                if old.active {
                    state.lost_active(self.clock.now());
                }
                self.report(&state, Event::PartnerLost);
            }
        }
        if member.kind == MemberKind::Failover
            && let Some(other) = state
                .links
                .iter()
                .find(|l| l.member.kind == MemberKind::Failover)
        {
            return Err(Error::Conflict(format!(
                "the mirror already has a backup failover member connected ({})",
                other.member.name
            )));
        }
        let outbox = Arc::new(Outbox::new());
        state.next_id += 1;
        let id = state.next_id;
        let snapshot = state.appended_end;
        let now = self.clock.now_ms();
        state.disconnected.remove(&member.name);
        state.links.push(Link {
            id,
            member,
            outbox: outbox.clone(),
            acked: JournalPos::ZERO,
            activation_point: snapshot,
            active: false,
            connected_ms: now,
            last_heard_ms: now,
            dejournaling: String::new(),
            reported_lost: false,
            stood_down: false,
        });
        if state.links.last().unwrap().member.kind == MemberKind::Failover {
            self.report(&state, Event::PartnerConnected);
        }
        Ok((id, outbox, snapshot))
    }

    /// Forgets a member's connection.
    pub fn unregister(&self, id: u64, why: &str) {
        let mut state = self.state.lock().unwrap();
        if let Some(i) = state.links.iter().position(|l| l.id == id) {
            let link = state.links.remove(i);
            tracing::warn!("mirror: {} disconnected: {why}", link.member.name);
            if link.member.kind == MemberKind::Failover && !link.reported_lost {
                // Ordering: the suspension is set under the lock that removes the link, before
                // any waiting batch can see that no active backup is left.
                if link.active {
                    state.lost_active(self.clock.now());
                }
                self.report(&state, Event::PartnerLost);
            }
            state
                .disconnected
                .insert(link.member.name.clone(), self.clock.now_ms());
        }
        drop(state);
        self.wake();
    }

    /// Records a member's acknowledgement; a backup that has caught up becomes active.
    pub fn on_ack(&self, id: u64, pos: JournalPos) {
        let mut state = self.state.lock().unwrap();
        let appended = state.appended_end;
        let Some(link) = state.links.iter_mut().find(|l| l.id == id) else {
            return;
        };
        let facts = LinkFacts {
            failover: link.member.kind == MemberKind::Failover,
            active: link.active,
            reported_lost: link.reported_lost,
            stood_down: link.stood_down,
            activation_point: link.activation_point,
        };
        // The decision is the member core's (see `core::replication`).
        let verdict = at_ack(facts, pos, link.acked, appended);
        if verdict == AtAck::Forged {
            // Nobody acknowledges what was never sent: a confused or forged member. Its link
            // ends; it never counts as active on it.
            let why = format!("it acknowledged position {pos}, beyond what was sent ({appended})");
            tracing::warn!("mirror: {}: {why}", link.member.name);
            link.outbox.close(why);
            return;
        }
        link.acked = link.acked.max(pos);
        link.last_heard_ms = self.clock.now_ms();
        let (active, acked) = (link.active, link.acked);
        if verdict == AtAck::Activate {
            link.active = true;
            tracing::info!(
                "mirror: {} is the active backup (journal transfer Active)",
                link.member.name
            );
            // Random and non-zero (0 means "never activated").
            let activation = crate::util::random_u64().max(1);
            link.outbox.control(&Control::Activated { activation });
            state.last_activation = activation;
            self.report(&state, Event::PartnerActive);
        }
        let waited_for = state
            .waiting_for
            .is_some_and(|(last, _)| active && acked >= last);
        drop(state);
        if waited_for {
            self.wake();
        }
    }

    /// The backup stood down on this link (Demote To DR, Stop Mirror, a graceful shutdown): it is
    /// no longer active, acknowledgements on this link never make it active again (it is
    /// leaving), and losing its connection next is no trouble.
    pub fn on_stood_down(&self, id: u64) {
        let mut state = self.state.lock().unwrap();
        if let Some(link) = state
            .links
            .iter_mut()
            .find(|l| l.id == id && l.member.kind == MemberKind::Failover)
        {
            link.stand_down();
            self.report(&state, Event::PartnerStoodDown);
        }
        drop(state);
        self.wake();
    }

    /// The arbiter relayed the backup's stand-down ending `activation` (the data channel is what
    /// the backup lost, so its word came the other way). If that is still the latest activation,
    /// the active link it was granted on stops being active and never becomes active again —
    /// commits stop waiting for it now instead of at the QoS timeout. A link made since (not
    /// active yet) is left alone: it may still catch up. Reports nothing: the driver passes the
    /// stand-down to its rules itself. True when a link stopped being active.
    pub fn relayed_stand_down(&self, activation: u64) -> bool {
        let mut state = self.state.lock().unwrap();
        if state.last_activation != activation {
            return false;
        }
        let mut ended = false;
        for link in state.links.iter_mut().filter(|l| l.active) {
            link.stand_down();
            ended = true;
        }
        drop(state);
        if ended {
            self.wake();
        }
        ended
    }

    /// Whether `activation` is the backup's latest activation: a stand-down relayed by the
    /// arbiter for an older one was overtaken (the backup reconnected and became active again
    /// since) and must not end the current one.
    pub fn is_latest_activation(&self, activation: u64) -> bool {
        self.state.lock().unwrap().last_activation == activation
    }

    /// The token of the backup's latest activation (0 before any).
    pub fn last_activation(&self) -> u64 {
        self.state.lock().unwrap().last_activation
    }

    /// Sends a control message to one connected member; false when it is not connected.
    pub fn tell(&self, member: &str, control: Control) -> bool {
        let state = self.state.lock().unwrap();
        state
            .links
            .iter()
            .find(|l| l.member.name == member)
            .is_some_and(|l| {
                l.outbox.control(&control);
                l.outbox.is_open()
            })
    }

    /// The backup reports its failover mode.
    pub fn on_partner_mode(&self, id: u64, arbiter: bool) {
        let state = self.state.lock().unwrap();
        if state
            .links
            .iter()
            .any(|l| l.id == id && l.member.kind == MemberKind::Failover)
        {
            let mode = if arbiter {
                super::failover::Mode::Arbiter
            } else {
                super::failover::Mode::Agent
            };
            self.report(&state, Event::PartnerMode(mode));
        }
    }

    /// Records a member's report about its dejournaling.
    pub fn on_status(&self, id: u64, dejournaling: String) {
        let mut state = self.state.lock().unwrap();
        if let Some(link) = state.links.iter_mut().find(|l| l.id == id) {
            link.dejournaling = dejournaling;
            link.last_heard_ms = self.clock.now_ms();
        }
    }

    /// Moves the published end as if batches up to `end` had been published.
    #[cfg(test)]
    fn publish_end_for_tests(&self, end: JournalPos) {
        self.state.lock().unwrap().appended_end = end;
    }

    /// Sends a control message to every connected member.
    pub fn announce(&self, control: Control) {
        let state = self.state.lock().unwrap();
        for link in &state.links {
            link.outbox.control(&control);
        }
    }

    /// Whether this primary would acknowledge a write now (for load balancers): not in
    /// trouble or closing, no batch waiting for the backup longer than
    /// [`longest_ack_wait`] (a backup syncs in milliseconds), and an active backup (if any)
    /// heard from within half a QoS (it acknowledges at least every quarter). A primary cut off
    /// from its backup stops saying so well before the QoS timeout lets the backup take over,
    /// so a load balancer sends writes elsewhere in time.
    pub fn acknowledging_now(&self) -> bool {
        let qos = self.qos();
        let state = self.state.lock().unwrap();
        if state.suspended || state.closing {
            return false;
        }
        if state
            .waiting_for
            .is_some_and(|(_, since)| self.clock.since(since) > longest_ack_wait(qos))
        {
            return false;
        }
        let now = self.clock.now_ms();
        state
            .links
            .iter()
            .filter(|l| l.active)
            .all(|l| now - l.last_heard_ms <= (qos / 2).as_millis() as i64)
    }

    /// The connected members, for the monitor.
    pub fn links(&self) -> Vec<LinkView> {
        let state = self.state.lock().unwrap();
        state
            .links
            .iter()
            .map(|l| LinkView {
                member: l.member.clone(),
                acked: l.acked,
                active: l.active,
                connected_ms: l.connected_ms,
                dejournaling: l.dejournaling.clone(),
                behind_since_ms: if l.acked >= state.appended_end {
                    None
                } else {
                    state
                        .batch_times
                        .iter()
                        .find(|(end, ..)| *end > l.acked.0)
                        .map(|(_, t, _)| *t)
                },
                behind_bytes: state.bytes_after(l.acked),
            })
            .collect()
    }

    /// When a member that is not connected lost its connection.
    pub fn disconnected_at(&self, member: &str) -> Option<i64> {
        self.state.lock().unwrap().disconnected.get(member).copied()
    }

    /// Whether a failover member (the backup) is connected.
    pub fn has_failover_link(&self) -> bool {
        self.state
            .lock()
            .unwrap()
            .links
            .iter()
            .any(|l| l.member.kind == MemberKind::Failover)
    }

    /// Whether an active backup is connected.
    pub fn has_active_backup(&self) -> bool {
        self.state.lock().unwrap().links.iter().any(|l| l.active)
    }

    /// Closes every connection (on losing the primary role or shutting down); batches still
    /// waiting are answered as not acknowledged.
    pub fn close_all(&self, why: &str) {
        let mut state = self.state.lock().unwrap();
        state.closing = true;
        for link in state.links.drain(..) {
            link.outbox.close(why.to_string());
        }
        drop(state);
        self.wake();
    }
}

/// The writer's seam (see [`Replication`]).
impl Replication for Hub {
    /// Appends a batch to the mirror journal and hands it to every connected member, as one
    /// step under the hub's lock (see the module essay).
    fn publish(
        &self,
        journal: &mut Journal,
        frames: &[u8],
        first: JournalPos,
        last: JournalPos,
    ) -> Result<()> {
        let mut state = self.state.lock().unwrap();
        journal.append(frames, last, last.0 + 1 - first.0)?;
        state.appended_end = last;
        // Usually this writes the batch to each member's socket right here (see `outbox`).
        for link in &state.links {
            link.outbox.frames(first, last, frames);
        }
        state.published_bytes += frames.len() as u64;
        let published = state.published_bytes;
        state
            .batch_times
            .push_back((last.0, self.clock.now_ms(), published));
        if state.batch_times.len() > BATCH_TIMES_KEPT
            && let Some((.., bytes)) = state.batch_times.pop_front()
        {
            state.forgotten_bytes = bytes;
        }
        Ok(())
    }

    /// Where the acknowledgement of the batch ending at `last`, waiting since `since`, stands
    /// (never blocks: the writer is woken when it may have changed). A backup that has not
    /// acknowledged within the quality of service timeout loses its active status and its
    /// connection here, which starts the trouble state: the batch then waits until the
    /// failover rules lift it.
    fn acknowledgement(&self, last: JournalPos, since: Instant) -> Acknowledged {
        let qos = self.qos();
        let mut state = self.state.lock().unwrap();
        let active = state.links.iter().position(|l| l.active);
        // The decision is the member core's (see `core::replication`).
        let verdict = replication::acknowledgement(
            state.closing,
            state.suspended,
            active.map(|i| state.links[i].acked),
            last,
            self.clock.since(since),
            qos,
        );
        let answer = match verdict {
            Verdict::Closed => Acknowledged::Closed,
            Verdict::Waiting => Acknowledged::Waiting,
            Verdict::Yes => Acknowledged::Yes,
            Verdict::Revoke => {
                let i = active.expect("only an active backup is revoked");
                let why = format!(
                    "it did not acknowledge journal position {last} within the QoS timeout ({} ms)",
                    qos.as_millis()
                );
                let link = &mut state.links[i];
                link.active = false;
                link.reported_lost = true;
                let name = link.member.name.clone();
                link.outbox.close(why.clone());
                tracing::warn!("mirror: {name} is no longer the active backup: {why}");
                // The trouble state begins (acknowledgements suspended): the batch waits for
                // the failover rules to end it.
                state.lost_active(self.clock.now());
                self.report(&state, Event::PartnerLost);
                Acknowledged::Waiting
            }
        };
        state.waiting_for = (answer == Acknowledged::Waiting).then_some((last, since));
        answer
    }

    /// The writer committed everything up to `pos` (durable here and acknowledged by the active
    /// backup): every member may apply it. Members apply nothing beyond it, so records a
    /// primary never committed are never visible anywhere, and can be cut from a member's
    /// journal or undone.
    fn committed(&self, pos: JournalPos) {
        let mut state = self.state.lock().unwrap();
        state.committed_end = state.committed_end.max(pos);
        if let Some(watch) = state.outage.take_if(|watch| pos > watch.after) {
            // Acknowledged now: durable here, and there is no active backup yet to wait for.
            let outage = self.clock.now_ms() - watch.last_old_ms;
            self.events.record_outage(
                format!(
                    "first write acknowledged after the takeover: writes stopped for {outage} ms \
                     (from the old primary's last write this member holds)"
                ),
                pos,
                outage,
            );
        }
        let control = Control::Durable { pos };
        for link in &state.links {
            link.outbox.control(&control);
        }
    }

    /// Whether mirrored writes may begin now: not in the trouble state, not closing. The
    /// writer holds mirrored batches before `BEGIN` while they may not, so nothing a takeover
    /// would undo is ever committed here.
    fn may_commit(&self) -> bool {
        let state = self.state.lock().unwrap();
        !state.suspended && !state.closing
    }

    fn qos(&self) -> Duration {
        Hub::qos(self)
    }

    /// Sets what to call when a wait may have ended (the writer's wake-up).
    fn set_waker(&self, waker: Waker) {
        *self.waker.lock().unwrap() = Some(waker);
    }

    fn close(&self, why: &str) {
        self.close_all(why);
    }
}

#[cfg(test)]
mod tests;
