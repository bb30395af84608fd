//! The failover driver: the thread that feeds the pure failover rules and carries out what
//! they decide.
//!
//! # What it does
//!
//! It is one loop over one channel and a ticker. Everything that may move the rules arrives on
//! the channel ([`DriverInput`]: the hub's, the receiver's and the arbiter link's events, a
//! stalled receive round, a demotion request, the agents' answers from helper threads); the
//! driver looks at once when something arrives, and every [`TICK`] otherwise, since time alone
//! moves the rules too. A look takes what the channel holds: what happened to the link with
//! the other failover member (the hub's events on the primary, the receiver's on the backup —
//! the other side's are about a link of a role this member left), the arbiter link's reports,
//! the answers of the other host's agent, and it reads No Failover
//! and whether every mirrored copy here is ready, and hands them, with the time, to this
//! member's [`MemberCore`], which owns every decision (the failover rules, the stall rule, link
//! generations, a failed takeover). What it decides is carried out here, by [`DriverShell`]:
//!
//! - `SuspendWrites` / `ResumeWrites` hold and release the primary's mirrored commits in the
//!   hub (the writer holds mirrored writes before they begin meanwhile). Losing an active backup
//!   already suspended them at once (see the hub); the driver only lifts the suspension when the
//!   rules are out of trouble, and the hub refuses a lift decided before a newer loss.
//! - `StandDown` tells the arbiter, with the activation it ends, and is kept until a connection
//!   to the arbiter carries it; fresh backup rules (a start, a new role) stand down first, which
//!   cancels any takeover the arbiter granted to rules that are gone.
//! - `AskAgent` asks the primary's agent, on a helper thread, whether the primary is down
//!   (the agent forces a hung one down). The answer comes back as an event on a later tick.
//!   Meanwhile the receiver does not reconnect; after "no answer" it may, until the next
//!   question ([`Failover::may_connect`](super::failover::Failover::may_connect)). An answer belongs to
//!   the link whose loss it was asked about: once the rules heard of a newer connection it is
//!   dropped, however late it comes (a "the primary runs" from before the primary died must not
//!   make the backup that lost it again stand down).
//! - `TakeOver` stops the receiver, hands its mirror journal to the writer and has it become
//!   the primary in a new epoch: every copy is first brought to the end of the journal.
//!
//! # A backup that stalled
//!
//! A backup whose own process stood still for half a QoS timeout (paused, starved) may have
//! been revoked meanwhile and holds data buffered before that: the core starts its rules afresh
//! and the driver drops the data link and reconnects, as a restarting member does (see
//! [`MemberCore`] for what the fresh rules are told).
//!
//! # A former primary that restarts
//!
//! It does not know whether the backup took over while it was gone, so it starts *deciding*:
//! read-only, not connected. The core has the driver ask the other failover member's agent who
//! it says the primary is and in which epoch, and [`restart_as`] decides: resume as primary,
//! follow the other member as backup (its divergent tail is undone when it connects), or keep
//! waiting ([`DecidingShell`] carries it out).
//!
//! With an arbiter, the arbiter link's events join the rest; mode switches are told to the
//! arbiter (the primary's) and to the other member over the data channel, and a backup that
//! the arbiter lets take over forces the old primary down through its agent.
//!
//! A backup that was not active fetches the down primary's journal through its agent before it
//! may take over (the agent reads it from the down instance's files).
//!
//! Every look is also told as mirror events ([`crate::mirror::events`], `record`): the links'
//! reports, the failover mode and the trouble state as they change, and — from the core — each
//! takeover with its rule and each refusal with its reason.
//!
//! # Left out
//!
//! Fetching through the agent a tail too large for one agent answer (the backup then stays a
//! backup and says why).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::agent::{self, AgentRequest};
use crate::clock::Clock;
use crate::journal::{Epoch, StreamId};
use crate::mirror::steps::MirrorCommand;

use super::core::{Look, MemberCore, Refusal, Restarting, Shell, TakeoverRule};
use super::events::EventKind;

