//! The world the simulation and the explorer run: two failover members, each driven by its own
//! [`MemberCore`] — the real one, which the member's failover driver runs: the failover rules
//! and the decisions around them (fresh rules, the stall rule, link generations, a failed
//! takeover) — an arbiter keeping an [`ArbiterBook`] per epoch, and the members' agents, with
//! links, crashes, restarts, messages in flight and a clock. Each delivery is one look of the
//! member's core; what the core decides is recorded by a shell ([`Effects`]) and carried out by
//! the world. [`World::steps`] lists what may happen next, [`World::apply`] makes it happen and
//! then checks, after each step:
//!
//! 1. at most one member acknowledges writes;
//! 2. no acknowledged write is lost: a member never takes over while it lacks a write some
//!    primary acknowledged, unless it fetched that primary's journal;
//! 3. a backup that may not take over (No Failover, a database not ready, mirroring stopped)
//!    asks neither the primary's agent (which forces a hung primary down) nor the arbiter;
//!
//! and, whenever nothing is in flight any more (every message and notice delivered):
//!
//! 4. each running member's rules know whether its arbiter link is up;
//! 5. a member whose monitor shows Arbiter Controlled is one the arbiter's book backs: the
//!    primary of the book's epoch is booked in arbiter mode, so a backup that loses it now gets
//!    the takeover approved;
//! 6. a takeover the arbiter booked was carried out (some member started a newer epoch) or
//!    cancelled: otherwise the old primary could never start again, and there would be no
//!    primary.
//!
//! # The world
//!
//! The members are symmetric: either may be primary, and the roles change with takeovers,
//! restarts and demotions, as they do in the member. What the member's driver *decides* is the
//! core's; what it *carries out* is modelled here, because that is where the core meets the
//! rest: a takeover starts a new epoch and reconnects the arbiter link in the new role (its
//! hello carries the mode the arbiter booked for this member); a restarted former primary
//! *decides* its role by asking the other member's agent ([`restart_as`]); a backup that stood
//! down keeps telling the arbiter until a connection carries it.
//!
//! [`restart_as`]: crate::mirror::failover::restart_as
//!
//! The steps: deliver a message or notice; let time pass; cut or heal a link (between the
//! members, each member's link to the arbiter); crash an instance or a whole host; stop a member
//! gracefully (a primary hands over); restart a member; stall a backup's process (its driver
//! starts fresh rules, its arbiter link stays up); freeze and thaw a whole host (the others
//! notice its silence after half a QoS to a QoS); stop and start a member's agent while its
//! host and instance run (it answers no question meanwhile); a restarted former primary decides;
//! the backup connects (replacing a link the primary still holds half-open) and catches up; the
//! backup's side of the data channel dies while the primary's stays (a half-open link); Stop and
//! Start Mirror on the backup; set and clear No Failover; a mirrored database of the backup
//! becomes unready and ready again; a client writes.
//!
//! The timing facts the protocol relies on are rules of the world: each side notices a broken
//! link or a crashed peer within one QoS timeout, so the clock cannot pass that deadline before
//! the notice is delivered. A write waits while the backup is frozen (it stores and acknowledges
//! nothing) until it thaws, its silence is noticed, or the primary's hub revokes it after a QoS
//! of waiting ([`World::hub_revoked`]: the simulation's files tell the world, whose clock the
//! hub reads). Messages on one connection arrive in order and only while it lives; a
//! cut loses what was in flight, a process that exits gracefully (or crashes, leaving its kernel
//! to flush the socket) does not. Each member's driver reads its queues in order (link events,
//! arbiter events, agent answers), so deliveries to one queue are in order too. Time is in
//! QoS-sized units of 1 000 ms with `QOS` = 2 000.
//!
//! # Old bugs
//!
//! [`Legacy`] puts back bugs found in the member (see the explorer's tests and the simulation),
//! to show that the checks find them.

use super::data::{DataEvent, Outcome};
use crate::journal::Epoch;
use crate::mirror::core::{Look, MemberCore, Refusal, Shell, TakeoverRule};
use crate::mirror::failover::{
    Action, AgentAnswer, ArbiterBook, Event, Failover, FailoverRole, Mode,
};

