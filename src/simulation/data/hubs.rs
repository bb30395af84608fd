//! Each simulated member's real replication hub: how it is made (on a clock that stands still),
//! when it starts serving as the primary's, and how it knows the backup. What the hub is told
//! and what it must answer are in the module above.

use std::sync::{Arc, mpsc};

use crate::clock::ManualClock;
use crate::config::mirror::{MemberInfo, MemberKind, MemberName};
use crate::mirror::events::EventLog;
use crate::mirror::hub::Hub;
use crate::mirror::state::DriverInput;

use super::Store;

impl Store {
    /// A fresh hub, as an instance starts with.
    pub(super) fn new_hub() -> (Hub, mpsc::Receiver<DriverInput>, Arc<ManualClock>) {
        let (tx, rx) = mpsc::channel();
        let clock = Arc::new(ManualClock::new());
        let hub = Hub::with_clock(
            super::super::world::QOS,
            tx,
            EventLog::detached(),
            clock.clone(),
        );
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
