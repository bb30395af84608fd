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
//! The portal's HTTP port counts its connections the same way (see `web::serve`, which also
//! shares them out per source address), and closes a connection on which nothing moved for
//! [`PORTAL_IDLE`] ([`GuardedStream`]): a client that opens a connection and then trickles a body
//! or reads an answer a byte a minute would otherwise hold it forever.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::util::now_ms;

/// Connections the superserver serves at once (each one a thread).
pub const SUPERSERVER_CONNECTIONS: usize = 64;
/// Connections an agent serves at once.
pub const AGENT_CONNECTIONS: usize = 64;
/// Connections the arbiter serves at once (two per mirror, plus health checks).
pub const ARBITER_CONNECTIONS: usize = 256;
/// How long a portal connection may stay without a byte read or written. Longer than the
/// longest request may take (`web`'s request timeout), so a slow answer is never cut off.
pub const PORTAL_IDLE: Duration = Duration::from_secs(120);

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

/// A portal connection holding its slot, and failing once it has been idle too long.
pub struct GuardedStream {
    stream: TcpStream,
    deadline: Pin<Box<Sleep>>,
    idle: Duration,
    _slot: Slot,
}

impl GuardedStream {
    /// Wraps an accepted connection holding `slot`: it fails after `idle` without traffic.
    pub fn new(stream: TcpStream, idle: Duration, slot: Slot) -> Self {
        GuardedStream {
            stream,
            deadline: Box::pin(tokio::time::sleep(idle)),
            idle,
            _slot: slot,
        }
    }

    /// Progress pushes the deadline back; no progress past it ends the connection.
    fn check<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        match polled {
            Poll::Ready(result) => {
                let next = Instant::now() + self.idle;
                self.deadline.as_mut().reset(next);
                Poll::Ready(result)
            }
            Poll::Pending if self.deadline.as_mut().poll(cx).is_ready() => {
                Poll::Ready(Err(std::io::ErrorKind::TimedOut.into()))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        self.check(cx, polled)
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.check(cx, polled)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
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

    #[tokio::test]
    async fn a_guarded_stream_lives_while_traffic_moves_and_fails_when_idle() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio::net::TcpListener;
        let bound = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = bound.local_addr().unwrap();
        let slots = ConnectionSlots::new("test", 1);
        let mut client = TcpStream::connect(address).await.unwrap();
        let (accepted, _) = bound.accept().await.unwrap();
        let slot = slots.try_take().unwrap();
        let mut served = GuardedStream::new(accepted, Duration::from_millis(300), slot);
        let mut byte = [0u8; 1];
        // Traffic keeps it alive past the idle time; silence ends it.
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            client.write_all(b"x").await.unwrap();
            served.read_exact(&mut byte).await.unwrap();
        }
        let started = std::time::Instant::now();
        let err = served.read(&mut byte).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(250));
        // Its slot is free again once it is dropped.
        assert!(slots.try_take().is_none());
        drop(served);
        assert!(slots.try_take().is_some());
    }
}