mod arbiter;
mod steps;
pub(crate) use steps::Step;

/// The members' QoS timeout (ms).
pub(crate) const QOS: u64 = 2_000;
/// How far the clock moves at each [`Step::Advance`] (ms).
pub(crate) const STEP_MS: u64 = 1_000;
/// The explorer's clock stops here: deeper searches explore more steps, not more time.
const EXPLORER_HORIZON_MS: u64 = 12 * STEP_MS;

/// One of the member's event queues: each is read in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Queue {
    /// Link events: the hub's on a primary, the receiver's on a backup (and what the other member
    /// says over the data channel).
    Link,
    /// What the arbiter link reports.
    Arbiter,
    /// Answers of the other member's agent.
    Agent,
}

/// What carries a message; when it breaks, what is still on it is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Carrier {
    /// Already in the member's own memory (a local notice).
    Local,
    /// The data channel of this generation.
    Channel(u8),
    /// The member's connection to the arbiter.
    Arbiter,
}

/// Something on its way to member `to`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Delivery {
    pub(crate) to: usize,
    pub(crate) event: Event,
    pub(crate) queue: Queue,
    pub(crate) carrier: Carrier,
    /// The time by which it must arrive (notices of lost links).
    pub(crate) deadline: Option<u64>,
    /// The activation a message names: "you are active" to the backup, and the backup's
    /// stand-down relayed by the arbiter (0: it was never active).
    pub(crate) activation: Option<u8>,
    /// An agent's answer: the link generation its question was asked in; a notice of a lost
    /// data channel: the channel's generation.
    pub(crate) generation: u64,
}

/// One failover member: its rules, its process and host, what it stored, and what its driver
/// remembers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Member {
    /// Its member core (the rules and the driver's decisions around them), the real one.
    pub(crate) core: MemberCore,
    /// The instance runs.
    pub(crate) up: bool,
    /// The host runs.
    pub(crate) host: bool,
    /// Its agent process runs (on a host that runs): it answers questions, forces its instance
    /// down when told, hands over the journal of an instance that is down.
    pub(crate) agent: bool,
    /// A restarted former primary that has not learned its role yet (read-only, no rules).
    pub(crate) deciding: bool,
    /// Stored: its epoch, whether it was the primary, whom it follows.
    pub(crate) epoch: u8,
    pub(crate) was_primary: bool,
    pub(crate) primary: usize,
    /// Stored: Stop Mirror On This Member.
    pub(crate) stopped: bool,
    /// Its mirrored databases are all mounted, activated and caught up.
    pub(crate) ready: bool,
    /// Connected to the arbiter.
    pub(crate) arbiter: bool,
    /// The driver's memory of the arbiter mode the arbiter booked, with the backup's activation
    /// (said in every hello).
    pub(crate) booked: Option<u8>,
    /// A stand-down no connection to the arbiter carried yet (the activation it ends).
    pub(crate) owed_stand_down: Option<u8>,
    /// The latest activation it heard of (as backup).
    pub(crate) activation: u8,
    /// It lacks writes that were acknowledged to clients.
    pub(crate) lacks: bool,
    /// Primary: writes wait for an acknowledgement the backup will never send (the channel
    /// broke before they reached it).
    pub(crate) pending: bool,
    /// Its host is frozen (paused) since this time: neither the instance nor the agent runs,
    /// its connections go silent, and what is sent to it waits.
    pub(crate) frozen: Option<u64>,
    /// The others noticed that the frozen member went silent (its data channel and its arbiter
    /// connection timed out).
    pub(crate) silence_noticed: bool,
    /// Primary: its hub holds commits (the rules entered the trouble state) until the rules
    /// allow them again.
    pub(crate) suspended: bool,
}

