//! Mirror events: what this member decided or saw change, and why, kept on disk.
//!
//! # What it is
//!
//! The Mirror Monitor shows the state *now*. After a fault people ask what happened, in which
//! order, and why the backup did or did not take over. Every member therefore records each
//! decision and change as a [`MirrorEvent`] — its role, a link to the other member or to the
//! arbiter lost or regained, the trouble state entered and left, a backup activated or standing
//! down, a takeover and the rule that allowed it, a takeover refused and what the agent or the
//! arbiter answered, the failover mode, the first write after a takeover and the outage before
//! it, and what an operator did on the portal — with its time (UTC, ms), the member, the epoch,
//! the mirror journal position and a reason in plain words.
//!
//! # How
//!
//! [`EventLog::record`] never blocks and never touches the disk: the threads that record hold
//! locks on the write path (the hub's) or must answer in time (the failover driver). It hands
//! the event to one thread, which appends it as a JSON line to `mirror-events.jsonl` in the
//! data directory and fsyncs once for everything that arrived meanwhile (a group commit, as
//! the writer does). [`read`] reads the files back; the agent reads them too, so a member whose
//! instance is down still answers for its events ([`crate::agent`]), and `GET
//! /api/mirror/events` merges both failover members' lists in time order.
//!
//! # Invariants
//!
//! - Bounded: when the file passes [`ROTATE_BYTES`] it becomes `mirror-events.1.jsonl`
//!   (replacing the older one) and a new file begins, so the two hold at most about twice that.
//! - Durable once written: each line is fsynced before the next wait; a crash loses at most the
//!   events of the last few milliseconds, and a line torn by a crash is skipped on reading.
//! - Recording is fire and forget: a full disk or a failed write costs the events, never the
//!   member (the failure is logged once).
//!
//! # Left out
//!
//! Events of the async members are not merged in (only the failover members'); the clocks of
//! the two members are trusted to agree (the lab's containers share the host's clock).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, mpsc};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::ConfigStore;
use crate::journal::JournalPos;
use crate::util::now_ms;

/// The newest events.
pub const EVENTS_FILE: &str = "mirror-events.jsonl";
/// The events before those, from the last rotation.
pub const OLDER_EVENTS_FILE: &str = "mirror-events.1.jsonl";
/// Size at which the events file is rotated (see the module essay).
pub const ROTATE_BYTES: u64 = 1 << 20;
/// Most events one answer carries (the newest).
pub const MAX_ANSWER: usize = 2_000;

/// One thing a member decided or saw change (see the module essay).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorEvent {
    /// When, in milliseconds since the Unix epoch (UTC).
    pub time_ms: i64,
    /// The member that recorded it (its instance name before it joins a mirror).
    pub member: String,
    /// What kind of event.
    pub kind: EventKind,
    /// Why, in plain words.
    pub reason: String,
    /// The member's epoch then.
    pub epoch: u64,
    /// The end of its mirror journal then (0: none).
    pub position: u64,
    /// [`EventKind::WritesResumed`]: how long writes stopped, from the old primary's last
    /// write to the new one's first (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outage_ms: Option<i64>,
}

/// What an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The instance started (with the role it starts in).
    Started,
    /// The instance stops gracefully.
    Stopping,
    /// The member's role changed.
    RoleChanged,
    /// This backup became the primary: which rule allowed it, who confirmed.
    Takeover,
    /// This backup lost the primary and did not take over (yet): what it was told.
    TakeoverRefused,
    /// This backup stood down: it no longer counts as active.
    StoodDown,
    /// Force This Member To Become The Primary.
    ForcedPrimary,
    /// The failover mode changed (Agent Controlled, Arbiter Controlled).
    ModeChanged,
    /// The data link to the other member came up.
    MemberConnected,
    /// The data link to the other member was lost.
    MemberLost,
    /// Connected to the arbiter.
    ArbiterConnected,
    /// Lost the arbiter.
    ArbiterLost,
    /// The primary lost its active backup and holds its mirrored writes (In Trouble).
    TroubleEntered,
    /// The trouble state ended (and how long it held the writes).
    TroubleLeft,
    /// Primary: the backup is active (it acknowledges). Backup: the primary made it active.
    BackupActivated,
    /// Primary: the backup is no longer active.
    BackupDeactivated,
    /// The first write the new primary acknowledged after a takeover, with the outage.
    WritesResumed,
    /// Rows written in an older epoch were undone and kept aside.
    RowsQuarantined,
    /// The other member took over: this instance stops.
    Superseded,
    /// Something an operator did on the portal (Add to Mirror, Activate, Catchup, Freeze, Thaw,
    /// No Failover, Stop or Start Mirror, Demote, …).
    Operator,
}

