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
//! # Keeping room for the members
//!
//! A plain limit protects the member's threads but not its mirror: strangers who hold every
//! slot keep the backup out just as well (64 connections trickling half a message once kept a
//! restarted backup disconnected for as long as they went on). So the superserver sorts each
//! connection by its source address before it takes a slot ([`ConnectionSlots::try_take_from`]):
//! an address of one of the mirror's members, or of this host, may use every slot; any other
//! address is a *stranger*, and strangers together get at most
//! [`SUPERSERVER_STRANGER_CONNECTIONS`] of them, one address at most
//! [`SUPERSERVER_CONNECTIONS_PER_STRANGER`]. The rest stay free for the members whatever
//! strangers do. A slot is not held for long either: the superserver closes a connection that
//! has not delivered its first message within [`SUPERSERVER_FIRST_MESSAGE`], however slowly
//! its bytes trickle in (see `mirror::server`). Who counts as a member is the superserver's
//! business; the source address is all this module looks at — which is why it does not help
//! against someone who can send from a member's own address (see the README's Security model).
//!
//! The portal's HTTP port counts its connections the same way (see `web::serve`, which also
//! shares them out per source address), and closes a connection on which nothing moved for
//! [`PORTAL_IDLE`] ([`GuardedStream`]): a client that opens a connection and then trickles a body
//! or reads an answer a byte a minute would otherwise hold it forever.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::util::now_ms;

/// Connections the superserver serves at once (each one a thread).
pub const SUPERSERVER_CONNECTIONS: usize = 64;
/// Of those, how many strangers (addresses that are neither a member's nor this host's) may
/// hold at once: the other half stays free for the members (16 at most, each with a data
/// channel and now and then a Catchup fetch, and the agents' questions).
pub const SUPERSERVER_STRANGER_CONNECTIONS: usize = 32;
/// How many connections one stranger's address may hold at once. A member joining without
/// SSL/TLS is a stranger until its first hello is accepted, and it needs one.
pub const SUPERSERVER_CONNECTIONS_PER_STRANGER: usize = 4;
/// How long a superserver connection may take to deliver its first message, TLS handshake
/// included. Every caller sends it at once, so a few seconds are plenty on any network; a
/// connection still short of it afterwards is closed, so nobody holds a slot by trickling bytes.
pub const SUPERSERVER_FIRST_MESSAGE: Duration = Duration::from_secs(5);
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
    /// The strangers' share, on a port that keeps room for known peers.
    strangers: Option<StrangerShare>,
}

/// How many slots strangers hold, in all and per address.
#[derive(Debug)]
struct StrangerShare {
    max: usize,
    per_address: usize,
    open: Mutex<StrangersOpen>,
}

#[derive(Debug, Default)]
struct StrangersOpen {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

/// One open connection's place; dropping it frees the place.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<ConnectionSlots>,
    /// The stranger's address this slot counts against.
    stranger: Option<IpAddr>,
}

impl ConnectionSlots {
    /// Slots for `port` (a name for the log), at most `max` at once.
    pub fn new(port: &'static str, max: usize) -> Arc<Self> {
        Arc::new(Self::unshared(port, max, None))
    }

    /// Slots for `port`, at most `max` at once, of which strangers hold at most
    /// `stranger_max`, and one stranger's address at most `per_address` (see
    /// [`Self::try_take_from`]).
    pub fn keeping_room(
        port: &'static str,
        max: usize,
        stranger_max: usize,
        per_address: usize,
    ) -> Arc<Self> {
        let share = StrangerShare {
            max: stranger_max.min(max),
            per_address,
            open: Mutex::new(StrangersOpen::default()),
        };
        Arc::new(Self::unshared(port, max, Some(share)))
    }

    fn unshared(port: &'static str, max: usize, strangers: Option<StrangerShare>) -> Self {
        ConnectionSlots {
            port,
            max,
            open: AtomicUsize::new(0),
            last_warned_ms: AtomicI64::new(i64::MIN / 2),
            strangers,
        }
    }