impl Member {
    pub(crate) fn new(role: FailoverRole, primary: usize) -> Member {
        let mut core = MemberCore::new();
        let look = Look {
            qos_ms: QOS,
            databases_ready: true,
            ..Look::default()
        };
        core.step(role, look, &mut Effects::default());
        Member {
            core,
            up: true,
            host: true,
            agent: true,
            deciding: false,
            epoch: 1,
            was_primary: role == FailoverRole::Primary,
            primary,
            stopped: false,
            ready: true,
            arbiter: false,
            booked: None,
            owed_stand_down: None,
            activation: 0,
            lacks: false,
            pending: false,
            suspended: false,
            frozen: None,
            silence_noticed: false,
        }
    }

    /// Whether its agent answers: the host and the agent run, and the host is not frozen.
    pub(crate) fn agent_answers(&self) -> bool {
        self.host && self.agent && self.frozen.is_none()
    }

    /// Its rules (a member always has some: a restart starts fresh ones).
    pub(crate) fn rules(&self) -> &Failover {
        self.core.failover().expect("a member has rules")
    }

    /// Its role as its driver sees it (None: down or deciding).
    pub(crate) fn role(&self) -> Option<FailoverRole> {
        (self.up && !self.deciding).then(|| self.rules().role())
    }
}

/// What a member core decided at one look, in order, for the world to carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Effect {
    /// An action, with the activation a stand-down ends or the generation a question to the
    /// agent is asked in (else 0).
    Act(Action, u64),
    FreshRules {
        backup: bool,
    },
    DropDataLink,
}

/// The explorer's shell: it records; the world carries out afterwards. A takeover always
/// succeeds here (the world checks that it was allowed).
#[derive(Debug, Default)]
pub(crate) struct Effects(Vec<Effect>);

impl Shell for Effects {
    fn suspend_writes(&mut self) {
        self.0.push(Effect::Act(Action::SuspendWrites, 0));
    }
    fn book_arbiter_mode(&mut self) {
        self.0.push(Effect::Act(Action::BookArbiterMode, 0));
    }
    fn switch_mode(&mut self, mode: Mode) {
        self.0.push(Effect::Act(Action::SwitchMode(mode), 0));
    }
    fn ask_partner_to_leave_arbiter_mode(&mut self) {
        self.0
            .push(Effect::Act(Action::AskPartnerToLeaveArbiterMode, 0));
    }
    fn ask_arbiter(&mut self) {
        self.0.push(Effect::Act(Action::AskArbiter, 0));
    }
    fn ask_agent(&mut self, generation: u64, _active: bool) -> bool {
        self.0.push(Effect::Act(Action::AskAgent, generation));
        true
    }
    fn take_over(&mut self, _rule: TakeoverRule) -> bool {
        self.0.push(Effect::Act(Action::TakeOver, 0));
        true
    }
    // What a refusal says is for people (the mirror's events); the world has no use for it.
    fn refused(&mut self, _refusal: Refusal) {}
    fn stand_down(&mut self, activation: u64) {
        self.0.push(Effect::Act(Action::StandDown, activation));
    }
    fn force_other_down(&mut self) {
        self.0.push(Effect::Act(Action::ForceOtherDown, 0));
    }
    fn shut_down(&mut self) {
        self.0.push(Effect::Act(Action::ShutDown, 0));
    }
    fn fresh_rules(&mut self, backup: bool) {
        self.0.push(Effect::FreshRules { backup });
    }
    fn drop_data_link(&mut self) {
        self.0.push(Effect::DropDataLink);
    }
}

/// Old bugs the explorer can put back (see the module essay).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub(crate) struct Legacy {
    /// A takeover through a handover or the agent kept the backup's failover mode.
    pub(crate) takeover_keeps_mode: bool,
    /// The arbiter kept a booked takeover when the backup stood down.
    pub(crate) stand_down_keeps_booking: bool,
    /// A stalled backup's fresh rules were not told that its arbiter link was still up.
    pub(crate) stall_forgets_arbiter: bool,
    /// A stalled backup's fresh rules heard of the lost primary before their settings.
    pub(crate) stall_before_settings: bool,
}

