//! What the primary has to say to one connected member, and the shortest way to say it.
//!
//! # Why not a queue to the sender thread
//!
//! Every member's connection has a sender thread. If every batch went through it, each commit
//! would wait for that thread to be woken and scheduled before its records left this host — on
//! a small, busy machine a sizeable part of the round trip to the backup. So the thread that
//! produces a message (the writer publishing a batch, or announcing its durable end) writes it
//! to the socket itself when the way is clear, with a send that never waits. Only what does not
//! fit, or what comes while the sender thread is busy, is left for the sender thread.
//!
//! # Invariants
//!
//! - **Order.** Bytes reach the socket in the order they were queued. A producer writes directly
//!   only when nothing is queued *and* the sender thread is not writing (it writes outside the
//!   lock); otherwise it appends to the queue, behind whatever is there. Whole messages only: the
//!   sender thread ([`Outbox::serve`]) writes nothing but what [`Outbox::next`] handed it, so
//!   even its heartbeats go through [`Outbox::control`].
//! - **Never blocks a producer.** The direct write is `MSG_DONTWAIT`: a full send buffer (a slow
//!   or stalled member) leaves the rest in the queue for the sender thread, whose blocking write
//!   has a timeout. An async member can never delay a commit, and a stalled backup is handled
//!   by the quality of service timeout as before. Over TLS a direct send encrypts whole messages
//!   and may leave part of their records [owed](Channel::owes); the sender thread is woken and
//!   its flush writes them, before anything queued after them.
//! - **The right socket.** The outbox owns its own handle on the connection, so a direct write
//!   can never land on a descriptor number the sender thread closed and the system reused.
//! - **Closing.** After [`Outbox::close`] (or [`Outbox::hang_up`]) nothing more is accepted; the
//!   sender thread writes what is queued and ends. A message too large for the protocol closes
//!   the outbox the same way: skipping it would leave a gap the member waits on.
//! - **Bounded.** At most [`MAX_QUEUED_BYTES`] wait for the sender thread. A member that reads
//!   steadily but slower than the primary writes (an async on a slow link) would otherwise make
//!   the queue grow without end: past the bound the outbox closes like that, and the member
//!   reconnects and catches up from the journal files, as on any reconnect.
//!
//! Until the sender thread calls [`Outbox::open_direct`], messages only queue: a member that
//! just connected must first be sent what it lacks from the journal files.

use std::io::Write;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use crate::journal::JournalPos;
use crate::tls::Channel;

use super::protocol::{Control, write_control, write_frames};

/// Most bytes queued for one member's sender thread (see the module essay).
pub const MAX_QUEUED_BYTES: usize = 32 << 20;

/// What the sender thread is to do next.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// Write these bytes (the queue, taken whole; none when only a direct send's records are
    /// owed), then flush and ask again.
    Write,
    /// Nothing was left for the sender thread for the heartbeat interval (producers may have
    /// sent directly meanwhile; a heartbeat then is merely redundant).
    Idle,
    /// The outbox is closed and everything queued was handed out: end the connection.
    End,
}

#[derive(Default)]
struct State {
    /// Encoded messages not yet on the wire.
    queued: Vec<u8>,
    /// The sender thread took bytes and is writing them outside the lock.
    sender_writing: bool,
    /// The outbox's own handle on the connection, for direct writes; none until the sender
    /// thread opens the way.
    direct: Option<Channel>,
    /// No more messages are accepted.
    closing: bool,
}

/// The messages on their way to one member (see the module essay).
#[derive(Default)]
pub struct Outbox {
    state: Mutex<State>,
    /// Wakes the sender thread when bytes are left for it, or on closing.
    wake: Condvar,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state.lock().unwrap();
        f.debug_struct("Outbox")
            .field("queued_bytes", &state.queued.len())
            .field("closing", &state.closing)
            .finish()
    }
}

impl Outbox {
    /// An outbox that queues until [`Outbox::open_direct`].
    pub fn new() -> Outbox {
        Outbox::default()
    }

