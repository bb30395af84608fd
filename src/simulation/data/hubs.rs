//! Each simulated member's real replication hub and its real writer: how the hub is made (on
//! a clock of its own, moved with the world's), when it starts serving as the primary's, how
//! it knows the backup; when the writer starts and stops, how the simulation waits for it and
//! reads its answers, and what must release the writes that wait. What the hub is told and
//! what the writer must answer are in the module above.

use std::sync::{Arc, mpsc};
use std::time::Duration;

use crate::clock::ManualClock;
use crate::config::mirror::{MemberInfo, MemberKind, MemberName};
use crate::mirror::events::EventLog;
use crate::mirror::hub::Hub;
use crate::mirror::state::DriverInput;

use super::super::world::QOS;
use super::wire::hear;
use super::{Data, PrimaryWriter, Store};
use crate::mirror::protocol::write_ack;

impl Store {
    /// A fresh hub, as an instance starts with.
    pub(super) fn new_hub() -> (Arc<Hub>, mpsc::Receiver<DriverInput>, Arc<ManualClock>) {
        let (tx, rx) = mpsc::channel();
        let clock = Arc::new(ManualClock::new());
        let hub = Hub::with_clock(QOS, tx, EventLog::detached(), clock.clone());
        (Arc::new(hub), rx, clock)
    }

    /// The hub, serving this member's journal as the primary's from now on (a member becoming
    /// primary resets it at its journal's end, as the takeover step does). Everything its
    /// journal holds counts as committed from then on — the hub tells every member it may
    /// apply it, and the member's database is brought to it (start-up recovery, the takeover
    /// step) before its writer takes the journal.
    pub(super) fn primary_hub(&mut self) -> &Hub {
        if !self.serving {
            self.hub.reset(self.end());
            self.committed = self.committed.max(self.end());
            self.serving = true;
        }
        // What the hub reported is the world's to deliver.
        while self.hub_reports.try_recv().is_ok() {}
        &self.hub
    }

    /// The member's writer (`member` is this one), started at its first write as the primary
    /// in `epoch`: its database first holds everything its journal holds, as after start-up
    /// recovery or the takeover step; then the writer takes the journal.
    pub(super) fn writer(&mut self, member: usize, epoch: u8) -> Result<&PrimaryWriter, String> {
        if self.writer.is_none() {
            self.primary_hub();
            self.committed = self.end();
            self.apply()?;
            let journal = self.journal.take().ok_or_else(|| {
                format!("member {member} writes as the primary while its instance is down")
            })?;
            let writer = PrimaryWriter::start(
                (&self.dir, &self.file),
                journal,
                self.hub.clone(),
                self.clock.clone(),
                epoch,
            )?;
            self.writer = Some(writer);
        }
        let writer = self.writer.as_ref().expect("started above");
        if writer.epoch != epoch {
            return Err(format!(
                "member {member}'s writer writes in epoch {}, the world in epoch {epoch}",
                writer.epoch
            ));
        }
        Ok(writer)
    }

    /// The instance stopped: the hub closes (the parked batch fails: its clients are told
    /// nothing is certain) and the writer's thread ends. What the database file holds is what
    /// the writer committed; the journal waits for the restart.
    pub(super) fn stop_writer(&mut self) -> Result<(), String> {
        let Some(writer) = self.writer.take() else {
            return Ok(());
        };
        self.hub.close_all("the instance stopped");
        writer.stop();
        // Answered after the last settle they cannot have been: only with errors, or never.
        self.pending.clear();
        self.applied = self.applied_in_file()?;
        self.committed = self.applied;
        Ok(())
    }
}

impl Data {
    /// Waits until member `i`'s writer settled (if it runs, on a host not frozen); returns the
    /// writes it acknowledged meanwhile, which count as acknowledged from now on. A backup the
    /// hub revoked meanwhile (its writer looked at a batch that waited a QoS) is for the world
    /// to hear ([`Data::take_revoked`]).
    pub(super) fn settle(&mut self, i: usize) -> Result<Vec<u64>, String> {
        let p = &mut self.stores[i];
        let Some(writer) = p.writer.as_ref().filter(|_| !p.frozen) else {
            return Ok(Vec::new());
        };
        let held = p.hub.suspended();
        writer.settled()?;
        if let Some(why) = writer.announced_early() {
            return Err(format!("member {i}'s writer {why}"));
        }
        if let Some(why) = writer.failure().filter(|_| !p.fault_planned) {
            return Err(format!("member {i}'s writer stopped: {why}"));
        }
        // Revoking the active backup is the one way a writer's look starts a hold.
        let revoked = !held && p.hub.suspended();
        let (mut answered, mut refused) = (Vec::new(), None);
        p.pending.retain_mut(|submitted| match submitted.answer() {
            None => true,
            Some(Ok(result)) => {
                answered.push((submitted.key, result.position));
                false
            }
            Some(Err(err)) => {
                refused.get_or_insert((submitted.key, err));
                false
            }
        });
        // Only a commit moves the applied position, and every commit answers a write.
        let moved = !answered.is_empty() || refused.is_some();
        if let Some((key, err)) = refused.filter(|_| !p.fault_planned) {
            return Err(format!("member {i}'s writer refused write {key}: {err}"));
        }
        if moved {
            p.applied = p.applied_in_file()?;
            p.committed = p.applied;
        }
        if revoked {
            self.revoked.push(i);
            self.qos_revocations += 1;
        }
        // Writes answered with the same journal record were one batch: those that queued
        // behind a parked batch (the simulation waits for the writer after every write, so
        // nothing else lets writes meet in a batch).
        let mut positions: Vec<_> = answered.iter().map(|(_, pos)| *pos).collect();
        positions.sort();
        let shared = positions.windows(2).filter(|w| w[0] == w[1]).map(|w| w[0]);
        let mut batches: Vec<_> = shared.collect();
        batches.dedup();
        self.queued_batches += batches.len() as u64;
        let keys: Vec<u64> = answered.into_iter().map(|(key, _)| key).collect();
        self.acknowledged.extend(&keys);
        Ok(keys)
    }

