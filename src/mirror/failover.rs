//! The automatic failover rules of one failover member, as a pure state machine.
//!
//! # What
//!
//! [`Failover`] is what one failover member (primary or backup) decides when something happens:
//! its link to the other member breaks, the arbiter tells it what it sees, the other host's agent
//! answers, a timer runs out. It holds no sockets, threads or clocks: the caller feeds it
//! [`Event`]s with the current time and carries out the [`Action`]s it returns (stop accepting
//! writes, take over, ask an agent, switch modes). Every rule of the behavioural reference (§4:
//! agent-controlled and arbiter-controlled modes, the trouble state, active and non-active
//! backups, No Failover, the lost-connection matrix and the outage list) is a unit test beside it,
//! and an explorer in the tests drives two members and an arbiter through every interleaving of
//! link cuts, crashes and timers up to a depth, checking the mirror's invariants.
//!
//! # The rules, in short
//!
//! - **Agent controlled** (every mirror starts here). A primary that loses an *active* backup
//!   stops committing (trouble) until the backup says it is no longer active or `2 × QoS` passes,
//!   then goes on alone. A backup that loses the primary asks the primary's agent: "running" →
//!   stand down and reconnect; "down" → take over, if it was active and is still inside its
//!   takeover window, otherwise only with the down primary's journal fetched through the agent.
//!   No answer → no takeover: it asks again a QoS timeout after the last question, and in
//!   between tries to reconnect (the primary may run while its agent does not).
//! - **Arbiter controlled** (both members connected to each other and to the arbiter, backup
//!   active). A primary that loses the backup asks the arbiter: it lost the backup too → go on
//!   alone in agent mode; it still sees it → trouble until the backup stands down; arbiter lost as
//!   well → trouble *indefinitely*. A backup that loses the primary asks the arbiter for a
//!   verdict: take over only if the arbiter lost the primary while the primary was still in
//!   arbiter mode (so it is frozen); otherwise stand down and ask the primary's agent as a
//!   non-active backup (a primary that went on alone may still be down). Without the arbiter:
//!   agent mode, ask the agent.
//! - **A backup that may not take over** (No Failover, a mirrored database not ready, mirroring
//!   stopped here) asks nobody: it stands down at once. Asking would book a takeover at the
//!   arbiter that nobody carries out, and the old primary could then never start again. When the
//!   blocker goes while the primary is still gone, it asks the primary's agent.
//! - **Every takeover starts a fresh primary**, in agent mode: arbiter mode was booked for the
//!   old primary, and a new primary enters it only through its own booking.
//!
//! # Why the arbiter keeps a book
//!
//! "The arbiter no longer sees the primary" is not enough for a takeover: a primary that earlier
//! went on alone (arbiter mode left, backup no longer active) may be writing while merely cut off
//! from the arbiter. So the arbiter answers from its [`ArbiterBook`], in which each answer is also
//! a record: telling the primary "I do not see the backup" records that the primary goes on alone,
//! and telling the backup "take over" records the takeover, which the old primary hears when it
//! comes back. Both questions are answered one after the other, so they never both win. A booked
//! takeover is answered again to a backup that asks again (its answer may have been lost), and
//! a backup's stand-down cancels it (the backup did not, or could not, carry it out).
//!
//! Mode changes are ordered for the same reason: the primary enters arbiter mode first (and tells
//! the arbiter and the backup), the backup follows; on the way back the backup leaves first, and
//! the primary leaves only when the backup says it has. A primary in arbiter mode with a backup in
//! agent mode is safe (the backup only takes over through the agent); the reverse is not, so it
//! never happens.

/// Which member this is right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailoverRole {
    /// Accepts writes unless in trouble.
    Primary,
    /// Follows the primary; may take over.
    Backup,
    /// A former primary that learned the other member took over: it must stop for good.
    Down,
}

/// Who decides about failover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// The agents decide (no arbiter, or not all connected).
    Agent,
    /// The arbiter's book decides.
    Arbiter,
}

impl Mode {
    /// The Failover Mode text of the Mirror Monitor.
    pub fn display(self) -> &'static str {
        match self {
            Mode::Agent => "Agent Controlled",
            Mode::Arbiter => "Arbiter Controlled",
        }
    }
}

