//! Cutting a member's links from the Lab page: a switch inside the instance's own network
//! layer that stops its traffic to the other members, or to the arbiter, for a while — one way
//! or both — the way a broken cable or a firewall would, without leaving the process.
//!
//! # What a cut does
//!
//! A link is a kind of peer ([`Link::Members`]: the data channel and the failover driver's
//! questions to another member's agent; [`Link::Arbiter`]: the arbiter link). A cut holds the
//! link's traffic in one direction or both until it ends:
//!
//! - **Outgoing** ([`Cuts::wait_to_send`]): a write waits while the cut lasts, for at most the
//!   socket's write timeout, then fails as a socket that took nothing would. A send that must
//!   not wait takes nothing ([`std::io::ErrorKind::WouldBlock`]), as from a full socket.
//! - **Incoming** ([`Cuts::wait_to_receive`]): a read does not look at the socket while the cut
//!   lasts, for at most the socket's read timeout, then fails as a socket that got nothing
//!   would. What the peer sends meanwhile stays in the kernel's buffers — as with TCP across a
//!   cut, it arrives late, or the connection ends first when a side's timeout runs out.
//! - **New connections** ([`Cuts::wait_to_connect`]): in either direction, a connection is not
//!   made while the cut lasts (a lost SYN or SYN-ACK): it waits, for at most its connect
//!   timeout.
//! - **Ends of connections** ([`Cuts::hold_end`]): a connection this member ends while its
//!   sending is cut keeps a handle until the cut ends, so its FIN does not cross the cut either.
//!
//! The instance's conversations with its own agent on its superserver port (the agent's probe
//! and questions) pass every cut ([`unchecked`]): an agent whose probe went unanswered would take
//! its instance for hung and force it down.
//!
//! So a cut longer than the QoS timeout ends the connections by the rules' own timeouts, and
//! the mirror's events show what each member concluded; a shorter one only delays the traffic.
//!
//! # Invariants
//!
//! - **Nothing is dropped or reordered**: a cut only delays bytes; a read or write it fails has
//!   taken or given nothing, so the stream a protocol reads is always the one sent.
//! - **Free when unused**: every check starts with one relaxed atomic load, false until a cut
//!   is made in this process and again once a check finds none in force.
//!
//! # Left out
//!
//! - A read or write already waiting in the kernel when the cut begins finishes (what was on
//!   the wire); so do bytes a reader had already buffered.
//! - The table is per process — one instance per process, as the member runs. The member's
//!   agent is a process of its own: the other member's questions *to* it are not cut, nor are
//!   the portal's calls to other members' agents (Join, the no-click mirror).

use std::cell::Cell;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Which of a member's links a cut stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Link {
    /// To the other members: the data channel and the questions to their agents.
    Members,
    /// To the arbiter.
    Arbiter,
}

impl Link {
    /// The link in the page's words.
    pub fn display(self) -> &'static str {
        match self {
            Link::Members => "the link to the other members",
            Link::Arbiter => "the link to the arbiter",
        }
    }

    /// Reads the page's and `/api`'s name for it.
    pub fn parse(name: &str) -> Result<Link> {
        match name.trim() {
            "members" => Ok(Link::Members),
            "arbiter" => Ok(Link::Arbiter),
            other => Err(Error::InvalidInput(format!(
                "no link {other:?}: cut \"members\" (the other members) or \"arbiter\""
            ))),
        }
    }
}

/// Which way a cut stops the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Nothing leaves, nothing arrives.
    Both,
    /// What this member sends does not arrive; what it is sent does.
    Out,
    /// What this member is sent does not arrive; what it sends does.
    In,
}

impl Direction {
    /// The direction in the page's words.
    pub fn display(self) -> &'static str {
        match self {
            Direction::Both => "both ways",
            Direction::Out => "outgoing only",
            Direction::In => "incoming only",
        }
    }

    /// Reads the page's and `/api`'s name for it.
    pub fn parse(name: &str) -> Result<Direction> {
        match name.trim() {
            "both" => Ok(Direction::Both),
            "out" => Ok(Direction::Out),
            "in" => Ok(Direction::In),
            other => Err(Error::InvalidInput(format!(
                "no direction {other:?}: cut \"both\" ways, \"out\" or \"in\""
            ))),
        }
    }

    fn stops_sending(self) -> bool {
        matches!(self, Direction::Both | Direction::Out)
    }

    fn stops_receiving(self) -> bool {
        matches!(self, Direction::Both | Direction::In)
    }
}

/// One link's cut while it lasts.
#[derive(Debug, Clone, Copy)]
struct Cut {
    direction: Direction,
    until: Instant,
    /// Tells this cut from a later one on the same link (its end is reported once).
    number: u64,
}