mod record;
use super::failover::{AgentAnswer, Event, FailoverRole, Mode, OtherMember, Restart, restart_as};
use super::protocol::Control;
use super::receiver::ReceiverInput;
use super::service::MirrorService;
use super::state::{ArbiterInput, DriverInput, Role};
use crate::arbiter::ToArbiter;
use crate::config::mirror::{MemberKind, MemberName, Membership};

/// How often the driver looks when nothing arrives on its channel.
pub const TICK: Duration = Duration::from_millis(25);

/// Starts the driver thread; it stops when `stop` is set. There is one per member: it takes
/// the receiving side of the member's driver channel.
pub fn start(service: Arc<MirrorService>, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    let inbox = service
        .context()
        .mirror
        .take_driver_inbox()
        .expect("one failover driver per member");
    std::thread::Builder::new()
        .name("failover".into())
        .spawn(move || {
            let mut driver = Driver::new(service, inbox);
            while !stop.load(Ordering::Acquire) && !driver.superseded {
                driver.step();
                // The next look: at once when something arrives, else after a tick (time
                // alone moves the rules too: timeouts, the stall check, repeats).
                driver.wait(TICK);
            }
        })
        .expect("spawn the failover driver")
}

struct Driver {
    service: Arc<MirrorService>,
    /// Where every decision is made (see [`MemberCore`]); the driver gathers and carries out.
    core: MemberCore,
    /// The member's clock: every time the core is given is read from it (see
    /// [`crate::clock`]), and so is the gap between looks that the stall rule reads.
    clock: Arc<dyn Clock>,
    started: Instant,
    /// The driver's channel (see [`DriverInput`]) and what came on it that no look used yet.
    inbox: mpsc::Receiver<DriverInput>,
    taken: Taken,
    /// When the last step ran, to notice that this process stalled.
    last_step: Instant,
    /// The member was told to stop at once and the exit hook returned (tests only).
    superseded: bool,
    /// When the primary entered the trouble state (for the event that says how long it held).
    trouble_since: Option<Instant>,
}

/// What arrived on the driver's channel since the last look, sorted by where it came from:
/// a look uses what belongs to the member's role and keeps the rest while it must wait (a
/// restarted former primary deciding, a demotion under way).
#[derive(Default)]
struct Taken {
    /// The hub's events, with the hub's term when each happened.
    hub: Vec<(Event, u64)>,
    receiver: Vec<Event>,
    arbiter: Vec<Event>,
    /// The activation each relayed `PartnerStoodDown` in `arbiter` ends, in the same order.
    stood_down: VecDeque<u64>,
    receiver_stalled: bool,
    demote_requested: bool,
    agent_answers: Vec<(AgentAnswer, u64)>,
    restart_answers: Vec<(Restart, Option<MemberName>)>,
}

impl Taken {
    /// Takes everything waiting on the channel.
    fn take_from(&mut self, inbox: &mpsc::Receiver<DriverInput>) {
        while let Ok(input) = inbox.try_recv() {
            self.sort(input);
        }
    }

    fn sort(&mut self, input: DriverInput) {
        match input {
            DriverInput::Hub { event, term } => self.hub.push((event, term)),
            DriverInput::Receiver(event) => self.receiver.push(event),
            DriverInput::Arbiter(event) => self.arbiter.push(event),
            DriverInput::ArbiterStoodDown { activation } => {
                self.arbiter.push(Event::PartnerStoodDown);
                self.stood_down.push_back(activation);
            }
            DriverInput::ReceiverStalled => self.receiver_stalled = true,
            DriverInput::DemoteRequested => self.demote_requested = true,
            DriverInput::AgentAnswer(answer, generation) => {
                self.agent_answers.push((answer, generation))
            }
            DriverInput::RestartAnswer(decision, from) => {
                self.restart_answers.push((decision, from))
            }
        }
    }