/// Why a primary is not committing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Trouble {
    /// Agent mode: until the backup stands down or this time (ms) passes.
    Until(u64),
    /// Arbiter mode: until the arbiter says it lost the backup, or the backup stands down.
    Coordinating,
    /// Arbiter mode, lost the backup and the arbiter: until one of them is heard from again.
    Indefinite,
}

/// What the primary's agent said.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AgentAnswer {
    /// The primary instance runs: it is still the primary.
    PrimaryRunning,
    /// The primary instance is down (or was forced down); `journal` says whether the agent
    /// supplied its journal up to the end.
    PrimaryDown {
        /// The down primary's journal was fetched through its agent.
        journal: bool,
    },
    /// No answer: the primary's host is down or cut off, or its agent is.
    Unreachable,
}

/// Something that happened, as one failover member saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    /// Time passed (timers are checked on every event).
    Tick,
    /// The data channel to the other member is up (primary: a backup connected; backup: it
    /// connected to the primary). The backup is not active yet.
    PartnerConnected,
    /// Primary: the backup caught up and acknowledges; it is active. Backup: the primary said
    /// this member is its active backup (a backup never decides that alone).
    PartnerActive,
    /// The data channel broke, or nothing came over it for a QoS timeout. Always about the
    /// current channel: a late notice about an earlier one must not be delivered.
    PartnerLost,
    /// Primary: the backup is no longer active (said over the channel, or relayed by the
    /// arbiter).
    PartnerStoodDown,
    /// Backup: the primary is shutting down gracefully and hands over.
    PartnerHandsOver,
    /// Primary: the other member took over (said on reconnecting, or by the arbiter).
    PartnerIsPrimary,
    /// The other member's mode: from the primary, a request; from the backup, a report.
    PartnerMode(Mode),
    /// Connected to the arbiter.
    ArbiterConnected,
    /// Lost the arbiter.
    ArbiterLost,
    /// The arbiter says whether it sees the other member. To a primary that asked, `false` also
    /// means the arbiter recorded that it goes on alone.
    ArbiterSeesPartner(bool),
    /// Primary: the arbiter booked arbiter mode as asked (see [`Action::BookArbiterMode`]);
    /// `false` when it was booked with an activation of the backup that a newer one overtook
    /// meanwhile.
    ArbiterBookedMode(bool),
    /// Backup: the arbiter's answer to "may I take over?".
    ArbiterVerdict {
        /// The arbiter lost the primary while it was in arbiter mode, and recorded the takeover.
        take_over: bool,
    },
    /// The primary's agent answered (backup).
    Agent(AgentAnswer),
    /// No Failover was set or cleared.
    NoFailover(bool),
    /// Whether every mirrored database that must be mounted is mounted, activated and caught up.
    DatabasesReady(bool),
    /// Stop Mirror On This Member was done (`true`) or undone (`false`).
    MirrorStopped(bool),
}

/// What the member must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Stop committing writes to mirrored databases. Writes already waiting for the backup's
    /// acknowledgement stay unanswered too, until [`Action::ResumeWrites`].
    SuspendWrites,
    /// Commit (and answer) again.
    ResumeWrites,
    /// The backup is no longer active: writes stop waiting for its acknowledgements.
    RevokeActive,
    /// Primary: ask the arbiter to book arbiter mode. The primary enters it (and shows it) only
    /// once the arbiter confirmed ([`Event::ArbiterBookedMode`]): until the arbiter knows, a
    /// backup that loses the primary could not take over through it.
    BookArbiterMode,
    /// This member's mode changed: show it, and tell the other member and the arbiter.
    SwitchMode(Mode),
    /// Primary: ask the backup to leave arbiter mode (the primary follows when it has).
    AskPartnerToLeaveArbiterMode,
    /// Backup: tell the primary this member is no longer an active backup (over the channel,
    /// or through the arbiter).
    StandDown,
    /// Ask the arbiter (primary: does it see the backup; backup: may it take over).
    AskArbiter,
    /// Ask the primary's agent whether the primary is down (forcing a hung one down, fetching
    /// its journal).
    AskAgent,
    /// Become the primary (a new epoch).
    TakeOver,
    /// Force the former primary down as soon as it can be reached.
    ForceOtherDown,
    /// Reconnect to the primary.
    Reconnect,
    /// This former primary stops: the other member took over.
    ShutDown,
}