/// The cuts in force, one per link at most.
#[derive(Default)]
struct Table {
    members: Option<Cut>,
    arbiter: Option<Cut>,
    made: u64,
    /// Per link (members, arbiter): every cut numbered up to this one was mended.
    mended_upto: [u64; 2],
    /// Connections this member ended while its sending on their link was cut (see
    /// [`Cuts::hold_end`]).
    held: Vec<(Link, TcpStream)>,
}

impl Table {
    fn slot(&mut self, link: Link) -> &mut Option<Cut> {
        match link {
            Link::Members => &mut self.members,
            Link::Arbiter => &mut self.arbiter,
        }
    }

    /// The link's cut if it still lasts; an ended one is forgotten, and the ends of
    /// connections it held go out.
    fn current(&mut self, link: Link) -> Option<Cut> {
        let slot = self.slot(link);
        if slot.is_some_and(|cut| cut.until <= Instant::now()) {
            self.lift(link);
        }
        *self.slot(link)
    }

    /// Ends `link`'s cut.
    fn lift(&mut self, link: Link) {
        *self.slot(link) = None;
        // Dropping the last handle lets the kernel send the connection's end, late, as TCP
        // would once the cable is back.
        self.held.retain(|(held, _)| *held != link);
    }
}

/// A table of cuts: the process's ([`global`]) or a test's own.
pub struct Cuts {
    /// Whether a cut may be in force: the one load a read or write pays when none ever was.
    any: AtomicBool,
    table: Mutex<Table>,
}

static GLOBAL: Cuts = Cuts::new();

thread_local! {
    /// Set while this thread talks to something the cuts must not reach (see [`unchecked`]).
    static UNCHECKED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with this thread's reads and writes past every cut: for the conversations the
/// instance has with its own agent on its superserver port (the agent's probe, its questions),
/// which a cut of the link to the other members must not stop — an agent whose probe went
/// unanswered would take its instance for hung.
pub fn unchecked<T>(f: impl FnOnce() -> T) -> T {
    let before = UNCHECKED.replace(true);
    let result = f();
    UNCHECKED.set(before);
    result
}

/// The process's cuts: the ones the Lab page makes and every link checks.
pub fn global() -> &'static Cuts {
    &GLOBAL
}

/// A cut as the Lab page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CutView {
    pub link: Link,
    pub direction: Direction,
    /// Milliseconds until it ends.
    pub ms_left: u64,
    pub number: u64,
}

impl CutView {
    /// Whole seconds left, rounded up (a cut with 0.2 s left is not "0 s left").
    pub fn seconds_left(&self) -> u64 {
        self.ms_left.div_ceil(1000)
    }
}

impl Default for Cuts {
    fn default() -> Cuts {
        Cuts::new()
    }
}

impl Cuts {
    pub const fn new() -> Cuts {
        Cuts {
            any: AtomicBool::new(false),
            table: Mutex::new(Table {
                members: None,
                arbiter: None,
                made: 0,
                mended_upto: [0; 2],
                held: Vec::new(),
            }),
        }
    }

    /// Whether any cut may be in force (the cheap check before the others).
    #[inline]
    pub fn any(&self) -> bool {
        self.any.load(Ordering::Relaxed)
    }

    /// Cuts `link` in `direction` for `how_long`, replacing a cut of it in force; returns the
    /// cut's number (for [`Cuts::ends`]).
    pub fn cut(&self, link: Link, direction: Direction, how_long: Duration) -> u64 {
        let mut table = self.table.lock().unwrap();
        table.made += 1;
        let number = table.made;
        *table.slot(link) = Some(Cut {
            direction,
            until: Instant::now() + how_long,
            number,
        });
        self.any.store(true, Ordering::Release);
        number
    }

    /// Ends the cuts now (of `link`, or every one); says whether one was in force.
    pub fn mend(&self, link: Option<Link>) -> bool {
        let mut table = self.table.lock().unwrap();
        let mut mended = false;
        for each in [Link::Members, Link::Arbiter] {
            if link.is_none_or(|l| l == each) {
                mended |= table.current(each).is_some();
                table.lift(each);
                table.mended_upto[each as usize] = table.made;
            }
        }
        self.forget_if_none(&table);
        mended
    }

    fn forget_if_none(&self, table: &Table) {
        if table.members.is_none() && table.arbiter.is_none() {
            self.any.store(false, Ordering::Release);
        }
    }

    /// When cut `number` of `link` ends, unless it is over already (ended, mended, or replaced
    /// by a later cut).
    pub fn ends(&self, link: Link, number: u64) -> Option<Instant> {
        self.table
            .lock()
            .unwrap()
            .current(link)
            .filter(|cut| cut.number == number)
            .map(|cut| cut.until)
    }

