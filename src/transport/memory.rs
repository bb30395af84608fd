//! A network inside one process, for tests that run several members side by side.
//!
//! Each member is a host on the network ([`MemoryNetwork::host`], by its IP address): it listens
//! on an address (`ip:port`, never bound on the machine) and connects to others as over TCP,
//! and a listener sees the caller's IP as the connection's peer. A connection is two one-way
//! *pipes* of bytes; every handle on one end shares its pipes and its timeouts, as handles on
//! one socket do. What a writer puts in a pipe waits there
//! until the other end reads it; a pipe holds at most [`PIPE_CAPACITY`] bytes, beyond which a
//! write waits for room — at most its write timeout, as a full socket buffer makes it.
//!
//! # Faults
//!
//! The test that owns the network fails it where a real one fails, by the address a member
//! listens on — what a firewall rule on that port would cut:
//!
//! - [`MemoryNetwork::hold`] cuts one direction (towards the listener, or from it): bytes sent
//!   that way stay in their pipe undelivered, so the reader waits and the writer fills the pipe
//!   and then waits, and new connections to the address are not answered. An end of the
//!   connection is held too: the reader learns of it only after the cut. Cutting both
//!   directions is a two-way partition. [`MemoryNetwork::heal`] delivers what was held, as TCP
//!   retransmits it once the path is back.
//! - [`MemoryNetwork::reset`] ends every connection to the address at once, as a reset does:
//!   both ends' reads end and their writes fail.
//!
//! # Invariants
//!
//! - Bytes arrive in order and only once: a pipe is one queue, read from the front.
//! - A cut loses nothing: held bytes are delivered in order after the heal, unless the
//!   connection was reset meanwhile.
//! - A closed end reads the end of the stream at once; the other end reads it after whatever
//!   was sent before it.
//!
//! # Left out
//!
//! Latency and bandwidth: bytes are delivered as soon as they are written. There is no TLS on
//! this network (see [`super`]).

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak, mpsc};
use std::time::{Duration, Instant};

use super::{Connection, Incoming, Listener, Network};
use crate::error::{Error, Result};

/// Most bytes one pipe holds before a write waits for the reader.
pub const PIPE_CAPACITY: usize = 4 << 20;

/// Which way of a connection a cut stops, seen from the address that listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the connecting member to the listener.
    ToListener,
    /// From the listener back to the connecting member.
    FromListener,
}

/// An in-process network (see the module essay); clones share it.
#[derive(Debug, Clone, Default)]
pub struct MemoryNetwork {
    inner: Arc<Mutex<Addresses>>,
}

#[derive(Debug, Default)]
struct Addresses {
    /// Who listens where.
    listeners: HashMap<SocketAddr, mpsc::Sender<(MemoryStream, IpAddr)>>,
    /// Each address's cuts and connections (kept after its listener went, for a test's heal).
    routes: HashMap<SocketAddr, Arc<Route>>,
}

/// The cuts of one listening address and the pipes of its connections.
#[derive(Debug, Default)]
struct Route {
    to_listener: Arc<AtomicBool>,
    from_listener: Arc<AtomicBool>,
    pipes: Mutex<Vec<Weak<Pipe>>>,
}

impl Route {
    /// Wakes everyone waiting on the route's pipes (a cut changed, or they were reset).
    fn wake_all(&self, reset: bool) {
        let mut pipes = self.pipes.lock().unwrap();
        pipes.retain(|pipe| pipe.strong_count() > 0);
        for pipe in pipes.iter().filter_map(Weak::upgrade) {
            let mut state = pipe.state.lock().unwrap();
            if reset {
                state.reset = true;
            }
            drop(state);
            pipe.changed.notify_all();
        }
    }
}

fn address(text: &str) -> Result<SocketAddr> {
    text.parse()
        .map_err(|_| Error::InvalidInput(format!("{text}: not an ip:port address")))
}

impl MemoryNetwork {
    /// A new network with nobody on it.
    pub fn new() -> MemoryNetwork {
        MemoryNetwork::default()
    }

    fn route(&self, at: SocketAddr) -> Arc<Route> {
        self.inner
            .lock()
            .unwrap()
            .routes
            .entry(at)
            .or_default()
            .clone()
    }

    /// Cuts traffic to or from `listener` one way (see the module essay).
    pub fn hold(&self, listener: &str, direction: Direction) {
        self.set_cut(listener, direction, true);
    }