/// The data channel between the members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Channel {
    pub(crate) primary: usize,
    pub(crate) generation: u8,
    /// The backup's side is gone while the primary still holds the link.
    pub(crate) half_open: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct World {
    pub(crate) now: u64,
    pub(crate) m: [Member; 2],
    pub(crate) with_arbiter: bool,
    /// The arbiter's book, for its epoch, and who is connected in which slot.
    pub(crate) book: ArbiterBook,
    pub(crate) book_epoch: u8,
    pub(crate) slot_primary: Option<usize>,
    pub(crate) slot_backup: Option<usize>,
    /// Network: between the members (data channel and agents), each member to the arbiter.
    pub(crate) link: bool,
    pub(crate) arbiter_link: [bool; 2],
    pub(crate) channel: Option<Channel>,
    pub(crate) generations: u8,
    /// The primary's latest activation of a backup.
    pub(crate) activation: u8,
    /// No Failover, naming the primary it protects.
    pub(crate) no_failover: Option<usize>,
    /// A new primary wants the old one forced down (target, its own epoch).
    pub(crate) force: Option<(usize, u8)>,
    pub(crate) inbox: Vec<Delivery>,
    pub(crate) faults: u8,
    pub(crate) writes: u8,
    pub(crate) legacy: Legacy,
    /// The clock stops here (the explorer's searches explore more steps, not more time).
    pub(crate) horizon_ms: u64,
    /// What the files of the members must follow (see [`crate::simulation::data`]), when the
    /// simulation keeps them; the explorer does not.
    pub(crate) data_log: Option<Vec<DataEvent>>,
    /// One-way partitions may strike ([`Step::ArbiterGoesQuiet`]); the explorer's searches leave
    /// them out.
    pub(crate) one_way: bool,
    /// A member closed a connection to the arbiter that went quiet, and the arbiter has not
    /// noticed yet.
    pub(crate) arbiter_close_pending: [bool; 2],
}

/// How many faults a search may inject, and whether time may pass.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    pub(crate) faults: u8,
    pub(crate) writes: u8,
}

impl World {
    /// Member 0 primary, member 1 its active backup, connected; with an arbiter, both on it and
    /// in arbiter-controlled mode.
    pub(crate) fn healthy(with_arbiter: bool) -> World {
        let mut world = World {
            now: 0,
            m: [
                Member::new(FailoverRole::Primary, 0),
                Member::new(FailoverRole::Backup, 0),
            ],
            with_arbiter,
            book: ArbiterBook::default(),
            book_epoch: 1,
            slot_primary: None,
            slot_backup: None,
            link: true,
            arbiter_link: [with_arbiter; 2],
            channel: None,
            generations: 0,
            activation: 0,
            no_failover: None,
            force: None,
            inbox: Vec::new(),
            faults: 0,
            writes: 0,
            legacy: Legacy::default(),
            horizon_ms: EXPLORER_HORIZON_MS,
            data_log: None,
            one_way: false,
            arbiter_close_pending: [false; 2],
        };
        let steps = [Step::Connect, Step::CatchUp];
        for step in steps {
            world.apply(&step).expect("a healthy start");
        }
        world.settle();
        if with_arbiter {
            for i in [0, 1] {
                world
                    .apply(&Step::ConnectArbiter(i))
                    .expect("a healthy start");
                world.settle();
            }
            assert_eq!(
                (world.m[0].rules().mode(), world.m[1].rules().mode()),
                (Mode::Arbiter, Mode::Arbiter),
                "{world:#?}"
            );
        }
        assert!(world.m[0].rules().active() && world.m[1].rules().active());
        world
    }

    /// Delivers everything in flight, in order (for setting up a start).
    pub(crate) fn settle(&mut self) {
        while let Some(i) = (0..self.inbox.len()).find(|&i| self.deliverable(i)) {
            self.apply(&Step::Deliver(i)).expect("settling");
        }
        let budget = Budget {
            faults: 0,
            writes: 0,
        };
        if self.steps(budget).contains(&Step::RepeatMode) {
            self.apply(&Step::RepeatMode).expect("settling");
            self.settle();
        }
    }

