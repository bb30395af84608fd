//! The acknowledged-write ledger: the lab's proof that a failover lost nothing.
//!
//! # What it does
//!
//! [`Ledger::start`] runs N writers, each at a chosen rate, that insert companies named
//! `<run>-<writer>-<n>` through the portal API (`POST /api/apps/companies`) of whichever member
//! is primary: a writer keeps its member while it acknowledges, and when a write fails it asks
//! every member's `/mirror_status` — 200 only on the primary — and goes on with the one that
//! answers so. Every write acknowledged (201) goes into the ledger with its time. Every few
//! seconds, and when the ledger stops, a check asks the primary of the moment how many of the
//! acknowledged names it holds (`SELECT count(*) … WHERE name IN (…)`): **lost** is what it
//! lacks, and must be 0 whatever fault struck. Beside that: the writes a second (the last
//! minute, for a small chart) and each **write outage** — from the last acknowledgement before
//! a write failed to the next acknowledgement (a takeover after a crash is over in tens of
//! milliseconds), or a pause far longer than the writers' pace with no failure (writes held in
//! the trouble state).
//!
//! # Invariants
//!
//! - Only a 201 counts as acknowledged; a write that failed or timed out is not in the ledger
//!   (it may or may not have committed, which is no loss).
//! - A check counts the names it was asked about; an acknowledged name is never counted twice.
//!
//! # Where it runs
//!
//! In the instance whose Lab page started it, as tokio tasks speaking HTTP to the members: start
//! it on the backup and kill the primary from the primary's Lab page; this ledger keeps writing
//! to the new primary and shows what happened. Killing the member that runs the ledger ends it.
//!
//! # Left out
//!
//! Reads (the mirror's own tests check them) and keeping the ledger across a restart.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::json;

use crate::error::{Error, Result};
use crate::util::now_ms;

/// Most writers.
pub const MAX_WRITERS: usize = 16;
/// Most writes a second per writer.
pub const MAX_RATE: u32 = 200;
/// The ledger stops taking writes past this many (a forgotten ledger must not grow forever).
pub const MAX_ACKED: usize = 500_000;
/// How often the ledger checks the primary while it runs.
const CHECK_EVERY: Duration = Duration::from_secs(3);
/// Names asked about in one query.
const CHECK_CHUNK: usize = 400;
/// Seconds of writes-a-second kept for the chart.
const CHART_SECONDS: usize = 60;

/// What a person chose.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LedgerSettings {
    /// How many writers.
    pub writers: usize,
    /// Writes a second, each.
    pub rate: u32,
    /// The members' portals (`http://host:port`), failover members first.
    pub members: Vec<String>,
    /// The portal user the writers log in as.
    pub user: String,
    /// Its password (never shown).
    #[serde(skip)]
    pub password: String,
}

impl LedgerSettings {
    /// Checks what a form or `/api` sent.
    pub fn check(&self) -> Result<()> {
        if !(1..=MAX_WRITERS).contains(&self.writers) {
            return Err(Error::InvalidInput(format!(
                "writers must be between 1 and {MAX_WRITERS}"
            )));
        }
        if !(1..=MAX_RATE).contains(&self.rate) {
            return Err(Error::InvalidInput(format!(
                "the rate must be between 1 and {MAX_RATE} writes a second per writer"
            )));
        }
        if self.members.is_empty() {
            return Err(Error::InvalidInput(
                "name at least one member's portal (http://host:port)".into(),
            ));
        }
        for member in &self.members {
            if !(member.starts_with("http://") || member.starts_with("https://")) {
                return Err(Error::InvalidInput(format!(
                    "{member:?} is not a portal address: write it as http://host:port"
                )));
            }
        }
        Ok(())
    }

    /// The longest pause between two acknowledgements, with no write failing, that is still
    /// the writers' pace (ms).
    fn usual_gap_ms(&self) -> i64 {
        let interval = 1_000 / (self.writers as i64 * self.rate as i64).max(1);
        (3 * interval).max(1_000)
    }
}

/// One pause in the acknowledgements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Outage {
    /// The last acknowledgement before it (ms since the Unix epoch).
    pub from_ms: i64,
    /// How long until the next one.
    pub ms: i64,
}

/// The last check against the primary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// When.
    pub at_ms: i64,
    /// The member that answered as primary.
    pub primary: String,
    /// Acknowledged writes asked about.
    pub acknowledged: usize,
    /// Of those, found on the primary.
    pub found: usize,
    /// Of those, missing there.
    pub lost: usize,
}

