//! An explorer of the failover protocol: two failover members, each driven by its own
//! [`MemberCore`] — the real one, which the member's failover driver runs: the [`Failover`]
//! rules and the decisions around them (fresh rules, the stall rule, link generations, a failed
//! takeover) — an arbiter keeping an [`ArbiterBook`] per epoch, and the members' agents, in a
//! small world of links, crashes, restarts, messages in flight and a clock. Each delivery is
//! one look of the member's core; what the core decides is recorded by a shell ([`Effects`])
//! and carried out by the world. From a healthy pair it tries every interleaving of steps up to
//! a depth (depth-first, with fingerprints of the states already seen skipped) and checks after
//! each step:
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
//! rest: a takeover starts
//! a new epoch and reconnects the arbiter link in the new role (its hello carries the mode the
//! arbiter booked for this member); a restarted former primary *decides* its role by asking the
//! other member's agent ([`restart_as`]); a backup that stood down keeps telling the arbiter until
//! a connection carries it.
//!
//! The steps: deliver a message or notice; let time pass; cut or heal a link (between the
//! members, each member's link to the arbiter); crash an instance or a whole host; stop a member
//! gracefully (a primary hands over); restart a member; stall a backup's process (its driver
//! starts fresh rules, its arbiter link stays up); a restarted former primary decides;
//! the backup connects (replacing a link the primary still holds half-open) and catches up; the
//! backup's side of the data channel dies while the primary's stays (a half-open link); Stop and
//! Start Mirror on the backup; set and clear No Failover; a mirrored database of the backup
//! becomes unready and ready again; a client writes.
//!
//! The timing facts the protocol relies on are rules of the world: each side notices a broken
//! link or a crashed peer within one QoS timeout, so the clock cannot pass that deadline before
//! the notice is delivered. Messages on one connection arrive in order and only while it lives; a
//! cut loses what was in flight, a process that exits gracefully (or crashes, leaving its kernel
//! to flush the socket) does not. Each member's driver reads its queues in order (link events,
//! arbiter events, agent answers), so deliveries to one queue are in order too. Time is in
//! QoS-sized units of 1 000 ms with `QOS` = 2 000.
//!
//! # Re-introducing old bugs
//!
//! [`Legacy`] puts back four bugs found in the member, to show that the explorer finds them: a
//! takeover that kept the backup's arbiter mode (the new primary showed Arbiter Controlled that
//! the arbiter never booked, and after a graceful handover no backup could ever take over again),
//! a stand-down that left a takeover booked at the arbiter (the old primary could never start
//! again), a stalled backup whose fresh rules were not told that its arbiter link was still up
//! (they never followed the primary into arbiter mode again), and a stalled backup whose fresh
//! rules heard of the lost primary before their settings (with No Failover set, they asked the
//! primary's agent). The last was found by this explorer once it drove the real core: the model
//! it drove before fed the settings first, as the driver's code did not.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};

use super::super::*;
use crate::mirror::core::{Look, MemberCore, Shell};

const QOS: u64 = 2_000;
const STEP_MS: u64 = 1_000;
/// The clock stops here: deeper searches explore more steps, not more time.
const HORIZON_MS: u64 = 12 * STEP_MS;

/// One of the member's event queues: each is read in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Queue {
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
enum Carrier {
    /// Already in the member's own memory (a local notice).
    Local,
    /// The data channel of this generation.
    Channel(u8),
    /// The member's connection to the arbiter.
    Arbiter,
}

/// Something on its way to member `to`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Delivery {
    to: usize,
    event: Event,
    queue: Queue,
    carrier: Carrier,
    /// The time by which it must arrive (notices of lost links).
    deadline: Option<u64>,
    /// The activation a message names: "you are active" to the backup, and the backup's
    /// stand-down relayed by the arbiter (0: it was never active).
    activation: Option<u8>,
    /// An agent's answer: the link generation its question was asked in.
    generation: u64,
}