    /// The hub's events of its current term (older ones are about links of an earlier term).
    fn hub_events(&mut self, term: u64) -> Vec<Event> {
        self.hub
            .drain(..)
            .filter(|(_, t)| *t == term)
            .map(|(event, _)| event)
            .collect()
    }
}

impl Driver {
    fn new(service: Arc<MirrorService>, inbox: mpsc::Receiver<DriverInput>) -> Driver {
        let clock = service.context().mirror.clock.clone();
        let now = clock.now();
        Driver {
            service,
            core: MemberCore::new(),
            clock,
            started: now,
            inbox,
            taken: Taken::default(),
            last_step: now,
            superseded: false,
            trouble_since: None,
        }
    }

    /// Waits until something arrives on the channel or `tick` passed.
    fn wait(&mut self, tick: Duration) {
        if let Ok(input) = self.inbox.recv_timeout(tick) {
            self.taken.sort(input);
        }
    }

    fn now_ms(&self) -> u64 {
        self.clock.since(self.started).as_millis() as u64
    }

    fn step(&mut self) {
        let now = self.clock.now();
        let gap = now.saturating_duration_since(self.last_step);
        self.last_step = now;
        let context = self.service.context().clone();
        // Read before taking the channel: never newer than the events taken (see
        // `Hub::loss_generation`), so a lift decided on them is refused after a newer loss.
        let loss_generation = context.mirror.hub.loss_generation();
        self.taken.take_from(&self.inbox);
        // Read after: an event taken from before the hub last started serving is stale.
        let hub_term = context.mirror.hub.term();
        let config = context.config.get();
        let Some(m) = config
            .mirror
            .membership
            .as_ref()
            .filter(|m| m.this.kind == MemberKind::Failover)
        else {
            // No failover rules here: nothing that came is for them.
            self.taken = Taken::default();
            self.core.idle();
            context
                .mirror
                .update_failover(|view| *view = Default::default());
            return;
        };
        if context.mirror.deciding() {
            self.decide(m);
            return;
        }
        if std::mem::take(&mut self.taken.demote_requested) {
            match self.service.demote_to_dr() {
                Ok(message) => tracing::warn!("mirror: {message}"),
                Err(err) => tracing::warn!("mirror: the primary's demotion request: {err}"),
            }
            return;
        }
        let role = match context.mirror.role() {
            Role::Primary => FailoverRole::Primary,
            Role::Backup => FailoverRole::Backup,
            _ => {
                self.core.idle();
                return;
            }
        };
        let now_ms = self.now_ms();
        // What happened since the last look; the core decides. The link events are the hub's
        // on a primary and the receiver's on a backup; the other side's are about a link of
        // the role this member left.
        let taken = &mut self.taken;
        let receiver_stalled = std::mem::take(&mut taken.receiver_stalled);
        let link_events = match role {
            FailoverRole::Primary => {
                taken.receiver.clear();
                taken.hub_events(hub_term)
            }
            _ => {
                taken.hub.clear();
                std::mem::take(&mut taken.receiver)
            }
        };
        let mut stood_down = std::mem::take(&mut taken.stood_down);
        let mut arbiter_events = Vec::new();
        for event in taken.arbiter.drain(..) {
            // A stand-down the arbiter relayed names the activation it ends. It was the
            // latest when it arrived, but the hub's events are handled first: if the backup
            // was made active again meanwhile (its PartnerActive is in this look), the
            // stand-down is stale and would leave the rules believing the backup inactive
            // for good — never booking arbiter mode again.
            if event == Event::PartnerStoodDown {
                let activation = stood_down.pop_front().unwrap_or(0);
                // The hub stops waiting for the link that activation was granted on (checked
                // again under its lock); a stale stand-down changes nothing there either.
                context.mirror.hub.relayed_stand_down(activation);
                if !context.mirror.hub.is_latest_activation(activation) {
                    tracing::info!(
                        "mirror: ignored a stand-down relayed by the arbiter: the backup \
                         was made active again since"
                    );
                    continue;
                }
            }
            arbiter_events.push(event);
        }
        // Read after the events: the arbiter link and the receiver publish a change before
        // they send its event, so these facts are at least as new as the events.
        let (arbiter, last_heard, link_activation) = context.mirror.read(|s| {
            (
                (s.arbiter.connected, s.arbiter.sees_partner),
                s.link.last_heard,
                s.link.activation,
            )
        });
        let agent_answers = std::mem::take(&mut taken.agent_answers);
        // A restart answer arriving after the decision was made some other way (Force) has
        // nothing left to decide.
        for _ in taken.restart_answers.drain(..) {
            self.core.decision_too_late();
        }
        record::links(&context, m, role, &link_events, &arbiter_events);
        let look = Look {
            now_ms,
            gap_ms: gap.as_millis() as u64,
            receiver_stalled,
            qos_ms: m.mirror.qos_timeout_ms,
            no_failover: m.mirror.defined_primary.is_some(),
            mirror_stopped: m.stopped,
            databases_ready: role == FailoverRole::Backup && databases_ready(&context, m),
            arbiter,
            heard_ms: last_heard
                .map(|t| t.saturating_duration_since(self.started).as_millis() as u64),
            link_activation,
            link_events,
            arbiter_events,
            agent_answers,
        };
        let mut shell = DriverShell {
            service: &self.service,
            membership: m,
            inbox: &self.inbox,
            taken: &mut self.taken,
            gap,
            receiver_stalled,
            superseded: &mut self.superseded,
        };
        let after = self.core.step(role, look, &mut shell);
        if after.writes_may_resume && context.mirror.hub.suspended() {
            context.mirror.hub.resume(loss_generation);
        }
        // Published only when it changed: every change wakes whoever watches the status.
        let (holds_link, undecided) = context
            .mirror
            .read(|s| (s.failover.holds_link, s.failover.undecided));
        if holds_link == after.may_connect || undecided != after.undecided {
            context.mirror.update_failover(|view| {
                view.holds_link = !after.may_connect;
                view.undecided = after.undecided;
            });
        }
        // A backup follows the primary into arbiter mode only once it sees the arbiter too,
        // which may come later than the primary's word: the primary repeats it (the backup
        // ignores a repeat).
        if after.repeat_mode {
            context
                .mirror
                .hub
                .announce(Control::FailoverMode { arbiter: true });
        }
        let (mode_before, status_before) = context
            .mirror
            .read(|s| (s.failover.mode, s.failover.status));
        context.mirror.update_failover(|view| {
            view.mode = Some(after.mode);
            view.status = Some(after.status);
            // A refusal explains a backup waiting without its primary, and nothing else.
            if after.status != "Waiting" {
                view.refusal = None;
            }
        });
        record::mode_and_trouble(
            &context.mirror,
            (mode_before, status_before),
            &after,
            (&mut self.trouble_since, now),
        );
    }

