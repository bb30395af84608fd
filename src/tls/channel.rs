//! A member-to-member connection for blocking threads — the TCP socket itself, or TLS made by
//! rustls on it, or in tests a connection on an in-process network ([`crate::transport`]) —
//! that one thread reads while another writes.
//!
//! # Why not `rustls::StreamOwned`
//!
//! On the data channel one thread reads (journal frames on a backup, acknowledgements on the
//! primary) while another writes (acknowledgements, journal frames), and a third may write
//! directly without waiting (the primary's writer, see [`crate::mirror::outbox`]). A
//! `StreamOwned` needs `&mut` for both directions: a reader blocked in it would stop every
//! writer. But a rustls session does no I/O of its own — it turns bytes from the wire into
//! plaintext and plaintext into records — so the socket can stay outside any lock:
//!
//! - **Reading.** The reader blocks on the socket holding nothing, then hands what arrived to
//!   the session under the session lock and takes the plaintext out.
//! - **Writing.** The writer encrypts under the session lock, takes the records out, and writes
//!   them to the socket holding only the *send lock*, whose one job is order.
//!
//! # Invariants
//!
//! - **Records leave in the order the session made them.** Records are taken out of the session
//!   only under the send lock, and written (or kept as `unsent`, written first by whoever holds
//!   the lock next) before it is released: a record out of order would fail the peer's
//!   decryption, since each carries the next sequence number.
//! - **No socket call under the session lock.** A reader waiting for bytes never stops a writer
//!   from encrypting, and a writer stuck on a full socket never stops the reader from taking
//!   acknowledgements in. The lock order is send lock, then session lock.
//! - **No byte is dropped between clones.** Bytes read from the socket that the session has
//!   not taken yet stay in the shared session state, not in one handle.
//! - **A send that must not wait** ([`Channel::send_now`]) gives its bytes to the session and
//!   writes what the socket takes now; the rest of those records is `unsent`, and
//!   [`Channel::owes`] says so, for the outbox to wake its sender thread, whose next write or
//!   flush sends them first.
//! - **Closing** sends TLS's `close_notify` when the send lock is free (never waiting for it),
//!   then shuts the socket down both ways, which also ends a read blocked on it.
//!
//! # Left out
//!
//! Records the reader's side produces (a key update's answer) are sent when the send lock is
//! free, or else by the next write: neither side of the protocol waits for them.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConnection, Connection, ServerConnection};

use super::{Identity, SERVER_NAME, peer_of, tls_error};
use crate::error::{Error, Result};
use crate::lab::cuts::{Link, global as cuts};
use crate::os::send_without_waiting;
use crate::transport::memory::MemoryStream;

/// Most plaintext encrypted at once by one write: bounds what a send that must not wait can
/// leave unsent.
const CHUNK: usize = 256 << 10;

/// Most bytes one read takes from the socket.
const READ_SIZE: usize = 32 << 10;

/// A member-to-member connection for blocking threads (see the module essay).
#[derive(Debug)]
pub enum Channel {
    /// No TLS: the socket itself.
    Plain(TcpStream),
    /// TLS, made by rustls on the socket.
    Tls(TlsChannel),
    /// A connection on an in-process network ([`crate::transport::memory`]), for tests.
    Memory(MemoryStream),
}

/// One handle on a TLS connection; every clone shares the socket, the session and the send
/// lock.
pub struct TlsChannel {
    socket: Arc<TcpStream>,
    session: Arc<Mutex<Session>>,
    /// The send lock; it holds records taken out of the session and not yet written.
    sending: Arc<Mutex<Vec<u8>>>,
    /// Whether the send lock's buffer holds records (readable without taking the lock).
    owes: Arc<AtomicBool>,
    /// This handle's buffer for bytes read from the socket (reused: a reader reads often).
    scratch: Vec<u8>,
}

impl Clone for TlsChannel {
    fn clone(&self) -> TlsChannel {
        TlsChannel {
            socket: self.socket.clone(),
            session: self.session.clone(),
            sending: self.sending.clone(),
            owes: self.owes.clone(),
            scratch: Vec::new(),
        }
    }
}

impl std::fmt::Debug for TlsChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsChannel")
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

/// The rustls session and what the reader took from the socket that it has not accepted yet.
struct Session {
    tls: Connection,
    inbound: Vec<u8>,
}

