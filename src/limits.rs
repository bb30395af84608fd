//! How many connections a port keeps open at once.
//!
//! Each connection to the superserver costs a thread, and each one to the agent or the arbiter
//! a task and its buffers, for as long as the peer keeps it open (up to the read timeouts). A
//! stranger who opens thousands of them could otherwise exhaust threads or memory and stop the
//! member from replicating. So every listener takes a [`Slot`] from its [`ConnectionSlots`]
//! before it serves a connection; when none is free the connection is closed at once, without
//! reading a byte.
//!
//! The limits are far above what a mirror needs — two failover members, up to 14 asyncs, the
//! agents' probes and health checks — so they only ever bite an attack or a leak. A refusal is
//! logged at most once every ten seconds per port, so an attack cannot flood the log either.
//!
//! Left out: the portal's HTTP port, which serves people and scripts through axum; its requests
//! are bounded in size and time instead (see `web`).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};

use crate::util::now_ms;

/// Connections the superserver serves at once (each one a thread).
pub const SUPERSERVER_CONNECTIONS: usize = 64;
/// Connections an agent serves at once.
pub const AGENT_CONNECTIONS: usize = 64;
/// Connections the arbiter serves at once (two per mirror, plus health checks).
pub const ARBITER_CONNECTIONS: usize = 256;

const WARN_EVERY_MS: i64 = 10_000;

/// The open-connection count of one port, and its limit.
#[derive(Debug)]
pub struct ConnectionSlots {
    port: &'static str,
    max: usize,
    open: AtomicUsize,
    last_warned_ms: AtomicI64,
}

/// One open connection's place; dropping it frees the place.
#[derive(Debug)]
pub struct Slot(Arc<ConnectionSlots>);

impl ConnectionSlots {
    /// Slots for `port` (a name for the log), at most `max` at once.
    pub fn new(port: &'static str, max: usize) -> Arc<Self> {
        Arc::new(ConnectionSlots {
            port,
            max,
            open: AtomicUsize::new(0),
            last_warned_ms: AtomicI64::new(i64::MIN / 2),
        })
    }

    /// A slot for a new connection, or `None` (logged) when all are taken: close it then.
    pub fn try_take(self: &Arc<Self>) -> Option<Slot> {
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < self.max).then_some(open + 1)
            })
            .is_ok();
        if taken {
            return Some(Slot(self.clone()));
        }
        let now = now_ms();
        let last = self.last_warned_ms.load(Ordering::Relaxed);
        if now - last >= WARN_EVERY_MS
            && self
                .last_warned_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                "{}: {} connections are open, the most it serves at once; closing new ones",
                self.port,
                self.max
            );
        }
        None
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_run_out_at_the_limit_and_come_back_when_dropped() {
        let slots = ConnectionSlots::new("test", 2);
        let first = slots.try_take().expect("first");
        let second = slots.try_take().expect("second");
        assert!(slots.try_take().is_none());
        assert_eq!(slots.open(), 2);
        drop(first);
        let third = slots.try_take().expect("a freed slot");
        assert!(slots.try_take().is_none());
        drop((second, third));
        assert_eq!(slots.open(), 0);
    }
}