    /// A restarted former primary: the core decides when to ask the other failover member and
    /// what to do with its answer.
    fn decide(&mut self, m: &Membership) {
        let mut decisions = Vec::new();
        let mut other = None;
        for (decision, named) in self.taken.restart_answers.drain(..) {
            decisions.push(decision);
            other = named;
        }
        // Asked as a backup, before this member started deciding: nobody waits for them.
        self.taken.agent_answers.clear();
        let has_other = m.other_failover().is_some();
        let now_ms = self.now_ms();
        let mut shell = DecidingShell {
            service: &self.service,
            membership: m,
            other,
        };
        self.core.decide(now_ms, decisions, has_other, &mut shell);
    }
}

/// The driver's side of a restarted former primary's decision: asks the other member's agent,
/// resumes as primary or follows as backup.
struct DecidingShell<'a> {
    service: &'a Arc<MirrorService>,
    membership: &'a Membership,
    /// The member the latest answer came from (the primary to follow).
    other: Option<MemberName>,
}

impl Restarting for DecidingShell<'_> {
    fn ask_other_member(&mut self) -> bool {
        let context = self.service.context();
        let m = self.membership;
        let my_epoch = context.config.get().epoch;
        let Some(other) = m.other_failover().cloned() else {
            return false;
        };
        let Ok(address) = super::agent_target(&context.identity, m, &other) else {
            return false;
        };
        let mirror = m.mirror.name.clone();
        let this = m.this.name.clone();
        let driver = context.mirror.driver_sender();
        let _ = std::thread::Builder::new()
            .name("ask-agent".into())
            .spawn(move || {
                let request = AgentRequest::MirrorRole {
                    mirror_name: mirror,
                };
                let said = match agent::call_blocking(&address, request, Duration::from_secs(5)) {
                    Ok(reply) if reply.ok => match reply.role {
                        Some(role) if role.member => OtherMember::Says {
                            claims_primary: role.primary.as_deref() == Some(other.name.as_str()),
                            names_this_primary: role.primary.as_deref() == Some(this.as_str()),
                            epoch: role.epoch,
                            deciding: role.deciding,
                        },
                        Some(_) => OtherMember::NotMember,
                        None => OtherMember::Unreachable,
                    },
                    _ => OtherMember::Unreachable,
                };
                let decision = restart_as(my_epoch, said);
                let _ = driver.send(DriverInput::RestartAnswer(decision, Some(other.name)));
            });
        true
    }

    fn restart(&mut self, decision: Restart) -> bool {
        let service = self.service.clone();
        let context = service.context().clone();
        let result = match decision {
            Restart::Wait(why) => {
                if context
                    .mirror
                    .read(|s| s.failover.note.as_deref() != Some(why))
                {
                    tracing::warn!("mirror: not resuming as primary: {why}");
                    context.mirror.record(
                        EventKind::TakeoverRefused,
                        format!("not resuming as primary: {why}"),
                    );
                }
                context.mirror.update_failover(|view| {
                    view.note = Some(why.to_string());
                    view.status = Some("Waiting");
                });
                return true;
            }
            Restart::Primary => {
                service.stop_receiver();
                let source = service.receiver_journal();
                context
                    .writer
                    .extension_blocking(|reply| MirrorCommand::BecomePrimary {
                        source,
                        new_epoch: false,
                        reply,
                    })
            }
            Restart::Backup => match self.other.clone() {
                Some(primary) => context
                    .writer
                    .extension_blocking(|reply| MirrorCommand::Demote { primary, reply }),
                None => Err(crate::error::Error::Conflict(
                    "the member that took over is not known".into(),
                )),
            },
        };
        match result {
            Ok(message) => {
                tracing::info!("mirror: after the restart: {message}");
                context.mirror.record(
                    EventKind::RoleChanged,
                    format!("decided after the restart: {message}"),
                );
                context.mirror.publish(|s| {
                    s.failover.note = Some(message);
                    s.deciding = false;
                });
                if decision == Restart::Backup {
                    service.start_receiver();
                }
                false
            }
            Err(err) => {
                tracing::error!("mirror: after the restart: {err}");
                context
                    .mirror
                    .update_failover(|view| view.note = Some(err.to_string()));
                if decision == Restart::Primary {
                    service.start_receiver();
                }
                true
            }
        }
    }
}

