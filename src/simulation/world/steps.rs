//! The world's invariants and its steps.
//!
//! [`World::check`] is what must hold after every step: at most one member acknowledges
//! writes, and once nothing is in flight, what each member's rules believe of its arbiter link
//! and what the monitors show agree with the arbiter. [`World::steps`] lists what may happen
//! next from a state — within a [`Budget`] of faults and writes, and never a notice before its
//! time — and [`World::apply`] makes one of them happen; the explorer walks every order of
//! them, the simulation picks one at random. Beside them, what a step sets off: how a write
//! ends, a hub's revocation, a backup's stall, a restarted former primary's decision.
//!
//! Invariant: a step never fails by itself — an `Err` from [`World::apply`] is a broken rule
//! (a takeover by a member that lacks acknowledged writes and did not fetch them, a member that
//! may not take over asking the agent), reported with the path that led to it.

use super::*;
use crate::mirror::failover::{OtherMember, Restart, restart_as};

/// One step of the world: what may happen next (see the module essay of [`super`] for the
/// list in words).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    Deliver(usize),
    /// Deliver an agent's "the primary is down, here is its journal" as "… but its journal could
    /// not be fetched".
    DeliverWithoutJournal(usize),
    Advance,
    CutLink,
    HealLink,
    CutArbiterLink(usize),
    HealArbiterLink(usize),
    ConnectArbiter(usize),
    Crash(usize),
    CrashHost(usize),
    Shutdown(usize),
    Restart(usize),
    Stall(usize),
    /// A one-way partition: what the arbiter sends no longer reaches member `i`, which notices
    /// the silence and closes its side; the arbiter notices later
    /// ([`Step::ArbiterNoticesClose`]), and until then still counts `i` as connected.
    ArbiterGoesQuiet(usize),
    /// The arbiter notices that member `i` closed a connection that went quiet.
    ArbiterNoticesClose(usize),
    /// The whole host of a member is frozen (paused), and later thawed.
    Freeze(usize),
    /// Member `i`'s agent process stops (its host and instance run on), and later starts again.
    StopAgent(usize),
    StartAgent(usize),
    /// The others notice that a frozen member went silent: no sooner than half a QoS after it
    /// froze (the arbiter and the hub wait for a QoS of silence, less a heartbeat), and no later
    /// than a QoS.
    NoticeSilence(usize),
    Thaw(usize),
    Decide(usize),
    Connect,
    CatchUp,
    HalfOpen,
    PrimaryNoticesHalfOpen,
    RepeatMode,
    ForceDown,
    StopMirror,
    StartMirror,
    SetNoFailover,
    ClearNoFailover,
    Unready,
    Ready,
    Write,
}

impl World {
    // -----------------------------------------------------------------------------------------
    // The invariants

    /// Whether member `i` can acknowledge a write now: it commits, and either does not wait for
    /// a backup or has a channel on which the backup's acknowledgement can come.
    pub(crate) fn acknowledges(&self, i: usize) -> bool {
        let m = &self.m[i];
        // A frozen primary answers nobody.
        m.role() == Some(FailoverRole::Primary)
            && m.frozen.is_none()
            && m.rules().accepts_writes()
            && (!m.rules().active()
                || self
                    .channel
                    .is_some_and(|c| c.primary == i && !c.half_open && self.link))
    }

