//! An explorer of the failover protocol: two failover members driven by [`Failover`], an arbiter
//! keeping an [`ArbiterBook`], and the primary's agent, in a small world of links, crashes,
//! messages in flight and a clock. From a healthy pair it tries every interleaving of steps up to
//! a depth (depth-first, with the states already seen skipped) and checks after each step:
//!
//! 1. at most one member accepts writes;
//! 2. no acknowledged write is lost: a backup never takes over while the primary acknowledged a
//!    write it lacks, unless it fetched the primary's journal.
//!
//! The world's rules encode the timing facts the protocol relies on: each side notices a broken
//! link (or a crashed peer) within one QoS timeout, so the clock cannot pass that deadline before
//! the notice is delivered. Messages between two parties travel only while their link is up; a
//! cut drops what was in flight. Time is in QoS-sized units of 1 000 ms with `QOS` = 2 000.

use std::collections::HashSet;

use super::super::*;

const QOS: u64 = 2_000;
const STEP_MS: u64 = 1_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Who {
    P,
    B,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Link {
    /// Between the members (data channel; also how the backup reaches the primary's agent).
    Pb,
    /// Primary ↔ arbiter.
    Pa,
    /// Backup ↔ arbiter.
    Ba,
}

/// Something on its way to a member, over a link (or arriving as a local notice when `via` is
/// None), with the time by which it must arrive (notices of lost links only).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Delivery {
    to: Who,
    event: Event,
    via: Option<Link>,
    deadline: Option<u64>,
    /// The activation a message names (0: none): "you are active" to the backup, and the
    /// backup's stand-down relayed by the arbiter.
    activation: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct World {
    now: u64,
    p: Failover,
    b: Failover,
    book: ArbiterBook,
    arbiter: bool,
    pb: bool,
    pa: bool,
    ba: bool,
    p_instance: bool,
    p_host: bool,
    /// Data channel established (both sides were told).
    channel: bool,
    inbox: Vec<Delivery>,
    /// The primary acknowledged writes the backup does not hold.
    p_ahead: bool,
    /// A write waits for the backup's acknowledgement that will not come (the channel broke).
    p_pending: bool,
    faults: u8,
    writes: u8,
    /// The primary's latest activation of the backup, and the latest one the backup heard of.
    activation: u8,
    b_activation: u8,
}

impl World {
    fn healthy(arbiter: bool) -> World {
        let mut p = Failover::new(FailoverRole::Primary, QOS);
        let mut b = Failover::new(FailoverRole::Backup, QOS);
        let mut book = ArbiterBook::default();
        for m in [&mut p, &mut b] {
            m.handle(0, Event::PartnerConnected);
            m.handle(0, Event::PartnerActive);
        }
        if arbiter {
            book.sees_primary = true;
            book.sees_backup = true;
            p.handle(0, Event::ArbiterConnected);
            b.handle(0, Event::ArbiterConnected);
            let answer = book.ask_from_primary();
            p.handle(0, super::to_primary(answer));
            // The primary asks the arbiter to book arbiter mode, and switches on its answer.
            book.primary_mode(Mode::Arbiter);
            p.handle(0, Event::ArbiterBookedMode(true));
            b.handle(0, Event::ArbiterSeesPartner(true));
            b.handle(0, Event::PartnerMode(Mode::Arbiter));
            assert_eq!((p.mode(), b.mode()), (Mode::Arbiter, Mode::Arbiter));
        }
        World {
            now: 0,
            p,
            b,
            book,
            arbiter,
            pb: true,
            pa: arbiter,
            ba: arbiter,
            p_instance: true,
            p_host: true,
            channel: true,
            inbox: Vec::new(),
            p_ahead: false,
            p_pending: false,
            faults: 0,
            writes: 0,
            activation: 1,
            b_activation: 1,
        }
    }

    fn member(&mut self, who: Who) -> &mut Failover {
        match who {
            Who::P => &mut self.p,
            Who::B => &mut self.b,
        }
    }

    fn alive(&self, who: Who) -> bool {
        match who {
            Who::P => self.p_instance && self.p.role() != FailoverRole::Down,
            Who::B => true,
        }
    }

    fn link_up(&self, link: Link) -> bool {
        match link {
            Link::Pb => self.pb,
            Link::Pa => self.pa,
            Link::Ba => self.ba,
        }
    }

    /// Sends over a link; between the members only on the established channel (a message never
    /// outlives the connection it was sent on).
    fn send(&mut self, to: Who, event: Event, via: Link) {
        self.send_naming(to, event, via, 0);
    }

    /// Sends a message that names an activation.
    fn send_naming(&mut self, to: Who, event: Event, via: Link, activation: u8) {
        if self.link_up(via) && (via != Link::Pb || self.channel) {
            self.inbox.push(Delivery {
                to,
                event,
                via: Some(via),
                deadline: None,
                activation,
            });
        }
    }

    fn notice(&mut self, to: Who, event: Event) {
        self.inbox.push(Delivery {
            to,
            event,
            via: None,
            deadline: Some(self.now + QOS),
            activation: 0,
        });
    }

    /// The arbiter's view follows the links and the primary instance.
    fn refresh_book(&mut self) {
        self.book.sees_primary = self.arbiter && self.pa && self.alive(Who::P);
        self.book.sees_backup = self.arbiter && self.ba;
    }

    /// Delivers one event to a member and carries out its actions. Returns an invariant
    /// violation, if any.
    fn deliver(&mut self, to: Who, event: Event) -> Result<(), String> {
        if !self.alive(to) {
            return Ok(());
        }
        let now = self.now;
        let journal_fetched = matches!(
            event,
            Event::Agent(AgentAnswer::PrimaryDown { journal: true })
        );
        let actions = self.member(to).handle(now, event);
        for action in actions {
            self.act(to, action, journal_fetched)?;
        }
        self.check()
    }

    fn act(&mut self, who: Who, action: Action, journal_fetched: bool) -> Result<(), String> {
        match (who, action) {
            (Who::P, Action::SwitchMode(mode)) => {
                if self.pa {
                    self.book.primary_mode(mode);
                }
                self.send(Who::B, Event::PartnerMode(mode), Link::Pb);
            }
            (Who::P, Action::BookArbiterMode) => {
                if self.pa {
                    self.book.primary_mode(Mode::Arbiter);
                    self.send(Who::P, Event::ArbiterBookedMode(true), Link::Pa);
                }
            }
            (Who::B, Action::SwitchMode(mode)) => {
                self.send(Who::P, Event::PartnerMode(mode), Link::Pb)
            }
            (Who::P, Action::AskPartnerToLeaveArbiterMode) => {
                self.send(Who::B, Event::PartnerMode(Mode::Agent), Link::Pb)
            }
            (Who::P, Action::AskArbiter) => {
                if self.pa {
                    self.refresh_book();
                    let answer = self.book.ask_from_primary();
                    self.send(Who::P, super::to_primary(answer), Link::Pa);
                }
            }
            (Who::B, Action::AskArbiter) => {
                if self.ba {
                    self.refresh_book();
                    let take_over = self.book.ask_from_backup();
                    self.send(Who::B, Event::ArbiterVerdict { take_over }, Link::Ba);
                }
            }
            (Who::B, Action::StandDown) => {
                if self.pb && self.channel {
                    self.send(Who::P, Event::PartnerStoodDown, Link::Pb);
                } else if self.ba && self.pa {
                    // Relayed by the arbiter, naming the activation it ends.
                    let activation = self.b_activation;
                    self.send_naming(Who::P, Event::PartnerStoodDown, Link::Pa, activation);
                }
            }
            (Who::B, Action::AskAgent) => {
                let answer = if self.pb && self.p_host {
                    if self.alive(Who::P) {
                        vec![AgentAnswer::PrimaryRunning]
                    } else {
                        // The agent may or may not manage to hand over the journal.
                        vec![
                            AgentAnswer::PrimaryDown { journal: false },
                            AgentAnswer::PrimaryDown { journal: true },
                        ]
                    }
                } else {
                    vec![AgentAnswer::Unreachable]
                };
                for a in answer {
                    self.inbox.push(Delivery {
                        to: Who::B,
                        event: Event::Agent(a),
                        via: None,
                        deadline: None,
                        activation: 0,
                    });
                }
            }
            (Who::B, Action::TakeOver) => {
                if self.p_ahead && !journal_fetched {
                    return Err(
                        "the backup took over without writes the primary acknowledged".into(),
                    );
                }
                if journal_fetched {
                    self.p_ahead = false;
                }
                self.p_pending = false;
                // The new primary's writes are its own from here on.
                self.channel = false;
                self.refresh_book();
            }
            (Who::P, Action::ResumeWrites) => {
                if self.p_pending {
                    // The writes that waited for the backup are answered now.
                    self.p_pending = false;
                    self.p_ahead = true;
                }
            }
            (Who::P, Action::ShutDown) => {
                self.channel = false;
                self.refresh_book();
            }
            (Who::B, Action::Reconnect)
            | (Who::B, Action::ForceOtherDown)
            | (_, Action::RevokeActive)
            | (_, Action::SuspendWrites) => {}
            (who, action) => return Err(format!("{who:?} cannot {action:?}")),
        }
        Ok(())
    }

    /// Whether the primary can acknowledge a write now: it commits, and either does not wait
    /// for the backup or has a channel on which the backup's acknowledgement can come. (A
    /// primary cut off from its active backup may still *run* a statement until it notices, but
    /// can answer no client.)
    fn p_acknowledges(&self) -> bool {
        self.alive(Who::P)
            && self.p.accepts_writes()
            && (!self.p.active() || (self.pb && self.channel))
    }

    fn check(&self) -> Result<(), String> {
        if self.p_acknowledges() && self.b.accepts_writes() {
            return Err("both members acknowledge writes".into());
        }
        Ok(())
    }

    /// Every step possible from here.
    fn steps(&self) -> Vec<Step> {
        let mut steps = Vec::new();
        for (i, d) in self.inbox.iter().enumerate() {
            if d.via.is_none_or(|l| self.link_up(l)) {
                steps.push(Step::Deliver(i));
            }
        }
        let earliest_deadline = self.inbox.iter().filter_map(|d| d.deadline).min();
        if earliest_deadline.is_none_or(|d| self.now + STEP_MS <= d) && self.now < 12 * STEP_MS {
            steps.push(Step::Advance);
        }
        if self.faults < 2 {
            for link in [Link::Pb, Link::Pa, Link::Ba] {
                if self.link_up(link) && (link == Link::Pb || self.arbiter) {
                    steps.push(Step::Cut(link));
                }
            }
            if self.p_instance && self.p.role() == FailoverRole::Primary {
                steps.push(Step::CrashInstance);
                steps.push(Step::CrashHost);
                steps.push(Step::GracefulShutdown);
            }
        }
        for link in [Link::Pb, Link::Pa, Link::Ba] {
            if !self.link_up(link) && (link == Link::Pb || self.arbiter) {
                steps.push(Step::Heal(link));
            }
        }
        if self.pb && !self.channel && self.alive(Who::P) && self.b.may_connect() {
            steps.push(Step::Connect);
        }
        if self.channel && !self.p.active() && self.b.role() == FailoverRole::Backup {
            steps.push(Step::CatchUp);
        }
        if self.arbiter {
            if self.pa && self.alive(Who::P) {
                steps.push(Step::ArbiterReportsToP);
            }
            if self.ba {
                steps.push(Step::ArbiterReportsToB);
            }
        }
        if self.writes < 2 && self.alive(Who::P) && self.p.accepts_writes() {
            steps.push(Step::Write);
        }
        steps
    }

    fn apply(&mut self, step: &Step) -> Result<(), String> {
        match *step {
            Step::Deliver(i) => {
                let d = self.inbox.remove(i);
                match (d.to, d.event) {
                    (Who::B, Event::PartnerActive) => self.b_activation = d.activation,
                    // The primary's driver drops a relayed stand-down that a newer activation
                    // overtook (`Hub::is_latest_activation`).
                    (Who::P, Event::PartnerStoodDown)
                        if d.via == Some(Link::Pa) && d.activation != self.activation =>
                    {
                        return Ok(());
                    }
                    _ => {}
                }
                self.deliver(d.to, d.event)?;
            }
            Step::Advance => {
                self.now += STEP_MS;
                self.deliver(Who::P, Event::Tick)?;
                self.deliver(Who::B, Event::Tick)?;
            }
            Step::Cut(link) => {
                self.faults += 1;
                self.set_link(link, false);
            }
            Step::Heal(link) => self.set_link(link, true),
            Step::CrashInstance | Step::CrashHost => {
                self.faults += 1;
                self.p_instance = false;
                if *step == Step::CrashHost {
                    self.p_host = false;
                }
                self.lose_channel();
                self.refresh_book();
                if self.arbiter && self.pa {
                    // The arbiter notices, but the backup only learns through its own link.
                }
            }
            Step::GracefulShutdown => {
                self.faults += 1;
                if self.pb && self.channel {
                    self.send(Who::B, Event::PartnerHandsOver, Link::Pb);
                }
                self.p_instance = false;
                self.lose_channel();
                self.refresh_book();
            }
            Step::Connect => {
                self.channel = true;
                // Notices about the previous channel are not about this one.
                self.inbox
                    .retain(|d| !(d.via.is_none() && d.event == Event::PartnerLost));
                if self.b.role() == FailoverRole::Primary && self.p.role() == FailoverRole::Primary
                {
                    // The new primary tells the old one.
                    self.deliver(Who::P, Event::PartnerIsPrimary)?;
                    self.channel = false;
                } else if self.b.role() == FailoverRole::Backup {
                    self.deliver(Who::P, Event::PartnerConnected)?;
                    self.deliver(Who::B, Event::PartnerConnected)?;
                } else {
                    self.channel = false;
                }
            }
            Step::CatchUp => {
                // The backup received everything the primary holds; the primary counts it
                // active and tells it so.
                self.p_ahead = false;
                self.p_pending = false;
                let was_active = self.p.active();
                self.deliver(Who::P, Event::PartnerActive)?;
                if self.p.active() {
                    if !was_active {
                        self.activation += 1;
                    }
                    let activation = self.activation;
                    self.send_naming(Who::B, Event::PartnerActive, Link::Pb, activation);
                }
            }
            Step::ArbiterReportsToP => {
                self.refresh_book();
                let answer = self.book.ask_from_primary();
                self.deliver(Who::P, super::to_primary(answer))?;
            }
            Step::ArbiterReportsToB => {
                self.refresh_book();
                let sees = self.book.sees_primary;
                self.deliver(Who::B, Event::ArbiterSeesPartner(sees))?;
            }
            Step::Write => {
                self.writes += 1;
                if self.p.active() {
                    if !(self.pb && self.channel) {
                        self.p_pending = true;
                    }
                } else {
                    self.p_ahead = true;
                }
            }
        }
        self.check()
    }

    fn lose_channel(&mut self) {
        if self.channel {
            self.channel = false;
            self.notice(Who::P, Event::PartnerLost);
            self.notice(Who::B, Event::PartnerLost);
        }
        // What was in flight between the members is gone.
        self.inbox.retain(|d| d.via != Some(Link::Pb));
    }

    fn set_link(&mut self, link: Link, up: bool) {
        match link {
            Link::Pb => {
                self.pb = up;
                if !up {
                    self.lose_channel();
                }
            }
            Link::Pa => {
                self.pa = up;
                if up {
                    self.notice(Who::P, Event::ArbiterConnected);
                } else {
                    self.inbox.retain(|d| d.via != Some(Link::Pa));
                    self.notice(Who::P, Event::ArbiterLost);
                }
            }
            Link::Ba => {
                self.ba = up;
                if up {
                    self.notice(Who::B, Event::ArbiterConnected);
                } else {
                    self.inbox.retain(|d| d.via != Some(Link::Ba));
                    self.notice(Who::B, Event::ArbiterLost);
                }
            }
        }
        self.refresh_book();
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Deliver(usize),
    Advance,
    Cut(Link),
    Heal(Link),
    CrashInstance,
    CrashHost,
    GracefulShutdown,
    Connect,
    CatchUp,
    ArbiterReportsToP,
    ArbiterReportsToB,
    Write,
}

/// Depth-first over every step sequence up to `depth`; returns the number of distinct states, or
/// the first violation with the steps that led to it.
fn explore(start: World, depth: usize) -> Result<usize, String> {
    let mut seen: HashSet<World> = HashSet::new();
    let mut path: Vec<String> = Vec::new();
    fn go(
        world: &World,
        depth: usize,
        seen: &mut HashSet<World>,
        path: &mut Vec<String>,
    ) -> Result<(), String> {
        if depth == 0 || !seen.insert(world.clone()) {
            return Ok(());
        }
        for step in world.steps() {
            let mut next = world.clone();
            let label = match &step {
                Step::Deliver(i) => format!("deliver {:?}", world.inbox[*i]),
                other => format!("{other:?}"),
            };
            path.push(label);
            if let Err(why) = next.apply(&step) {
                return Err(format!("{why}\nafter:\n  {}", path.join("\n  ")));
            }
            go(&next, depth - 1, seen, path)?;
            path.pop();
        }
        Ok(())
    }
    go(&start, depth, &mut seen, &mut path)?;
    Ok(seen.len())
}

/// The search depth: `MIRRORLAB_EXPLORE_DEPTH` when set (deeper runs take minutes), else the
/// given default, which keeps the test to seconds.
fn depth(default: usize) -> usize {
    std::env::var("MIRRORLAB_EXPLORE_DEPTH")
        .ok()
        .and_then(|d| d.parse().ok())
        .unwrap_or(default)
}

#[test]
fn explored_agent_mode_pair_never_has_two_writers_or_loses_an_acknowledged_write() {
    let depth = depth(11);
    let states = explore(World::healthy(false), depth).unwrap_or_else(|why| panic!("{why}"));
    println!("agent mode: {states} states to depth {depth}");
    assert!(states > 1_000, "explored only {states} states");
}

#[test]
fn explored_arbiter_mode_pair_never_has_two_writers_or_loses_an_acknowledged_write() {
    let depth = depth(10);
    let states = explore(World::healthy(true), depth).unwrap_or_else(|why| panic!("{why}"));
    println!("arbiter mode: {states} states to depth {depth}");
    assert!(states > 1_000, "explored only {states} states");
}

#[test]
fn the_explorer_finds_a_broken_rule() {
    // A primary that went on alone (its backup no longer active) while the backup takes over on
    // a verdict it should never have been given: the checker must call it two writers.
    let mut world = World::healthy(true);
    world.p = Failover::new(FailoverRole::Primary, QOS);
    world.pb = false;
    world.channel = false;
    world.b.handle(0, Event::PartnerLost);
    assert!(world.p_acknowledges());
    let result = world.deliver(Who::B, Event::ArbiterVerdict { take_over: true });
    assert_eq!(result, Err("both members acknowledge writes".to_string()));
}