/// The driver's side of the member core: carries out its decisions on the hub, the arbiter
/// link, the agents and the writer.
struct DriverShell<'a> {
    service: &'a Arc<MirrorService>,
    membership: &'a Membership,
    /// The driver's channel and what was taken from it (a dropped data link discards the
    /// receiver's events still waiting).
    inbox: &'a mpsc::Receiver<DriverInput>,
    taken: &'a mut Taken,
    /// For the stall's log line.
    gap: Duration,
    receiver_stalled: bool,
    /// Set once the exit hook returned (tests only).
    superseded: &'a mut bool,
}

impl Shell for DriverShell<'_> {
    fn suspend_writes(&mut self) {
        tracing::warn!(
            "mirror: in trouble: commits wait until the backup is known not to take over"
        );
        self.service.context().mirror.hub.suspend();
    }

    fn book_arbiter_mode(&mut self) {
        let mirror = &self.service.context().mirror;
        mirror.tell_arbiter(ToArbiter::Mode {
            arbiter: true,
            activation: mirror.hub.last_activation(),
        });
    }

    fn switch_mode(&mut self, mode: Mode) {
        tracing::info!("mirror: {}", mode.display());
        let mirror = &self.service.context().mirror;
        let arbiter = mode == Mode::Arbiter;
        if mirror.role() == Role::Primary {
            // The arbiter books the primary's mode (arbiter mode before the switch, see
            // `Action::BookArbiterMode`); the backup follows it.
            let activation = mirror.hub.last_activation();
            // In this order on the link's channel: a connection made between the two carries
            // the new mode in its hello.
            mirror.tell_arbiter_link(ArbiterInput::Booked(arbiter.then_some(activation)));
            if !arbiter {
                mirror.tell_arbiter(ToArbiter::Mode {
                    arbiter,
                    activation,
                });
            }
            mirror.hub.announce(Control::FailoverMode { arbiter });
        } else {
            self.service
                .tell_receiver(ReceiverInput::say(Control::FailoverMode { arbiter }));
        }
    }

    fn ask_partner_to_leave_arbiter_mode(&mut self) {
        self.service
            .context()
            .mirror
            .hub
            .announce(Control::FailoverMode { arbiter: false });
    }

    fn ask_arbiter(&mut self) {
        tracing::warn!("mirror: lost the other failover member; asking the arbiter");
        self.service.context().mirror.tell_arbiter(ToArbiter::Ask);
    }

    fn ask_agent(&mut self, generation: u64, active: bool) -> bool {
        let m = self.membership;
        let Some(primary) = m.primary_name.as_deref().and_then(|p| m.member(p)) else {
            return false;
        };
        let Ok(address) = super::agent_target(&self.service.context().identity, m, primary) else {
            return false;
        };
        let qos = Duration::from_millis(m.mirror.qos_timeout_ms);
        let driver = self.service.context().mirror.driver_sender();
        let journal = self.service.receiver_journal();
        let (mirror_name, mirror_id) = (m.mirror.name.clone(), m.mirror.id);
        tracing::warn!(
            "mirror: lost the primary; asking its agent at {}",
            address.address
        );
        let _ = std::thread::Builder::new()
            .name("ask-agent".into())
            .spawn(move || {
                // A hung instance gets a quarter of the QoS timeout to answer the agent's probe:
                // noticed after half a QoS of silence, the backup then still hears back inside
                // its takeover window (one QoS after it last heard from the primary).
                let request = AgentRequest::ConfirmDown {
                    timeout_ms: (qos / 4).as_millis() as u64,
                };
                let answer = match agent::call_blocking(&address, request, qos) {
                    Ok(reply) if reply.ok && reply.instance.state == crate::agent::InstanceState::Down => {
                        tracing::warn!("mirror: the primary's agent says: {}", reply.message);
                        // A backup that was not active may lack acknowledged records: it takes
                        // over only with the down primary's journal, fetched through its agent.
                        let fetched = !active
                            && fetch_tail(&address, &journal, &mirror_name, mirror_id, qos)
                                .inspect_err(|err| {
                                    tracing::warn!(
                                        "mirror: the primary's journal could not be fetched through its agent: {err}"
                                    )
                                })
                                .is_ok();
                        AgentAnswer::PrimaryDown { journal: fetched }
                    }
                    Ok(reply) if reply.ok => AgentAnswer::PrimaryRunning,
                    Ok(reply) => {
                        tracing::warn!("mirror: the primary's agent: {}", reply.message);
                        AgentAnswer::Unreachable
                    }
                    Err(err) => {
                        tracing::warn!("mirror: the primary's agent: {err}");
                        AgentAnswer::Unreachable
                    }
                };
                let _ = driver.send(DriverInput::AgentAnswer(answer, generation));
            });
        true
    }

    /// Carries out a takeover; false when it failed (this member stays a backup).
    fn take_over(&mut self, rule: TakeoverRule) -> bool {
        let service = self.service;
        let context = service.context().clone();
        tracing::warn!("mirror: taking over as primary: {}", rule.reason());
        // Said before anything else, so a former primary asking meanwhile waits.
        context
            .mirror
            .update_failover(|view| view.taking_over = true);
        service.stop_receiver();
        let source = service.receiver_journal();
        let result = context
            .writer
            .extension_blocking(|reply| MirrorCommand::BecomePrimary {
                source,
                new_epoch: true,
                reply,
            });
        context
            .mirror
            .update_failover(|view| view.taking_over = false);
        match result {
            Ok(message) => {
                tracing::warn!("mirror: {message}");
                crate::metrics::failover(rule.label());
                context
                    .mirror
                    .record(EventKind::Takeover, format!("{message}: {}", rule.reason()));
                context
                    .mirror
                    .update_failover(|view| view.note = Some(message));
                true
            }
            Err(err) => {
                tracing::error!("mirror: the takeover failed: {err}");
                let note = format!("the takeover failed: {err}");
                context
                    .mirror
                    .record(EventKind::TakeoverRefused, note.clone());
                context
                    .mirror
                    .update_failover(|view| view.note = Some(note));
                // Still a backup: follow whoever is primary again.
                service.start_receiver();
                false
            }
        }
    }

    fn refused(&mut self, refusal: Refusal) {
        tracing::warn!("mirror: no takeover: {}", refusal.reason());
        let mirror = &self.service.context().mirror;
        mirror.record(EventKind::TakeoverRefused, refusal.reason());
        mirror.update_failover(|view| view.refusal = Some(refusal));
    }

    fn stand_down(&mut self, activation: u64) {
        self.service.context().mirror.record(
            EventKind::StoodDown,
            "this member no longer counts as the active backup: the primary may go on without it",
        );
        stand_down(self.service.context(), activation);
    }

    fn force_other_down(&mut self) {
        let context = self.service.context();
        force_other_down(
            &context.identity,
            self.membership,
            context.config.get().epoch,
        );
    }

    fn shut_down(&mut self) {
        tracing::error!("mirror: the other member took over; this instance stops");
        let mirror = &self.service.context().mirror;
        mirror.record(
            EventKind::Superseded,
            "the other failover member took over: this instance stops",
        );
        // The event is on disk before the process ends.
        mirror.events.flush(Duration::from_secs(1));
        (self.service.context().superseded)();
        // Only a test's hook returns: this member decides nothing more.
        *self.superseded = true;
    }

    fn fresh_rules(&mut self, backup: bool) {
        // The arbiter mode that hellos carry belonged to the old rules: a primary says it only
        // once the arbiter booked it for these. A fresh backup's stand-down names no
        // activation: it must not end one these rules have not even seen yet (the receiver may
        // have been activated a moment ago), only what older rules were granted.
        self.service
            .context()
            .mirror
            .tell_arbiter_link(ArbiterInput::FreshRules { backup });
    }

    fn drop_data_link(&mut self) {
        tracing::warn!(
            "mirror: this member stalled ({} ms between looks{}): it no longer counts as the active backup; reconnecting",
            self.gap.as_millis(),
            if self.receiver_stalled {
                ", a slow receive round"
            } else {
                ""
            }
        );
        let mirror = &self.service.context().mirror;
        // What the receiver said so far is about the connection being dropped.
        self.taken.take_from(self.inbox);
        self.taken.receiver.clear();
        mirror.update_link(|link| link.active = false);
        self.service.tell_receiver(ReceiverInput::Reconnect);
    }
}