    /// Whether cut `number` of `link` is over because its time ran out (not mended, not
    /// replaced by a later cut of the link).
    pub fn ended_by_time(&self, link: Link, number: u64) -> bool {
        let mut table = self.table.lock().unwrap();
        number > table.mended_upto[link as usize] && table.current(link).is_none()
    }

    /// The cuts in force.
    pub fn in_force(&self) -> Vec<CutView> {
        if !self.any() {
            return Vec::new();
        }
        let mut table = self.table.lock().unwrap();
        let now = Instant::now();
        [Link::Members, Link::Arbiter]
            .into_iter()
            .filter_map(|link| {
                table.current(link).map(|cut| CutView {
                    link,
                    direction: cut.direction,
                    ms_left: cut.until.saturating_duration_since(now).as_millis() as u64,
                    number: cut.number,
                })
            })
            .collect()
    }

    /// Until when `link` is cut in a way `stops` says matters, if it is.
    fn cut_until(&self, link: Link, stops: fn(Direction) -> bool) -> Option<Instant> {
        if !self.any() || UNCHECKED.get() {
            return None;
        }
        let mut table = self.table.lock().unwrap();
        let cut = table.current(link);
        let other = match link {
            Link::Members => Link::Arbiter,
            Link::Arbiter => Link::Members,
        };
        table.current(other);
        self.forget_if_none(&table);
        cut.filter(|cut| stops(cut.direction)).map(|cut| cut.until)
    }

    /// Waits while `link` is cut as `stops` says, for at most `timeout` (none: until the cut
    /// ends); fails as a socket that timed out would, having done nothing.
    fn wait_while_cut(
        &self,
        link: Link,
        stops: fn(Direction) -> bool,
        timeout: Option<Duration>,
        what: &str,
    ) -> io::Result<()> {
        let give_up = timeout.map(|t| Instant::now() + t);
        while let Some(until) = self.cut_until(link, stops) {
            let now = Instant::now();
            if give_up.is_some_and(|give_up| give_up <= now) {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!("{what}: {} is cut (Lab)", link.display()),
                ));
            }
            let wake = give_up.map_or(until, |give_up| give_up.min(until));
            // Short naps: a mend from the page ends the wait within one.
            std::thread::sleep(
                wake.saturating_duration_since(now)
                    .min(Duration::from_millis(20)),
            );
        }
        Ok(())
    }

    /// When this member ends a connection on `link` (closes or drops its handle) while its
    /// sending there is cut: keeps a handle on the socket until the cut ends, so that the end
    /// (FIN, or RST) does not cross the cut — the peer must find the connection silent, not
    /// closed. Called for every handle; one per connection is kept.
    pub fn hold_end(&self, link: Link, socket: &TcpStream) {
        if !self.sending_is_cut(link) {
            return;
        }
        let (Ok(local), Ok(peer)) = (socket.local_addr(), socket.peer_addr()) else {
            return;
        };
        let mut table = self.table.lock().unwrap();
        let known = table.held.iter().any(|(_, held)| {
            held.local_addr().ok() == Some(local) && held.peer_addr().ok() == Some(peer)
        });
        if !known && let Ok(handle) = socket.try_clone() {
            table.held.push((link, handle));
        }
    }

    /// Before writing to `link`: waits while its outgoing traffic is cut, for at most
    /// `timeout`.
    pub fn wait_to_send(&self, link: Link, timeout: Option<Duration>) -> io::Result<()> {
        self.wait_while_cut(link, Direction::stops_sending, timeout, "nothing was sent")
    }

    /// Whether a send that must not wait should take nothing now.
    pub fn sending_is_cut(&self, link: Link) -> bool {
        self.cut_until(link, Direction::stops_sending).is_some()
    }

    /// Before reading from `link`: waits while its incoming traffic is cut, for at most
    /// `timeout`.
    pub fn wait_to_receive(&self, link: Link, timeout: Option<Duration>) -> io::Result<()> {
        self.wait_while_cut(link, Direction::stops_receiving, timeout, "nothing arrived")
    }

    /// Before making or answering a connection on `link`: waits while it is cut either way
    /// (the handshake needs both), for at most `timeout`.
    pub fn wait_to_connect(&self, link: Link, timeout: Duration) -> io::Result<()> {
        self.wait_while_cut(link, |_| true, Some(timeout), "no connection was made")
    }
}

/// A TCP stream whose reads and writes pass the cuts of `link` (for links that use the socket
/// itself; [`crate::tls::Channel`] checks the members' link on its own).
#[derive(Debug)]
pub struct Gated {
    stream: TcpStream,
    link: Link,
}

