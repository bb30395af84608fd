//! The Lab page: the faults the walk-through talks about, caused from the portal, and the
//! acknowledged-write ledger that shows what they did to the writes.
//!
//! # What a person can do
//!
//! - **Kill this instance** ([`kill_soon`]): SIGKILL to the instance's own process a moment after
//!   the answer left — a crash; the agent stays and reports it down, and `docker exec <member>
//!   mirrorlab ctl start` (or the agent's Start) brings it back.
//! - **Hang this instance for N seconds** ([`hang`]): its agent stops the process (SIGSTOP) and
//!   lets it go on after N seconds — unless a backup's question found it hung first and the
//!   agent forced it down, as for a real hang.
//! - **Cut this member's link** ([`cut_link`]) to the other members or to the arbiter, one way
//!   or both, for N seconds: a switch inside the instance's network layer ([`cuts`]) holds the
//!   link's traffic, as a broken cable would; *Mend* ends it early. The cut's start and end
//!   are events; what the members made of it follows in the events as for a real cut.
//! - **The ledger** ([`ledger`]): writers against whichever member is primary, and the count of
//!   acknowledged writes the primary of the moment holds.
//!
//! Each action is one of the mirror's events (an operator's, saying it came from the Lab).
//!
//! # When it is there
//!
//! Only on a member started with `--lab` (`MIRRORLAB_LAB=1`): the Compose lab turns it on, a
//! member elsewhere has no Lab page and its agent hangs nothing. The page and `/api/lab` ask for
//! a portal login like every other page.
//!
//! # Left out
//!
//! A cut stops the instance's own traffic only: its agent, a process of its own, still answers
//! the other member (see [`cuts`]). `docker network disconnect` cuts a whole container.

pub mod cuts;
pub mod ledger;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::agent::{self, AgentRequest};
use crate::error::{Error, Result};
use crate::mirror::events::EventKind;
use crate::mirror::state::MirrorState;

use ledger::{Ledger, LedgerSettings, LedgerView};

/// The Lab of a member started with `--lab`.
#[derive(Default)]
pub struct Lab {
    ledger: Mutex<Option<Arc<Ledger>>>,
}

impl Lab {
    /// Starts a ledger; one runs at a time.
    pub fn start_ledger(&self, settings: LedgerSettings, mirror: &MirrorState) -> Result<String> {
        let mut slot = self.ledger.lock().unwrap();
        if slot.as_ref().is_some_and(|l| l.view().running) {
            return Err(Error::Conflict(
                "a ledger is running: stop it first (its figures stay until the next one)".into(),
            ));
        }
        let what = format!(
            "{} writers at {} writes a second each",
            settings.writers, settings.rate
        );
        let ledger = Ledger::start(settings)?;
        let run = ledger.view().run;
        *slot = Some(ledger);
        mirror.record(
            EventKind::Operator,
            format!("Lab: the ledger {run} starts: {what}"),
        );
        Ok(format!("the ledger {run} writes: {what}"))
    }

    /// Stops the running ledger (its last check follows).
    pub fn stop_ledger(&self, mirror: &MirrorState) -> Result<String> {
        let slot = self.ledger.lock().unwrap();
        let Some(ledger) = slot.as_ref().filter(|l| l.view().running) else {
            return Ok("no ledger is running".into());
        };
        ledger.stop();
        let view = ledger.view();
        mirror.record(
            EventKind::Operator,
            format!(
                "Lab: the ledger {} stops after {} acknowledged writes",
                view.run, view.acknowledged
            ),
        );
        Ok(format!(
            "the ledger {} stopped after {} acknowledged writes; its last check follows in a moment",
            view.run, view.acknowledged
        ))
    }

    /// The ledger's figures, if one ran.
    pub fn ledger(&self) -> Option<LedgerView> {
        self.ledger.lock().unwrap().as_ref().map(|l| l.view())
    }
}

/// Kills this instance (SIGKILL to its own process) a moment from now, once the answer left.
/// The event is on disk first.
pub fn kill_soon(mirror: &MirrorState) -> String {
    mirror.record(
        EventKind::Operator,
        "Lab: kill this instance (SIGKILL; its agent stays)",
    );
    mirror.events.flush(Duration::from_secs(1));
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_millis(300));
        tracing::warn!("the Lab kills this instance");
        let _ = crate::os::send_signal(std::process::id(), crate::os::Signal::Kill);
    });
    "the instance is killed in a moment (SIGKILL): its portal stops answering; the agent stays \
     — start it again with `docker exec <member> mirrorlab ctl start`"
        .into()
}

/// Cuts this member's `link` in `direction` for `seconds` (1 to 600), replacing a cut of the
/// same link in force; the end, when it comes, is an event too.
pub fn cut_link(
    link: cuts::Link,
    direction: cuts::Direction,
    seconds: u64,
    mirror: &Arc<MirrorState>,
) -> Result<String> {
    if !(1..=600).contains(&seconds) {
        return Err(Error::InvalidInput("a cut lasts 1 to 600 seconds".into()));
    }
    let what = format!("{} ({})", link.display(), direction.display());
    // The event first: what the members make of the cut follows it in the timeline.
    mirror.record(
        EventKind::Operator,
        format!("Lab: cut {what} for {seconds} s"),
    );
    let number = cuts::global().cut(link, direction, Duration::from_secs(seconds));
    tracing::warn!("the Lab cuts {what} for {seconds} s");
    let mirror = mirror.clone();
    std::thread::Builder::new()
        .name("lab-cut".into())
        .spawn(move || {
            while let Some(until) = cuts::global().ends(link, number) {
                let left = until.saturating_duration_since(std::time::Instant::now());
                std::thread::sleep(left.min(Duration::from_millis(100)));
            }
            // A mend says so itself; a later cut of the link took this one's place.
            if cuts::global().ended_by_time(link, number) {
                tracing::warn!("the Lab's cut of {what} ends");
                mirror.record(EventKind::Operator, format!("Lab: {what} is whole again"));
            }
        })?;
    Ok(format!(
        "{} is cut ({}) for {seconds} s",
        link.display(),
        direction.display()
    ))
}

/// Ends the Lab's cuts of this member's links now.
pub fn mend_links(mirror: &MirrorState) -> String {
    if cuts::global().mend(None) {
        mirror.record(
            EventKind::Operator,
            "Lab: every cut link is mended (whole again)",
        );
        tracing::warn!("the Lab mends the cut links");
        "the cut links are whole again".into()
    } else {
        "no link is cut".into()
    }
}

/// Asks this member's agent (at `agent_address`) to hang the instance for `seconds`.
pub async fn hang(
    agent_address: &str,
    identity: Arc<crate::tls::Identity>,
    require_tls: bool,
    seconds: u64,
    mirror: &MirrorState,
) -> Result<String> {
    if !(1..=60).contains(&seconds) {
        return Err(Error::InvalidInput("a hang lasts 1 to 60 seconds".into()));
    }
    mirror.record(
        EventKind::Operator,
        format!("Lab: hang this instance for {seconds} s (SIGSTOP by its agent)"),
    );
    mirror.events.flush(Duration::from_secs(1));
    let target = agent::Target {
        address: agent_address.to_string(),
        // With Require SSL/TLS the agent hangs its instance only for a member's certificate:
        // this member's own.
        tls: require_tls.then_some((identity, None)),
    };
    let (reply, _) = agent::call_to(&target, AgentRequest::Hang { seconds }).await?;
    if reply.ok {
        Ok(reply.message)
    } else {
        Err(Error::Conflict(reply.message))
    }
}