    /// The writes that wait on `primary` are answered: without a backup (`None`: its rules
    /// acknowledge them alone), or once `backup`, active and connected, stored and
    /// acknowledged them. Those that queued behind the parked batch go next, as one batch (the
    /// group commit), which the backup stores and acknowledges in turn. The writer must answer
    /// every one.
    pub(super) fn release(&mut self, primary: usize, backup: Option<usize>) -> Result<(), String> {
        loop {
            if let Some(b) = backup {
                self.ship(primary, b)?;
                self.acknowledge(primary, b)?;
            }
            let before = self.stores[primary].end();
            let answered = self.settle(primary)?;
            let batches = self.stores[primary].end().0 - before.0;
            if batches > 1 {
                return Err(format!(
                    "member {primary}'s writer wrote the writes that queued behind its parked \
                     batch as {batches} batches: they go as one"
                ));
            }
            let p = &self.stores[primary];
            if p.pending.is_empty() || p.frozen {
                break;
            }
            if answered.is_empty() {
                let waiting: Vec<u64> = p.pending.iter().map(|s| s.key).collect();
                return Err(format!(
                    "member {primary}'s writer still holds writes {waiting:?}, which {}",
                    match backup {
                        Some(_) => "its active backup stored and acknowledged",
                        None => "its rules acknowledge without the backup",
                    }
                ));
            }
        }
        if let Some(b) = backup {
            // Up to what the primary told it was committed (see `Data::deliver`).
            self.stores[b].apply()?;
        }
        Ok(())
    }

    /// The backup received everything the primary holds and acknowledged it, unless the
    /// primary did not hear (`heard` false: it was frozen; the world answers its writes once
    /// it thaws): writes that waited for an acknowledgement get it now, and the hub counts
    /// the backup active.
    pub(super) fn caught_up(
        &mut self,
        primary: usize,
        backup: usize,
        heard: bool,
    ) -> Result<(), String> {
        if heard {
            return self.release(primary, Some(backup));
        }
        self.ship(primary, backup)?;
        self.stores[backup].apply()
    }

    /// The backup acknowledges what it holds on the primary's newest link (the hub makes it
    /// active once that covers what the primary had when it connected), as its receiver
    /// writes an acknowledgement and the primary's superserver reads it ([`hear`]).
    pub(super) fn acknowledge(&mut self, primary: usize, backup: usize) -> Result<(), String> {
        let end = self.stores[backup].end();
        let p = &mut self.stores[primary];
        if let Some(id) = p.links.last().map(|l| l.id) {
            return hear(p.primary_hub(), id, |out| write_ack(out, end));
        }
        Ok(())
    }

    /// `ms` of simulated time passed: every hub's clock (its writer's too) moves with the
    /// world's, and the writer of each running primary looks again at what waits, as the real
    /// one does when its parked batch waited a QoS. The hub then revokes an active backup
    /// that left it unacknowledged: the world hears of it ([`Data::take_revoked`]) and carries
    /// out what the hub does — the channel closed, the driver told.
    ///
    /// Time alone never lets the writer answer writes that wait: they wait because the
    /// backup may take over without them.
    pub(super) fn time_passed(&mut self, ms: u64, running: [bool; 2]) -> Result<(), String> {
        for store in &self.stores {
            store.clock.advance(Duration::from_millis(ms));
        }
        for (i, runs) in running.into_iter().enumerate() {
            if !runs {
                continue;
            }
            let answered = self.settle(i)?;
            if !answered.is_empty() {
                return Err(format!(
                    "member {i}'s writer acknowledged writes {answered:?} that waited, with \
                     nothing but time passing, while its rules still hold them for the backup"
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

/// Member `i` as a primary's hub knows it: failover member A or B, or the async member C (a
/// DR async).
pub(super) fn member_info(i: usize) -> MemberInfo {
    MemberInfo {
        name: MemberName::new(["A", "B", "C"][i]).expect("a member name"),
        kind: if i == super::ASYNC {
            MemberKind::Dr
        } else {
            MemberKind::Failover
        },
        superserver_address: String::new(),
        mirror_private_address: String::new(),
        agent_address: String::new(),
        agent_port: 0,
        instance_guid: String::new(),
        certificate: None,
    }
}
