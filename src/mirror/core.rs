//! The member core: one failover member's decisions, synchronous and free of I/O.
//!
//! # What it is
//!
//! The failover [`driver`](super::driver) is a thread that looks every tick at what happened
//! (the links' events, the arbiter's, the agents' answers, the configuration) and carries out
//! what follows. Everything it *decides* lives here, in [`MemberCore`]: the failover rules
//! ([`Failover`]) and the bookkeeping around them that the rules alone do not see —
//!
//! - **fresh rules** when the role changes (a start, a takeover, a demotion), which forget the
//!   arbiter mode the old rules had booked and, on a backup, stand down first;
//! - **the stall rule**: a backup whose process stood still for half a QoS starts its rules
//!   afresh, drops its data link and tells the fresh rules what its arbiter link last reported,
//!   and — if it had reached its primary — that it lost it;
//! - **link generations**: every connection to the primary starts one; a question to the
//!   primary's agent belongs to the generation it was asked in, is asked once per generation,
//!   and its answer is dropped if a newer connection overtook it;
//! - **activations**: a stand-down names the activation the rules knew of when they decided it;
//! - **a failed takeover**: it is cancelled at the arbiter and the old primary is not forced
//!   down (nobody would be primary), and the rules start afresh as a backup;
//! - the order in which inputs reach the rules within one look (configuration first, then the
//!   links, the arbiter, the agents' answers, then the tick);
//! - **why**: which rule allowed a takeover ([`TakeoverRule`]: a handover, the primary's agent,
//!   the arbiter, the primary's journal fetched) and, when a backup that lost its primary was
//!   told something and did not take over, why not ([`Refusal`]: No Failover, a copy not ready,
//!   the primary running, its agent silent, …), said once per link, for the mirror's events and
//!   the Mirror Monitor's no-primary banner;
//! - **a restarted former primary** ([`MemberCore::decide`]): one question at a time to the
//!   other failover member, at most every [`DECIDE_EVERY_MS`], and the decision carried out
//!   through a [`Restarting`] shell.
//!
//! # How it is driven
//!
//! [`MemberCore::step`] takes one [`Look`] (the time, the role, what the configuration says, the
//! events gathered since the last look) and a [`Shell`], whose methods carry out effects: the
//! driver's shell talks to the hub, the arbiter link, the agents and the writer; a test's shell
//! records them. The core reads no clock and touches no socket, file or lock, so the same inputs
//! always give the same effects — which is what a deterministic simulation needs, and what the
//! unit tests below use.
//!
//! # Invariants
//!
//! - At most one question to the primary's agent per link generation; an answer is handed to
//!   the rules only in the generation it was asked in.
//! - A takeover that failed is followed by a stand-down naming its activation, and never by
//!   forcing the old primary down.
//! - Fresh backup rules stand down (naming no activation) before they ask anything.
//!
//! Beside it, pure as well and with their tests: the decisions at a member's `hello` (what it
//! keeps of its journal, where the primary starts sending, the member's check of the cut:
//! [`hello`]), the primary's about acknowledgements (activation, a forged acknowledgement,
//! QoS revocation: [`replication`]) and a following member's about its link (whether to
//! connect now, to whom, what follows an end: [`follow`]). The threads that own the links
//! gather the facts, ask, and carry out.
//!
//! # Left out (for now)
//!
//! The hub's and the receiver's state: the primary's links live under the hub's lock and the
//! receiver's connection in its thread, where one core per member would own it all, with the
//! threads only turning bytes into inputs and effects into bytes. What reaches the driver
//! comes on one channel, and what the threads say about themselves is one published status
//! ([`crate::mirror::state`]), but the driver's decisions for the other threads are still
//! flags they read.

use super::failover::{Action, AgentAnswer, Event, Failover, FailoverRole, Mode, Restart};

/// How often (ms) a primary in arbiter mode repeats its mode to the backup.
pub const MODE_REPEAT_MS: u64 = 500;
/// How often (ms) a restarted former primary asks the other member again.
pub const DECIDE_EVERY_MS: u64 = 1_000;