impl Gated {
    pub fn new(stream: TcpStream, link: Link) -> Gated {
        Gated { stream, link }
    }
}

impl Read for Gated {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if GLOBAL.any() {
            GLOBAL.wait_to_receive(self.link, self.stream.read_timeout()?)?;
        }
        self.stream.read(buf)
    }
}

impl Drop for Gated {
    fn drop(&mut self) {
        if GLOBAL.any() {
            GLOBAL.hold_end(self.link, &self.stream);
        }
    }
}

impl Write for Gated {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if GLOBAL.any() {
            GLOBAL.wait_to_send(self.link, self.stream.write_timeout()?)?;
        }
        self.stream.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_holds_its_direction_until_it_ends_or_is_mended() {
        // A table of the test's own: the process's would reach the other tests' channels.
        let cuts = Cuts::new();
        assert!(Link::parse("switch").is_err() && Direction::parse("up").is_err());
        assert_eq!(Link::parse("arbiter").unwrap(), Link::Arbiter);
        let number = cuts.cut(Link::Members, Direction::Out, Duration::from_millis(300));
        assert!(cuts.any());
        assert!(cuts.sending_is_cut(Link::Members));
        assert!(!cuts.sending_is_cut(Link::Arbiter));
        // Incoming traffic of an outgoing cut passes at once.
        cuts.wait_to_receive(Link::Members, Some(Duration::ZERO))
            .unwrap();
        // A write gives up after its timeout, having sent nothing.
        let err = cuts
            .wait_to_send(Link::Members, Some(Duration::from_millis(50)))
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        assert!(err.to_string().contains("the other members"), "{err}");
        // A connection waits for either direction.
        assert!(
            cuts.wait_to_connect(Link::Members, Duration::from_millis(10))
                .is_err()
        );
        let views = cuts.in_force();
        assert_eq!(views.len(), 1);
        assert_eq!(views[0].number, number);
        assert!(cuts.ends(Link::Members, number).is_some());
        // Without a timeout the write waits for the end of the cut.
        let started = Instant::now();
        cuts.wait_to_send(Link::Members, None).unwrap();
        assert!(started.elapsed() >= Duration::from_millis(150));
        assert!(cuts.ends(Link::Members, number).is_none());
        assert!(cuts.ended_by_time(Link::Members, number));
        assert!(cuts.in_force().is_empty() && !cuts.any());

        let number = cuts.cut(Link::Arbiter, Direction::In, Duration::from_secs(60));
        assert!(!cuts.sending_is_cut(Link::Arbiter));
        assert!(
            cuts.wait_to_receive(Link::Arbiter, Some(Duration::from_millis(10)))
                .is_err()
        );
        // A later cut of the same link replaces it.
        let later = cuts.cut(Link::Arbiter, Direction::Both, Duration::from_secs(60));
        assert!(cuts.ends(Link::Arbiter, number).is_none());
        assert!(!cuts.ended_by_time(Link::Arbiter, number));
        assert!(cuts.sending_is_cut(Link::Arbiter));
        assert!(!cuts.mend(Some(Link::Members)) && cuts.ends(Link::Arbiter, later).is_some());
        assert!(cuts.mend(None));
        assert!(cuts.ends(Link::Arbiter, later).is_none());
        assert!(!cuts.ended_by_time(Link::Arbiter, later));
        cuts.wait_to_connect(Link::Arbiter, Duration::ZERO).unwrap();
        assert!(!cuts.any());

        // A connection ended while sending is cut stays open until the cut ends.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut far = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (near, _) = listener.accept().unwrap();
        far.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let number = cuts.cut(Link::Members, Direction::Out, Duration::from_secs(60));
        cuts.hold_end(Link::Members, &near);
        cuts.hold_end(Link::Members, &near.try_clone().unwrap());
        drop(near);
        let mut byte = [0u8; 1];
        let silent = far.read(&mut byte).unwrap_err();
        assert_eq!(silent.kind(), io::ErrorKind::WouldBlock, "{silent}");
        assert!(cuts.mend(Some(Link::Members)));
        assert!(cuts.ends(Link::Members, number).is_none());
        far.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(
            far.read(&mut byte).unwrap(),
            0,
            "the end arrives once mended"
        );

        // A thread's conversation with its own agent passes any cut.
        cuts.cut(Link::Members, Direction::Both, Duration::from_secs(60));
        unchecked(|| {
            cuts.wait_to_receive(Link::Members, Some(Duration::ZERO))
                .unwrap();
            assert!(!cuts.sending_is_cut(Link::Members));
        });
        assert!(cuts.sending_is_cut(Link::Members));
    }
}