/// One failover member: its rules, its process and host, what it stored, and what its driver
/// remembers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Member {
    /// Its member core (the rules and the driver's decisions around them), the real one.
    core: MemberCore,
    /// The instance runs.
    up: bool,
    /// The host runs: its agent answers.
    host: bool,
    /// A restarted former primary that has not learned its role yet (read-only, no rules).
    deciding: bool,
    /// Stored: its epoch, whether it was the primary, whom it follows.
    epoch: u8,
    was_primary: bool,
    primary: usize,
    /// Stored: Stop Mirror On This Member.
    stopped: bool,
    /// Its mirrored databases are all mounted, activated and caught up.
    ready: bool,
    /// Connected to the arbiter.
    arbiter: bool,
    /// The driver's memory of the arbiter mode the arbiter booked, with the backup's activation
    /// (said in every hello).
    booked: Option<u8>,
    /// A stand-down no connection to the arbiter carried yet (the activation it ends).
    owed_stand_down: Option<u8>,
    /// The latest activation it heard of (as backup).
    activation: u8,
    /// It lacks writes that were acknowledged to clients.
    lacks: bool,
    /// Primary: writes wait for an acknowledgement the backup will never send (the channel
    /// broke before they reached it).
    pending: bool,
    /// Primary: its hub holds commits (the rules entered the trouble state) until the rules
    /// allow them again.
    suspended: bool,
}

impl Member {
    fn new(role: FailoverRole, primary: usize) -> Member {
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
        }
    }

    /// Its rules (a member always has some: a restart starts fresh ones).
    fn rules(&self) -> &Failover {
        self.core.failover().expect("a member has rules")
    }

    /// Its role as its driver sees it (None: down or deciding).
    fn role(&self) -> Option<FailoverRole> {
        (self.up && !self.deciding).then(|| self.rules().role())
    }
}

/// What a member core decided at one look, in order, for the world to carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Effect {
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
struct Effects(Vec<Effect>);

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
    fn take_over(&mut self) -> bool {
        self.0.push(Effect::Act(Action::TakeOver, 0));
        true
    }
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
struct Legacy {
    /// A takeover through a handover or the agent kept the backup's failover mode.
    takeover_keeps_mode: bool,
    /// The arbiter kept a booked takeover when the backup stood down.
    stand_down_keeps_booking: bool,
    /// A stalled backup's fresh rules were not told that its arbiter link was still up.
    stall_forgets_arbiter: bool,
    /// A stalled backup's fresh rules heard of the lost primary before their settings.
    stall_before_settings: bool,
}