/// What the driver saw at one look.
#[derive(Debug, Clone, Default)]
pub struct Look {
    /// Milliseconds since the driver started.
    pub now_ms: u64,
    /// Milliseconds since the previous look (a backup that stood still half a QoS stalled).
    pub gap_ms: u64,
    /// The receiver reports a receive round so slow that the backup stalled.
    pub receiver_stalled: bool,
    /// The QoS timeout (ms).
    pub qos_ms: u64,
    /// No Failover is set.
    pub no_failover: bool,
    /// Stop Mirror On This Member is in effect.
    pub mirror_stopped: bool,
    /// Backup: every mirrored database here is ready to take over.
    pub databases_ready: bool,
    /// The arbiter link is up, and whether the arbiter last said it sees the other member.
    pub arbiter: (bool, Option<bool>),
    /// Backup: when (ms, on the same clock as `now_ms`) the primary was last heard from.
    pub heard_ms: Option<u64>,
    /// Backup: the activation the primary last gave this member.
    pub link_activation: u64,
    /// What happened on the data link: the hub's events on a primary, the receiver's on a
    /// backup.
    pub link_events: Vec<Event>,
    /// What the arbiter link reported (stale relayed stand-downs already dropped).
    pub arbiter_events: Vec<Event>,
    /// The primary's agent's answers, each with the link generation it was asked in.
    pub agent_answers: Vec<(AgentAnswer, u64)>,
}

/// Carries out what the core decides (see the module essay).
pub trait Shell {
    /// Hold the primary's mirrored commits (the trouble state).
    fn suspend_writes(&mut self);
    /// Ask the arbiter to book arbiter mode with the backup's latest activation.
    fn book_arbiter_mode(&mut self);
    /// This member's mode changed: tell the other member and the arbiter.
    fn switch_mode(&mut self, mode: Mode);
    /// Primary: ask the backup to leave arbiter mode.
    fn ask_partner_to_leave_arbiter_mode(&mut self);
    /// Ask the arbiter (primary: does it see the backup; backup: may it take over).
    fn ask_arbiter(&mut self);
    /// Ask the primary's agent whether the primary is down; the answer comes back in a later
    /// look with `generation`. `active`: this backup was active (else it fetches the journal).
    /// False when it could not be asked (no address known): a later decision asks again.
    fn ask_agent(&mut self, generation: u64, active: bool) -> bool;
    /// Become the primary in a new epoch, as `rule` allows; false when it failed.
    fn take_over(&mut self, rule: TakeoverRule) -> bool;
    /// This backup lost the primary and did not take over on what it was just told (see
    /// [`Refusal`]); said once per reason until the link or the role changes.
    fn refused(&mut self, refusal: Refusal);
    /// Tell the primary (through the arbiter) that this backup stood down, ending `activation`.
    fn stand_down(&mut self, activation: u64);
    /// Force the former primary down through its agent.
    fn force_other_down(&mut self);
    /// The other member took over: this instance stops.
    fn shut_down(&mut self);
    /// Fresh rules: forget the arbiter mode booked for the old ones; a backup's first stand-down
    /// (naming no activation) cancels a takeover granted to them.
    fn fresh_rules(&mut self, backup: bool);
    /// The backup stalled: drop what the data link buffered, stop counting as active, reconnect.
    fn drop_data_link(&mut self);
}

/// Carries out a restarted former primary's decision (see [`MemberCore::decide`]).
pub trait Restarting {
    /// Ask the other failover member's agent who is primary (the decision comes back in a later
    /// [`MemberCore::decide`]); false when it could not be asked.
    fn ask_other_member(&mut self) -> bool;
    /// Carry out `decision`; true while this member is still deciding afterwards (told to
    /// wait, or the step failed).
    fn restart(&mut self, decision: Restart) -> bool;
}