    /// Ends a cut: what it held is delivered.
    pub fn heal(&self, listener: &str, direction: Direction) {
        self.set_cut(listener, direction, false);
    }

    fn set_cut(&self, listener: &str, direction: Direction, cut: bool) {
        let route = self.route(address(listener).expect("a test's address"));
        let flag = match direction {
            Direction::ToListener => &route.to_listener,
            Direction::FromListener => &route.from_listener,
        };
        flag.store(cut, Ordering::Release);
        route.wake_all(false);
    }

    /// A member's view of the network: a host with address `ip` (a [`Network`] of its own).
    pub fn host(&self, ip: &str) -> MemoryHost {
        MemoryHost {
            network: self.clone(),
            ip: ip.parse().expect("a test's IP address"),
        }
    }

    /// Ends every connection to `listener` at once, both ways.
    pub fn reset(&self, listener: &str) {
        self.route(address(listener).expect("a test's address"))
            .wake_all(true);
    }
}

/// One host on a [`MemoryNetwork`]: where a member listens and connects from.
#[derive(Debug, Clone)]
pub struct MemoryHost {
    network: MemoryNetwork,
    ip: IpAddr,
}

impl Network for MemoryHost {
    fn connect(&self, to: &str, timeout: Duration) -> Result<Connection> {
        let at = address(to)?;
        let route = self.network.route(at);
        if route.to_listener.load(Ordering::Acquire) {
            // The connection attempt is lost on the way: nothing answers before the timeout.
            std::thread::sleep(timeout);
            return Err(Error::Unavailable(format!("{to}: connection timed out")));
        }
        let listening = self
            .network
            .inner
            .lock()
            .unwrap()
            .listeners
            .get(&at)
            .cloned();
        let Some(accepting) = listening else {
            return Err(Error::Unavailable(format!("{to}: connection refused")));
        };
        let towards = Pipe::new(route.to_listener.clone());
        let back = Pipe::new(route.from_listener.clone());
        let mut pipes = route.pipes.lock().unwrap();
        // Connections that ended are forgotten here, so a long test's list stays short.
        pipes.retain(|pipe| pipe.strong_count() > 0);
        pipes.extend([Arc::downgrade(&towards), Arc::downgrade(&back)]);
        drop(pipes);
        let caller = MemoryStream::new(back.clone(), towards.clone());
        let callee = MemoryStream::new(towards, back);
        accepting
            .send((callee, self.ip))
            .map_err(|_| Error::Unavailable(format!("{to}: connection refused")))?;
        Ok(Connection::Memory(caller))
    }

    fn listen(&self, on: &str) -> Result<Listener> {
        let mut at = address(on)?;
        if at.ip() != self.ip {
            return Err(Error::Io(format!(
                "listen on {on}: not an address of {}",
                self.ip
            )));
        }
        let mut inner = self.network.inner.lock().unwrap();
        if at.port() == 0 {
            // Like the system, pick a free port.
            let mut port = 40_000;
            while inner
                .listeners
                .contains_key(&SocketAddr::new(at.ip(), port))
            {
                port += 1;
            }
            at.set_port(port);
        }
        if inner.listeners.contains_key(&at) {
            return Err(Error::Io(format!("listen on {on}: address in use")));
        }
        let (accepting, incoming) = mpsc::channel();
        inner.listeners.insert(at, accepting);
        Ok(Listener::Memory(MemoryListener {
            network: self.network.clone(),
            address: at,
            incoming: Mutex::new(incoming),
        }))
    }
}

/// An address listening on a [`MemoryNetwork`]; dropping it stops the listening.
#[derive(Debug)]
pub struct MemoryListener {
    network: MemoryNetwork,
    address: SocketAddr,
    incoming: Mutex<mpsc::Receiver<(MemoryStream, IpAddr)>>,
}

impl MemoryListener {
    pub(super) fn address(&self) -> SocketAddr {
        self.address
    }

    pub(super) fn accept(&self) -> io::Result<Incoming> {
        let (stream, caller) = self
            .incoming
            .lock()
            .unwrap()
            .recv()
            .map_err(|_| io::Error::from(io::ErrorKind::NotConnected))?;
        Ok(Incoming {
            connection: Connection::Memory(stream),
            peer: SocketAddr::new(caller, 0),
            local: self.address,
        })
    }
}

impl Drop for MemoryListener {
    fn drop(&mut self) {
        self.network
            .inner
            .lock()
            .unwrap()
            .listeners
            .remove(&self.address);
    }
}