/// One failover member's failover state.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Failover {
    role: FailoverRole,
    mode: Mode,
    qos_ms: u64,
    trouble: Option<Trouble>,
    partner_connected: bool,
    /// Primary: the backup is active. Backup: this member is the active backup.
    active: bool,
    arbiter_connected: bool,
    /// The arbiter's last word on the other member (None: not known).
    arbiter_sees_partner: Option<bool>,
    /// Primary: asked the backup to leave arbiter mode, waiting for its report.
    leaving_arbiter_mode: bool,
    /// Primary: asked the arbiter to book arbiter mode, waiting for its confirmation.
    booking_arbiter_mode: bool,
    /// Backup: when it noticed the primary was gone (ms).
    lost_ms: Option<u64>,
    /// Backup: an agent question is outstanding (unsettled) since this time (ms); it is asked
    /// again a QoS timeout later.
    asked_agent_ms: Option<u64>,
    /// Backup: the agent could not be reached about the outstanding question, at this time
    /// (ms), and it has not been asked again since. Until it is, no answer is on its way that
    /// a reconnection could overtake, so the receiver may try the primary itself: a primary
    /// whose agent process is down but which runs would otherwise never see its backup again.
    agent_unreachable_ms: Option<u64>,
    /// Backup: the agent said the primary runs, at this time (ms), and the backup has not
    /// reconnected since. If it still has not after a QoS timeout, it asks again: the primary
    /// may have died again before the backup got back to it (a crash during its restart), and
    /// nothing else would ever tell this member.
    told_running_ms: Option<u64>,
    /// Waiting for the arbiter's answer after losing the other member.
    asked_arbiter: bool,
    no_failover: bool,
    databases_ready: bool,
    /// Stop Mirror On This Member: it neither receives nor takes over.
    stopped: bool,
    /// Backup: it lost the primary while in arbiter mode, so the arbiter is the one to ask
    /// (again, on reconnecting). A backup in agent mode never asks the arbiter: the primary
    /// books arbiter mode *before* it switches, and until it does, a booking whose confirmation
    /// was lost is no promise that the primary freezes.
    lost_in_arbiter_mode: bool,
    /// Backup: it stood down (Stop Mirror) from the current connection; activations that
    /// still arrive on it are stale.
    stood_down_from_link: bool,
    /// Backup: the primary cannot have gone on alone inside this member's takeover window
    /// without it. True from its activation until it loses the arbiter: a primary in arbiter
    /// mode goes on alone as soon as the arbiter says it lost the backup, without waiting for
    /// the trouble timeout that the window relies on in agent mode.
    window_trusted: bool,
}

impl Failover {
    /// A member starting as `role` in agent mode, connected to nothing. A backup starts
    /// non-active (a restarting failover member behaves like a non-active backup).
    pub fn new(role: FailoverRole, qos_ms: u64) -> Failover {
        Failover {
            role,
            mode: Mode::Agent,
            qos_ms,
            trouble: None,
            partner_connected: false,
            active: false,
            arbiter_connected: false,
            arbiter_sees_partner: None,
            leaving_arbiter_mode: false,
            booking_arbiter_mode: false,
            lost_ms: None,
            asked_agent_ms: None,
            agent_unreachable_ms: None,
            told_running_ms: None,
            asked_arbiter: false,
            no_failover: false,
            databases_ready: true,
            stopped: false,
            stood_down_from_link: false,
            window_trusted: false,
            lost_in_arbiter_mode: false,
        }
    }

    /// Current role.
    pub fn role(&self) -> FailoverRole {
        self.role
    }

    /// Whether the rules believe the arbiter link is up.
    pub fn arbiter_connected(&self) -> bool {
        self.arbiter_connected
    }

    /// The arbiter's last word on the other member (None: not known).
    pub fn arbiter_sees_partner(&self) -> Option<bool> {
        self.arbiter_sees_partner
    }

    /// Whether the rules believe the other member is connected.
    pub fn partner_is_connected(&self) -> bool {
        self.partner_connected
    }

    /// Sets the failover mode behind the rules' back (the explorer and the simulation put an
    /// old bug back with it). Never called in a member.
    pub(crate) fn force_mode(&mut self, mode: Mode) {
        self.mode = mode;
    }