/// What a look leaves for the driver to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct After {
    /// Primary: the rules are out of trouble, so held commits may resume.
    pub writes_may_resume: bool,
    /// The receiver may connect to the primary.
    pub may_connect: bool,
    /// A backup that lost the primary has not settled what follows: it may still take over
    /// (see [`Failover::undecided`](super::failover::Failover::undecided)).
    pub undecided: bool,
    /// Repeat the arbiter mode to the backup now.
    pub repeat_mode: bool,
    /// The Mirror Monitor's Failover Mode and status.
    pub mode: &'static str,
    /// The member's status.
    pub status: &'static str,
}

/// Which rule let a backup take over (the mirror's events and `mirrorlab_failovers_total` say it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TakeoverRule {
    /// The primary shut down gracefully and handed over to its active backup.
    Handover,
    /// The primary's agent confirmed its instance down (forcing a hung one down) while this
    /// member was its active backup, within a QoS of losing it.
    AgentConfirmedDown,
    /// The primary's agent confirmed its instance down and supplied its journal to the end.
    AgentSuppliedJournal,
    /// The arbiter lost the primary too while it was in arbiter mode, and booked the takeover.
    ArbiterConfirmed,
}

impl TakeoverRule {
    /// The rule in plain words.
    pub fn reason(self) -> &'static str {
        match self {
            TakeoverRule::Handover => "the primary shut down gracefully and handed over",
            TakeoverRule::AgentConfirmedDown => {
                "the primary's agent confirmed its instance down while this member was its \
                 active backup (agent controlled)"
            }
            TakeoverRule::AgentSuppliedJournal => {
                "the primary's agent confirmed its instance down and supplied its journal to \
                 the end"
            }
            TakeoverRule::ArbiterConfirmed => {
                "the arbiter lost the primary too while it was in arbiter mode (arbiter \
                 controlled)"
            }
        }
    }

    /// The `reason` label of `mirrorlab_failovers_total`.
    pub fn label(self) -> &'static str {
        match self {
            TakeoverRule::Handover => "handover",
            TakeoverRule::AgentConfirmedDown | TakeoverRule::AgentSuppliedJournal => {
                "agent_controlled"
            }
            TakeoverRule::ArbiterConfirmed => "arbiter_controlled",
        }
    }
}

/// Why a backup that lost its primary did not take over on what it was just told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// No Failover is set.
    NoFailover,
    /// Stop Mirror On This Member is in effect.
    MirrorStopped,
    /// A mirrored database here is not activated and caught up.
    DatabasesNotReady,
    /// The primary's agent says its instance runs.
    PrimaryRunning,
    /// The primary's agent does not answer: its host is down or cut off, or the agent is.
    AgentUnreachable,
    /// The primary is down, but this member was not its active backup within a QoS of losing
    /// it, and has not its journal.
    NotActiveInWindow,
    /// The arbiter still sees the primary, or the primary went on alone.
    ArbiterRefused,
}

impl Refusal {
    /// The refusal in plain words, with what an operator can do.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::NoFailover => {
                "No Failover is set: this member does not take over (Clear No Failover, or start \
                 the primary)"
            }
            Refusal::MirrorStopped => {
                "mirroring is stopped on this member (Start Mirror On This Member)"
            }
            Refusal::DatabasesNotReady => {
                "a mirrored database here is not activated and caught up (Activate and Catchup \
                 it)"
            }
            Refusal::PrimaryRunning => {
                "the primary's agent says its instance is running: reconnecting to it"
            }
            Refusal::AgentUnreachable => {
                "the primary's agent does not answer (its host is down or cut off, or the agent \
                 is), and without the arbiter's word or the agent's this member cannot know \
                 that the primary stopped; it keeps trying to reconnect to the primary: start \
                 the primary's host or agent, or Force This Member To Become The Primary if it \
                 is gone"
            }
            Refusal::NotActiveInWindow => {
                "the primary is down, but this member was not its active backup when it was \
                 lost and has not its journal: asking its agent for the journal (or start the \
                 primary)"
            }
            Refusal::ArbiterRefused => {
                "the arbiter still sees the primary, or the primary went on alone: no takeover"
            }
        }
    }
}