/// The data channel between the members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Channel {
    primary: usize,
    generation: u8,
    /// The backup's side is gone while the primary still holds the link.
    half_open: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct World {
    now: u64,
    m: [Member; 2],
    with_arbiter: bool,
    /// The arbiter's book, for its epoch, and who is connected in which slot.
    book: ArbiterBook,
    book_epoch: u8,
    slot_primary: Option<usize>,
    slot_backup: Option<usize>,
    /// Network: between the members (data channel and agents), each member to the arbiter.
    link: bool,
    arbiter_link: [bool; 2],
    channel: Option<Channel>,
    generations: u8,
    /// The primary's latest activation of a backup.
    activation: u8,
    /// No Failover, naming the primary it protects.
    no_failover: Option<usize>,
    /// A new primary wants the old one forced down (target, its own epoch).
    force: Option<(usize, u8)>,
    inbox: Vec<Delivery>,
    faults: u8,
    writes: u8,
    legacy: Legacy,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
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

/// How many faults a search may inject, and whether time may pass.
#[derive(Debug, Clone, Copy)]
struct Budget {
    faults: u8,
    writes: u8,
}

impl World {
    /// Member 0 primary, member 1 its active backup, connected; with an arbiter, both on it and
    /// in arbiter-controlled mode.
    fn healthy(with_arbiter: bool) -> World {
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
    fn settle(&mut self) {
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

    fn push(
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
    fn send_channel(&mut self, to: usize, event: Event, activation: Option<u8>) {
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
    fn send_arbiter(&mut self, to: usize, event: Event, activation: Option<u8>) {
        if self.m[to].arbiter {
            self.push(to, event, Queue::Arbiter, Carrier::Arbiter, activation);
        }
    }

    fn deliverable(&self, i: usize) -> bool {
        let d = &self.inbox[i];
        // In order within each queue.
        !self.inbox[..i]
            .iter()
            .any(|e| e.to == d.to && e.queue == d.queue)
    }

    // -----------------------------------------------------------------------------------------
    // The arbiter

    fn sync_book(&mut self) {
        self.book.sees_primary = self.slot_primary.is_some();
        self.book.sees_backup = self.slot_backup.is_some();
    }

    /// Member `i` says hello to the arbiter in its current role.
    fn arbiter_hello(&mut self, i: usize) -> Result<(), String> {
        let Some(role) = self.m[i].role() else {
            return Ok(());
        };
        let primary = match role {
            FailoverRole::Primary => true,
            FailoverRole::Backup => false,
            FailoverRole::Down => return Ok(()),
        };
        let epoch = self.m[i].epoch;
        if primary
            && (epoch < self.book_epoch || (epoch == self.book_epoch && self.book.backup_took_over))
        {
            // A former primary: it hears that the backup took over, and nothing else.
            self.push(
                i,
                Event::PartnerIsPrimary,
                Queue::Arbiter,
                Carrier::Local,
                None,
            );
            return Ok(());
        }
        if epoch > self.book_epoch {
            self.book_epoch = epoch;
            self.book = ArbiterBook::default();
        }
        let other = 1 - i;
        if primary {
            self.slot_primary = Some(i);
            if self.slot_backup == Some(i) {
                self.slot_backup = None;
            }
        } else {
            self.slot_backup = Some(i);
            if self.slot_primary == Some(i) {
                self.slot_primary = None;
            }
        }
        self.sync_book();
        if primary {
            let booked = self.m[i].booked;
            self.book.primary_mode(
                if booked.is_some() {
                    Mode::Arbiter
                } else {
                    Mode::Agent
                },
                booked.unwrap_or(0) as u64,
            );
        }
        self.m[i].arbiter = true;
        // A stand-down an earlier connection did not carry goes first.
        if !primary && let Some(activation) = self.m[i].owed_stand_down.take() {
            self.arbiter_stood_down(i, activation);
        }
        // The arbiter link reports the connection before anything the arbiter says.
        self.deliver(i, Event::ArbiterConnected, None)?;
        if primary {
            if self.slot_backup.is_some() {
                self.send_arbiter(i, Event::ArbiterSeesPartner(true), None);
            }
        } else {
            let sees = self.slot_primary.is_some();
            self.send_arbiter(i, Event::ArbiterSeesPartner(sees), None);
        }
        if self.slot_primary == Some(other) || self.slot_backup == Some(other) {
            self.send_arbiter(other, Event::ArbiterSeesPartner(true), None);
        }
        Ok(())
    }

    /// Member `i`'s connection to the arbiter ends (a cut, a crash, or a reconnection in a new
    /// role): the arbiter reacts, and `i` (if it runs) notices.
    fn drop_arbiter(&mut self, i: usize) {
        if !self.m[i].arbiter {
            return;
        }
        self.m[i].arbiter = false;
        self.inbox
            .retain(|d| !(d.to == i && d.carrier == Carrier::Arbiter));
        if self.m[i].up {
            self.push(i, Event::ArbiterLost, Queue::Arbiter, Carrier::Local, None);
        }
        if self.slot_primary == Some(i) {
            self.slot_primary = None;
            self.sync_book();
            if let Some(b) = self.slot_backup {
                self.send_arbiter(b, Event::ArbiterSeesPartner(false), None);
            }
        } else if self.slot_backup == Some(i) {
            self.slot_backup = None;
            self.sync_book();
            // Telling the primary "I do not see the backup" books it as going on alone.
            let answer = self.book.ask_from_primary();
            if let Some(p) = self.slot_primary {
                self.send_arbiter(p, super::to_primary(answer), None);
            }
        }
    }

    fn arbiter_stood_down(&mut self, i: usize, activation: u8) {
        if self.slot_backup != Some(i) {
            return;
        }
        if self.legacy.stand_down_keeps_booking {
            if activation as u64 == self.book.booked_activation {
                self.book.primary_in_arbiter_mode = false;
            }
        } else {
            self.book.backup_stood_down(activation as u64);
        }
        // A backup that was never active has nothing to tell the primary.
        if let Some(p) = self.slot_primary
            && activation != 0
        {
            self.send_arbiter(p, Event::PartnerStoodDown, Some(activation));
        }
    }

    // -----------------------------------------------------------------------------------------
    // The members

    /// Delivers one event to member `to` and carries out its actions.
    fn deliver(&mut self, to: usize, event: Event, activation: Option<u8>) -> Result<(), String> {
        self.deliver_answer(to, event, activation, 0)
    }

    /// [`World::deliver`], for an agent's answer to a question asked in `generation`.
    fn deliver_answer(
        &mut self,
        to: usize,
        event: Event,
        activation: Option<u8>,
        generation: u64,
    ) -> Result<(), String> {
        if self.m[to].role().is_none() {
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
    fn look(&self, i: usize) -> Look {
        let m = &self.m[i];
        let arbiter = m.core.failover().map_or((false, None), |r| {
            (r.arbiter_connected, r.arbiter_sees_partner)
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
    fn look_and_act(
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
    fn look_and_act_as(
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
                rules.mode = before;
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
        if after.writes_may_resume && self.m[i].suspended {
            self.m[i].suspended = false;
            self.act(i, Action::ResumeWrites, 0, false)?;
        }
        Ok(())
    }

    /// Carries out one action; `arg` is the activation a stand-down ends, or the link generation
    /// a question to the agent is asked in.
    fn act(
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
            Action::SuspendWrites => self.m[i].suspended = true,
            Action::RevokeActive | Action::Reconnect => {}
            Action::ResumeWrites => {
                if self.m[i].pending {
                    // The writes that waited for the backup are answered now.
                    self.m[i].pending = false;
                    self.m[other].lacks = true;
                }
            }
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
                        self.send_arbiter(i, super::to_primary(answer), None);
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
                let answers = if target != i && self.link && self.m[target].host {
                    if self.m[target].up {
                        vec![AgentAnswer::PrimaryRunning]
                    } else if self.m[i].rules().active() {
                        // An active backup does not fetch the journal.
                        vec![AgentAnswer::PrimaryDown { journal: false }]
                    } else {
                        // The agent may or may not manage to hand over the journal: one answer,
                        // and delivering it may lose the journal (see `Step::DeliverWithoutJournal`).
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
    fn take_over(&mut self, i: usize, journal_fetched: bool) -> Result<(), String> {
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
        self.m[other].pending = false;
        self.lose_channel(true);
        self.drop_arbiter(i);
        Ok(())
    }

    /// Member `i`'s instance stops (`graceful`: its kernel still sends what it wrote).
    fn instance_down(&mut self, i: usize, graceful: bool) {
        let m = &mut self.m[i];
        m.up = false;
        m.deciding = false;
        m.arbiter_lost_in_process();
        m.pending = false;
        self.inbox.retain(|d| d.to != i);
        self.lose_channel(graceful);
        self.drop_arbiter(i);
    }

    /// The data channel ends; whoever still runs notices within a QoS timeout. What was on its
    /// way is lost, unless the channel was closed by a process that ended (its kernel sends it).
    fn lose_channel(&mut self, flushed: bool) {
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
                self.push(i, Event::PartnerLost, Queue::Link, Carrier::Local, None);
            }
        }
    }

    /// The rules a (re)started driver begins with: a new core, whose first look starts them
    /// and tells them the stored settings.
    fn fresh_rules(&mut self, i: usize, role: FailoverRole) {
        self.m[i].core = MemberCore::new();
        self.m[i].suspended = false;
        let look = self.look(i);
        // Fresh rules decide nothing but their start (and the stand-down a backup owes).
        self.look_and_act_as(i, role, look, false, false)
            .expect("fresh rules only start");
    }

    /// Tells every running member's rules a changed setting.
    fn tell_both(&mut self, event: impl Fn(usize) -> Event) -> Result<(), String> {
        for i in [0, 1] {
            if self.m[i].role().is_some() {
                self.deliver(i, event(i), None)?;
            }
        }
        Ok(())
    }

    fn primary(&self) -> Option<usize> {
        (0..2).find(|&i| self.m[i].role() == Some(FailoverRole::Primary))
    }

    fn backup(&self) -> Option<usize> {
        (0..2).find(|&i| self.m[i].role() == Some(FailoverRole::Backup))
    }

    // -----------------------------------------------------------------------------------------
    // The invariants

    /// Whether member `i` can acknowledge a write now: it commits, and either does not wait for
    /// a backup or has a channel on which the backup's acknowledgement can come.
    fn acknowledges(&self, i: usize) -> bool {
        let m = &self.m[i];
        m.role() == Some(FailoverRole::Primary)
            && m.rules().accepts_writes()
            && (!m.rules().active()
                || self
                    .channel
                    .is_some_and(|c| c.primary == i && !c.half_open && self.link))
    }

    fn check(&self) -> Result<(), String> {
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
            if m.role().is_some() && m.arbiter != m.rules().arbiter_connected {
                return Err(format!(
                    "member {i}'s arbiter link is {}, but its rules believe it {}",
                    if m.arbiter { "up" } else { "down" },
                    if m.rules().arbiter_connected {
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
            if m.role().is_some() && m.arbiter && m.rules().mode() == Mode::Arbiter {
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

    fn steps(&self, budget: Budget) -> Vec<Step> {
        let mut steps = Vec::new();
        for i in 0..self.inbox.len() {
            if self.deliverable(i) {
                steps.push(Step::Deliver(i));
                if self.inbox[i].event == Event::Agent(AgentAnswer::PrimaryDown { journal: true }) {
                    steps.push(Step::DeliverWithoutJournal(i));
                }
            }
        }
        let earliest = self.inbox.iter().filter_map(|d| d.deadline).min();
        if earliest.is_none_or(|d| self.now + STEP_MS <= d) && self.now < HORIZON_MS {
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
                    && !m.arbiter
                    && loss_reported
                    && matches!(m.role(), Some(FailoverRole::Primary | FailoverRole::Backup))
                {
                    steps.push(Step::ConnectArbiter(i));
                }
            }
            if m.up {
                if fault {
                    steps.push(Step::Crash(i));
                    steps.push(Step::CrashHost(i));
                    steps.push(Step::Shutdown(i));
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
            if fault && m.role() == Some(FailoverRole::Backup) {
                steps.push(Step::Stall(i));
            }
            if m.deciding && self.link && self.m[1 - i].host {
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
        if self.channel.is_some_and(|c| c.half_open) {
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
                .is_some_and(|p| self.m[p].rules().accepts_writes())
        {
            steps.push(Step::Write);
        }
        steps
    }

    fn apply(&mut self, step: &Step) -> Result<(), String> {
        match *step {
            Step::Deliver(k) => {
                let d = self.inbox.remove(k);
                self.deliver_answer(d.to, d.event, d.activation, d.generation)?;
            }
            Step::DeliverWithoutJournal(k) => {
                let d = self.inbox.remove(k);
                let event = Event::Agent(AgentAnswer::PrimaryDown { journal: false });
                self.deliver_answer(d.to, event, d.activation, d.generation)?;
            }
            Step::Advance => {
                self.now += STEP_MS;
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
            Step::ConnectArbiter(i) => self.arbiter_hello(i)?,
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
                    self.deliver(1 - i, Event::PartnerStoodDown, None)?;
                }
                self.instance_down(i, true);
            }
            Step::Restart(i) => {
                let m = &mut self.m[i];
                m.up = true;
                m.host = true;
                m.activation = 0;
                // A former primary does not know whether the other took over meanwhile.
                m.deciding = m.was_primary;
                self.fresh_rules(i, FailoverRole::Backup);
            }
            Step::Stall(i) => {
                self.faults += 1;
                self.stall(i)?;
            }
            Step::Decide(i) => self.decide(i)?,
            Step::Connect => self.connect()?,
            Step::CatchUp => {
                let (p, b) = (self.primary().unwrap(), self.backup().unwrap());
                // The backup received everything the primary holds; the primary counts it
                // active and tells it so.
                self.m[b].lacks = false;
                self.m[p].pending = false;
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
                self.push(b, Event::PartnerLost, Queue::Link, Carrier::Local, None);
            }
            Step::PrimaryNoticesHalfOpen => {
                let c = self.channel.take().unwrap();
                self.inbox
                    .retain(|d| d.carrier != Carrier::Channel(c.generation));
                self.push(
                    c.primary,
                    Event::PartnerLost,
                    Queue::Link,
                    Carrier::Local,
                    None,
                );
            }
            Step::RepeatMode => {
                let b = self.backup().unwrap();
                self.send_channel(b, Event::PartnerMode(Mode::Arbiter), None);
            }
            Step::ForceDown => {
                let (target, epoch) = self.force.take().unwrap();
                let m = &self.m[target];
                if !m.host {
                    self.force = Some((target, epoch));
                } else if m.role() == Some(FailoverRole::Primary) && m.epoch < epoch {
                    self.instance_down(target, true);
                }
            }
            Step::StopMirror => {
                self.faults += 1;
                let (p, b) = (self.primary().unwrap(), self.backup().unwrap());
                // It tells the primary first that it no longer counts as active.
                self.deliver(p, Event::PartnerStoodDown, None)?;
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
                if !self.m[p].rules().active() {
                    // Acknowledged without the backup.
                    self.m[1 - p].lacks = true;
                } else if !self.acknowledges(p) {
                    // It waits for an acknowledgement that cannot come on this channel.
                    self.m[p].pending = true;
                }
            }
        }
        self.check()
    }

    /// Backup `i`'s process stalled for half a QoS (paused, starved): its driver no longer
    /// counts it as active, drops the data channel (what it buffered may be stale) and starts
    /// its rules afresh — but its connection to the arbiter lived through the stall. That
    /// connection carries the stand-down the fresh rules owe at once, and the rules hear first
    /// what it last reported (then, if it had the primary, a lost link: as a backup that lost
    /// the primary long ago).
    fn stall(&mut self, i: usize) -> Result<(), String> {
        // The member's core notices the gap between two looks and does the rest.
        let mut look = self.look(i);
        look.gap_ms = QOS;
        self.look_and_act(i, look, false, false)
    }

    /// A restarted former primary asks the other member's agent who is primary.
    fn decide(&mut self, i: usize) -> Result<(), String> {
        let other = 1 - i;
        let o = &self.m[other];
        // A backup that has not yet noticed the loss of this member (it still counts itself
        // connected: stale, since this member restarted), or that still waits for the arbiter's
        // or the agent's answer, is deciding too: it may be about to take over.
        let (names, deciding) = match o.role() {
            Some(FailoverRole::Primary) => (other, false),
            Some(_) => (
                o.primary,
                o.rules().partner_connected || !o.rules().may_connect(),
            ),
            None => (o.primary, o.deciding),
        };
        let said = OtherMember::Says {
            claims_primary: names == other,
            names_this_primary: names == i,
            epoch: o.epoch as u64,
            deciding,
        };
        match restart_as(self.m[i].epoch as u64, said) {
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

    /// The backup connects to the primary it follows; a link the primary still holds half-open
    /// is replaced.
    fn connect(&mut self) -> Result<(), String> {
        let (p, b) = (self.primary().unwrap(), self.backup().unwrap());
        let replaced = self.channel.take().is_some();
        self.generations += 1;
        self.channel = Some(Channel {
            primary: p,
            generation: self.generations,
            half_open: false,
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
    fn arbiter_lost_in_process(&mut self) {
        self.booked = None;
        self.owed_stand_down = None;
    }
}

/// Depth-first over every step sequence up to `depth`; returns the number of distinct states, or
/// the first violation with the steps that led to it.
fn explore(start: World, depth: usize, budget: Budget) -> Result<usize, String> {
    // States seen are kept as 128-bit fingerprints, not whole worlds: a world holds two member
    // cores, and deep searches see tens of millions of states. Two different states sharing a
    // fingerprint (one chance in 2^128 per pair) would only cut a branch of the search short.
    let mut seen: HashSet<u128> = HashSet::new();
    let mut path: Vec<String> = Vec::new();
    fn go(
        world: &World,
        depth: usize,
        budget: Budget,
        seen: &mut HashSet<u128>,
        path: &mut Vec<String>,
    ) -> Result<(), String> {
        if depth == 0 || !seen.insert(fingerprint(world)) {
            return Ok(());
        }
        for step in world.steps(budget) {
            let mut next = world.clone();
            let label = match &step {
                Step::Deliver(i) => {
                    let d = &world.inbox[*i];
                    format!("deliver {:?} to {} ({:?})", d.event, d.to, d.queue)
                }
                other => format!("{other:?}"),
            };
            path.push(label);
            if let Err(why) = next.apply(&step) {
                return Err(format!("{why}\nafter:\n  {}", path.join("\n  ")));
            }
            go(&next, depth - 1, budget, seen, path)?;
            path.pop();
        }
        Ok(())
    }
    go(&start, depth, budget, &mut seen, &mut path)?;
    Ok(seen.len())
}

/// A 128-bit fingerprint of `world` (two 64-bit hashes of it, the second salted).
fn fingerprint(world: &World) -> u128 {
    let mut first = std::collections::hash_map::DefaultHasher::new();
    world.hash(&mut first);
    let mut second = std::collections::hash_map::DefaultHasher::new();
    0x5eed_u16.hash(&mut second);
    world.hash(&mut second);
    (u128::from(first.finish()) << 64) | u128::from(second.finish())
}

/// The search depth: `MIRRORLAB_EXPLORE_DEPTH` when set (deeper runs take minutes), else the
/// given default, which keeps the test to seconds.
fn depth(default: usize) -> usize {
    std::env::var("MIRRORLAB_EXPLORE_DEPTH")
        .ok()
        .and_then(|d| d.parse().ok())
        .unwrap_or(default)
}

/// Two faults and one write per search; `MIRRORLAB_EXPLORE_FAULTS` sets more faults (with a
/// second write).
fn budget() -> Budget {
    match std::env::var("MIRRORLAB_EXPLORE_FAULTS")
        .ok()
        .and_then(|f| f.parse().ok())
    {
        Some(faults) => Budget { faults, writes: 2 },
        None => Budget {
            faults: 2,
            writes: 1,
        },
    }
}

#[test]
fn explored_agent_mode_pair_keeps_the_invariants() {
    let depth = depth(9);
    let states =
        explore(World::healthy(false), depth, budget()).unwrap_or_else(|why| panic!("{why}"));
    println!("agent mode: {states} states to depth {depth}");
    assert!(states > 10_000, "explored only {states} states");
}

#[test]
fn explored_arbiter_mode_pair_keeps_the_invariants() {
    let depth = depth(8);
    let states =
        explore(World::healthy(true), depth, budget()).unwrap_or_else(|why| panic!("{why}"));
    println!("arbiter mode: {states} states to depth {depth}");
    assert!(states > 10_000, "explored only {states} states");
}

#[test]
fn explored_handovers_and_restarts_keep_the_invariants() {
    // From a pair where the first primary handed over and came back as the backup: the second
    // life of the mirror, where the roles are swapped and the epoch moved on.
    let mut world = World::healthy(true);
    for step in [Step::Shutdown(0), Step::Restart(0)] {
        world.apply(&step).unwrap();
        world.settle();
    }
    world.faults = 0;
    for step in [Step::Decide(0), Step::ConnectArbiter(1), Step::Connect] {
        world.apply(&step).unwrap();
        world.settle();
    }
    world.apply(&Step::ConnectArbiter(0)).unwrap();
    world.settle();
    world.apply(&Step::CatchUp).unwrap();
    world.settle();
    assert_eq!(world.primary(), Some(1), "{world:#?}");
    assert_eq!(
        (world.m[0].rules().mode(), world.m[1].rules().mode()),
        (Mode::Arbiter, Mode::Arbiter),
        "the second life is arbiter controlled again: {world:#?}"
    );
    let depth = depth(8);
    let states = explore(world, depth, budget()).unwrap_or_else(|why| panic!("{why}"));
    println!("after a handover: {states} states to depth {depth}");
    assert!(states > 10_000, "explored only {states} states");
}

#[test]
fn the_explorer_finds_a_takeover_that_keeps_the_old_arbiter_mode() {
    // The bug of 53b3b27: after a graceful handover the new primary kept showing Arbiter
    // Controlled, which the arbiter had booked for the old primary only; after the old primary
    // came back as its backup, no takeover was ever approved again.
    let mut world = World::healthy(true);
    world.legacy.takeover_keeps_mode = true;
    let why = explore(world, 6, budget()).expect_err("the explorer must find the bug");
    assert!(why.contains("shows Arbiter Controlled"), "{why}");
}

#[test]
fn the_explorer_finds_a_booked_takeover_nobody_carries_out() {
    // A backup that asked the arbiter, was granted the takeover and then could not carry it out
    // (No Failover was set meanwhile) stood down; if the stand-down does not cancel the
    // booking, the old primary can never start again.
    let mut world = World::healthy(true);
    world.legacy.stand_down_keeps_booking = true;
    let why = explore(world, 7, budget()).expect_err("the explorer must find the bug");
    assert!(why.contains("nobody carried out"), "{why}");
}

#[test]
fn the_explorer_finds_a_stalled_backup_that_forgets_its_arbiter_link() {
    // A backup whose process stalled started its rules afresh while its arbiter connection
    // stayed up and said nothing new: the rules believed the arbiter gone, never followed the
    // primary into arbiter mode again, and would not have asked the arbiter for a takeover.
    let mut world = World::healthy(true);
    world.legacy.stall_forgets_arbiter = true;
    let why = explore(world, 7, budget()).expect_err("the explorer must find the bug");
    assert!(why.contains("its rules believe it down"), "{why}");
}

#[test]
fn the_explorer_finds_a_broken_rule() {
    // A primary that went on alone (its backup no longer active) while the backup takes over on
    // a verdict it should never have been given: the checker must call it two writers.
    let mut world = World::healthy(true);
    *world.m[0].core.failover_mut().unwrap() = Failover::new(FailoverRole::Primary, QOS);
    world.link = false;
    world.lose_channel(false);
    world.inbox.clear();
    world.m[1]
        .core
        .failover_mut()
        .unwrap()
        .handle(0, Event::PartnerLost);
    assert!(world.acknowledges(0));
    let result = world.deliver(1, Event::ArbiterVerdict { take_over: true }, None);
    assert!(result.is_ok());
    assert_eq!(
        world.check(),
        Err("both members acknowledge writes".to_string())
    );
}

#[test]
fn the_explorer_finds_fresh_rules_that_hear_of_a_loss_before_their_settings() {
    // Found when this explorer began to drive the real member core: a backup whose process
    // stalled started fresh rules and told them first that it had lost its primary, and only
    // then its settings. With No Failover set (or its databases not ready), the rules believed
    // they might take over and asked the primary's agent — which forces a hung primary down,
    // leaving the mirror with no primary.
    let mut world = World::healthy(false);
    world.legacy.stall_before_settings = true;
    let why = explore(world, 4, budget()).expect_err("the explorer must find the bug");
    assert!(why.contains("may not take over"), "{why}");
}
