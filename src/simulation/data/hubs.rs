//! Each simulated member's real replication hub, and the writer's side of it: how the hub is
//! made (on a clock of its own, moved with the world's), when it starts serving as the
//! primary's, how it knows the backup; the writes that wait as one parked batch, looked at
//! again after a QoS, and the batch queued behind it. What the hub is told and what it must
//! answer are in the module above.

use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use crate::clock::{Clock, ManualClock};
use crate::config::mirror::{MemberInfo, MemberKind, MemberName};
use crate::instance::writer::replication::Replication;
use crate::journal::JournalPos;
use crate::mirror::events::EventLog;
use crate::mirror::hub::Hub;
use crate::mirror::state::DriverInput;

use super::super::world::QOS;
use super::{Acknowledged, Data, Outcome, Store, io};

impl Store {
    /// A fresh hub, as an instance starts with.
    pub(super) fn new_hub() -> (Hub, mpsc::Receiver<DriverInput>, Arc<ManualClock>) {
        let (tx, rx) = mpsc::channel();
        let clock = Arc::new(ManualClock::new());
        let hub = Hub::with_clock(QOS, tx, EventLog::detached(), clock.clone());
        (hub, rx, clock)
    }

    /// The hub, serving this member's journal as the primary's from now on (a member becoming
    /// primary resets it at its journal's end, as the takeover step does).
    pub(super) fn primary_hub(&mut self) -> &Hub {
        if !self.serving {
            self.hub.reset(self.journal.end());
            self.serving = true;
        }
        // What the hub reported is the world's to deliver.
        while self.hub_reports.try_recv().is_ok() {}
        &self.hub
    }
}

impl Store {
    /// The hub releases the writes that wait, now that `why` (`member` is this one):
    /// otherwise the writer's parked batch would go on waiting — until a QoS revokes the
    /// backup, which would hold writes again.
    pub(super) fn hub_releases_waiting(&self, member: usize, why: &str) -> Result<(), String> {
        match self.waiting_since {
            Some(since) => self.hub_answers_yes(member, self.end(), since, why),
            None => Ok(()),
        }
    }

    /// The hub acknowledges the batch ending at `last`, durable since `since`, because `why`
    /// (`member` is this one).
    pub(super) fn hub_answers_yes(
        &self,
        member: usize,
        last: JournalPos,
        since: Instant,
        why: &str,
    ) -> Result<(), String> {
        match self.hub.acknowledgement(last, since) {
            Acknowledged::Yes => Ok(()),
            verdict => Err(format!(
                "member {member}'s hub answers {verdict:?} for the writes up to position \
                 {last}, which {why}"
            )),
        }
    }

    /// The writes that waited for an acknowledgement are answered: their keys (those queued
    /// behind them begin next, [`Data::run_queued`]).
    pub(super) fn answer_pending(&mut self) -> Vec<u64> {
        self.waiting_since = None;
        std::mem::take(&mut self.pending)
    }

    /// The writes that waited for an acknowledgement will never be answered, and those queued
    /// behind them are never written.
    pub(super) fn clear_pending(&mut self) {
        self.answer_pending();
        self.queued = None;
    }
}

impl Data {
    /// A write on `primary` while its parked batch waits queues behind it, unwritten (true),
    /// as in the writer: it begins only once that batch was answered. The world must agree
    /// that it waits: it would be answered at once otherwise.
    pub(super) fn queue_behind_parked(
        &mut self,
        primary: usize,
        epoch: u8,
        outcome: Outcome,
    ) -> Result<bool, String> {
        let p = &mut self.stores[primary];
        if p.waiting_since.is_none() {
            return Ok(false);
        }
        if outcome != Outcome::Pending {
            return Err(format!(
                "member {primary} answers a write {outcome:?} while its writes that waited for \
                 the backup are not answered: the writer would queue it behind them"
            ));
        }
        let (_, count) = p.queued.get_or_insert((epoch, 0));
        *count += 1;
        Ok(true)
    }

    /// `count` client writes in `epoch` on `primary`, as one batch: framed at the journal's
    /// end, appended through the hub (which hands them to every link), then made durable —
    /// the writer's order.
    pub(super) fn publish_batch(
        &mut self,
        primary: usize,
        epoch: u8,
        count: u64,
    ) -> Result<Batch, String> {
        let first = self.stores[primary].end().next();
        let last = JournalPos(first.0 + count - 1);
        let (mut frames, mut keys) = (Vec::new(), Vec::new());
        for k in 0..count {
            let (key, frame) = self.frame(epoch, JournalPos(first.0 + k))?;
            frames.extend(frame);
            keys.push(key);
        }
        let p = &mut self.stores[primary];
        // The world writes only while the primary's rules accept writes; a hub holding them
        // then would hold them for good (the driver lifts its hold at every look that lets
        // writes go on).
        if !p.primary_hub().may_commit() {
            return Err(format!(
                "member {primary}'s hub holds mirrored writes while its rules accept them: \
                 positions {first} to {last} would wait for good"
            ));
        }
        io(
            "publish",
            p.hub.publish(&mut p.journal, &frames, first, last),
        )?;
        io("fsync", p.journal.sync())?;
        let since = p.clock.now();
        Ok(Batch { last, keys, since })
    }