    /// Current mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Why the primary is not committing, if it is not.
    pub fn trouble(&self) -> Option<Trouble> {
        self.trouble
    }

    /// Whether this member commits writes to mirrored databases now.
    pub fn accepts_writes(&self) -> bool {
        self.role == FailoverRole::Primary && self.trouble.is_none()
    }

    /// Primary: the backup is active. Backup: this member is the active backup.
    pub fn active(&self) -> bool {
        self.active
    }

    /// Backup: connected to the primary, or lost it and not connected again since. A backup
    /// that never got to its primary has nothing to lose when its own process stalls.
    pub fn had_partner(&self) -> bool {
        self.partner_connected || self.lost_ms.is_some()
    }

    /// Whether this primary keeps telling the backup it is in arbiter mode (so a backup that
    /// sees the arbiter later than the primary's word still follows). Not while it asked the
    /// backup to leave: a repeat arriving after the backup left would take it back into a mode
    /// the primary is leaving.
    pub fn repeats_arbiter_mode(&self) -> bool {
        self.role == FailoverRole::Primary
            && self.mode == Mode::Arbiter
            && !self.leaving_arbiter_mode
    }

    /// Whether a backup may open the data channel to the primary now. Not while it waits for
    /// the arbiter's verdict or the agent's answer: a takeover booked while it reconnected would
    /// leave two members writing. Once the agent could not be reached, it may, until it asks
    /// again: nothing is on its way then, and the primary may well run.
    pub fn may_connect(&self) -> bool {
        match self.role {
            FailoverRole::Backup => {
                !self.asked_arbiter
                    && (self.asked_agent_ms.is_none() || self.agent_unreachable_ms.is_some())
            }
            FailoverRole::Primary => true,
            FailoverRole::Down => false,
        }
    }

    /// Whether this backup lost the primary and has not settled what follows: it waits for the
    /// arbiter's verdict, or asks the primary's agent (again, while it cannot be reached). It
    /// may still take over, so a restarted former primary asking it must wait.
    pub fn undecided(&self) -> bool {
        self.role == FailoverRole::Backup && (self.asked_arbiter || self.asked_agent_ms.is_some())
    }