/// Accepts TLS on a connection a blocking thread took, the handshake done within `within`
/// (the superserver gives a connection only so long to say what it wants); the client's
/// fingerprint comes back with the channel.
pub fn accept_blocking(
    tcp: TcpStream,
    identity: &Identity,
    within: Duration,
) -> Result<(Channel, String)> {
    let tls = ServerConnection::new(identity.server.clone()).map_err(tls_error)?;
    let channel = handshake(Connection::Server(tls), tcp, within)?;
    let peer = peer_of(channel.lock_session().tls.peer_certificates())?;
    Ok((Channel::Tls(channel), peer))
}

/// Opens TLS from a blocking thread, the handshake done within `within`, requiring the
/// server's fingerprint to be `expected` when given. Returns the channel and the server's
/// fingerprint.
pub fn connect_blocking(
    tcp: TcpStream,
    identity: &Identity,
    expected: Option<&str>,
    within: Duration,
) -> Result<(Channel, String)> {
    let name = ServerName::try_from(SERVER_NAME).expect("a valid server name");
    let tls = ClientConnection::new(identity.client_config(expected)?, name).map_err(tls_error)?;
    let channel = handshake(Connection::Client(tls), tcp, within)?;
    let peer = peer_of(channel.lock_session().tls.peer_certificates())?;
    Ok((Channel::Tls(channel), peer))
}

/// Runs the handshake on the blocking socket, within `within`.
fn handshake(mut tls: Connection, mut tcp: TcpStream, within: Duration) -> Result<TlsChannel> {
    let failed = |e: io::Error| match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            Error::Unavailable("tls handshake timed out".into())
        }
        _ => Error::Unavailable(format!("tls handshake: {e}")),
    };
    let deadline = Instant::now() + within;
    tcp.set_nonblocking(false)?;
    while tls.is_handshaking() || tls.wants_write() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::Unavailable("tls handshake timed out".into()));
        }
        tcp.set_read_timeout(Some(left))?;
        tcp.set_write_timeout(Some(left))?;
        let (read, written) = tls.complete_io(&mut tcp).map_err(failed)?;
        if read == 0 && written == 0 && tls.is_handshaking() {
            return Err(Error::Unavailable(
                "tls handshake: the peer closed the connection".into(),
            ));
        }
    }
    tcp.set_read_timeout(None)?;
    tcp.set_write_timeout(None)?;
    // The connection's own callers decide how much a session may hold: the outbox bounds
    // what it queues, and a send that must not wait encrypts at most `CHUNK` at a time.
    tls.set_buffer_limit(None);
    Ok(TlsChannel {
        socket: Arc::new(tcp),
        session: Arc::new(Mutex::new(Session {
            tls,
            inbound: Vec::new(),
        })),
        sending: Arc::new(Mutex::new(Vec::new())),
        owes: Arc::new(AtomicBool::new(false)),
        scratch: Vec::new(),
    })
}

impl TlsChannel {
    fn lock_session(&self) -> MutexGuard<'_, Session> {
        self.session.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_sending(&self) -> MutexGuard<'_, Vec<u8>> {
        self.sending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Encrypts `plaintext` (nothing for none) and takes every record the session has to send
    /// out into `unsent`; the caller holds the send lock, whose guard `unsent` is.
    fn seal(&self, plaintext: &[u8], unsent: &mut Vec<u8>) -> io::Result<()> {
        let mut session = self.lock_session();
        if !plaintext.is_empty() {
            session.tls.writer().write_all(plaintext)?;
        }
        while session.tls.wants_write() {
            session.tls.write_tls(unsent)?;
        }
        Ok(())
    }