    /// The writes that queued behind the parked batch begin once it was answered: one batch
    /// (the writer's group commit), published through the hub and made durable. The world
    /// answered the parked batch, so it answers these too: at once when no backup is active,
    /// or once `backup` (the active one, which stays connected) stored and acknowledged them
    /// — unless the primary does not hear it (`heard` false: it is frozen).
    pub(super) fn run_queued(
        &mut self,
        primary: usize,
        backup: Option<usize>,
        heard: bool,
    ) -> Result<(), String> {
        let Some((epoch, count)) = self.stores[primary].queued.take() else {
            return Ok(());
        };
        self.queued_batches += 1;
        let Batch { last, keys, since } = self.publish_batch(primary, epoch, count as u64)?;
        if let Some(b) = backup {
            self.ship(primary, b)?;
            if heard {
                self.acknowledge(primary, b);
            }
        }
        let p = &mut self.stores[primary];
        if heard {
            let why = "the world answers (they queued behind the writes that waited)";
            p.hub_answers_yes(primary, last, since, why)?;
        }
        p.committed = last;
        self.acknowledged.extend(keys);
        self.stores[primary].apply()?;
        if let Some(b) = backup {
            self.stores[b].committed = last;
            self.stores[b].apply()?;
        }
        Ok(())
    }

    /// The backup received everything the primary holds and acknowledged it, unless the
    /// primary did not hear (`heard` false: it was frozen): writes that waited for an
    /// acknowledgement get it now, and the hub counts the backup active.
    pub(super) fn caught_up(
        &mut self,
        primary: usize,
        backup: usize,
        heard: bool,
    ) -> Result<(), String> {
        self.ship(primary, backup)?;
        if heard {
            self.acknowledge(primary, backup);
            let why = "its backup acknowledged";
            self.stores[primary].hub_releases_waiting(primary, why)?;
        }
        let p = &mut self.stores[primary];
        if !p.pending.is_empty() {
            p.committed = p.end();
            let keys = p.answer_pending();
            self.acknowledged.extend(keys);
            self.stores[primary].apply()?;
        }
        self.stores[backup].committed = self.stores[primary].committed;
        self.stores[backup].apply()?;
        self.run_queued(primary, Some(backup), heard)
    }

    /// The backup acknowledges what it holds on the primary's newest link (the hub makes it
    /// active once that covers what the primary had when it connected).
    pub(super) fn acknowledge(&mut self, primary: usize, backup: usize) {
        let end = self.stores[backup].end();
        let p = &mut self.stores[primary];
        if let Some(&(_, id)) = p.links.last() {
            p.primary_hub().on_ack(id, end);
        }
    }

    /// `ms` of simulated time passed: every hub's clock moves with the world's, and the writer
    /// of each running primary whose writes waited a QoS looks at them again, as the real one
    /// does when its parked batch waited that long. The hub then revokes an active backup
    /// that left them unacknowledged: the world hears of it ([`Data::take_revoked`]) and
    /// carries out what the hub does — the channel closed, the driver told.
    ///
    /// The hub must not release writes the world still holds: they wait because the backup
    /// may take over without them.
    pub(super) fn time_passed(&mut self, ms: u64, running: [bool; 2]) -> Result<(), String> {
        for store in &self.stores {
            store.clock.advance(Duration::from_millis(ms));
        }
        for (i, p) in self.stores[..2].iter().enumerate() {
            let Some(since) = p.waiting_since else {
                continue;
            };
            if !running[i] || p.clock.since(since) < Duration::from_millis(QOS) {
                continue;
            }
            let last = p.end();
            let held = p.hub.suspended();
            let verdict = p.hub.acknowledgement(last, since);
            // Revoking the active backup is the one way this look starts a hold.
            if !held && p.hub.suspended() {
                self.revoked.push(i);
                self.qos_revocations += 1;
            }
            if verdict == Acknowledged::Yes {
                return Err(format!(
                    "member {i}'s hub acknowledged the writes that waited (up to position \
                     {last}) after a QoS, while its rules still hold them for the backup"
                ));
            }
        }
        Ok(())
    }

    /// The primaries whose hub revoked their active backup since the last call.
    pub(crate) fn take_revoked(&mut self) -> Vec<usize> {
        std::mem::take(&mut self.revoked)
    }
}

/// Client writes published as one batch (see [`Data::publish_batch`]).
pub(super) struct Batch {
    /// Its last record (its first is the journal's end before it).
    pub(super) last: JournalPos,
    /// The keys of its writes, in order.
    pub(super) keys: Vec<u64>,
    /// When it was durable.
    pub(super) since: Instant,
}

/// Failover member `i` as its hub knows it.
pub(super) fn member_info(i: usize) -> MemberInfo {
    MemberInfo {
        name: MemberName::new(["A", "B"][i]).expect("a member name"),
        kind: MemberKind::Failover,
        superserver_address: String::new(),
        mirror_private_address: String::new(),
        agent_address: String::new(),
        agent_port: 0,
        instance_guid: String::new(),
        certificate: None,
    }
}