    // -----------------------------------------------------------------------------------------
    // Sending

    pub(crate) fn push(
        &mut self,
        to: usize,
        event: Event,
        queue: Queue,
        carrier: Carrier,
        activation: Option<u8>,
    ) {
        let deadline = matches!(event, Event::PartnerLost | Event::ArbiterLost)
            .then_some(self.now + QOS)
            .filter(|_| carrier == Carrier::Local);
        self.inbox.push(Delivery {
            to,
            event,
            queue,
            carrier,
            deadline,
            activation,
            generation: 0,
        });
    }

    /// Over the data channel, to the other member (lost if there is none).
    pub(crate) fn send_channel(&mut self, to: usize, event: Event, activation: Option<u8>) {
        if let Some(c) = self.channel
            && self.link
            && !c.half_open
        {
            self.push(
                to,
                event,
                Queue::Link,
                Carrier::Channel(c.generation),
                activation,
            );
        }
    }

    /// From the arbiter to member `to` (lost if it is not connected).
    pub(crate) fn send_arbiter(&mut self, to: usize, event: Event, activation: Option<u8>) {
        if self.m[to].arbiter {
            self.push(to, event, Queue::Arbiter, Carrier::Arbiter, activation);
        }
    }

    pub(crate) fn deliverable(&self, i: usize) -> bool {
        let d = &self.inbox[i];
        // Nothing reaches a frozen process; in order within each queue.
        self.m[d.to].frozen.is_none()
            && !self.inbox[..i]
                .iter()
                .any(|e| e.to == d.to && e.queue == d.queue)
    }

    // -----------------------------------------------------------------------------------------
    // The members

    /// Delivers one event to member `to` and carries out its actions.
    pub(crate) fn deliver(
        &mut self,
        to: usize,
        event: Event,
        activation: Option<u8>,
    ) -> Result<(), String> {
        self.deliver_answer(to, event, activation, 0)
    }

    /// [`World::deliver`], for an agent's answer to a question asked in `generation`.
    pub(crate) fn deliver_answer(
        &mut self,
        to: usize,
        event: Event,
        activation: Option<u8>,
        generation: u64,
    ) -> Result<(), String> {
        // Nobody hears a message while down or deciding; a frozen process reads the settings
        // when it thaws.
        if self.m[to].role().is_none() || self.m[to].frozen.is_some() {
            return Ok(());
        }
        let mut event = event;
        match (event, activation) {
            // The arbiter link turns a booking made with an overtaken activation into "book
            // again".
            (Event::ArbiterBookedMode(true), Some(named)) if named != self.activation => {
                event = Event::ArbiterBookedMode(false);
            }
            (Event::PartnerActive, Some(activation))
                if self.m[to].rules().role() == FailoverRole::Backup =>
            {
                self.m[to].activation = activation;
            }
            // The driver names the activation its rules know of: none on a new connection.
            (Event::PartnerConnected, _) if self.m[to].rules().role() == FailoverRole::Backup => {
                self.m[to].activation = 0;
            }
            // The primary's driver drops a relayed stand-down that a newer activation overtook.
            (Event::PartnerStoodDown, Some(named)) if named != self.activation => {
                return Ok(());
            }
            _ => {}
        }
        let journal_fetched = matches!(
            event,
            Event::Agent(AgentAnswer::PrimaryDown { journal: true })
        );
        let mut look = self.look(to);
        match event {
            // Every look ends with a tick.
            Event::Tick => {}
            // The settings are read, not delivered: the world changed them already.
            Event::NoFailover(_) | Event::DatabasesReady(_) | Event::MirrorStopped(_) => {}
            Event::Agent(answer) => look.agent_answers = vec![(answer, generation)],
            _ => look.link_events = vec![event],
        }
        let verdict = matches!(event, Event::ArbiterVerdict { .. });
        self.look_and_act(to, look, journal_fetched, verdict)
    }