    /// Writes `unsent` to the socket, waiting as the socket's write timeout allows; what was
    /// written leaves the buffer even when a later part fails.
    fn write_out(&self, unsent: &mut Vec<u8>) -> io::Result<()> {
        let mut written = 0;
        let result = loop {
            if written == unsent.len() {
                break Ok(());
            }
            match (&*self.socket).write(&unsent[written..]) {
                Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        unsent.drain(..written);
        self.owes.store(!unsent.is_empty(), Ordering::Release);
        result
    }

    /// Writes what of `unsent` the socket takes now; `Ok` whether or not all of it fit.
    fn write_out_now(&self, unsent: &mut Vec<u8>) -> io::Result<()> {
        let mut written = 0;
        let result = loop {
            if written == unsent.len() {
                break Ok(());
            }
            match send_without_waiting(self.socket.as_fd(), &unsent[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        unsent.drain(..written);
        self.owes.store(!unsent.is_empty(), Ordering::Release);
        result
    }

    fn send_now(&self, bytes: &[u8]) -> io::Result<usize> {
        // Somebody holds the send lock: they are writing, so these bytes wait their turn.
        let Ok(mut unsent) = self.sending.try_lock() else {
            return Ok(0);
        };
        self.write_out_now(&mut unsent)?;
        let mut accepted = 0;
        while accepted < bytes.len() && unsent.is_empty() {
            let take = (bytes.len() - accepted).min(CHUNK);
            self.seal(&bytes[accepted..accepted + take], &mut unsent)?;
            accepted += take;
            self.write_out_now(&mut unsent)?;
        }
        Ok(accepted)
    }

    fn write(&self, bytes: &[u8]) -> io::Result<usize> {
        let mut unsent = self.lock_sending();
        self.write_out(&mut unsent)?;
        let take = bytes.len().min(CHUNK);
        self.seal(&bytes[..take], &mut unsent)?;
        self.write_out(&mut unsent)?;
        Ok(take)
    }

    fn flush(&self) -> io::Result<()> {
        let mut unsent = self.lock_sending();
        self.seal(&[], &mut unsent)?;
        self.write_out(&mut unsent)
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.scratch.len() < READ_SIZE {
            self.scratch.resize(READ_SIZE, 0);
        }
        loop {
            {
                let mut session = self.lock_session();
                match session.tls.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    // The peer closed its socket without `close_notify`: for the framed
                    // protocols on top, whose messages carry their length, the same as a
                    // closed socket (a message cut short fails there).
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                    Err(e) => return Err(e),
                }
                let Session { tls, inbound } = &mut *session;
                if !inbound.is_empty() {
                    // The session takes only as much as its buffer holds; the rest waits here
                    // for the next turn of the loop.
                    let taken = tls.read_tls(&mut inbound.as_slice())?;
                    inbound.drain(..taken);
                    let processed = tls.process_new_packets();
                    let answer = tls.wants_write();
                    drop(session);
                    if answer || processed.is_err() {
                        self.send_session_output();
                    }
                    if let Err(e) = processed {
                        return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                    }
                    continue;
                }
            }
            // Nothing decrypted is waiting and nothing read is left: wait on the socket,
            // holding no lock.
            let n = loop {
                match (&*self.socket).read(&mut self.scratch) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    other => break other?,
                }
            };
            let mut session = self.lock_session();
            if n == 0 {
                // The end of the stream: the session notes it, and the reader then says
                // whether it came after `close_notify`.
                session.tls.read_tls(&mut io::empty())?;
            } else {
                session.inbound.extend_from_slice(&self.scratch[..n]);
            }
        }
    }

    /// Sends what the session has to say by itself (an answer to a key update, an alert) if the
    /// send lock is free; otherwise its holder or the next writer does.
    fn send_session_output(&self) {
        if let Ok(mut unsent) = self.sending.try_lock()
            && self.seal(&[], &mut unsent).is_ok()
        {
            let _ = self.write_out_now(&mut unsent);
        }
    }

    fn close(&self) {
        if let Ok(mut unsent) = self.sending.try_lock() {
            self.lock_session().tls.send_close_notify();
            if self.seal(&[], &mut unsent).is_ok() {
                let _ = self.write_out_now(&mut unsent);
            }
        }
        let _ = self.socket.shutdown(Shutdown::Both);
    }
}

impl Channel {
    /// Writes what fits in the connection's send buffer without waiting (see
    /// [`send_without_waiting`]); over TLS the bytes counted may be partly [owed](Self::owes).
    pub fn send_now(&self, bytes: &[u8]) -> io::Result<usize> {
        if self.socket_under_cuts().is_some() && cuts().sending_is_cut(Link::Members) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        match self {
            Channel::Plain(s) => send_without_waiting(s.as_fd(), bytes),
            Channel::Tls(s) => s.send_now(bytes),
            Channel::Memory(s) => s.send_now(bytes),
        }
    }

    /// Whether bytes [`send_now`](Self::send_now) counted as sent still wait to be written
    /// (by the next write or flush on any handle).
    pub fn owes(&self) -> bool {
        match self {
            Channel::Plain(_) | Channel::Memory(_) => false,
            Channel::Tls(s) => s.owes.load(Ordering::Acquire),
        }
    }

    /// A second handle on the same connection (one thread reads, another writes).
    pub fn try_clone(&self) -> io::Result<Channel> {
        Ok(match self {
            Channel::Plain(s) => Channel::Plain(s.try_clone()?),
            Channel::Tls(s) => Channel::Tls(s.clone()),
            Channel::Memory(s) => Channel::Memory(s.clone()),
        })
    }

    /// The TCP socket underneath; none on an in-process network (the Lab's cuts, which act on
    /// sockets, do not apply there).
    fn socket(&self) -> Option<&TcpStream> {
        match self {
            Channel::Plain(s) => Some(s),
            Channel::Tls(s) => Some(&s.socket),
            Channel::Memory(_) => None,
        }
    }

    /// How long a read may block.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Channel::Plain(s) => s.set_read_timeout(timeout),
            Channel::Tls(s) => s.socket.set_read_timeout(timeout),
            Channel::Memory(s) => {
                s.set_read_timeout(timeout);
                Ok(())
            }
        }
    }

    /// How long a write may block.
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Channel::Plain(s) => s.set_write_timeout(timeout),
            Channel::Tls(s) => s.socket.set_write_timeout(timeout),
            Channel::Memory(s) => {
                s.set_write_timeout(timeout);
                Ok(())
            }
        }
    }

    /// The socket when the Lab cuts links now (see [`crate::lab::cuts`]); `None` otherwise,
    /// and always on an in-process network.
    fn socket_under_cuts(&self) -> Option<&TcpStream> {
        self.socket().filter(|_| cuts().any())
    }

    /// Ends the connection in both directions (errors ignored: it may be gone already) —
    /// unless the Lab cut this member's sending: then the end waits for the cut to end (see
    /// [`crate::lab::cuts::Cuts::hold_end`]), as TCP's would.
    pub fn close(&self) {
        if let Some(socket) = self.socket_under_cuts()
            && cuts().sending_is_cut(Link::Members)
        {
            cuts().hold_end(Link::Members, socket);
            return;
        }
        match self {
            Channel::Plain(s) => {
                let _ = s.shutdown(Shutdown::Both);
            }
            Channel::Tls(s) => s.close(),
            Channel::Memory(s) => s.shutdown(),
        }
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        if let Some(socket) = self.socket_under_cuts() {
            cuts().hold_end(Link::Members, socket);
        }
    }
}