/// One failover member's decisions (see the module essay).
#[derive(Debug, Default, Clone, PartialEq, Eq, Hash)]
pub struct MemberCore {
    failover: Option<Failover>,
    /// How many data links to the primary the rules have heard of (each `PartnerConnected`, and
    /// fresh rules, start a new one).
    link_generation: u64,
    /// A question to the primary's agent is out, asked in this generation.
    loss_question: Option<u64>,
    no_failover: Option<bool>,
    ready: Option<bool>,
    stopped: Option<bool>,
    /// Backup: the primary's token of this member's activation, as far as the rules know.
    activation: u64,
    last_mode_repeat_ms: u64,
    /// A restarted former primary's question to the other member is out.
    asking_other: bool,
    /// When it last asked.
    asked_other_ms: Option<u64>,
    /// The refusal last said (see [`Shell::refused`]); forgotten on a new link or fresh rules.
    last_refusal: Option<Refusal>,
    /// The rule that allowed the takeover decided in this look.
    takeover_rule: Option<TakeoverRule>,
    /// Puts back an old bug for the explorer and the simulation to find: a stalled backup's
    /// fresh rules were not told that its arbiter link was still up. Never set in a member.
    pub(crate) legacy_stall_forgets_arbiter: bool,
    /// Puts back an old bug for the explorer and the simulation to find: a stalled backup's
    /// fresh rules heard of the lost primary before their settings. Never set in a member.
    pub(crate) legacy_stall_before_settings: bool,
}

impl MemberCore {
    /// A core with no rules yet: the first look starts them.
    pub fn new() -> MemberCore {
        MemberCore::default()
    }

    /// The rules, while this member is a failover member with a role.
    pub fn failover(&self) -> Option<&Failover> {
        self.failover.as_ref()
    }

    /// The rules, to change them behind the core's back (the explorer and the simulation put
    /// old bugs back).
    pub(crate) fn failover_mut(&mut self) -> Option<&mut Failover> {
        self.failover.as_mut()
    }

    /// The current link generation.
    #[cfg(test)]
    pub fn link_generation(&self) -> u64 {
        self.link_generation
    }

    /// This member is no failover member with a role now (not a member, async): the rules are
    /// dropped and start afresh when it is one again.
    pub fn idle(&mut self) {
        self.failover = None;
    }

    /// A restarted former primary that does not know its role yet (see
    /// [`super::failover::restart_as`]): carries out the decisions that came back, then asks the
    /// other failover member (one question at a time, at most every [`DECIDE_EVERY_MS`]) — or,
    /// when there is no other failover member, resumes as primary at once.
    pub fn decide(
        &mut self,
        now_ms: u64,
        decisions: Vec<Restart>,
        other_failover_member: bool,
        shell: &mut impl Restarting,
    ) {
        let mut deciding = true;
        for decision in decisions {
            self.asking_other = false;
            deciding = shell.restart(decision);
        }
        if !deciding || self.asking_other {
            return;
        }
        if self
            .asked_other_ms
            .is_some_and(|at| now_ms < at + DECIDE_EVERY_MS)
        {
            return;
        }
        self.asked_other_ms = Some(now_ms);
        if !other_failover_member {
            shell.restart(Restart::Primary);
            return;
        }
        self.asking_other = shell.ask_other_member();
    }

    /// A decision arrived after the member stopped deciding some other way (Force): nothing is
    /// left to decide, and no question is out any more.
    pub fn decision_too_late(&mut self) {
        self.asking_other = false;
    }

    /// Starts the rules afresh in `role`: what the configuration says is fed again on this look,
    /// and the arbiter booking of the old rules is forgotten.
    fn fresh_rules(&mut self, role: FailoverRole, qos_ms: u64, shell: &mut impl Shell) {
        self.failover = Some(Failover::new(role, qos_ms));
        self.link_generation += 1;
        self.no_failover = None;
        self.ready = None;
        self.stopped = None;
        self.activation = 0;
        self.last_refusal = None;
        shell.fresh_rules(role == FailoverRole::Backup);
    }