    /// What member `i`'s driver sees at a look, with no events yet (a core without rules yet
    /// knows of no arbiter link).
    pub(crate) fn look(&self, i: usize) -> Look {
        let m = &self.m[i];
        let arbiter = m.core.failover().map_or((false, None), |r| {
            (r.arbiter_connected(), r.arbiter_sees_partner())
        });
        Look {
            now_ms: self.now,
            qos_ms: QOS,
            no_failover: self.no_failover.is_some(),
            mirror_stopped: m.stopped,
            databases_ready: m.ready,
            arbiter,
            link_activation: m.activation as u64,
            ..Look::default()
        }
    }

    /// Member `i`'s core takes a look in its rules' role; what it decided is carried out in
    /// order.
    pub(crate) fn look_and_act(
        &mut self,
        i: usize,
        look: Look,
        journal_fetched: bool,
        verdict: bool,
    ) -> Result<(), String> {
        let role = self.m[i].rules().role();
        self.look_and_act_as(i, role, look, journal_fetched, verdict)
    }

    /// [`World::look_and_act`] in `role` (a new core has no rules to say it).
    pub(crate) fn look_and_act_as(
        &mut self,
        i: usize,
        role: FailoverRole,
        look: Look,
        journal_fetched: bool,
        verdict: bool,
    ) -> Result<(), String> {
        let before = self.m[i].core.failover().map(|f| f.mode());
        let mut effects = Effects::default();
        self.m[i].core.legacy_stall_forgets_arbiter = self.legacy.stall_forgets_arbiter;
        self.m[i].core.legacy_stall_before_settings = self.legacy.stall_before_settings;
        let after = self.m[i].core.step(role, look, &mut effects);
        let mut effects = effects.0;
        if self.legacy.takeover_keeps_mode
            && effects.contains(&Effect::Act(Action::TakeOver, 0))
            && !verdict
        {
            // The takeover of 53b3b27: the rules kept the backup's mode, and the driver kept
            // the rules.
            if let (Some(rules), Some(before)) = (self.m[i].core.failover_mut(), before) {
                rules.force_mode(before);
            }
            effects.retain(|e| *e != Effect::Act(Action::SwitchMode(Mode::Agent), 0));
        }
        for effect in effects {
            match effect {
                Effect::Act(action, arg) => self.act(i, action, arg, journal_fetched)?,
                Effect::FreshRules { backup } => {
                    let m = &mut self.m[i];
                    m.booked = None;
                    if backup {
                        // New rules know of no takeover granted to the old ones: whatever the
                        // arbiter booked for this member is cancelled, by the connection that
                        // lived through a stall at once, else by the next one.
                        m.owed_stand_down = Some(0);
                        if m.arbiter
                            && let Some(activation) = m.owed_stand_down.take()
                        {
                            self.arbiter_stood_down(i, activation);
                        }
                    }
                }
                Effect::DropDataLink => {
                    self.m[i].activation = 0;
                    if self.channel.is_some_and(|c| c.primary == 1 - i) {
                        self.lose_channel(false);
                    }
                    // Its own notice of the lost link is dropped with the rest.
                    self.inbox
                        .retain(|d| !(d.to == i && d.queue == Queue::Link));
                }
            }
        }
        // The driver lifts the hub's own hold whenever its rules let writes go on (the hub holds
        // them the moment it loses an active backup, before the rules hear of it).
        if after.writes_may_resume && self.m[i].rules().role() == FailoverRole::Primary {
            self.record(DataEvent::MayResume { primary: i });
            // Writes that waited for a backup the rules no longer count as active, with no
            // trouble state to end (it stood down: said so, or the arbiter relayed it), go on
            // at once: the hub no longer waits for that backup, and the writer's parked batch
            // is acknowledged.
            if !self.m[i].suspended && !self.m[i].rules().active() {
                self.release_pending(i);
            }
        }
        if after.writes_may_resume && self.m[i].suspended {
            self.m[i].suspended = false;
            self.act(i, Action::ResumeWrites, 0, false)?;
        }
        Ok(())
    }