    /// Queues (or sends at once) journal frames `first..=last`.
    pub fn frames(&self, first: JournalPos, last: JournalPos, frames: &[u8]) {
        self.push(|out| write_frames(out, first, last, frames).is_ok());
    }

    /// Queues (or sends at once) a control message.
    pub fn control(&self, control: &Control) {
        self.push(|out| write_control(out, control).is_ok());
    }

    /// Says why the connection ends, and ends it once everything queued before is written.
    pub fn close(&self, why: String) {
        self.push(|out| {
            write_control(
                out,
                &Control::Refused {
                    reason: why,
                    awaiting_authorization: false,
                },
            )
            .is_ok()
        });
        self.hang_up();
    }

    /// Ends the connection once everything queued is written.
    pub fn hang_up(&self) {
        let mut state = self.state.lock().unwrap();
        state.closing = true;
        state.direct = None;
        drop(state);
        self.wake.notify_all();
    }

    /// Whether messages are still accepted.
    pub fn is_open(&self) -> bool {
        !self.state.lock().unwrap().closing
    }

    /// Appends one message, then writes the queue directly if the way is clear.
    fn push(&self, encode: impl FnOnce(&mut Vec<u8>) -> bool) {
        let mut state = self.state.lock().unwrap();
        if state.closing {
            return;
        }
        let was_empty = state.queued.is_empty();
        let start = state.queued.len();
        let encoded = encode(&mut state.queued);
        if !encoded || state.queued.len() > MAX_QUEUED_BYTES {
            // Too large for one message (the protocol's limit), or the member falls too far
            // behind: nothing partial may stay behind, and nothing may be skipped either. The
            // connection ends once what is queued is written; the member reconnects and is sent
            // the records from the journal files, in chunks the limit allows.
            state.queued.truncate(start);
            state.closing = true;
            state.direct = None;
            drop(state);
            if encoded {
                tracing::warn!(
                    "mirror: a member falls behind by more than {} MiB; its link restarts",
                    MAX_QUEUED_BYTES >> 20
                );
            } else {
                tracing::warn!("mirror: a message exceeds the protocol's limit; the link restarts");
            }
            self.wake.notify_all();
            return;
        }
        if was_empty && !state.sender_writing {
            let State { queued, direct, .. } = &mut *state;
            if let Some(channel) = direct {
                // A failure other than a full buffer is left to the sender thread's write,
                // which reports it and ends the connection the usual way.
                if let Ok(sent) = channel.send_now(queued) {
                    queued.drain(..sent);
                }
            }
        }
        // Over TLS a direct send may leave part of its records owed (see `Channel::owes`):
        // the sender thread's flush writes them.
        let left = !state.queued.is_empty() || state.direct.as_ref().is_some_and(Channel::owes);
        drop(state);
        if left {
            self.wake.notify_one();
        }
    }

    /// From now on producers may write to `channel` (a handle on the connection) themselves.
    /// Called by the sender thread once the member has what it lacked from the files.
    pub fn open_direct(&self, channel: Channel) {
        let mut state = self.state.lock().unwrap();
        if !state.closing {
            state.direct = Some(channel);
        }
    }

    /// The sender thread's wait: hands over everything queued (swapped into `out`, which must be
    /// empty), or says the connection is idle or ended. Until the next call the sender thread
    /// counts as writing, so no producer writes past it.
    fn next(&self, heartbeat: Duration, out: &mut Vec<u8>) -> Next {
        debug_assert!(out.is_empty());
        let mut state = self.state.lock().unwrap();
        state.sender_writing = false;
        let owed = |state: &State| state.direct.as_ref().is_some_and(Channel::owes);
        if state.queued.is_empty() && !state.closing && !owed(&state) {
            state = self.wake.wait_timeout(state, heartbeat).unwrap().0;
        }
        if !state.queued.is_empty() || owed(&state) {
            std::mem::swap(&mut state.queued, out);
            state.sender_writing = true;
            Next::Write
        } else if state.closing {
            Next::End
        } else {
            Next::Idle
        }
    }

