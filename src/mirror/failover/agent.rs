//! A backup's questions to the primary's agent: when it asks, and what it makes of the answer.
//!
//! A backup that lost the primary in agent mode (or whose arbiter could not settle it) asks the
//! primary's agent whether the primary is down. While a question is on its way the receiver
//! waits ([`Failover::may_connect`]): a reconnection that overtook the answer would meet a
//! primary the agent is about to force down. The answer settles it:
//!
//! - *the primary runs*: stand down (no longer active) and reconnect; asked again a QoS later if
//!   the reconnection has not come about (the primary may have died again on its way back);
//! - *the primary is down*: take over if this member was the active backup and is still inside
//!   its takeover window, or if the agent handed over the down primary's journal; otherwise keep
//!   asking until it does;
//! - *no answer* (the agent cannot be reached): no takeover. The question is asked again a QoS
//!   timeout after the last one (and at least a quarter of a QoS after the answer), and
//!   meanwhile the receiver may try the primary itself: nothing is on its way that a
//!   reconnection could overtake, and a primary whose agent process is down may well run
//!   (holding the link back then left the backup out of the mirror for as long as the agent
//!   stayed down).
//!
//! An answer nobody waits for any more is dropped: a newer connection settled the question,
//! and the primary may have restarted since the answer was given.

use super::{Action, AgentAnswer, Failover, FailoverRole};

impl Failover {
    pub(super) fn ask_agent_now(&mut self, out: &mut Vec<Action>) {
        if self.asked_agent_ms.is_none() {
            self.ask_agent(self.lost_ms.unwrap_or_default(), out);
        }
    }

    /// Asks the primary's agent (again), at `now_ms`: an answer is on its way from now on, so
    /// the receiver waits for it (see [`Failover::may_connect`]).
    pub(super) fn ask_agent(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        self.asked_agent_ms = Some(now_ms);
        self.agent_unreachable_ms = None;
        out.push(Action::AskAgent);
    }

    pub(super) fn agent_answer(&mut self, now_ms: u64, answer: AgentAnswer, out: &mut Vec<Action>) {
        // An answer nobody waits for any more (a newer one settled the question) is stale: the
        // primary may have restarted since it was given.
        if self.role != FailoverRole::Backup
            || self.partner_connected
            || self.asked_agent_ms.is_none()
        {
            return;
        }
        match answer {
            AgentAnswer::PrimaryRunning => {
                self.asked_agent_ms = None;
                self.told_running_ms = Some(now_ms);
                self.active = false;
                out.push(Action::StandDown);
                out.push(Action::Reconnect);
            }
            AgentAnswer::PrimaryDown { journal } => {
                let in_window = self
                    .lost_ms
                    .is_some_and(|lost| now_ms <= lost + self.qos_ms);
                if (self.active && self.window_trusted && in_window) || journal {
                    if !self.take_over_if_allowed(out) {
                        self.asked_agent_ms = None;
                        self.active = false;
                    }
                } else {
                    // Too late to be sure nothing was acknowledged without this member, and no
                    // journal to make up for it: keep asking until the agent supplies it.
                    self.active = false;
                }
            }
            // No takeover without the agent: it is asked again (see `timers`), and meanwhile
            // the receiver may find the primary itself.
            AgentAnswer::Unreachable => self.agent_unreachable_ms = Some(now_ms),
        }
    }
}
