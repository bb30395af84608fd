//! The clock that timing decisions read, passed in rather than called, so a test (or the
//! simulation) can move time itself instead of sleeping.
//!
//! Two readings, from one source: a monotonic [`Instant`] for waits and timeouts (how long a
//! batch waited for its acknowledgement, how long writes were held), and wall-clock
//! milliseconds for what people read (when a member connected, when it was last heard from).
//! [`SystemClock`] is the machine's; [`ManualClock`] starts at the machine's time and moves
//! only when told, both readings together.
//!
//! Left out: the threads that wait (the writer's, the driver's ticks) still wait on the
//! machine's time; only the decisions about time read this.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Where the time comes from.
pub trait Clock: Send + Sync {
    /// A monotonic reading, for waits and timeouts.
    fn now(&self) -> Instant;
    /// Milliseconds since the Unix epoch, for people.
    fn now_ms(&self) -> i64;
    /// How long ago `since` was (zero when it is not in the past).
    fn since(&self, since: Instant) -> Duration {
        self.now().saturating_duration_since(since)
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