    /// One look (see the module essay): feeds the rules what happened, in order, carries out
    /// their actions through `shell`, and says what to publish.
    pub fn step(&mut self, role: FailoverRole, look: Look, shell: &mut impl Shell) -> After {
        let Look {
            now_ms,
            gap_ms,
            receiver_stalled,
            qos_ms,
            no_failover,
            mirror_stopped,
            databases_ready,
            arbiter,
            heard_ms,
            link_activation,
            mut link_events,
            arbiter_events,
            agent_answers,
        } = look;
        // The stall rule: a backup that stood still half a QoS may have been revoked meanwhile
        // and may hold data buffered before that; it starts afresh and reconnects.
        let mut prelude = Vec::new();
        if role == FailoverRole::Backup
            && self.failover.is_some()
            && (gap_ms > qos_ms / 2 || receiver_stalled)
        {
            let had_partner = self.failover.as_ref().is_some_and(|f| f.had_partner());
            self.fresh_rules(role, qos_ms, shell);
            // What the link buffered before the stall is stale.
            link_events.clear();
            shell.drop_data_link();
            // The arbiter link outlived the stall and will say nothing new: the fresh rules
            // hear what it last reported. If the backup had its primary, it lost it when it
            // stalled; one that never reached it lost nothing (asking then could act on a
            // "down" that the primary's restart overtakes).
            let (arbiter_connected, sees_partner) = arbiter;
            let arbiter_connected = arbiter_connected && !self.legacy_stall_forgets_arbiter;
            if arbiter_connected {
                prelude.push(Event::ArbiterConnected);
                prelude.extend(sees_partner.map(Event::ArbiterSeesPartner));
            }
            if had_partner {
                prelude.extend([Event::PartnerConnected, Event::PartnerLost]);
            }
        }
        // A role changed by an action (create, join, takeover) starts the rules afresh.
        if self.failover.as_ref().map(|f| f.role()) != Some(role) {
            self.fresh_rules(role, qos_ms, shell);
        }
        // What the configuration says goes first — before a stalled backup's account of its
        // links too: it was set before whatever the links report in this look, and a loss
        // handled before it would be decided by rules that do not know it yet (a backup with
        // No Failover just set asked the arbiter for a takeover; fresh rules after a stall,
        // told the loss before that their databases are not ready, asked the primary's agent,
        // and took over on the answer once they were ready while the old primary resumed).
        let mut settings = Vec::new();
        if self.no_failover != Some(no_failover) {
            self.no_failover = Some(no_failover);
            settings.push(Event::NoFailover(no_failover));
        }
        if self.stopped != Some(mirror_stopped) {
            self.stopped = Some(mirror_stopped);
            settings.push(Event::MirrorStopped(mirror_stopped));
        }
        if role == FailoverRole::Backup && self.ready != Some(databases_ready) {
            self.ready = Some(databases_ready);
            settings.push(Event::DatabasesReady(databases_ready));
        }
        // Settings that changed together reach the rules restrictions first: fed one at a time
        // in any other order, the rules would see a moment allowed by neither the old settings
        // nor the new ones (Stop Mirror undone before a database became unready: a backup that
        // had lost its primary asked the primary's agent, which forces a hung primary down).
        // Restrictions first, every moment is at most as permissive as the settings now are.
        settings.sort_by_key(|event| !restricts(event));
        let mut inputs = link_events;
        inputs.extend(arbiter_events);
        // The generation each answer belongs to, in order: checked when it is handled, since a
        // link event before it in this look may overtake it.
        let mut answered_in = std::collections::VecDeque::new();
        for (answer, generation) in agent_answers {
            if self.loss_question == Some(generation) {
                self.loss_question = None;
            }
            answered_in.push_back(generation);
            inputs.push(Event::Agent(answer));
        }
        inputs.push(Event::Tick);

        // What keeps a backup from taking over, as of this look's settings (for refusals).
        let blocked = self.blocker();
        let failover = self.failover.as_mut().expect("started above");
        // Each action with the activation the rules knew of when they decided it, and the link
        // generation it was decided in.
        let mut actions: Vec<(Action, u64, u64)> = Vec::new();
        let feed_settings = |failover: &mut Failover,
                             actions: &mut Vec<(Action, u64, u64)>,
                             settings: Vec<Event>,
                             (activation, generation): (u64, u64)| {
            for event in settings {
                actions.extend(
                    failover
                        .handle(now_ms, event)
                        .into_iter()
                        .map(|a| (a, activation, generation)),
                );
            }
        };
        let settings_first = !self.legacy_stall_before_settings;
        if settings_first {
            let known = (self.activation, self.link_generation);
            feed_settings(failover, &mut actions, std::mem::take(&mut settings), known);
        }
        for event in prelude {
            if event == Event::PartnerConnected {
                self.link_generation += 1;
            }
            let generation = self.link_generation;
            actions.extend(
                failover
                    .handle(0, event)
                    .into_iter()
                    .map(|a| (a, 0, generation)),
            );
        }
        if !settings_first {
            let known = (self.activation, self.link_generation);
            feed_settings(failover, &mut actions, settings, known);
        }
        for event in inputs {
            if matches!(event, Event::Agent(_))
                && answered_in.pop_front() != Some(self.link_generation)
            {
                tracing::info!(
                    "mirror: ignored the primary's agent's answer about a link lost before the \
                     latest connection"
                );
                continue;
            }
            // A backup lost the primary when it last heard from it.
            let at = match (role, event) {
                (FailoverRole::Backup, Event::PartnerLost) => {
                    heard_ms.unwrap_or(now_ms).min(now_ms)
                }
                _ => now_ms,
            };
            match event {
                Event::PartnerActive => self.activation = link_activation,
                Event::PartnerConnected => {
                    self.activation = 0;
                    self.link_generation += 1;
                    self.last_refusal = None;
                }
                _ => {}
            }
            let (activation, generation) = (self.activation, self.link_generation);
            let decided = failover.handle(at, event);
            if role == FailoverRole::Backup {
                match explain(event, &decided, blocked) {
                    Some(Ok(rule)) => self.takeover_rule = Some(rule),
                    Some(Err(refusal)) if self.last_refusal != Some(refusal) => {
                        self.last_refusal = Some(refusal);
                        shell.refused(refusal);
                    }
                    _ => {}
                }
            }
            actions.extend(decided.into_iter().map(|a| (a, activation, generation)));
        }
        let active = failover.active();
        self.carry_out(actions, active, qos_ms, shell);

        let failover = self
            .failover
            .as_ref()
            .expect("a failed takeover starts fresh rules");
        let repeat_mode = failover.repeats_arbiter_mode()
            && now_ms.saturating_sub(self.last_mode_repeat_ms) >= MODE_REPEAT_MS;
        if repeat_mode {
            self.last_mode_repeat_ms = now_ms;
        }
        After {
            writes_may_resume: failover.role() == FailoverRole::Primary
                && failover.trouble().is_none(),
            may_connect: failover.may_connect(),
            undecided: failover.undecided(),
            repeat_mode,
            mode: failover.mode().display(),
            status: failover.status(),
        }
    }