/// The ledger as the Lab page and `/api/lab` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LedgerView {
    /// The run's name prefix.
    pub run: String,
    /// Writers are writing.
    pub running: bool,
    /// The settings.
    pub settings: LedgerSettings,
    /// When it started and stopped.
    pub started_ms: i64,
    /// When it stopped (0 while running).
    pub stopped_ms: i64,
    /// Writes acknowledged.
    pub acknowledged: usize,
    /// Writes that failed (refused, timed out, no primary).
    pub failed: u64,
    /// The member the writers write to now.
    pub primary: Option<String>,
    /// The last check, and why the last attempt could not check.
    pub check: Option<Check>,
    /// Why the last check could not be made (no primary answered, …).
    pub check_error: Option<String>,
    /// Pauses in the acknowledgements, oldest first.
    pub outages: Vec<Outage>,
    /// Writes acknowledged in each of the last seconds, oldest first.
    pub per_second: Vec<u32>,
}

impl LedgerView {
    /// The longest outage.
    pub fn longest_outage_ms(&self) -> Option<i64> {
        self.outages.iter().map(|o| o.ms).max()
    }

    /// The chart's line: `x,y` points in a 300 × 60 box, the highest second at the top.
    pub fn chart_points(&self) -> String {
        let top = self.per_second.iter().copied().max().unwrap_or(0).max(1) as f64;
        let step = 300.0 / (CHART_SECONDS.max(2) - 1) as f64;
        self.per_second
            .iter()
            .enumerate()
            .map(|(i, n)| {
                format!(
                    "{:.1},{:.1}",
                    i as f64 * step,
                    60.0 - 58.0 * *n as f64 / top
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The highest writes-a-second on the chart.
    pub fn chart_top(&self) -> u32 {
        self.per_second.iter().copied().max().unwrap_or(0)
    }
}

struct State {
    view: LedgerView,
    /// Every acknowledged name, in order.
    acked: Vec<String>,
    last_ack_ms: i64,
    /// A write failed since the last acknowledgement: the next one ends an outage.
    failed_since_ack: bool,
    /// Acknowledgements per second: (second, count), the last `CHART_SECONDS`.
    seconds: VecDeque<(i64, u32)>,
}

impl State {
    /// A run called `ledger-<started>`, nothing written yet.
    fn new(settings: LedgerSettings, started: i64) -> State {
        State {
            view: LedgerView {
                run: format!("ledger-{started}"),
                running: true,
                settings,
                started_ms: started,
                stopped_ms: 0,
                acknowledged: 0,
                failed: 0,
                primary: None,
                check: None,
                check_error: None,
                outages: Vec::new(),
                per_second: Vec::new(),
            },
            acked: Vec::new(),
            last_ack_ms: 0,
            failed_since_ack: false,
            seconds: VecDeque::new(),
        }
    }

    fn record_failure(&mut self) {
        self.view.failed += 1;
        self.failed_since_ack = true;
    }

    fn record_ack(&mut self, name: String, now: i64, usual_gap_ms: i64) {
        let gap = now - self.last_ack_ms;
        if self.last_ack_ms > 0 && gap > 0 && (self.failed_since_ack || gap > usual_gap_ms) {
            self.view.outages.push(Outage {
                from_ms: self.last_ack_ms,
                ms: gap,
            });
        }
        self.failed_since_ack = false;
        self.last_ack_ms = self.last_ack_ms.max(now);
        self.acked.push(name);
        self.view.acknowledged = self.acked.len();
        let second = now / 1_000;
        match self.seconds.back_mut() {
            Some((s, n)) if *s == second => *n += 1,
            _ => self.seconds.push_back((second, 1)),
        }
        while self.seconds.len() > CHART_SECONDS {
            self.seconds.pop_front();
        }
    }

    fn per_second(&self, now: i64) -> Vec<u32> {
        let last = now / 1_000;
        (last - CHART_SECONDS as i64 + 1..=last)
            .map(|s| {
                self.seconds
                    .iter()
                    .find(|(at, _)| *at == s)
                    .map(|(_, n)| *n)
                    .unwrap_or(0)
            })
            .collect()
    }
}

/// A ledger run: its writers, its checks, what they found.
pub struct Ledger {
    state: Mutex<State>,
    stop: AtomicBool,
    client: reqwest::Client,
    /// The member the writers write to now.
    target: Mutex<Option<String>>,
}

impl Ledger {
    /// Starts writers and the checker with `settings`.
    pub fn start(settings: LedgerSettings) -> Result<Arc<Ledger>> {
        settings.check()?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| Error::Internal(e.to_string()))?;
        let started = now_ms();
        let ledger = Arc::new(Ledger {
            state: Mutex::new(State::new(settings.clone(), started)),
            stop: AtomicBool::new(false),
            client,
            target: Mutex::new(None),
        });
        for writer in 0..settings.writers {
            tokio::spawn(ledger.clone().write(writer));
        }
        tokio::spawn(ledger.clone().check_while_running());
        Ok(ledger)
    }

    /// Stops the writers; a last check follows.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        let mut state = self.state.lock().unwrap();
        if state.view.running {
            state.view.running = false;
            state.view.stopped_ms = now_ms();
        }
    }

    /// What the ledger shows now.
    pub fn view(&self) -> LedgerView {
        let state = self.state.lock().unwrap();
        let mut view = state.view.clone();
        view.per_second = state.per_second(now_ms());
        view.primary = self.target.lock().unwrap().clone();
        view
    }

    fn settings(&self) -> LedgerSettings {
        self.state.lock().unwrap().view.settings.clone()
    }

    /// One writer: at its pace, on the primary it knows, until stopped.
    async fn write(self: Arc<Self>, writer: usize) {
        let settings = self.settings();
        let run = self.state.lock().unwrap().view.run.clone();
        let pace = Duration::from_secs_f64(1.0 / settings.rate as f64);
        let usual_gap = settings.usual_gap_ms();
        let mut ticker = tokio::time::interval(pace);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut n = 0u64;
        while !self.stop.load(Ordering::Acquire) {
            ticker.tick().await;
            let Some(target) = self.primary().await else {
                self.state.lock().unwrap().record_failure();
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            n += 1;
            let name = format!("{run}-{writer}-{n}");
            let sent = self
                .client
                .post(format!("{target}/api/apps/companies"))
                .basic_auth(&settings.user, Some(&settings.password))
                .json(&json!({ "name": name }))
                .send()
                .await;
            match sent {
                Ok(answer) if answer.status().as_u16() == 201 => {
                    let mut state = self.state.lock().unwrap();
                    if state.acked.len() >= MAX_ACKED {
                        drop(state);
                        self.stop();
                        return;
                    }
                    state.record_ack(name, now_ms(), usual_gap);
                }
                _ => {
                    self.state.lock().unwrap().record_failure();
                    // Whoever answered this is not the primary (any more): ask again.
                    let mut known = self.target.lock().unwrap();
                    if known.as_deref() == Some(target.as_str()) {
                        *known = None;
                    }
                }
            }
        }
    }

    /// The member that says it is primary: the one the writers use, or found anew.
    async fn primary(&self) -> Option<String> {
        if let Some(known) = self.target.lock().unwrap().clone() {
            return Some(known);
        }
        let found = self.find_primary().await;
        if let Some(found) = &found {
            *self.target.lock().unwrap() = Some(found.clone());
        }
        found
    }

    /// Asks every member's `/mirror_status`: the first to answer 200 is the primary.
    async fn find_primary(&self) -> Option<String> {
        for member in self.settings().members {
            let asked = self
                .client
                .get(format!("{member}/mirror_status"))
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if asked.is_ok_and(|a| a.status().as_u16() == 200) {
                return Some(member);
            }
        }
        None
    }

    /// Checks every few seconds while running, then once more.
    async fn check_while_running(self: Arc<Self>) {
        while !self.stop.load(Ordering::Acquire) {
            tokio::time::sleep(CHECK_EVERY).await;
            self.check_now().await;
        }
        // The writers' last requests may still be on their way: let them land.
        tokio::time::sleep(Duration::from_secs(1)).await;
        self.check_now().await;
    }

    /// Counts the acknowledged names on the primary of the moment.
    pub async fn check_now(&self) {
        let result = self.count_on_primary().await;
        let mut state = self.state.lock().unwrap();
        match result {
            Ok(check) => {
                state.view.check = Some(check);
                state.view.check_error = None;
            }
            Err(err) => state.view.check_error = Some(err.to_string()),
        }
    }

    async fn count_on_primary(&self) -> Result<Check> {
        let settings = self.settings();
        let primary = self.find_primary().await.ok_or_else(|| {
            Error::Unavailable("no member answers /mirror_status with 200 (no primary yet)".into())
        })?;
        let acked = self.state.lock().unwrap().acked.clone();
        let mut found = 0usize;
        for chunk in acked.chunks(CHECK_CHUNK) {
            let marks = (1..=chunk.len())
                .map(|i| format!("?{i}"))
                .collect::<Vec<_>>()
                .join(",");
            let asked = self
                .client
                .post(format!("{primary}/api/sql"))
                .basic_auth(&settings.user, Some(&settings.password))
                .json(&json!({
                    "namespace": "COMPANY",
                    "sql": format!("SELECT count(*) FROM Company WHERE name IN ({marks})"),
                    "params": chunk,
                }))
                .send()
                .await
                .map_err(|e| Error::Unavailable(format!("{primary}: {e}")))?;
            if !asked.status().is_success() {
                return Err(Error::Unavailable(format!(
                    "{primary} answered {} to the check",
                    asked.status()
                )));
            }
            let body: serde_json::Value = asked
                .json()
                .await
                .map_err(|e| Error::Unavailable(format!("{primary}: {e}")))?;
            found += body["rows"][0][0].as_u64().unwrap_or(0) as usize;
        }
        Ok(Check {
            at_ms: now_ms(),
            primary,
            acknowledged: acked.len(),
            found,
            lost: acked.len() - found.min(acked.len()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(writers: usize, rate: u32) -> LedgerSettings {
        LedgerSettings {
            writers,
            rate,
            members: vec!["http://mirrorA:52773".into()],
            user: "superuser".into(),
            password: "SYS".into(),
        }
    }

    fn state() -> State {
        State::new(settings(2, 10), 1)
    }

    #[test]
    fn failed_writes_or_a_long_pause_make_an_outage() {
        let mut s = state();
        let gap = settings(2, 10).usual_gap_ms();
        assert_eq!(
            gap, 1_000,
            "20 writes a second: 50 ms apart, a second at least"
        );
        s.record_ack("n0".into(), 1_000, gap);
        s.record_ack("n1".into(), 1_050, gap);
        // A crash: writes fail, and 40 ms later the new primary acknowledges.
        s.record_failure();
        s.record_failure();
        s.record_ack("n2".into(), 1_090, gap);
        s.record_ack("n3".into(), 1_140, gap);
        // Held without failing (the trouble state) for 1.8 s.
        s.record_ack("n4".into(), 2_940, gap);
        s.record_ack("n5".into(), 2_990, gap);
        assert_eq!(
            s.view.outages,
            [
                Outage {
                    from_ms: 1_050,
                    ms: 40
                },
                Outage {
                    from_ms: 1_140,
                    ms: 1_800
                }
            ]
        );
        assert_eq!((s.view.acknowledged, s.view.failed), (6, 2));
        assert_eq!(
            settings(1, 1).usual_gap_ms(),
            3_000,
            "a slow pace is no outage"
        );
    }

    #[test]
    fn writes_a_second_cover_the_last_minute() {
        let mut s = state();
        for at in [10_100, 10_200, 11_500, 70_000] {
            s.record_ack("n".into(), at, 300);
        }
        let seconds = s.per_second(70_500);
        assert_eq!(seconds.len(), CHART_SECONDS);
        assert_eq!(*seconds.last().unwrap(), 1);
        assert_eq!(
            seconds.iter().sum::<u32>(),
            2,
            "11 s is within the minute, 10 s is not"
        );
        let view = LedgerView {
            per_second: seconds,
            ..s.view.clone()
        };
        assert_eq!(view.chart_top(), 1);
        // 11 s is the oldest second shown (one write: the top), 12 s had none (the bottom).
        assert!(
            view.chart_points().starts_with("0.0,2.0 5.1,60.0 "),
            "{}",
            view.chart_points()
        );
    }

    #[test]
    fn bad_settings_are_refused_with_a_reason() {
        assert!(settings(0, 10).check().is_err());
        assert!(settings(17, 10).check().is_err());
        assert!(settings(1, 0).check().is_err());
        assert!(settings(1, 201).check().is_err());
        let mut s = settings(1, 1);
        s.members = vec!["mirrorA:52773".into()];
        assert!(
            s.check()
                .unwrap_err()
                .to_string()
                .contains("http://host:port")
        );
        assert!(settings(4, 50).check().is_ok());
    }
}