// Every channel links this member to another one: a cut of that link from the Lab page
// ([`crate::lab::cuts`]) holds its reads and writes.
impl Read for Channel {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(socket) = self.socket_under_cuts() {
            cuts().wait_to_receive(Link::Members, socket.read_timeout()?)?;
        }
        match self {
            Channel::Plain(s) => s.read(buf),
            Channel::Tls(s) => s.read(buf),
            Channel::Memory(s) => s.read(buf),
        }
    }
}

impl Write for Channel {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(socket) = self.socket_under_cuts() {
            cuts().wait_to_send(Link::Members, socket.write_timeout()?)?;
        }
        match self {
            Channel::Plain(s) => s.write(buf),
            Channel::Tls(s) => TlsChannel::write(s, buf),
            Channel::Memory(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        if let Some(socket) = self.socket_under_cuts() {
            cuts().wait_to_send(Link::Members, socket.write_timeout()?)?;
        }
        match self {
            Channel::Plain(s) => s.flush(),
            Channel::Tls(s) => TlsChannel::flush(s),
            Channel::Memory(s) => s.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::HANDSHAKE_TIMEOUT;
    use std::net::TcpListener;

    fn pair(
        server: Arc<Identity>,
        client: &Identity,
        expected: &str,
    ) -> (Result<(Channel, String)>, Result<Channel>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let accepting = std::thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            accept_blocking(tcp, &server, HANDSHAKE_TIMEOUT)
        });
        let connected = connect_blocking(
            TcpStream::connect(addr).unwrap(),
            client,
            Some(expected),
            HANDSHAKE_TIMEOUT,
        )
        .map(|(channel, _)| channel);
        (accepting.join().unwrap(), connected)
    }

    fn connected_pair() -> (Channel, Channel) {
        let server = Arc::new(Identity::ephemeral("a").unwrap());
        let client = Identity::ephemeral("b").unwrap();
        let (accepted, connected) = pair(server.clone(), &client, server.fingerprint());
        let (at_server, peer) = accepted.unwrap();
        assert_eq!(peer, client.fingerprint());
        (at_server, connected.unwrap())
    }

    #[test]
    fn both_sides_learn_the_other_and_bytes_cross_both_ways() {
        let (mut at_server, mut at_client) = connected_pair();
        let mut writer = at_client.try_clone().unwrap();
        writer.write_all(b"hello").unwrap();
        let mut got = [0u8; 5];
        at_server.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
        at_server.write_all(b"world").unwrap();
        at_client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"world");
        // Closing one end is seen as the end of the stream on the other.
        at_server.close();
        at_client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        assert_eq!(at_client.read(&mut got).unwrap(), 0);
    }