    /// Takes everything queued for the sender thread, appended to `out`: whole messages, what
    /// the sender thread would write next. The simulation delivers a link's bytes so, with no
    /// socket and no sender thread (`crate::simulation::data`).
    pub(crate) fn take_queued(&self, out: &mut Vec<u8>) {
        out.append(&mut self.state.lock().unwrap().queued);
    }

    /// How many bytes wait for the sender thread, for tests.
    #[cfg(test)]
    fn queued_len(&self) -> usize {
        self.state.lock().unwrap().queued.len()
    }

    /// The sender thread's loop: writes what producers left queued, and a heartbeat (`beat`)
    /// whenever nothing was queued for `heartbeat`; returns once the outbox is closed and
    /// everything queued is written. The heartbeat goes through [`Outbox::control`] like every
    /// other message: written here, outside the lock, it could interleave with a batch a
    /// producer sends at the same moment.
    pub fn serve(
        &self,
        socket: &mut impl Write,
        heartbeat: Duration,
        beat: impl Fn() -> Control,
    ) -> std::io::Result<()> {
        let mut bytes = Vec::new();
        loop {
            match self.next(heartbeat, &mut bytes) {
                Next::Write => {
                    socket.write_all(&bytes)?;
                    // Also writes what a direct send left owed (TLS), before anything newer.
                    socket.flush()?;
                    bytes.clear();
                }
                Next::Idle => self.control(&beat()),
                Next::End => return socket.flush(),
            }
        }
    }