    /// A slot for a new connection, or `None` (logged) when all are taken: close it then.
    pub fn try_take(self: &Arc<Self>) -> Option<Slot> {
        if self.take_one() {
            return Some(Slot {
                slots: self.clone(),
                stranger: None,
            });
        }
        self.warn(|| {
            format!(
                "{} connections are open, the most it serves at once",
                self.max
            )
        });
        None
    }

    /// A slot for a new connection from `peer`, which the caller found to be `known` (a
    /// member's or this host's address) or not. A known peer may take any free slot; a stranger
    /// only while strangers hold fewer than their share, and its address fewer than its own.
    /// `None` (logged): close the connection.
    pub fn try_take_from(self: &Arc<Self>, peer: IpAddr, known: bool) -> Option<Slot> {
        let Some(share) = self.strangers.as_ref().filter(|_| !known) else {
            return self.try_take();
        };
        // An IPv4 client of a listener bound to `[::]` shows as `::ffff:a.b.c.d`.
        let peer = peer.to_canonical();
        let mut open = share.open.lock().unwrap();
        let from_peer = open.by_address.get(&peer).copied().unwrap_or(0);
        if from_peer >= share.per_address {
            drop(open);
            self.warn(|| {
                format!(
                    "{from_peer} connections from {peer} are open, the most one address that is \
                     not known to this port holds"
                )
            });
            return None;
        }
        if open.total >= share.max {
            drop(open);
            self.warn(|| {
                format!(
                    "{} connections from addresses not known to this port are open, the most \
                     they hold (the rest are kept for known ones)",
                    share.max
                )
            });
            return None;
        }
        // Counted under the lock, so the share is never overrun by connections racing in.
        if !self.take_one() {
            drop(open);
            return self.try_take();
        }
        open.total += 1;
        *open.by_address.entry(peer).or_default() += 1;
        Some(Slot {
            slots: self.clone(),
            stranger: Some(peer),
        })
    }

    /// Takes one of the `max` slots, if one is free.
    fn take_one(&self) -> bool {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < self.max).then_some(open + 1)
            })
            .is_ok()
    }

    /// Logs why a connection is closed, at most once every [`WARN_EVERY_MS`].
    fn warn(&self, why: impl FnOnce() -> String) {
        let now = now_ms();
        let last = self.last_warned_ms.load(Ordering::Relaxed);
        if now - last >= WARN_EVERY_MS
            && self
                .last_warned_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!("{}: {}; closing new ones", self.port, why());
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let (Some(peer), Some(share)) = (self.stranger, self.slots.strangers.as_ref()) {
            let mut open = share.open.lock().unwrap();
            open.total -= 1;
            if let Some(count) = open.by_address.get_mut(&peer) {
                *count -= 1;
                if *count == 0 {
                    open.by_address.remove(&peer);
                }
            }
        }
        self.slots.open.fetch_sub(1, Ordering::AcqRel);
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

    #[test]
    fn strangers_hold_their_share_and_known_peers_the_rest() {
        let slots = ConnectionSlots::keeping_room("test", 6, 3, 2);
        let (one, two, three): (IpAddr, IpAddr, IpAddr) = (
            "10.0.0.1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            "10.0.0.3".parse().unwrap(),
        );
        // One address gets two slots, strangers three in all.
        let a = slots.try_take_from(one, false).expect("first from one");
        let _b = slots.try_take_from(one, false).expect("second from one");
        assert!(slots.try_take_from(one, false).is_none());
        let _c = slots
            .try_take_from("::ffff:10.0.0.2".parse().unwrap(), false)
            .expect("first from two, as IPv6 shows it");
        assert!(slots.try_take_from(three, false).is_none());
        // Known peers take the rest, even from a stranger's address ...
        let known: Vec<Slot> = (0..3)
            .map(|_| slots.try_take_from(two, true).expect("a known peer"))
            .collect();
        assert_eq!(slots.open(), 6);
        assert!(slots.try_take_from(two, true).is_none());
        // ... and what a stranger frees goes back to the strangers' share.
        drop(a);
        let _d = slots.try_take_from(two, false).expect("two's second slot");
        assert!(slots.try_take_from(two, false).is_none());
        drop(known);
        assert!(
            slots.try_take_from(three, false).is_none(),
            "the share is full"
        );
        assert_eq!(slots.open(), 3);
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