    fn carry_out(
        &mut self,
        actions: Vec<(Action, u64, u64)>,
        active: bool,
        qos_ms: u64,
        shell: &mut impl Shell,
    ) {
        let mut takeover_failed = false;
        for (action, activation, generation) in actions {
            match action {
                Action::SuspendWrites => shell.suspend_writes(),
                // Lifted after the look (see `After::writes_may_resume`).
                Action::ResumeWrites | Action::RevokeActive => {}
                Action::BookArbiterMode => shell.book_arbiter_mode(),
                Action::SwitchMode(mode) => shell.switch_mode(mode),
                Action::AskPartnerToLeaveArbiterMode => shell.ask_partner_to_leave_arbiter_mode(),
                Action::AskArbiter => shell.ask_arbiter(),
                Action::AskAgent => {
                    // A question decided before a reconnection in this same look is moot (the
                    // rules forgot the loss it was about), and one per lost link is enough.
                    if generation != self.link_generation || self.loss_question == Some(generation)
                    {
                        continue;
                    }
                    if shell.ask_agent(generation, active) {
                        self.loss_question = Some(generation);
                    }
                }
                Action::TakeOver => {
                    // Every takeover comes from an event `explain` names a rule for; the
                    // handover is the rule that needs no other word.
                    let rule = self.takeover_rule.take().unwrap_or(TakeoverRule::Handover);
                    takeover_failed = !shell.take_over(rule);
                    if takeover_failed {
                        // A takeover the arbiter may have booked for this member did not
                        // happen: cancel it, or the old primary could never start again. Still
                        // a backup: fresh rules follow whoever is primary.
                        shell.stand_down(activation);
                        self.fresh_rules(FailoverRole::Backup, qos_ms, shell);
                    }
                }
                Action::StandDown => {
                    tracing::info!("mirror: standing down as a non-active backup");
                    shell.stand_down(activation);
                }
                // After a failed takeover the old primary must not be forced down: nobody
                // would be primary.
                Action::ForceOtherDown if takeover_failed => {}
                Action::ForceOtherDown => shell.force_other_down(),
                Action::Reconnect => {}
                Action::ShutDown => shell.shut_down(),
            }
        }
    }
}