    pub(crate) fn check(&self) -> Result<(), String> {
        if self.acknowledges(0) && self.acknowledges(1) {
            return Err("both members acknowledge writes".into());
        }
        if !self.inbox.is_empty() {
            return Ok(());
        }
        // Nothing in flight: the rules know whether their arbiter link is up (rules that believe
        // it down never follow the primary into arbiter mode, and never ask the arbiter when the
        // primary is lost).
        for i in [0, 1] {
            let m = &self.m[i];
            if m.role().is_some()
                && m.frozen.is_none()
                && m.arbiter != m.rules().arbiter_connected()
            {
                return Err(format!(
                    "member {i}'s arbiter link is {}, but its rules believe it {}",
                    if m.arbiter { "up" } else { "down" },
                    if m.rules().arbiter_connected() {
                        "up"
                    } else {
                        "down"
                    }
                ));
            }
        }
        // What the monitors show must be what the arbiter holds.
        for i in [0, 1] {
            let m = &self.m[i];
            if m.role().is_some()
                && m.frozen.is_none()
                && m.arbiter
                && m.rules().mode() == Mode::Arbiter
            {
                let primary = self.primary();
                let backed = self.book.primary_in_arbiter_mode
                    && !self.book.backup_took_over
                    && primary.is_some_and(|p| self.m[p].epoch == self.book_epoch);
                if !backed {
                    return Err(format!(
                        "member {i} shows Arbiter Controlled, but the arbiter would refuse the \
                         backup a takeover (book of epoch {}: {:?})",
                        self.book_epoch, self.book
                    ));
                }
            }
        }
        // A backup process that was granted a takeover either carried it out (a newer epoch) or
        // stood down; one that died with the grant owes a stand-down from its next start.
        let carried_out = self
            .m
            .iter()
            .any(|m| m.was_primary && m.epoch > self.book_epoch);
        let stuck = self.slot_backup.is_some_and(|b| {
            let m = &self.m[b];
            m.arbiter && m.role() == Some(FailoverRole::Backup) && m.owed_stand_down.is_none()
        });
        if self.book.backup_took_over && !carried_out && stuck {
            return Err(format!(
                "the arbiter booked a takeover in epoch {} that nobody carried out: the old \
                 primary can never start again",
                self.book_epoch
            ));
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Steps

    pub(crate) fn steps(&self, budget: Budget) -> Vec<Step> {
        let mut steps = Vec::new();
        for i in 0..self.inbox.len() {
            if self.deliverable(i) {
                steps.push(Step::Deliver(i));
                if self.inbox[i].event == Event::Agent(AgentAnswer::PrimaryDown { journal: true }) {
                    steps.push(Step::DeliverWithoutJournal(i));
                }
            }
        }
        // A frozen member notices nothing until it thaws: its notices hold no clock back.
        let earliest = self
            .inbox
            .iter()
            .filter(|d| self.m[d.to].frozen.is_none())
            .filter_map(|d| d.deadline)
            .chain(self.m.iter().filter_map(|m| match m.frozen {
                Some(since) if !m.silence_noticed => Some(since + QOS),
                _ => None,
            }))
            .min();
        if earliest.is_none_or(|d| self.now + STEP_MS <= d) && self.now < self.horizon_ms {
            steps.push(Step::Advance);
        }
        let fault = self.faults < budget.faults;
        if fault && self.link {
            steps.push(Step::CutLink);
        }
        if !self.link {
            steps.push(Step::HealLink);
        }
        for i in [0, 1] {
            let m = &self.m[i];
            if self.with_arbiter {
                if fault && self.arbiter_link[i] {
                    steps.push(Step::CutArbiterLink(i));
                    if self.one_way && m.arbiter {
                        steps.push(Step::ArbiterGoesQuiet(i));
                    }
                }
                if self.arbiter_close_pending[i] {
                    steps.push(Step::ArbiterNoticesClose(i));
                }
                if !self.arbiter_link[i] {
                    steps.push(Step::HealArbiterLink(i));
                }
                // The arbiter link reconnects once its loss (or a refusal) was reported.
                let loss_reported = !self.inbox.iter().any(|d| {
                    d.to == i
                        && d.queue == Queue::Arbiter
                        && matches!(d.event, Event::ArbiterLost | Event::PartnerIsPrimary)
                });
                if self.arbiter_link[i]
                    && m.host
                    && m.frozen.is_none()
                    && !m.arbiter
                    && loss_reported
                    && matches!(m.role(), Some(FailoverRole::Primary | FailoverRole::Backup))
                {
                    steps.push(Step::ConnectArbiter(i));
                }
            }
            if let Some(since) = m.frozen {
                steps.push(Step::Thaw(i));
                if !m.silence_noticed && self.now >= since + QOS / 2 {
                    steps.push(Step::NoticeSilence(i));
                }
            } else if m.up {
                if fault {
                    steps.push(Step::Crash(i));
                    steps.push(Step::CrashHost(i));
                    steps.push(Step::Shutdown(i));
                    if m.role().is_some() {
                        steps.push(Step::Freeze(i));
                    }
                }
            } else if !self
                .inbox
                .iter()
                .any(|d| d.to == 1 - i && d.event == Event::PartnerHandsOver)
            {
                // A primary that handed over stops only once the backup closed the link (it
                // took over) or a QoS timeout passed (a backup stalled that long drops the
                // handover): it never restarts before the backup acted on it.
                steps.push(Step::Restart(i));
            }
            let frozen = |i: usize| self.m[i].frozen.is_some();
            if fault && m.role() == Some(FailoverRole::Backup) && !frozen(i) {
                steps.push(Step::Stall(i));
            }
            if fault && m.agent_answers() {
                steps.push(Step::StopAgent(i));
            }
            if m.host && !m.agent {
                steps.push(Step::StartAgent(i));
            }
            if m.deciding && self.link && self.m[1 - i].agent_answers() {
                steps.push(Step::Decide(i));
            }
        }
        if let (Some(p), Some(b)) = (self.primary(), self.backup()) {
            let quiet = |i: usize| {
                !self
                    .inbox
                    .iter()
                    .any(|d| d.to == i && d.event == Event::PartnerLost)
            };
            let fresh = self.channel.is_none_or(|c| c.half_open && c.primary == p);
            if self.link
                && fresh
                && self.m[p].frozen.is_none()
                && self.m[b].frozen.is_none()
                && self.m[b].primary == p
                && !self.m[b].stopped
                && self.m[b].rules().may_connect()
                && quiet(b)
                && quiet(p)
            {
                steps.push(Step::Connect);
            }
            if let Some(c) = self.channel
                && !c.half_open
                && c.primary == p
            {
                if !self.m[p].rules().active() {
                    steps.push(Step::CatchUp);
                }
                if fault {
                    steps.push(Step::HalfOpen);
                    steps.push(Step::StopMirror);
                }
                let repeating = self
                    .inbox
                    .iter()
                    .any(|d| d.event == Event::PartnerMode(Mode::Arbiter));
                if self.m[p].rules().repeats_arbiter_mode()
                    && self.m[b].rules().mode() == Mode::Agent
                    && !repeating
                {
                    steps.push(Step::RepeatMode);
                }
            }
            if fault && self.m[b].ready {
                steps.push(Step::Unready);
            }
            if fault && self.no_failover.is_none() {
                steps.push(Step::SetNoFailover);
            }
        }
        if self
            .channel
            .is_some_and(|c| c.half_open && self.m[c.primary].frozen.is_none())
        {
            steps.push(Step::PrimaryNoticesHalfOpen);
        }
        if let Some(b) = self.backup() {
            if self.m[b].stopped {
                steps.push(Step::StartMirror);
            }
            if !self.m[b].ready {
                steps.push(Step::Ready);
            }
        }
        if self.no_failover.is_some() {
            steps.push(Step::ClearNoFailover);
        }
        if self.force.is_some() && self.link {
            steps.push(Step::ForceDown);
        }
        if self.writes < budget.writes
            && self
                .primary()
                .is_some_and(|p| self.m[p].rules().accepts_writes() && self.m[p].frozen.is_none())
        {
            steps.push(Step::Write);
        }
        steps
    }

    pub(crate) fn apply(&mut self, step: &Step) -> Result<(), String> {
        match *step {
            Step::Deliver(k) => {
                let d = self.inbox.remove(k);
                // A primary noticing that its data channel ended: its hub drops that link.
                if d.event == Event::PartnerLost
                    && d.queue == Queue::Link
                    && self.m[d.to].role() == Some(FailoverRole::Primary)
                {
                    self.record(DataEvent::LinkLost {
                        primary: d.to,
                        generation: d.generation as u8,
                    });
                }
                // A backup's stand-down relayed by the arbiter for the latest activation: the
                // primary's driver has its hub stop waiting for that link.
                if d.event == Event::PartnerStoodDown
                    && d.queue == Queue::Arbiter
                    && d.activation.is_none_or(|a| a == self.activation)
                    && self.m[d.to].role() == Some(FailoverRole::Primary)
                {
                    self.record(DataEvent::StandDownRelayed { primary: d.to });
                }
                self.deliver_answer(d.to, d.event, d.activation, d.generation)?;
            }
            Step::DeliverWithoutJournal(k) => {
                let d = self.inbox.remove(k);
                let event = Event::Agent(AgentAnswer::PrimaryDown { journal: false });
                self.deliver_answer(d.to, event, d.activation, d.generation)?;
            }
            Step::Advance => {
                self.now += STEP_MS;
                let running = [0, 1].map(|i| self.m[i].up && self.m[i].frozen.is_none());
                self.record(DataEvent::TimePassed {
                    ms: STEP_MS,
                    running,
                });
                self.tell_both(|_| Event::Tick)?;
            }
            Step::CutLink => {
                self.faults += 1;
                self.link = false;
                self.lose_channel(false);
            }
            Step::HealLink => self.link = true,
            Step::CutArbiterLink(i) => {
                self.faults += 1;
                self.arbiter_link[i] = false;
                self.drop_arbiter(i);
            }
            Step::HealArbiterLink(i) => self.arbiter_link[i] = true,
            Step::ArbiterGoesQuiet(i) => {
                self.faults += 1;
                self.arbiter_link[i] = false;
                self.member_loses_arbiter(i);
                self.arbiter_close_pending[i] = true;
            }
            Step::ArbiterNoticesClose(i) => {
                self.arbiter_close_pending[i] = false;
                self.arbiter_loses_member(i);
            }
            Step::ConnectArbiter(i) => {
                // A new connection replaces the quiet one at the arbiter: its close, noticed
                // later, ends nothing.
                self.arbiter_close_pending[i] = false;
                self.arbiter_hello(i)?
            }
            Step::Crash(i) => {
                self.faults += 1;
                self.instance_down(i, true);
            }
            Step::CrashHost(i) => {
                self.faults += 1;
                self.m[i].host = false;
                self.instance_down(i, false);
            }
            Step::Shutdown(i) => {
                self.faults += 1;
                // A primary with an active backup hands over before it stops; the message
                // follows every batch on the channel.
                let hands_over = self.m[i].role() == Some(FailoverRole::Primary)
                    && self.m[i].rules().accepts_writes()
                    && self.m[i].rules().active();
                if hands_over {
                    self.send_channel(1 - i, Event::PartnerHandsOver, None);
                }
                // A backup tells the primary first that it no longer counts as active.
                if self.m[i].role() == Some(FailoverRole::Backup)
                    && self.channel.is_some_and(|c| !c.half_open)
                {
                    self.stand_down_on_link(1 - i)?;
                }
                self.instance_down(i, true);
            }
            Step::Restart(i) => {
                self.record(DataEvent::Restarted { member: i });
                let m = &mut self.m[i];
                m.up = true;
                // Starting a member starts its host and its agent, which starts the instance.
                m.host = true;
                m.agent = true;
                m.activation = 0;
                // A former primary does not know whether the other took over meanwhile.
                m.deciding = m.was_primary;
                self.fresh_rules(i, FailoverRole::Backup);
            }
            Step::Stall(i) => {
                self.faults += 1;
                self.stall(i)?;
            }
            Step::StopAgent(i) => {
                self.faults += 1;
                self.m[i].agent = false;
            }
            Step::StartAgent(i) => self.m[i].agent = true,
            Step::Freeze(i) => {
                self.faults += 1;
                self.record(DataEvent::Froze { member: i });
                self.m[i].frozen = Some(self.now);
                self.m[i].silence_noticed = false;
            }
            Step::NoticeSilence(i) => {
                // The data channel and its arbiter connection time out. Its own notices of both
                // wait until it thaws.
                self.m[i].silence_noticed = true;
                self.lose_channel(false);
                self.drop_arbiter(i);
            }
            Step::Thaw(i) => {
                let since = self.m[i].frozen.take().expect("thaws a frozen member");
                self.record(DataEvent::Thawed { member: i });
                // Its driver's first look after the pause sees how long it stood still.
                let mut look = self.look(i);
                look.gap_ms = self.now - since;
                self.look_and_act(i, look, false, false)?;
                // A channel that lived through the pause carries what waited: the backup stores
                // what it was sent and acknowledges it, and the primary reads that (from its
                // socket, if it was the one paused) once neither is frozen — the writes that
                // waited for the backup are answered.
                if let Some(c) = self.channel
                    && !c.half_open
                    && self.link
                    && self.m[c.primary].pending
                    && self.m.iter().all(|m| m.frozen.is_none())
                {
                    self.record(DataEvent::CaughtUp {
                        primary: c.primary,
                        backup: 1 - c.primary,
                        heard: true,
                    });
                    self.m[c.primary].pending = false;
                }
            }
            Step::Decide(i) => self.decide(i)?,
            Step::Connect => self.connect()?,
            Step::CatchUp => {
                let (p, b) = (self.primary().unwrap(), self.backup().unwrap());
                let heard = self.m[p].frozen.is_none();
                self.record(DataEvent::CaughtUp {
                    primary: p,
                    backup: b,
                    heard,
                });
                // The backup received everything the primary holds; the primary counts it
                // active and tells it so. A frozen primary answers the writes that waited
                // only once it thaws and reads the acknowledgement.
                self.m[b].lacks = false;
                if heard {
                    self.m[p].pending = false;
                }
                self.deliver(p, Event::PartnerActive, None)?;
                if self.m[p].rules().active() {
                    self.activation += 1;
                    let activation = self.activation;
                    self.send_channel(b, Event::PartnerActive, Some(activation));
                }
            }
            Step::HalfOpen => {
                self.faults += 1;
                // The backup's receiver gives up; the primary still holds the link.
                let c = self.channel.as_mut().unwrap();
                c.half_open = true;
                let (generation, b) = (c.generation, 1 - c.primary);
                self.inbox
                    .retain(|d| !(d.to == b && d.carrier == Carrier::Channel(generation)));
                self.push_channel_lost(b, generation);
            }
            Step::PrimaryNoticesHalfOpen => {
                let c = self.channel.take().unwrap();
                self.inbox
                    .retain(|d| d.carrier != Carrier::Channel(c.generation));
                self.push_channel_lost(c.primary, c.generation);
            }
            Step::RepeatMode => {
                let b = self.backup().unwrap();
                self.send_channel(b, Event::PartnerMode(Mode::Arbiter), None);
            }
            Step::ForceDown => {
                let (target, epoch) = self.force.take().unwrap();
                let m = &self.m[target];
                // The target's agent must answer to carry it out.
                if !m.agent_answers() {
                    self.force = Some((target, epoch));
                } else if m.role() == Some(FailoverRole::Primary) && m.epoch < epoch {
                    self.instance_down(target, true);
                }
            }
            Step::StopMirror => {
                self.faults += 1;
                let (p, b) = (self.primary().unwrap(), self.backup().unwrap());
                // It tells the primary first that it no longer counts as active.
                self.stand_down_on_link(p)?;
                self.m[b].stopped = true;
                self.deliver(b, Event::MirrorStopped(true), None)?;
                self.lose_channel(true);
            }
            Step::StartMirror => {
                let b = self.backup().unwrap();
                self.m[b].stopped = false;
                self.deliver(b, Event::MirrorStopped(false), None)?;
            }
            Step::SetNoFailover => {
                self.faults += 1;
                self.no_failover = self.primary();
                self.tell_both(|_| Event::NoFailover(true))?;
            }
            Step::ClearNoFailover => {
                self.no_failover = None;
                self.tell_both(|_| Event::NoFailover(false))?;
            }
            Step::Unready | Step::Ready => {
                let ready = *step == Step::Ready;
                if !ready {
                    self.faults += 1;
                }
                let b = self.backup().unwrap();
                self.m[b].ready = ready;
                self.deliver(b, Event::DatabasesReady(ready), None)?;
            }
            Step::Write => {
                self.writes += 1;
                let p = self.primary().unwrap();
                let outcome = self.write_outcome(p);
                match outcome {
                    // Acknowledged without the backup.
                    Outcome::Alone => self.m[1 - p].lacks = true,
                    // It waits for an acknowledgement that cannot come on this channel.
                    Outcome::Pending => self.m[p].pending = true,
                    Outcome::WithBackup => {}
                }
                let epoch = self.m[p].epoch;
                self.record(DataEvent::Written {
                    primary: p,
                    epoch,
                    outcome,
                });
            }
        }
        self.check()
    }

    /// What becomes of a client's write on primary `p` now.
    pub(crate) fn write_outcome(&self, p: usize) -> Outcome {
        if !self.m[p].rules().active() {
            Outcome::Alone
        } else if !self.acknowledges(p) || self.m[1 - p].frozen.is_some() {
            // A frozen backup stores and acknowledges nothing: the write waits for it to thaw,
            // for the primary to notice its silence, or for the hub's QoS to revoke it.
            Outcome::Pending
        } else {
            Outcome::WithBackup
        }
    }

    /// Primary `i`'s hub revoked its active backup, which left writes unacknowledged for a QoS:
    /// it closed the data channel, and its driver hears of the loss at once (the hub tells
    /// it), before anything else that was on its way on the link. The backup notices later.
    pub(crate) fn hub_revoked(&mut self, i: usize) -> Result<(), String> {
        if self.channel.is_some_and(|c| c.primary == i) {
            let c = self.channel.take().expect("a channel");
            self.inbox
                .retain(|d| d.carrier != Carrier::Channel(c.generation));
            self.push_channel_lost(i, c.generation);
            if !c.half_open && self.m[1 - i].role().is_some() {
                self.push_channel_lost(1 - i, c.generation);
            }
        }
        let notice = |d: &Delivery| d.to == i && d.queue == Queue::Link;
        if !self
            .inbox
            .iter()
            .any(|d| notice(d) && d.event == Event::PartnerLost)
        {
            return Err(format!(
                "member {i}'s hub revoked its backup, which the world did not know it had lost"
            ));
        }
        // Its link's news in order, up to the loss.
        while let Some(k) = self.inbox.iter().position(notice) {
            let lost = self.inbox[k].event == Event::PartnerLost;
            self.apply(&Step::Deliver(k))?;
            if lost {
                break;
            }
        }
        Ok(())
    }

    /// The writes that waited on primary `i` for the backup are answered now, without it.
    pub(crate) fn release_pending(&mut self, i: usize) {
        if self.m[i].pending {
            self.m[i].pending = false;
            self.m[1 - i].lacks = true;
            self.record(DataEvent::PendingAcknowledged { primary: i });
        }
    }

    /// A client's write on primary `p` that its active backup received but could not make
    /// durable (its journal failed; the caller stops it): it waits for an acknowledgement.
    pub(crate) fn write_unacknowledged(&mut self, p: usize) -> Result<(), String> {
        self.writes += 1;
        self.m[p].pending = true;
        let epoch = self.m[p].epoch;
        self.record(DataEvent::Written {
            primary: p,
            epoch,
            outcome: Outcome::Pending,
        });
        self.check()
    }

    /// Backup `i`'s process stalled for half a QoS (paused, starved): its driver no longer
    /// counts it as active, drops the data channel (what it buffered may be stale) and starts
    /// its rules afresh — but its connection to the arbiter lived through the stall. That
    /// connection carries the stand-down the fresh rules owe at once, and the rules hear first
    /// what it last reported (then, if it had the primary, a lost link: as a backup that lost
    /// the primary long ago).
    pub(crate) fn stall(&mut self, i: usize) -> Result<(), String> {
        // The member's core notices the gap between two looks and does the rest.
        let mut look = self.look(i);
        look.gap_ms = QOS;
        self.look_and_act(i, look, false, false)
    }

    /// A restarted former primary asks the other member's agent who is primary.
    pub(crate) fn decide(&mut self, i: usize) -> Result<(), String> {
        let other = 1 - i;
        let o = &self.m[other];
        // A backup that has not yet noticed the loss of this member (it still counts itself
        // connected: stale, since this member restarted), or that has not settled the loss (it
        // waits for the arbiter's verdict or asks the agent), is deciding too: it may be about
        // to take over.
        let (names, deciding) = match o.role() {
            Some(FailoverRole::Primary) => (other, false),
            Some(_) => (
                o.primary,
                o.rules().partner_is_connected() || o.rules().undecided(),
            ),
            None => (o.primary, o.deciding),
        };
        let said = OtherMember::Says {
            claims_primary: names == other,
            names_this_primary: names == i,
            epoch: Epoch(u64::from(o.epoch)),
            deciding,
        };
        match restart_as(Epoch(u64::from(self.m[i].epoch)), said) {
            Restart::Wait(_) => {}
            Restart::Primary => {
                self.m[i].deciding = false;
                if self.no_failover == Some(i) {
                    // No Failover ends when the member it protected resumes as primary.
                    self.no_failover = None;
                    self.tell_both(|_| Event::NoFailover(false))?;
                }
                self.fresh_rules(i, FailoverRole::Primary);
            }
            Restart::Backup => {
                self.m[i].deciding = false;
                self.m[i].was_primary = false;
                self.m[i].primary = other;
                self.fresh_rules(i, FailoverRole::Backup);
            }
        }
        Ok(())
    }

    /// The backup tells primary `p` on the data channel that it no longer counts as active: the
    /// primary's hub hears it first, then its driver (a frozen primary hears nothing: it
    /// notices the lost link on thawing).
    pub(crate) fn stand_down_on_link(&mut self, p: usize) -> Result<(), String> {
        if let Some(c) = self.channel
            && self.m[p].role() == Some(FailoverRole::Primary)
            && self.m[p].frozen.is_none()
        {
            self.record(DataEvent::StoodDown {
                primary: p,
                generation: c.generation,
            });
        }
        self.deliver(p, Event::PartnerStoodDown, None)
    }

    /// The backup connects to the primary it follows; a link the primary still holds half-open
    /// is replaced.
    pub(crate) fn connect(&mut self) -> Result<(), String> {
        let (p, b) = (self.primary().unwrap(), self.backup().unwrap());
        let replaced = self.channel.take().is_some();
        self.generations += 1;
        self.channel = Some(Channel {
            primary: p,
            generation: self.generations,
            half_open: false,
        });
        let epoch = self.m[p].epoch;
        self.record(DataEvent::Connected {
            primary: p,
            backup: b,
            epoch,
            generation: self.generations,
        });
        // A member that follows learns the primary's epoch.
        self.m[b].epoch = self.m[b].epoch.max(self.m[p].epoch);
        if replaced {
            // Replacing the link counts as losing it (the hub reports the loss first).
            self.deliver(p, Event::PartnerLost, None)?;
        }
        self.deliver(p, Event::PartnerConnected, None)?;
        self.deliver(b, Event::PartnerConnected, None)?;
        Ok(())
    }
}

impl Member {
    /// What the driver remembered is gone with the process.
    pub(crate) fn arbiter_lost_in_process(&mut self) {
        self.booked = None;
        self.owed_stand_down = None;
    }
}
