//! The clock that timing decisions read, passed in rather than called, so a test (or the
//! simulation) can move time itself instead of sleeping.
//!
//! Two readings, from one source: a monotonic [`Instant`] for waits and timeouts (how long a
//! batch waited for its acknowledgement, how long writes were held), and wall-clock
//! milliseconds for what people read (when a member connected, when it was last heard from).
//! [`SystemClock`] is the machine's; [`ManualClock`] starts at the machine's time and moves
//! only when told, both readings together.
//!
//! A thread that waits for a deadline asks the clock how long to wait on the machine's time
//! ([`Clock::timeout_until`]): the writer waits so for a parked batch's QoS and a Freeze's end;
//! on a [`ManualClock`] it waits for a command instead, and whoever moves the clock must wake
//! the waiters ([`ManualClock::advance`] wakes nobody: the simulation sends the writer a
//! command after moving it).
//!
//! A member's writer, replication hub, failover driver and receiver read one clock for their
//! timing decisions (`InstanceSettings::clock`, kept in the mirror's state): the writer's
//! waits, the hub's (QoS revocation, how long writes were held, when a member was last heard),
//! the driver's (the time it gives its core, the gap between looks that the stall rule reads,
//! how long the trouble state held) and the receiver's (when the primary was last heard, a
//! round that stalled).
//!
//! Left out: what paces a thread rather than decides stays on the machine's time — the
//! sockets' timeouts (the kernel's), the driver's tick, the retry pauses between connections,
//! how often the receiver repeats its acknowledgement and reports, the arbiter link's pings —
//! and so do the times the receiver shows to people and the decisions outside these four (a
//! Pending New Members request's expiry, the no-click mirror's waits).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Where the time comes from.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// A monotonic reading, for waits and timeouts.
    fn now(&self) -> Instant;
    /// Milliseconds since the Unix epoch, for people.
    fn now_ms(&self) -> i64;
    /// How long ago `since` was (zero when it is not in the past).
    fn since(&self, since: Instant) -> Duration {
        self.now().saturating_duration_since(since)
    }

    /// How long a thread should wait on the machine's time for the deadline `at` to come;
    /// `None` when such a wait would not bring it (a clock that moves only when told: whoever
    /// moves it wakes the waiters).
    fn timeout_until(&self, at: Instant) -> Option<Duration> {
        Some(at.saturating_duration_since(self.now()))
    }
}

/// The machine's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn now_ms(&self) -> i64 {
        crate::util::now_ms()
    }
}

/// A clock that stands still until [`ManualClock::advance`] moves it.
#[derive(Debug)]
pub struct ManualClock {
    start: Instant,
    start_ms: i64,
    elapsed: Mutex<Duration>,
}

impl ManualClock {
    /// A clock showing the machine's time now, standing still.
    pub fn new() -> ManualClock {
        ManualClock {
            start: Instant::now(),
            start_ms: crate::util::now_ms(),
            elapsed: Mutex::new(Duration::ZERO),
        }
    }

    /// Moves both readings forward by `by`.
    pub fn advance(&self, by: Duration) {
        *self.elapsed.lock().unwrap() += by;
    }
}

impl Default for ManualClock {
    fn default() -> ManualClock {
        ManualClock::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.start + *self.elapsed.lock().unwrap()
    }

    fn now_ms(&self) -> i64 {
        self.start_ms + self.elapsed.lock().unwrap().as_millis() as i64
    }

    fn timeout_until(&self, _: Instant) -> Option<Duration> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_both_readings_together_and_only_when_told() {
        let clock = ManualClock::new();
        let (then, then_ms) = (clock.now(), clock.now_ms());
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!((clock.now(), clock.now_ms()), (then, then_ms));
        clock.advance(Duration::from_millis(1_500));
        assert_eq!(clock.since(then), Duration::from_millis(1_500));
        assert_eq!(clock.now_ms() - then_ms, 1_500);
        assert_eq!(
            clock.since(clock.now() + Duration::from_secs(1)),
            Duration::ZERO
        );
    }
}