    /// Decodes what is queued (whole messages only: nothing was partly sent), for tests.
    #[cfg(test)]
    pub fn queued_messages(&self) -> Vec<super::protocol::Message> {
        let bytes = self.state.lock().unwrap().queued.clone();
        let mut input = std::io::Cursor::new(bytes);
        let mut messages = Vec::new();
        while let Some(message) = super::protocol::read_message(&mut input).unwrap() {
            messages.push(message);
        }
        messages
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mirror::protocol::{Message, read_message};
    use std::net::{TcpListener, TcpStream};
    use std::sync::Arc;

    fn pair() -> (Channel, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (Channel::Plain(server), client)
    }

    /// Both ends of a TLS connection, the primary's first.
    fn tls_pair() -> (Channel, Channel) {
        use crate::tls::{HANDSHAKE_TIMEOUT, Identity, accept_blocking, connect_blocking};
        let primary = Arc::new(Identity::ephemeral("a").unwrap());
        let member = Identity::ephemeral("b").unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let accepting = {
            let primary = primary.clone();
            std::thread::spawn(move || {
                let (tcp, _) = listener.accept().unwrap();
                accept_blocking(tcp, &primary, HANDSHAKE_TIMEOUT).unwrap().0
            })
        };
        let tcp = TcpStream::connect(addr).unwrap();
        let (client, _) =
            connect_blocking(tcp, &member, Some(primary.fingerprint()), HANDSHAKE_TIMEOUT).unwrap();
        (accepting.join().unwrap(), client)
    }

    fn durable(pos: u64) -> Control {
        Control::Durable {
            pos: JournalPos(pos),
        }
    }

    fn read_durable(input: &mut impl std::io::Read) -> u64 {
        match read_message(input).unwrap() {
            Some(Message::Control(c)) => match *c {
                Control::Durable { pos } => pos.0,
                other => panic!("read {other:?}"),
            },
            other => panic!("read {other:?}"),
        }
    }

    #[test]
    fn messages_queue_until_the_way_is_opened_then_go_out_directly() {
        let (server, mut client) = pair();
        let outbox = Outbox::new();
        outbox.control(&durable(1));
        assert_eq!(
            outbox.queued_messages().len(),
            1,
            "sent before the way was open"
        );
        outbox.open_direct(server.try_clone().unwrap());
        // The sender thread still has to take what was queued before: a new message must wait
        // behind it.
        outbox.control(&durable(2));
        assert_eq!(outbox.queued_messages().len(), 2);
        let mut taken = Vec::new();
        assert_eq!(outbox.next(Duration::from_secs(1), &mut taken), Next::Write);
        // While the sender writes, producers queue.
        outbox.control(&durable(3));
        assert_eq!(outbox.queued_messages().len(), 1);
        let mut writer = server.try_clone().unwrap();
        writer.write_all(&taken).unwrap();
        taken.clear();
        assert_eq!(outbox.next(Duration::from_secs(1), &mut taken), Next::Write);
        writer.write_all(&taken).unwrap();
        taken.clear();
        // The sender thread waits now: the next message goes straight to the socket.
        let waiting = std::thread::scope(|scope| {
            let sender = scope.spawn(|| {
                let mut out = Vec::new();
                outbox.next(Duration::from_millis(300), &mut out)
            });
            std::thread::sleep(Duration::from_millis(50));
            outbox.control(&durable(4));
            sender.join().unwrap()
        });
        assert_eq!(
            waiting,
            Next::Idle,
            "the sender thread was handed a direct message"
        );
        let read: Vec<u64> = (0..4).map(|_| read_durable(&mut client)).collect();
        assert_eq!(read, vec![1, 2, 3, 4]);
    }

    #[test]
    fn a_full_send_buffer_leaves_the_rest_to_the_sender_in_order() {
        let (server, client) = pair();
        a_full_send_buffer_leaves_the_rest_in_order(server, client);
    }

    /// Over TLS a direct send that did not fit leaves part of its records owed: the sender
    /// thread's flush writes them, before what was queued behind them.
    #[test]
    fn a_full_send_buffer_over_tls_leaves_the_rest_to_the_sender_in_order() {
        let (server, client) = tls_pair();
        a_full_send_buffer_leaves_the_rest_in_order(server, client);
    }

    fn a_full_send_buffer_leaves_the_rest_in_order(
        server: Channel,
        mut client: impl std::io::Read,
    ) {
        let outbox = Arc::new(Outbox::new());
        outbox.open_direct(server.try_clone().unwrap());
        // Nobody reads: direct writes fill the socket's buffers and the rest queues instead of
        // blocking the producer.
        let frames = vec![7u8; 64 * 1024];
        let mut last = 0u64;
        while outbox.queued_len() == 0 {
            last += 1;
            outbox.frames(JournalPos(last), JournalPos(last), &frames);
            assert!(last < 10_000, "the socket never filled");
        }
        // Over TLS the send that did not fit left records owed, and everything since queued.
        assert_eq!(server.owes(), matches!(server, Channel::Tls(_)));
        outbox.control(&durable(last));
        // The sender thread writes the rest (blocking) while the member reads.
        let sender = {
            let outbox = outbox.clone();
            let mut writer = server.try_clone().unwrap();
            std::thread::spawn(move || {
                let mut out = Vec::new();
                while outbox.next(Duration::from_secs(5), &mut out) == Next::Write {
                    writer.write_all(&out).unwrap();
                    writer.flush().unwrap();
                    out.clear();
                }
            })
        };
        for expected in 1..=last {
            match read_message(&mut client).unwrap() {
                Some(Message::Frames { first, .. }) => assert_eq!(first, JournalPos(expected)),
                other => panic!("read {other:?} instead of frames {expected}"),
            }
        }
        assert_eq!(read_durable(&mut client), last);
        outbox.hang_up();
        sender.join().unwrap();
    }

    #[test]
    fn heartbeats_and_batches_from_several_threads_arrive_whole_and_in_order() {
        let (server, client) = pair();
        heartbeats_and_batches_arrive_whole_and_in_order(server, client);
    }

    #[test]
    fn heartbeats_and_batches_over_tls_arrive_whole_and_in_order() {
        let (server, client) = tls_pair();
        heartbeats_and_batches_arrive_whole_and_in_order(server, client);
    }

    fn heartbeats_and_batches_arrive_whole_and_in_order(
        server: Channel,
        mut client: impl std::io::Read + Send,
    ) {
        let outbox = Arc::new(Outbox::new());
        outbox.open_direct(server.try_clone().unwrap());
        std::thread::scope(|scope| {
            // The writer sends batches directly for a while, so nothing stays queued and the
            // sender thread's heartbeat comes due every millisecond, between them.
            let sender = scope.spawn(|| {
                let mut socket = server.try_clone().unwrap();
                outbox.serve(&mut socket, Duration::from_millis(1), || {
                    Control::Heartbeat {
                        durable: JournalPos(0),
                        time_ms: 0,
                    }
                })
            });
            let producer = scope.spawn(|| {
                let frames = vec![1u8; 300];
                let until = std::time::Instant::now() + Duration::from_millis(400);
                let mut last = 0u64;
                while std::time::Instant::now() < until {
                    last += 1;
                    outbox.frames(JournalPos(last), JournalPos(last), &frames);
                    // Slower than the reader, so the way stays clear and sends stay direct.
                    std::thread::sleep(Duration::from_micros(20));
                }
                outbox.control(&durable(last));
                outbox.hang_up();
                last
            });
            let (mut next, mut heartbeats) = (1u64, 0u64);
            loop {
                match read_message(&mut client).unwrap() {
                    Some(Message::Frames { first, .. }) => {
                        assert_eq!(first, JournalPos(next), "batches out of order");
                        next += 1;
                    }
                    Some(Message::Control(c)) => match *c {
                        Control::Heartbeat { .. } => heartbeats += 1,
                        Control::Durable { pos } => {
                            assert_eq!(pos.0, next - 1, "batches missing");
                            break;
                        }
                        other => panic!("read {other:?}"),
                    },
                    other => panic!("read {other:?}"),
                }
            }
            assert_eq!(producer.join().unwrap(), next - 1);
            assert!(
                heartbeats > 50,
                "only {heartbeats} heartbeats raced the batches"
            );
            sender.join().unwrap().unwrap();
        });
    }

    #[test]
    fn a_message_over_the_limit_ends_the_connection_instead_of_leaving_a_gap() {
        let outbox = Outbox::new();
        outbox.control(&durable(1));
        let huge = vec![0u8; crate::mirror::protocol::MAX_MESSAGE];
        outbox.frames(JournalPos(2), JournalPos(2), &huge);
        outbox.control(&durable(3));
        assert!(!outbox.is_open());
        assert_eq!(
            outbox.queued_messages().len(),
            1,
            "only what came before stays"
        );
        let mut out = Vec::new();
        assert_eq!(outbox.next(Duration::from_secs(1), &mut out), Next::Write);
        out.clear();
        assert_eq!(outbox.next(Duration::from_secs(1), &mut out), Next::End);
    }

    #[test]
    fn a_member_that_falls_too_far_behind_is_cut_off_with_a_bounded_queue() {
        // Nothing drains the queue (the way is not open): a slow member's backlog.
        let outbox = Outbox::new();
        let batch = vec![7u8; 1 << 20];
        let mut pos = 1;
        while outbox.is_open() {
            outbox.frames(JournalPos(pos), JournalPos(pos), &batch);
            pos += 1;
            assert!(pos < 1_000, "the queue never stopped growing");
        }
        assert!(
            outbox.queued_len() <= MAX_QUEUED_BYTES,
            "{}",
            outbox.queued_len()
        );
        // What was queued is still written, whole, before the connection ends.
        let queued = outbox.queued_messages().len();
        assert_eq!(queued as u64, pos - 2);
        let mut out = Vec::new();
        assert_eq!(outbox.next(Duration::from_secs(1), &mut out), Next::Write);
        out.clear();
        assert_eq!(outbox.next(Duration::from_secs(1), &mut out), Next::End);
    }

    #[test]
    fn closing_says_why_after_what_was_queued_and_accepts_nothing_more() {
        let outbox = Outbox::new();
        outbox.control(&durable(1));
        outbox.close("replaced".into());
        outbox.control(&durable(2));
        assert!(!outbox.is_open());
        let messages = outbox.queued_messages();
        assert_eq!(messages.len(), 2);
        assert!(
            matches!(&messages[1], Message::Control(c) if matches!(**c, Control::Refused { .. }))
        );
        let mut out = Vec::new();
        assert_eq!(outbox.next(Duration::from_secs(1), &mut out), Next::Write);
        out.clear();
        assert_eq!(outbox.next(Duration::from_secs(1), &mut out), Next::End);
    }
}