/// One direction of a connection.
#[derive(Debug)]
struct Pipe {
    state: Mutex<PipeState>,
    changed: Condvar,
    /// Whether the network holds this direction (the route's flag).
    cut: Arc<AtomicBool>,
}

#[derive(Debug, Default)]
struct PipeState {
    bytes: VecDeque<u8>,
    /// The writing end shut down: the reader reads the end after the bytes.
    sender_gone: bool,
    /// The reading end shut down: writes fail.
    receiver_gone: bool,
    /// The connection was reset: reads end and writes fail at once.
    reset: bool,
}

impl Pipe {
    fn new(cut: Arc<AtomicBool>) -> Arc<Pipe> {
        Arc::new(Pipe {
            state: Mutex::new(PipeState::default()),
            changed: Condvar::new(),
            cut,
        })
    }

    fn is_cut(&self) -> bool {
        self.cut.load(Ordering::Acquire)
    }
}

/// Waits on `pipe` until `ready` (true) or `timeout` passes (false).
fn wait_on<'a>(
    pipe: &'a Pipe,
    mut state: std::sync::MutexGuard<'a, PipeState>,
    timeout: Option<Duration>,
    ready: impl Fn(&PipeState) -> bool,
) -> (std::sync::MutexGuard<'a, PipeState>, bool) {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        if ready(&state) {
            return (state, true);
        }
        state = match deadline {
            None => pipe.changed.wait(state).unwrap(),
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return (state, false);
                }
                pipe.changed.wait_timeout(state, left).unwrap().0
            }
        };
    }
}

/// One end of a connection on a [`MemoryNetwork`]; clones are handles on the same end.
#[derive(Debug, Clone)]
pub struct MemoryStream {
    end: Arc<End>,
}

#[derive(Debug)]
struct End {
    inbound: Arc<Pipe>,
    outbound: Arc<Pipe>,
    /// Read and write timeouts, shared by every handle (as a socket's are).
    timeouts: Mutex<(Option<Duration>, Option<Duration>)>,
}

impl Drop for End {
    // The last handle gone closes the connection, as closing a socket's last descriptor does.
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl End {
    fn shutdown(&self) {
        self.outbound.state.lock().unwrap().sender_gone = true;
        self.outbound.changed.notify_all();
        self.inbound.state.lock().unwrap().receiver_gone = true;
        self.inbound.changed.notify_all();
    }
}

impl MemoryStream {
    fn new(inbound: Arc<Pipe>, outbound: Arc<Pipe>) -> MemoryStream {
        MemoryStream {
            end: Arc::new(End {
                inbound,
                outbound,
                timeouts: Mutex::new((None, None)),
            }),
        }
    }

    /// How long a read may wait.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) {
        self.end.timeouts.lock().unwrap().0 = timeout;
    }

    /// How long a write may wait for room.
    pub fn set_write_timeout(&self, timeout: Option<Duration>) {
        self.end.timeouts.lock().unwrap().1 = timeout;
    }

    /// Ends the connection both ways: this end reads the end at once, the other after what was
    /// sent.
    pub fn shutdown(&self) {
        self.end.shutdown();
    }

    /// Writes what fits now, up to `bytes.len()`, never waiting.
    pub fn send_now(&self, bytes: &[u8]) -> io::Result<usize> {
        self.put(bytes, Some(Duration::ZERO))
    }

    fn put(&self, bytes: &[u8], timeout: Option<Duration>) -> io::Result<usize> {
        if bytes.is_empty() {
            return Ok(0);
        }
        let pipe = &self.end.outbound;
        let state = pipe.state.lock().unwrap();
        let (mut state, ready) = wait_on(pipe, state, timeout, |s| {
            s.reset || s.sender_gone || s.receiver_gone || s.bytes.len() < PIPE_CAPACITY
        });
        if state.reset {
            return Err(io::ErrorKind::ConnectionReset.into());
        }
        if state.sender_gone || state.receiver_gone {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        if !ready {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let room = PIPE_CAPACITY - state.bytes.len();
        let taken = room.min(bytes.len());
        state.bytes.extend(&bytes[..taken]);
        drop(state);
        pipe.changed.notify_all();
        Ok(taken)
    }
}

impl Read for MemoryStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let timeout = self.end.timeouts.lock().unwrap().0;
        let pipe = &self.end.inbound;
        let state = pipe.state.lock().unwrap();
        // This end shut down reads nothing more; across a cut nothing arrives, not even an end.
        let (mut state, ready) = wait_on(pipe, state, timeout, |s| {
            s.reset || s.receiver_gone || (!pipe.is_cut() && (!s.bytes.is_empty() || s.sender_gone))
        });
        if state.reset {
            return Err(io::ErrorKind::ConnectionReset.into());
        }
        if state.receiver_gone {
            return Ok(0);
        }
        if !ready {
            // What a socket's read timeout gives on this system.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let taken = buf.len().min(state.bytes.len());
        for (slot, byte) in buf.iter_mut().zip(state.bytes.drain(..taken)) {
            *slot = byte;
        }
        drop(state);
        pipe.changed.notify_all();
        Ok(taken)
    }
}

impl Write for MemoryStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let timeout = self.end.timeouts.lock().unwrap().1;
        self.put(buf, timeout)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::Channel;