impl MemberCore {
    /// What keeps this backup from taking over, as the settings last fed say.
    fn blocker(&self) -> Option<Refusal> {
        if self.no_failover == Some(true) {
            Some(Refusal::NoFailover)
        } else if self.stopped == Some(true) {
            Some(Refusal::MirrorStopped)
        } else if self.ready == Some(false) {
            Some(Refusal::DatabasesNotReady)
        } else {
            None
        }
    }
}

/// How one event a backup's rules handled bears on a takeover: the rule that allowed one
/// (`Ok`), why there was none (`Err`), or nothing to say (the event was about something else,
/// or the backup asked someone and waits for the answer).
fn explain(
    event: Event,
    decided: &[Action],
    blocked: Option<Refusal>,
) -> Option<Result<TakeoverRule, Refusal>> {
    let took_over = decided.contains(&Action::TakeOver);
    let asked = decided
        .iter()
        .any(|a| matches!(a, Action::AskAgent | Action::AskArbiter));
    match event {
        Event::PartnerHandsOver if took_over => Some(Ok(TakeoverRule::Handover)),
        Event::ArbiterVerdict { .. } if took_over => Some(Ok(TakeoverRule::ArbiterConfirmed)),
        Event::Agent(AgentAnswer::PrimaryDown { journal }) if took_over => Some(Ok(if journal {
            TakeoverRule::AgentSuppliedJournal
        } else {
            TakeoverRule::AgentConfirmedDown
        })),
        _ if took_over => None,
        Event::PartnerLost | Event::PartnerHandsOver if !asked => blocked.map(Err),
        // A verdict nobody waited for any more changes nothing, and says nothing.
        Event::ArbiterVerdict { .. } if decided.is_empty() => None,
        Event::ArbiterVerdict { .. } => Some(Err(blocked.unwrap_or(Refusal::ArbiterRefused))),
        Event::Agent(AgentAnswer::PrimaryRunning) => Some(Err(Refusal::PrimaryRunning)),
        Event::Agent(AgentAnswer::Unreachable) => Some(Err(Refusal::AgentUnreachable)),
        Event::Agent(AgentAnswer::PrimaryDown { .. }) => {
            Some(Err(blocked.unwrap_or(Refusal::NotActiveInWindow)))
        }
        _ => None,
    }
}

/// Whether a setting keeps the backup from taking over (No Failover set, mirroring stopped, a
/// database not ready).
fn restricts(setting: &Event) -> bool {
    matches!(
        setting,
        Event::NoFailover(true) | Event::MirrorStopped(true) | Event::DatabasesReady(false)
    )
}

pub mod follow;
pub mod hello;
pub mod replication;

#[cfg(test)]
mod tests;