impl EventKind {
    /// Whether the event is part of a fault (the monitor's timeline groups those).
    pub fn is_fault(self) -> bool {
        matches!(
            self,
            EventKind::Takeover
                | EventKind::TakeoverRefused
                | EventKind::MemberLost
                | EventKind::ArbiterLost
                | EventKind::TroubleEntered
                | EventKind::Superseded
                | EventKind::ForcedPrimary
        )
    }
}

enum Message {
    Event(MirrorEvent),
    /// Answered once everything sent before it is on disk.
    Flush(mpsc::Sender<()>),
}

struct Sink {
    tx: mpsc::Sender<Message>,
    config: Arc<ConfigStore>,
    instance_name: String,
}

/// Where a member's threads record events (see the module essay). Cheap to clone; until
/// [`EventLog::attach`] gives it a folder, events go nowhere (an instance outside any data
/// directory, in some unit tests).
#[derive(Clone, Default)]
pub struct EventLog {
    sink: Arc<OnceLock<Sink>>,
}

impl EventLog {
    /// A log that keeps nothing until it is attached.
    pub fn detached() -> EventLog {
        EventLog::default()
    }

    /// Starts keeping events in `data_dir`, naming the member and its epoch from `config`.
    /// A second call is ignored.
    pub fn attach(
        &self,
        data_dir: &Path,
        config: Arc<ConfigStore>,
        instance_name: &str,
    ) -> std::io::Result<()> {
        if self.sink.get().is_some() {
            return Ok(());
        }
        let file = EventFile::open(data_dir)?;
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("mirror-events".into())
            .spawn(move || file.run(rx))?;
        let _ = self.sink.set(Sink {
            tx,
            config,
            instance_name: instance_name.to_string(),
        });
        Ok(())
    }

    /// Records an event at journal position `position`. Never blocks.
    pub fn record(&self, kind: EventKind, reason: impl Into<String>, position: JournalPos) {
        self.record_with(kind, reason.into(), position, None);
    }

    /// Records the first write after a takeover and the outage before it (ms).
    pub fn record_outage(&self, reason: String, position: JournalPos, outage_ms: i64) {
        self.record_with(EventKind::WritesResumed, reason, position, Some(outage_ms));
    }

    fn record_with(
        &self,
        kind: EventKind,
        reason: String,
        position: JournalPos,
        outage_ms: Option<i64>,
    ) {
        let Some(sink) = self.sink.get() else {
            return;
        };
        let config = sink.config.get();
        let member = config
            .mirror
            .membership
            .as_ref()
            .map(|m| m.this.name.to_string())
            .unwrap_or_else(|| sink.instance_name.clone());
        tracing::debug!("mirror event {kind:?}: {reason}");
        let _ = sink.tx.send(Message::Event(MirrorEvent {
            time_ms: now_ms(),
            member,
            kind,
            reason,
            epoch: config.epoch.0,
            position: position.0,
            outage_ms,
        }));
    }

    /// Waits (at most `timeout`) until every event recorded so far is on disk: before a
    /// graceful stop ends the process.
    pub fn flush(&self, timeout: Duration) {
        let Some(sink) = self.sink.get() else {
            return;
        };
        let (done, wait) = mpsc::channel();
        if sink.tx.send(Message::Flush(done)).is_ok() {
            let _ = wait.recv_timeout(timeout);
        }
    }
}

/// The events file and its writing thread.
struct EventFile {
    dir: PathBuf,
    file: File,
    bytes: u64,
    failed: bool,
}