    /// Carries out one action; `arg` is the activation a stand-down ends, or the link generation
    /// a question to the agent is asked in.
    pub(crate) fn act(
        &mut self,
        i: usize,
        action: Action,
        arg: u64,
        journal_fetched: bool,
    ) -> Result<(), String> {
        let other = 1 - i;
        let primary = self.m[i].rules().role() == FailoverRole::Primary;
        // A backup that may not take over asks nobody: the primary's agent would force a hung
        // primary down (leaving no primary), and the arbiter would book a takeover nobody
        // carries out.
        if !primary
            && matches!(action, Action::AskAgent | Action::AskArbiter)
            && (self.no_failover.is_some() || !self.m[i].ready || self.m[i].stopped)
        {
            return Err(format!(
                "member {i} may not take over (No Failover, databases not ready, or mirroring \
                 stopped) but asked {}",
                if action == Action::AskAgent {
                    "the primary's agent"
                } else {
                    "the arbiter"
                }
            ));
        }
        match action {
            Action::SuspendWrites => {
                self.m[i].suspended = true;
                if primary {
                    self.record(DataEvent::Suspended { primary: i });
                }
            }
            Action::RevokeActive | Action::Reconnect => {}
            Action::ResumeWrites => self.release_pending(i),
            Action::BookArbiterMode => {
                if self.m[i].arbiter && self.slot_primary == Some(i) {
                    let activation = self.activation;
                    self.book.primary_mode(Mode::Arbiter, activation as u64);
                    self.send_arbiter(i, Event::ArbiterBookedMode(true), Some(activation));
                }
            }
            Action::SwitchMode(mode) => {
                if primary {
                    self.m[i].booked = (mode == Mode::Arbiter).then_some(self.activation);
                    if mode == Mode::Agent && self.m[i].arbiter && self.slot_primary == Some(i) {
                        self.book.primary_mode(Mode::Agent, self.activation as u64);
                    }
                }
                self.send_channel(other, Event::PartnerMode(mode), None);
            }
            Action::AskPartnerToLeaveArbiterMode => {
                self.send_channel(other, Event::PartnerMode(Mode::Agent), None)
            }
            Action::AskArbiter => {
                if self.m[i].arbiter {
                    if primary && self.slot_primary == Some(i) {
                        let answer = self.book.ask_from_primary();
                        self.send_arbiter(i, Event::from(answer), None);
                    } else if !primary && self.slot_backup == Some(i) {
                        let take_over = self.book.ask_from_backup();
                        self.send_arbiter(i, Event::ArbiterVerdict { take_over }, None);
                    }
                }
            }
            Action::StandDown => {
                let activation = arg as u8;
                if self.m[i].arbiter {
                    self.arbiter_stood_down(i, activation);
                } else {
                    self.m[i].owed_stand_down = Some(activation);
                }
            }
            Action::AskAgent => {
                // The core asks once per link generation; the answers carry it.
                let target = self.m[i].primary;
                // A frozen host's agent does not answer either.
                let reachable = self.m[target].agent_answers();
                let answers = if target != i && self.link && reachable {
                    if self.m[target].up {
                        vec![AgentAnswer::PrimaryRunning]
                    } else if self.m[i].rules().active() {
                        // An active backup does not fetch the journal.
                        vec![AgentAnswer::PrimaryDown { journal: false }]
                    } else {
                        // The agent may or may not manage to hand over the journal: one answer,
                        // and delivering it may lose the journal (see
                        // `Step::DeliverWithoutJournal`).
                        vec![AgentAnswer::PrimaryDown { journal: true }]
                    }
                } else {
                    vec![AgentAnswer::Unreachable]
                };
                for answer in answers {
                    self.push(i, Event::Agent(answer), Queue::Agent, Carrier::Local, None);
                    self.inbox.last_mut().expect("pushed").generation = arg;
                }
            }
            Action::TakeOver => self.take_over(i, journal_fetched)?,
            Action::ForceOtherDown => self.force = Some((other, self.m[i].epoch)),
            Action::ShutDown => self.instance_down(i, true),
        }
        Ok(())
    }