/// Tells the arbiter that this backup stood down: the primary may go on without it, and a
/// takeover booked for it is cancelled. Through the arbiter, since the data channel is what was
/// lost; kept until a connection to the arbiter carries it (see
/// [`ArbiterInput::StandDown`]). It names the
/// activation it ends: the primary ignores it if a newer one overtook it on the way (see
/// `Hub::is_latest_activation`).
fn stand_down(context: &super::MirrorContext, activation: u64) {
    context
        .mirror
        .tell_arbiter_link(ArbiterInput::StandDown(activation));
}

/// Fetches the down primary's mirror journal after this member's end through its agent, and
/// appends it (made durable) to this member's mirror journal.
fn fetch_tail(
    address: &crate::agent::Target,
    journal: &super::receiver::SharedJournal,
    mirror_name: &str,
    mirror_id: StreamId,
    qos: Duration,
) -> crate::error::Result<()> {
    use crate::error::Error;
    use base64::Engine;
    let from = match journal.lock().unwrap().as_ref() {
        Some(j) => j.end().next(),
        None => return Err(Error::Conflict("this member has no mirror journal".into())),
    };
    let request = AgentRequest::JournalTail {
        mirror_name: mirror_name.to_string(),
        mirror_id,
        from: from.0,
    };
    let reply = agent::call_blocking(address, request, qos.max(Duration::from_secs(5)))?;
    let tail = match reply.journal {
        Some(tail) if reply.ok => tail,
        _ => return Err(Error::Unavailable(reply.message)),
    };
    if tail.first != from.0 {
        return Err(Error::Corrupt(format!(
            "the agent sent records from {} where {from} was asked for",
            tail.first
        )));
    }
    if tail.last < tail.first {
        return Ok(());
    }
    let frames = base64::engine::general_purpose::STANDARD
        .decode(tail.frames)
        .map_err(|e| Error::Corrupt(format!("journal from the agent: {e}")))?;
    let (first, last) = (from, crate::journal::JournalPos(tail.last));
    let records = super::protocol::check_frames(&frames, first, last)?;
    let mut guard = journal.lock().unwrap();
    let journal = guard
        .as_mut()
        .ok_or_else(|| Error::Conflict("this member has no mirror journal".into()))?;
    if journal.end().next() != first {
        return Err(Error::Conflict("the mirror journal moved meanwhile".into()));
    }
    journal.append(&frames, last, records)?;
    journal.sync()?;
    tracing::warn!(
        "mirror: fetched records {first}..={last} of the down primary through its agent"
    );
    Ok(())
}