impl EventFile {
    fn open(dir: &Path) -> std::io::Result<EventFile> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(EVENTS_FILE))?;
        let bytes = file.metadata()?.len();
        Ok(EventFile {
            dir: dir.to_path_buf(),
            file,
            bytes,
            failed: false,
        })
    }

    fn run(mut self, rx: mpsc::Receiver<Message>) {
        while let Ok(first) = rx.recv() {
            let mut flushes = Vec::new();
            let mut lines = Vec::new();
            for message in std::iter::once(first).chain(rx.try_iter()) {
                match message {
                    Message::Event(event) => {
                        if let Ok(line) = serde_json::to_vec(&event) {
                            lines.extend_from_slice(&line);
                            lines.push(b'\n');
                        }
                        // A burst is cut where the file is full, so no file outgrows the bound.
                        if self.bytes + lines.len() as u64 >= ROTATE_BYTES && self.write(&mut lines)
                        {
                            self.rotate();
                        }
                    }
                    Message::Flush(done) => flushes.push(done),
                }
            }
            self.write(&mut lines);
            for done in flushes {
                let _ = done.send(());
            }
        }
    }

    /// Appends `lines` and fsyncs: one write and one fsync for everything that arrived
    /// meanwhile (a group commit). True when they are on disk; `lines` is emptied either way.
    fn write(&mut self, lines: &mut Vec<u8>) -> bool {
        if lines.is_empty() {
            return true;
        }
        let written = self
            .file
            .write_all(lines)
            .and_then(|()| self.file.sync_data());
        let bytes = lines.len() as u64;
        lines.clear();
        match written {
            Ok(()) => {
                self.bytes += bytes;
                true
            }
            Err(err) => {
                if !self.failed {
                    self.failed = true;
                    tracing::warn!(
                        "mirror events could not be written: {err} (said once; later ones are tried)"
                    );
                }
                false
            }
        }
    }

    /// The current file becomes the older one; a new one begins.
    fn rotate(&mut self) {
        let rotated = std::fs::rename(self.dir.join(EVENTS_FILE), self.dir.join(OLDER_EVENTS_FILE))
            .and_then(|()| {
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.dir.join(EVENTS_FILE))
            });
        match rotated {
            Ok(file) => {
                self.file = file;
                self.bytes = 0;
                // The rename is durable before new events go into the new file.
                let _ = crate::util::sync_dir(&self.dir);
            }
            Err(err) => tracing::warn!("mirror events file not rotated: {err}"),
        }
    }
}

/// The events kept in `data_dir` at or after `since_ms`, oldest first (the newest
/// [`MAX_ANSWER`] of them). Lines that do not parse (torn by a crash) are skipped.
pub fn read(data_dir: &Path, since_ms: i64) -> Vec<MirrorEvent> {
    let mut events = Vec::new();
    for name in [OLDER_EVENTS_FILE, EVENTS_FILE] {
        let Ok(file) = File::open(data_dir.join(name)) else {
            continue;
        };
        for line in BufReader::new(file).split(b'\n').map_while(|l| l.ok()) {
            if let Ok(event) = serde_json::from_slice::<MirrorEvent>(&line)
                && event.time_ms >= since_ms
            {
                events.push(event);
            }
        }
    }
    let extra = events.len().saturating_sub(MAX_ANSWER);
    events.drain(..extra);
    events
}

/// The newest of `events` (oldest first) whose JSON fits in `budget` bytes: what one agent
/// answer may carry (its frames are bounded), however long the reasons were.
pub fn newest_within(mut events: Vec<MirrorEvent>, budget: usize) -> Vec<MirrorEvent> {
    let mut used = 0;
    let mut keep = 0;
    for event in events.iter().rev() {
        // A comma and the event, as the list serializes.
        used += 1 + serde_json::to_vec(event).map_or(0, |json| json.len());
        if used > budget {
            break;
        }
        keep += 1;
    }
    let drop = events.len() - keep;
    events.drain(..drop);
    events
}