    fn pair(network: &MemoryNetwork) -> (Listener, Channel, Channel) {
        let listener = network.host("10.0.0.1").listen("10.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let caller = network
            .host("10.0.0.2")
            .connect(&address, Duration::from_secs(1))
            .unwrap();
        let incoming = listener.accept().unwrap();
        assert_eq!(incoming.peer.ip().to_string(), "10.0.0.2");
        (listener, caller.plain(), incoming.connection.plain())
    }

    fn read_all(channel: &mut Channel, n: usize) -> Vec<u8> {
        let mut got = vec![0u8; n];
        channel.read_exact(&mut got).unwrap();
        got
    }

    /// Bytes go both ways in order, and a closed end is read as the end of the stream after
    /// what was sent before it.
    #[test]
    fn bytes_arrive_in_order_and_a_close_after_them() {
        let network = MemoryNetwork::new();
        let (_listener, mut caller, mut callee) = pair(&network);
        caller.write_all(b"hello").unwrap();
        caller.write_all(b" world").unwrap();
        assert_eq!(read_all(&mut callee, 11), b"hello world");
        callee.write_all(b"ack").unwrap();
        callee.close();
        assert_eq!(read_all(&mut caller, 3), b"ack");
        let mut rest = Vec::new();
        caller.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        assert!(caller.write_all(b"more").is_err(), "the other end is gone");
    }

    /// A cut direction delivers nothing — a read times out — and delivers everything after
    /// the heal; the other direction goes on meanwhile; a new connection is not answered.
    #[test]
    fn a_cut_holds_one_direction_and_the_heal_delivers_what_it_held() {
        let network = MemoryNetwork::new();
        let (listener, mut caller, mut callee) = pair(&network);
        let address = listener.local_addr().unwrap().to_string();
        network.hold(&address, Direction::ToListener);
        caller.write_all(b"held").unwrap();
        callee
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let mut byte = [0u8; 1];
        let err = callee.read(&mut byte).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        callee.write_all(b"back").unwrap();
        assert_eq!(read_all(&mut caller, 4), b"back");
        assert!(
            network
                .host("10.0.0.2")
                .connect(&address, Duration::from_millis(20))
                .is_err()
        );
        network.heal(&address, Direction::ToListener);
        assert_eq!(read_all(&mut callee, 4), b"held");
    }

    /// A reset ends both ends at once, whatever they were waiting for.
    #[test]
    fn a_reset_ends_a_waiting_read_at_once() {
        let network = MemoryNetwork::new();
        let (listener, _caller, mut callee) = pair(&network);
        let address = listener.local_addr().unwrap().to_string();
        let reader = std::thread::spawn(move || {
            let mut byte = [0u8; 1];
            callee.read(&mut byte).map_err(|e| e.kind())
        });
        std::thread::sleep(Duration::from_millis(20));
        network.reset(&address);
        assert_eq!(reader.join().unwrap(), Err(io::ErrorKind::ConnectionReset));
    }

    /// A full pipe makes a write wait at most its timeout, and a send that must not wait
    /// takes only what fits.
    #[test]
    fn a_full_pipe_stops_a_writer_for_its_timeout() {
        let network = MemoryNetwork::new();
        let (_listener, mut caller, _callee) = pair(&network);
        let big = vec![7u8; PIPE_CAPACITY - 10];
        caller.write_all(&big).unwrap();
        assert_eq!(caller.send_now(&[1u8; 64]).unwrap(), 10);
        caller
            .set_write_timeout(Some(Duration::from_millis(30)))
            .unwrap();
        let err = caller.write(&[1u8]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    }
}