    #[test]
    fn a_server_with_another_certificate_is_refused() {
        let server = Arc::new(Identity::ephemeral("a").unwrap());
        let impostor_expected = Identity::ephemeral("c").unwrap();
        let client = Identity::ephemeral("b").unwrap();
        let (_, connected) = pair(server, &client, impostor_expected.fingerprint());
        let err = connected.unwrap_err().to_string();
        assert!(err.contains("not the authorized one"), "{err}");
    }

    #[test]
    fn a_silent_client_times_the_handshake_out() {
        let server = Identity::ephemeral("a").unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let _silent = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (tcp, _) = listener.accept().unwrap();
        let err = accept_blocking(tcp, &server, Duration::from_millis(200)).unwrap_err();
        assert!(err.to_string().contains("timed out"), "{err}");
    }

    /// One thread reads while another writes, both ways at once, with more bytes in flight than
    /// the socket buffers hold; a reader blocked on the socket must not stop the writer.
    #[test]
    fn reading_and_writing_from_two_threads_at_once_keeps_every_byte_in_order() {
        let (at_server, at_client) = connected_pair();
        const TOTAL: usize = 24 << 20;
        let pattern = |i: usize| (i % 251) as u8;
        let send = |channel: Channel| {
            std::thread::spawn(move || {
                let mut channel = channel;
                let mut sent = 0;
                let mut block = vec![0u8; 100_003];
                while sent < TOTAL {
                    let n = block.len().min(TOTAL - sent);
                    for (k, b) in block[..n].iter_mut().enumerate() {
                        *b = pattern(sent + k);
                    }
                    channel.write_all(&block[..n]).unwrap();
                    sent += n;
                }
                channel.flush().unwrap();
            })
        };
        let receive = |channel: Channel| {
            std::thread::spawn(move || {
                let mut channel = channel;
                let mut got = 0;
                let mut buf = vec![0u8; 65_536];
                while got < TOTAL {
                    let n = channel.read(&mut buf).unwrap();
                    assert!(n > 0, "the stream ended after {got} bytes");
                    for (k, b) in buf[..n].iter().enumerate() {
                        assert_eq!(*b, pattern(got + k), "byte {}", got + k);
                    }
                    got += n;
                }
            })
        };
        let threads = [
            send(at_server.try_clone().unwrap()),
            send(at_client.try_clone().unwrap()),
            receive(at_server.try_clone().unwrap()),
            receive(at_client.try_clone().unwrap()),
        ];
        for thread in threads {
            thread.join().unwrap();
        }
    }

    /// What a send that must not wait could not write is owed, and the next flush on another
    /// handle writes it, before anything written after it.
    #[test]
    fn bytes_sent_without_waiting_are_owed_until_a_flush_and_keep_their_order() {
        let (at_server, mut at_client) = connected_pair();
        let direct = at_server.try_clone().unwrap();
        let mut sender = at_server.try_clone().unwrap();
        // Nobody reads yet: the socket buffers fill and part of the records stays owed.
        let big = vec![7u8; 32 << 20];
        let mut counted = 0;
        while counted < big.len() {
            let n = direct.send_now(&big[counted..]).unwrap();
            if n == 0 {
                break;
            }
            counted += n;
        }
        assert!(counted > 0);
        assert!(direct.owes(), "a full socket leaves records owed");
        let reader = std::thread::spawn(move || {
            let mut got = vec![0u8; counted + 4];
            at_client.read_exact(&mut got).unwrap();
            got
        });
        sender.write_all(b"tail").unwrap();
        sender.flush().unwrap();
        assert!(!direct.owes());
        let got = reader.join().unwrap();
        assert!(got[..counted].iter().all(|b| *b == 7));
        assert_eq!(&got[counted..], b"tail");
    }
}