    /// The member's Status in the Mirror Monitor.
    pub fn status(&self) -> &'static str {
        match (self.role, self.trouble, self.partner_connected) {
            (FailoverRole::Primary, Some(_), _) => "In Trouble",
            (FailoverRole::Primary, None, _) => "Primary",
            (FailoverRole::Backup, _, true) => "Backup",
            (FailoverRole::Backup, _, false) => "Waiting",
            (FailoverRole::Down, _, _) => "Down",
        }
    }

    /// Handles one event at time `now_ms`; returns what to do, in order.
    pub fn handle(&mut self, now_ms: u64, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        if self.role == FailoverRole::Down {
            return out;
        }
        match event {
            Event::Tick => {}
            Event::NoFailover(on) => {
                self.no_failover = on;
                self.blocker_changed(&mut out);
            }
            Event::DatabasesReady(ready) => {
                self.databases_ready = ready;
                self.blocker_changed(&mut out);
            }
            Event::MirrorStopped(stopped) => {
                self.stopped = stopped;
                if stopped {
                    // It told the primary it stood down before it disconnected.
                    self.active = false;
                    self.stood_down_from_link = true;
                }
                self.blocker_changed(&mut out);
            }
            Event::ArbiterConnected => {
                self.arbiter_connected = true;
                self.ask_arbiter_again(&mut out);
            }
            Event::ArbiterLost => self.arbiter_lost(&mut out),
            Event::ArbiterSeesPartner(sees) => self.arbiter_sees(sees, &mut out),
            Event::ArbiterVerdict { take_over } => self.verdict(take_over, &mut out),
            Event::ArbiterBookedMode(arbiter) => self.arbiter_booked(arbiter, &mut out),
            Event::PartnerConnected => self.partner_connected(&mut out),
            Event::PartnerActive => {
                // After Stop Mirror, an activation still on its way from the old connection is
                // one this member already stood down from.
                if self.partner_connected && !self.stood_down_from_link {
                    self.active = true;
                    self.window_trusted = true;
                }
            }
            Event::PartnerLost => self.partner_lost(now_ms, &mut out),
            Event::PartnerStoodDown => self.partner_stood_down(&mut out),
            Event::PartnerHandsOver => {
                if self.role == FailoverRole::Backup && self.active {
                    self.take_over_if_allowed(&mut out);
                }
            }
            Event::PartnerIsPrimary => {
                if self.role == FailoverRole::Primary {
                    // The other member took over while this one was cut off: there is one
                    // primary, and it is not this one.
                    self.role = FailoverRole::Down;
                    self.trouble = None;
                    out.push(Action::ShutDown);
                    return out;
                }
            }
            Event::PartnerMode(mode) => self.partner_mode(mode, &mut out),
            Event::Agent(answer) => self.agent_answer(now_ms, answer, &mut out),
        }
        self.timers(now_ms, &mut out);
        self.maybe_enter_arbiter_mode(&mut out);
        out
    }

    fn timers(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        if let Some(Trouble::Until(until)) = self.trouble
            && now_ms >= until
        {
            self.leave_trouble(out);
        }
        if self.role == FailoverRole::Backup {
            // Past its window, a backup can no longer be sure it holds everything acknowledged.
            if self.lost_ms.is_some_and(|lost| now_ms > lost + self.qos_ms) {
                self.active = false;
            }
            // Without an answer from the agent, ask again every QoS timeout — but no sooner
            // than a quarter of a QoS after it could not be reached: a question that took its
            // whole timeout (an agent that accepts and never answers) would otherwise be asked
            // again at once, and the receiver (which looks every 50 ms) would never get its
            // turn to find the primary itself. Only a quarter: a restarted former primary may
            // be waiting for this member to settle its question (see `undecided`), so the
            // questions should come little further apart than they did.
            if let Some(asked) = self.asked_agent_ms
                && now_ms >= asked + self.qos_ms
                && self
                    .agent_unreachable_ms
                    .is_none_or(|at| now_ms >= at + self.qos_ms / 4)
                && self.may_take_over()
            {
                self.ask_agent(now_ms, out);
            }
            // Told the primary runs, but still not connected to it a QoS later: ask again.
            if self
                .told_running_ms
                .is_some_and(|told| now_ms >= told + self.qos_ms)
                && !self.partner_connected
                && self.asked_agent_ms.is_none()
                && !self.asked_arbiter
                && self.may_take_over()
            {
                self.told_running_ms = None;
                self.ask_agent(now_ms, out);
            }
        }
    }

    /// Whether this primary may be in arbiter mode: the backup is active and both are on the
    /// arbiter.
    fn may_enter_arbiter_mode(&self) -> bool {
        self.role == FailoverRole::Primary
            && self.mode == Mode::Agent
            && self.trouble.is_none()
            && self.partner_connected
            && self.active
            && self.arbiter_connected
            && self.arbiter_sees_partner == Some(true)
    }

    /// The primary enters arbiter mode when the backup is active and both are on the arbiter:
    /// first the arbiter books it, then the primary switches and tells the backup, which follows
    /// (see [`Failover::partner_mode`]). Switching first would leave a window in which everyone
    /// shows Arbiter Controlled but the arbiter still refuses the backup a takeover, because it
    /// never heard of the mode: a primary lost then would not be replaced.
    fn maybe_enter_arbiter_mode(&mut self, out: &mut Vec<Action>) {
        if self.may_enter_arbiter_mode() && !self.booking_arbiter_mode {
            self.booking_arbiter_mode = true;
            out.push(Action::BookArbiterMode);
        }
    }

    /// The arbiter booked the mode: switch, if that still holds. (If it no longer does, the
    /// booking is harmless: the backup asks the arbiter only in arbiter mode, which it enters
    /// only when this primary tells it to.)
    /// A booking made with an activation of the backup that a newer one overtook is no
    /// booking (`current` false): the rules book again.
    fn arbiter_booked(&mut self, current: bool, out: &mut Vec<Action>) {
        if !self.booking_arbiter_mode {
            return;
        }
        self.booking_arbiter_mode = false;
        if current && self.may_enter_arbiter_mode() {
            self.mode = Mode::Arbiter;
            self.leaving_arbiter_mode = false;
            out.push(Action::SwitchMode(Mode::Arbiter));
        }
    }

    /// Leaves arbiter mode: a backup at once (and reports it), a primary by asking the backup
    /// first when it is connected (and going at once when it is not: its own rules then made
    /// sure the backup cannot take over through the arbiter).
    fn leave_arbiter_mode(&mut self, out: &mut Vec<Action>) {
        if self.mode != Mode::Arbiter {
            return;
        }
        if self.role == FailoverRole::Primary && self.partner_connected {
            if !self.leaving_arbiter_mode {
                self.leaving_arbiter_mode = true;
                out.push(Action::AskPartnerToLeaveArbiterMode);
            }
            return;
        }
        self.mode = Mode::Agent;
        self.leaving_arbiter_mode = false;
        out.push(Action::SwitchMode(Mode::Agent));
    }

    fn partner_mode(&mut self, mode: Mode, out: &mut Vec<Action>) {
        let backup_may_follow = self.mode == Mode::Agent
            && self.partner_connected
            && self.active
            && self.arbiter_connected
            && self.arbiter_sees_partner == Some(true);
        match (self.role, mode) {
            (FailoverRole::Backup, Mode::Arbiter) if backup_may_follow => {
                self.mode = Mode::Arbiter;
                out.push(Action::SwitchMode(Mode::Arbiter));
            }
            (FailoverRole::Backup, Mode::Agent) => {
                // Leave (or say it already left), so the primary can follow.
                self.mode = Mode::Agent;
                out.push(Action::SwitchMode(Mode::Agent));
            }
            (FailoverRole::Primary, Mode::Agent) if self.mode == Mode::Arbiter => {
                // The backup is in agent mode now: the primary may follow.
                self.mode = Mode::Agent;
                self.leaving_arbiter_mode = false;
                out.push(Action::SwitchMode(Mode::Agent));
            }
            _ => {}
        }
    }

    fn enter_trouble(&mut self, trouble: Trouble, out: &mut Vec<Action>) {
        if self.trouble.is_none() {
            out.push(Action::SuspendWrites);
        }
        self.trouble = Some(trouble);
    }

    fn leave_trouble(&mut self, out: &mut Vec<Action>) {
        if self.trouble.take().is_some() {
            out.push(Action::ResumeWrites);
        }
    }

    fn partner_connected(&mut self, out: &mut Vec<Action>) {
        self.partner_connected = true;
        self.stood_down_from_link = false;
        self.lost_in_arbiter_mode = false;
        self.lost_ms = None;
        self.asked_agent_ms = None;
        self.told_running_ms = None;
        self.asked_arbiter = false;
        self.active = false;
        if self.role == FailoverRole::Primary {
            // The backup is back and did not take over (it would have said so instead): it is
            // not active, so the trouble is over.
            if self.trouble.is_some() {
                self.leave_trouble(out);
                self.leaving_arbiter_mode = false;
                if self.mode == Mode::Arbiter {
                    self.mode = Mode::Agent;
                    out.push(Action::SwitchMode(Mode::Agent));
                }
            }
        } else if self.mode == Mode::Arbiter {
            self.mode = Mode::Agent;
            out.push(Action::SwitchMode(Mode::Agent));
        }
    }

    fn partner_stood_down(&mut self, out: &mut Vec<Action>) {
        if self.role != FailoverRole::Primary {
            return;
        }
        self.active = false;
        // Whatever kind of trouble: the backup will not take over.
        self.leave_trouble(out);
        // The backup stands down only in agent mode: the primary follows.
        if self.mode == Mode::Arbiter {
            self.mode = Mode::Agent;
            self.leaving_arbiter_mode = false;
            out.push(Action::SwitchMode(Mode::Agent));
        }
    }

    fn arbiter_lost(&mut self, out: &mut Vec<Action>) {
        self.arbiter_connected = false;
        self.arbiter_sees_partner = None;
        // A booking asked of the lost connection gets no answer: ask again on the next one.
        self.booking_arbiter_mode = false;
        match self.role {
            FailoverRole::Primary => {
                if self.mode != Mode::Arbiter {
                    return;
                }
                if self.partner_connected {
                    // Only the arbiter is gone: leave arbiter mode together with the backup.
                    self.leave_arbiter_mode(out);
                } else if self.trouble.is_some() {
                    // Lost the backup before and now the arbiter: nobody can tell this primary
                    // whether the backup took over.
                    self.asked_arbiter = false;
                    self.trouble = Some(Trouble::Indefinite);
                }
            }
            FailoverRole::Backup => {
                // The arbiter may book the primary alone now that it lost this member: from
                // here on the takeover window cannot be trusted.
                self.window_trusted = false;
                self.leave_arbiter_mode(out);
                if self.asked_arbiter {
                    // The arbiter will not answer: fall back to the agent — unless this member
                    // may not take over any more, which then stands down instead (cancelling,
                    // at its next connection, a takeover the arbiter may have booked for it).
                    self.asked_arbiter = false;
                    if self.may_take_over() {
                        self.ask_agent_now(out);
                    } else {
                        self.active = false;
                        out.push(Action::StandDown);
                    }
                }
            }
            FailoverRole::Down => {}
        }
    }

    fn arbiter_sees(&mut self, sees: bool, out: &mut Vec<Action>) {
        if !self.arbiter_connected {
            return;
        }
        self.arbiter_sees_partner = Some(sees);
        if sees {
            return;
        }
        match self.role {
            FailoverRole::Primary => {
                if self.partner_connected {
                    // The backup lost the arbiter but is still here. Saying "not seen" booked
                    // this primary as going on alone, so the backup can no longer take over
                    // through the arbiter: leave arbiter mode at once (not after the backup, as
                    // when only this member lost the arbiter, whose book still says arbiter
                    // mode), and the backup follows.
                    if self.mode == Mode::Arbiter {
                        self.mode = Mode::Agent;
                        self.leaving_arbiter_mode = false;
                        out.push(Action::SwitchMode(Mode::Agent));
                    }
                } else if self.asked_arbiter
                    || matches!(
                        self.trouble,
                        Some(Trouble::Coordinating | Trouble::Indefinite)
                    )
                {
                    // The arbiter lost the backup too, and booked that this primary goes on
                    // alone: the backup cannot take over through it any more.
                    self.asked_arbiter = false;
                    self.active = false;
                    self.leave_trouble(out);
                    self.mode = Mode::Agent;
                    self.leaving_arbiter_mode = false;
                    out.push(Action::SwitchMode(Mode::Agent));
                }
            }
            // A backup only notes it. When the primary's host dies, the arbiter may notice
            // before this member's data channel does; leaving arbiter mode on that report would
            // leave this member asking a dead agent instead of the arbiter, which would approve
            // the takeover. A live primary that lost the arbiter asks this member to leave
            // arbiter mode itself (see `arbiter_lost`).
            FailoverRole::Backup | FailoverRole::Down => {}
        }
    }

    fn verdict(&mut self, take_over: bool, out: &mut Vec<Action>) {
        if self.role != FailoverRole::Backup || !self.asked_arbiter {
            return;
        }
        self.asked_arbiter = false;
        if take_over {
            // The arbiter lost the primary while it was in arbiter mode: it is frozen in
            // indefinite trouble (or gone), and the arbiter booked this takeover.
            if self.take_over_if_allowed(out) {
                out.push(Action::ForceOtherDown);
                return;
            }
        }
        // The primary is alive, or went on alone, or this member may not take over. The
        // stand-down also cancels a takeover the arbiter booked and this member did not carry
        // out: otherwise the old primary could never start again.
        self.active = false;
        self.leave_arbiter_mode(out);
        out.push(Action::StandDown);
        if self.may_take_over() {
            // A primary that went on alone (or whose mode the arbiter never booked) may still be
            // down: its agent can tell, and serve the journal a non-active backup needs.
            self.ask_agent_now(out);
        } else {
            out.push(Action::Reconnect);
        }
    }

    fn partner_lost(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        if !self.partner_connected {
            return;
        }
        self.partner_connected = false;
        match self.role {
            FailoverRole::Primary => {
                let was_active = self.active;
                if !was_active {
                    // A non-active backup is not waited for: nothing changes.
                    self.leave_arbiter_mode(out);
                    return;
                }
                out.push(Action::RevokeActive);
                match self.mode {
                    Mode::Agent => {
                        self.active = false;
                        self.enter_trouble(Trouble::Until(now_ms + 2 * self.qos_ms), out);
                    }
                    Mode::Arbiter if self.arbiter_connected => {
                        self.enter_trouble(Trouble::Coordinating, out);
                        self.asked_arbiter = true;
                        out.push(Action::AskArbiter);
                    }
                    Mode::Arbiter => self.enter_trouble(Trouble::Indefinite, out),
                }
            }
            FailoverRole::Backup => {
                self.lost_ms = Some(now_ms);
                if !self.may_take_over() {
                    // Asking the arbiter would book a takeover nobody carries out, and asking
                    // the agent could force a hung primary down for nothing: stand down at once,
                    // so the primary need not wait for this member.
                    self.active = false;
                    self.leave_arbiter_mode(out);
                    out.push(Action::StandDown);
                    out.push(Action::Reconnect);
                } else if self.mode == Mode::Arbiter && self.arbiter_connected {
                    self.lost_in_arbiter_mode = true;
                    self.asked_arbiter = true;
                    out.push(Action::AskArbiter);
                } else {
                    self.leave_arbiter_mode(out);
                    self.ask_agent_now(out);
                }
            }
            FailoverRole::Down => {}
        }
    }

    /// A backup that lost the primary and has no answer yet asks a reconnected arbiter (again):
    /// a takeover the arbiter booked for it while the answer was lost with the connection is
    /// granted again, and a primary the arbiter lost in arbiter mode is frozen or gone, whatever
    /// mode this member is in now.
    fn ask_arbiter_again(&mut self, out: &mut Vec<Action>) {
        if self.role == FailoverRole::Backup
            && self.lost_in_arbiter_mode
            && !self.partner_connected
            && self.lost_ms.is_some()
            && self.asked_agent_ms.is_some()
            && !self.asked_arbiter
            && self.may_take_over()
        {
            self.asked_arbiter = true;
            out.push(Action::AskArbiter);
        }
    }

    /// Whether this backup may become the primary: not while No Failover is set, a mirrored
    /// database is not ready, or mirroring is stopped here.
    pub(super) fn may_take_over(&self) -> bool {
        !self.no_failover && self.databases_ready && !self.stopped
    }

    /// No Failover, the databases' readiness or Stop Mirror changed. A backup that lost the
    /// primary and may take over now (it could not before) asks the primary's agent, like any
    /// non-active backup: the primary may still be down. One that may not take over any more
    /// stops asking the agent (its question would force a hung primary down, and nobody would
    /// take its place) and stands down, as it would have on losing the primary: the arbiter may
    /// hold a takeover booked on an earlier question whose verdict was lost with its connection,
    /// which the stand-down cancels (found by the simulation, with a one-way partition).
    fn blocker_changed(&mut self, out: &mut Vec<Action>) {
        if self.role == FailoverRole::Backup
            && !self.may_take_over()
            && self.asked_agent_ms.take().is_some()
        {
            self.active = false;
            out.push(Action::StandDown);
        }
        if self.role == FailoverRole::Backup
            && !self.partner_connected
            && self.lost_ms.is_some()
            && !self.asked_arbiter
            && self.may_take_over()
        {
            self.active = false;
            self.ask_agent_now(out);
        }
    }

    /// Becomes the primary, when allowed; true when it did. The new primary starts as every
    /// primary does: in agent mode, with no backup, out of trouble. Nothing of its life as a
    /// backup carries over — in particular not arbiter mode, which the arbiter booked for the
    /// *old* primary: a new primary enters it only through its own booking
    /// ([`Action::BookArbiterMode`]), so that a monitor never shows Arbiter Controlled while the
    /// arbiter would refuse the backup a takeover.
    pub(super) fn take_over_if_allowed(&mut self, out: &mut Vec<Action>) -> bool {
        if !self.may_take_over() {
            return false;
        }
        let was_arbiter = self.mode == Mode::Arbiter;
        *self = Failover {
            // The arbiter connection stays until the arbiter link reconnects in the new role
            // (it reports the loss first).
            arbiter_connected: self.arbiter_connected,
            no_failover: self.no_failover,
            databases_ready: self.databases_ready,
            stopped: self.stopped,
            ..Failover::new(FailoverRole::Primary, self.qos_ms)
        };
        out.push(Action::TakeOver);
        if was_arbiter {
            out.push(Action::SwitchMode(Mode::Agent));
        }
        true
    }
}

mod agent;
mod book;
mod restart;

pub use book::{ArbiterBook, ToPrimary};

pub use restart::{OtherMember, Restart, restart_as};

#[cfg(test)]
mod tests;