/// Merges members' lists into one in time order (a member's own order kept for equal times).
pub fn merge(lists: Vec<Vec<MirrorEvent>>) -> Vec<MirrorEvent> {
    let mut all: Vec<MirrorEvent> = lists.into_iter().flatten().collect();
    all.sort_by_key(|e| e.time_ms);
    let extra = all.len().saturating_sub(MAX_ANSWER);
    all.drain(..extra);
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> Arc<ConfigStore> {
        Arc::new(
            ConfigStore::load_or_create(dir, || crate::config::InstanceConfig::fresh(vec![]))
                .unwrap(),
        )
    }

    #[test]
    fn recorded_events_are_on_disk_after_a_flush_and_read_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::detached();
        log.record(
            EventKind::Started,
            "before attaching: dropped",
            JournalPos(0),
        );
        log.attach(dir.path(), config(dir.path()), "MIRRORA")
            .unwrap();
        log.record(EventKind::Started, "started as primary", JournalPos(7));
        log.record(
            EventKind::MemberLost,
            "the backup went silent",
            JournalPos(9),
        );
        log.flush(Duration::from_secs(5));
        let events = read(dir.path(), 0);
        let kinds: Vec<_> = events.iter().map(|e| (e.kind, e.position)).collect();
        assert_eq!(
            kinds,
            vec![(EventKind::Started, 7), (EventKind::MemberLost, 9)]
        );
        assert_eq!(events[0].member, "MIRRORA");
        assert!(read(dir.path(), events[1].time_ms + 1).is_empty());
    }

    #[test]
    fn a_torn_last_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::detached();
        log.attach(dir.path(), config(dir.path()), "MIRRORA")
            .unwrap();
        log.record(
            EventKind::Takeover,
            "the agent confirmed it down",
            JournalPos(3),
        );
        log.flush(Duration::from_secs(5));
        let mut file = OpenOptions::new()
            .append(true)
            .open(dir.path().join(EVENTS_FILE))
            .unwrap();
        file.write_all(br#"{"time_ms":12,"member":"MIR"#).unwrap();
        let events = read(dir.path(), 0);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].kind, EventKind::Takeover);
    }

    #[test]
    fn the_files_stay_bounded_and_keep_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::detached();
        log.attach(dir.path(), config(dir.path()), "MIRRORA")
            .unwrap();
        let reason = "x".repeat(1_000);
        let count = 3 * (ROTATE_BYTES as usize / 1_000);
        for i in 0..count {
            log.record(
                EventKind::Operator,
                format!("{i} {reason}"),
                JournalPos(i as u64),
            );
        }
        log.flush(Duration::from_secs(30));
        let size = |name| {
            std::fs::metadata(dir.path().join(name))
                .map(|m| m.len())
                .unwrap_or(0)
        };
        assert!(size(EVENTS_FILE) + size(OLDER_EVENTS_FILE) <= 2 * ROTATE_BYTES + 2_000);
        let events = read(dir.path(), 0);
        assert_eq!(events.last().unwrap().position, count as u64 - 1);
        assert!(events.len() <= MAX_ANSWER);
    }

    #[test]
    fn an_answer_keeps_the_newest_events_that_fit() {
        let event = |i: u64| MirrorEvent {
            time_ms: i as i64,
            member: "MIRRORA".into(),
            kind: EventKind::Operator,
            reason: "x".repeat(100),
            epoch: 1,
            position: i,
            outage_ms: None,
        };
        let events: Vec<MirrorEvent> = (0..100).map(event).collect();
        let one = serde_json::to_vec(&events[0]).unwrap().len() + 1;
        let kept = newest_within(events.clone(), 10 * one + one / 2);
        let positions: Vec<u64> = kept.iter().map(|e| e.position).collect();
        assert_eq!(positions, (90..100).collect::<Vec<_>>());
        assert_eq!(newest_within(events.clone(), usize::MAX).len(), 100);
        assert!(newest_within(events, 0).is_empty());
        let json = serde_json::to_vec(&kept).unwrap();
        assert!(json.len() <= 10 * one + one / 2, "{}", json.len());
    }

    #[test]
    fn merging_puts_both_members_in_time_order() {
        let event = |time_ms, member: &str| MirrorEvent {
            time_ms,
            member: member.into(),
            kind: EventKind::Operator,
            reason: String::new(),
            epoch: 1,
            position: 0,
            outage_ms: None,
        };
        let merged = merge(vec![
            vec![event(1, "A"), event(5, "A")],
            vec![event(2, "B"), event(5, "B"), event(9, "B")],
        ]);
        let order: Vec<_> = merged
            .iter()
            .map(|e| (e.time_ms, e.member.as_str()))
            .collect();
        assert_eq!(
            order,
            vec![(1, "A"), (2, "B"), (5, "A"), (5, "B"), (9, "B")]
        );
    }
}