    /// The driver carries out a takeover: a new epoch, stored; the receiver stops; the arbiter
    /// link reconnects in the new role.
    pub(crate) fn take_over(&mut self, i: usize, journal_fetched: bool) -> Result<(), String> {
        let other = 1 - i;
        if self.m[i].lacks && !journal_fetched {
            return Err("a member took over without writes a primary acknowledged".into());
        }
        self.m[i].lacks = false;
        // Its own epoch (learned from the primary it followed) plus one.
        self.m[i].epoch += 1;
        self.m[i].was_primary = true;
        self.m[i].primary = i;
        self.m[i].owed_stand_down = None;
        if !self.legacy.takeover_keeps_mode {
            self.m[i].booked = None;
        }
        // The old primary's waiting clients are never answered.
        if std::mem::replace(&mut self.m[other].pending, false) {
            self.record(DataEvent::PendingDropped { primary: other });
        }
        self.record(DataEvent::TookOver {
            member: i,
            old: other,
            epoch: self.m[i].epoch,
            fetched: journal_fetched,
        });
        self.lose_channel(true);
        self.drop_arbiter(i);
        Ok(())
    }

    /// Member `i`'s instance stops (`graceful`: its kernel still sends what it wrote).
    pub(crate) fn instance_down(&mut self, i: usize, graceful: bool) {
        let m = &mut self.m[i];
        m.up = false;
        m.deciding = false;
        m.arbiter_lost_in_process();
        if std::mem::replace(&mut m.pending, false) {
            self.record(DataEvent::PendingDropped { primary: i });
        }
        self.record(DataEvent::Stopped { member: i });
        self.inbox.retain(|d| d.to != i);
        self.lose_channel(graceful);
        self.drop_arbiter(i);
    }

    /// The data channel ends; whoever still runs notices within a QoS timeout. What was on its
    /// way is lost, unless the channel was closed by a process that ended (its kernel sends it).
    pub(crate) fn lose_channel(&mut self, flushed: bool) {
        let Some(c) = self.channel.take() else {
            return;
        };
        if !flushed || !self.link {
            self.inbox
                .retain(|d| d.carrier != Carrier::Channel(c.generation));
        }
        let backup = 1 - c.primary;
        for i in [c.primary, backup] {
            if i == backup && c.half_open {
                continue;
            }
            if self.m[i].role().is_some() {
                self.push_channel_lost(i, c.generation);
            }
        }
    }

    /// Member `i` will notice that the data channel of `generation` ended.
    pub(crate) fn push_channel_lost(&mut self, i: usize, generation: u8) {
        self.push(i, Event::PartnerLost, Queue::Link, Carrier::Local, None);
        self.inbox.last_mut().expect("pushed").generation = u64::from(generation);
    }

    /// The rules a (re)started driver begins with: a new core, whose first look starts them
    /// and tells them the stored settings.
    pub(crate) fn fresh_rules(&mut self, i: usize, role: FailoverRole) {
        self.m[i].core = MemberCore::new();
        self.m[i].suspended = false;
        let look = self.look(i);
        // Fresh rules decide nothing but their start (and the stand-down a backup owes).
        self.look_and_act_as(i, role, look, false, false)
            .expect("fresh rules only start");
    }

    /// Records what the members' files must follow, when the simulation keeps them.
    pub(crate) fn record(&mut self, event: DataEvent) {
        if let Some(log) = &mut self.data_log {
            log.push(event);
        }
    }

    /// Tells every running member's rules a changed setting.
    pub(crate) fn tell_both(&mut self, event: impl Fn(usize) -> Event) -> Result<(), String> {
        for i in [0, 1] {
            // A frozen process reads the settings when it thaws.
            if self.m[i].role().is_some() && self.m[i].frozen.is_none() {
                self.deliver(i, event(i), None)?;
            }
        }
        Ok(())
    }

    pub(crate) fn primary(&self) -> Option<usize> {
        (0..2).find(|&i| self.m[i].role() == Some(FailoverRole::Primary))
    }

    pub(crate) fn backup(&self) -> Option<usize> {
        (0..2).find(|&i| self.m[i].role() == Some(FailoverRole::Backup))
    }
}