/// After a takeover through the arbiter: force the old primary down through its agent as soon as
/// it can be reached (it is frozen in trouble, or gone; if it comes back it must not resume).
fn force_other_down(identity: &Arc<crate::tls::Identity>, m: &Membership, epoch: Epoch) {
    let Some(old) = m.primary_name.as_deref().and_then(|p| m.member(p)).cloned() else {
        return;
    };
    let Ok(address) = super::agent_target(identity, m, &old) else {
        return;
    };
    let qos = Duration::from_millis(m.mirror.qos_timeout_ms);
    let request = AgentRequest::ForceDown {
        mirror_name: m.mirror.name.clone(),
        member: old.name.clone(),
        epoch,
    };
    let _ = std::thread::Builder::new()
        .name("force-down".into())
        .spawn(move || {
            // Try for a while: the old primary's host may be cut off for some time.
            let until = Instant::now() + Duration::from_secs(300);
            while Instant::now() < until {
                match agent::call_blocking(&address, request.clone(), qos) {
                    Ok(reply) => {
                        tracing::warn!("mirror: {}: {}", old.name, reply.message);
                        return;
                    }
                    Err(_) => std::thread::sleep(Duration::from_secs(1)),
                }
            }
        });
}

/// Whether every mirrored database here is mounted, activated and following the journal: a
/// backup never takes over without all of them.
fn databases_ready(context: &super::MirrorContext, m: &Membership) -> bool {
    m.databases.iter().all(|db| {
        let facts = context.database_facts(&db.name);
        super::status::database_status(facts) == Some("Dejournaling")
    })
}
