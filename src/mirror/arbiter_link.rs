//! A failover member's connection to the arbiter.
//!
//! One thread keeps the connection while this member is a failover member of a mirror with an
//! arbiter and knows its role (primary or backup): it says hello with its role and epoch, pings
//! every quarter of the QoS timeout, passes on what the failover driver wants said (the
//! primary's mode, the questions of the failover rules), and turns what the arbiter says into
//! failover events (`ArbiterConnected`, `ArbiterSeesPartner`, `ArbiterVerdict`, `ArbiterLost`,
//! and `PartnerIsPrimary` for a former primary). When the role changes it reconnects, so the
//! arbiter always knows who is primary. A reader thread per connection reads the arbiter's
//! messages; a connection silent for a QoS timeout counts as lost.
//!
//! What the driver wants comes on the link's own channel ([`ArbiterInput`]), read in order.
//! The thread keeps what must outlive a connection ([`Asked`]): the mode the arbiter booked
//! for the primary (said in every hello) and a backup's stand-down until a connection carries
//! it. What was to be *said* on a connection that ended is forgotten: a new connection starts
//! by reading the channel, dropping what it asked to say and keeping the rest.

use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::arbiter::{FromArbiter, ToArbiter};
use crate::error::{Error, Result};
use crate::lab::cuts::{self, Gated, Link};
use crate::wire::{MAX_AGENT_FRAME, read_frame_sync, write_frame_sync};

use super::MirrorContext;
use super::failover::Event;
use super::state::{ArbiterInput, DriverInput, Role};
use crate::config::mirror::{DEFAULT_AGENT_PORT, MemberKind, connect_address};

/// What the driver asked of the arbiter link: its channel, and what outlives a connection
/// (see the module essay).
#[derive(Debug)]
struct Asked {
    inbox: mpsc::Receiver<ArbiterInput>,
    /// The primary's failover mode is arbiter controlled, booked with this activation of the
    /// backup: said in every hello.
    booked: Option<u64>,
    /// A backup's stand-down (naming the activation it ends) that no connection carried yet.
    stand_down: Option<u64>,
}

impl Asked {
    fn new(inbox: mpsc::Receiver<ArbiterInput>) -> Asked {
        Asked {
            inbox,
            booked: None,
            stand_down: None,
        }
    }

    /// Takes what waits on the channel, in order: what is to be said joins `say`.
    fn take(&mut self, say: &mut Vec<ToArbiter>) {
        for input in self.inbox.try_iter() {
            match input {
                ArbiterInput::Say(message) => say.push(message),
                ArbiterInput::Booked(booked) => self.booked = booked,
                ArbiterInput::StandDown(activation) => self.stand_down = Some(activation),
                ArbiterInput::FreshRules { backup } => {
                    self.booked = None;
                    self.stand_down = backup.then_some(0);
                }
            }
        }
    }
}

/// Starts the arbiter link thread; it stops when `stop` is set.
pub fn start(context: Arc<MirrorContext>, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    let inbox = context
        .mirror
        .take_arbiter_inbox()
        .expect("one arbiter link per member");
    std::thread::Builder::new()
        .name("arbiter-link".into())
        .spawn(move || {
            let mut last_error = String::new();
            let mut asked = Asked::new(inbox);
            while !stop.load(Ordering::Acquire) {
                let Some((address, qos, primary)) = target(&context) else {
                    pause(&stop, Duration::from_millis(100));
                    continue;
                };
                match connection(&context, &stop, &address, qos, primary, &mut asked) {
                    Ok(()) => {}
                    Err(err) => {
                        let err = err.to_string();
                        if err != last_error {
                            tracing::warn!("mirror: arbiter at {address}: {err}");
                            last_error = err;
                        }
                    }
                }
                // Published before the event is queued, so the driver, which reads the status
                // after the events, never sees an event newer than the status (this thread
                // alone writes the arbiter's part of it).
                let was_connected = context.mirror.read(|s| s.arbiter.connected);
                context.mirror.publish(|s| s.arbiter = Default::default());
                if was_connected {
                    context
                        .mirror
                        .tell_driver(DriverInput::Arbiter(Event::ArbiterLost));
                }
                pause(&stop, Duration::from_millis(500));
            }
        })
        .expect("spawn the arbiter link")
}

fn pause(stop: &AtomicBool, how_long: Duration) {
    let until = Instant::now() + how_long;
    while !stop.load(Ordering::Acquire) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The arbiter's address, the QoS timeout and this member's role, when it should be connected.
fn target(context: &MirrorContext) -> Option<(String, Duration, bool)> {
    let config = context.config.get();
    let m = config.mirror.membership.as_ref()?;
    if !m.mirror.use_arbiter || m.this.kind != MemberKind::Failover || context.mirror.deciding() {
        return None;
    }
    let primary = match context.mirror.role() {
        Role::Primary => true,
        Role::Backup => false,
        _ => return None,
    };
    let address = connect_address(
        &format!("{}:{}", m.mirror.arbiter_address, m.mirror.arbiter_port),
        DEFAULT_AGENT_PORT,
    )
    .ok()?;
    Some((
        address,
        Duration::from_millis(m.mirror.qos_timeout_ms),
        primary,
    ))
}

fn connect(address: &str) -> Result<TcpStream> {
    // While the Lab cuts the link to the arbiter, no connection to it is made.
    cuts::global().wait_to_connect(Link::Arbiter, Duration::from_secs(1))?;
    let mut last = Error::Unavailable(format!("{address} did not resolve"));
    for addr in address
        .to_socket_addrs()
        .map_err(|e| Error::Unavailable(format!("{e}")))?
    {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Ok(stream) => return Ok(stream),
            Err(err) => last = Error::Unavailable(err.to_string()),
        }
    }
    Err(last)
}

/// One connection's life.
fn connection(
    context: &MirrorContext,
    stop: &AtomicBool,
    address: &str,
    qos: Duration,
    primary: bool,
    asked: &mut Asked,
) -> Result<()> {
    let stream = connect(address)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(qos))?;
    stream.set_write_timeout(Some(qos))?;
    let config = context.config.get();
    let m = config.mirror.member()?;
    // Both halves pass the Lab's cuts of the link (see `crate::lab::cuts`).
    let mut writer = Gated::new(stream.try_clone()?, Link::Arbiter);
    // Forget what was to be said on the old connection, keep the rest, and take the mode the
    // hello must carry (a mode change asked from now on is sent after the hello).
    asked.take(&mut Vec::new());
    let booked = asked.booked.filter(|_| primary);
    write_frame_sync(
        &mut writer,
        &ToArbiter::Hello {
            mirror_id: m.mirror.id,
            mirror_name: m.mirror.name.clone(),
            member: m.this.name.clone(),
            primary,
            epoch: config.epoch,
            qos_ms: qos.as_millis() as u64,
            arbiter_mode: booked.is_some(),
            activation: booked.unwrap_or(0),
        },
    )?;
    let (tx, rx) = mpsc::channel::<Result<FromArbiter>>();
    let mut reader = Gated::new(stream.try_clone()?, Link::Arbiter);
    std::thread::Builder::new()
        .name("arbiter-read".into())
        .spawn(move || {
            loop {
                let message = match read_frame_sync::<_, FromArbiter>(&mut reader, MAX_AGENT_FRAME)
                {
                    Ok(Some(message)) => Ok(message),
                    Ok(None) => Err(Error::Unavailable(
                        "the arbiter closed the connection".into(),
                    )),
                    Err(err) => Err(err),
                };
                let end = message.is_err();
                if tx.send(message).is_err() || end {
                    return;
                }
            }
        })?;
    context.mirror.publish(|s| s.arbiter.connected = true);
    context
        .mirror
        .tell_driver(DriverInput::Arbiter(Event::ArbiterConnected));
    tracing::info!("mirror: connected to the arbiter at {address}");
    let ping_every = (qos / 4).max(Duration::from_millis(25));
    let mut last_ping = Instant::now();
    let result = (|| loop {
        if stop.load(Ordering::Acquire) {
            break Ok(());
        }
        // Reconnect under the new role, so the arbiter knows who is primary now.
        if target(context).map(|t| t.2) != Some(primary) {
            break Ok(());
        }
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(Ok(message)) => {
                if let FromArbiter::SeesPartner { sees } = message {
                    context
                        .mirror
                        .publish(|s| s.arbiter.sees_partner = Some(sees));
                }
                let input = match message {
                    FromArbiter::SeesPartner { sees } => {
                        Some(DriverInput::Arbiter(Event::ArbiterSeesPartner(sees)))
                    }
                    FromArbiter::Verdict { take_over } => {
                        Some(DriverInput::Arbiter(Event::ArbiterVerdict { take_over }))
                    }
                    FromArbiter::BackupTookOver => {
                        Some(DriverInput::Arbiter(Event::PartnerIsPrimary))
                    }
                    FromArbiter::PartnerStoodDown { activation } => {
                        if context.mirror.hub.is_latest_activation(activation) {
                            Some(DriverInput::ArbiterStoodDown { activation })
                        } else {
                            tracing::info!(
                                "mirror: ignored a stand-down relayed by the arbiter: the backup \
                                 was made active again since"
                            );
                            None
                        }
                    }
                    FromArbiter::ModeBooked {
                        arbiter: true,
                        activation,
                    } => {
                        // A booking made with an activation that a newer one overtook would
                        // promise a takeover the arbiter no longer backs: the rules book again.
                        let current = context.mirror.hub.is_latest_activation(activation);
                        Some(DriverInput::Arbiter(Event::ArbiterBookedMode(current)))
                    }
                    FromArbiter::ModeBooked { arbiter: false, .. } => None,
                    FromArbiter::Heartbeat | FromArbiter::Status { .. } => None,
                };
                if let Some(input) = input {
                    context.mirror.tell_driver(input);
                }
            }
            Ok(Err(err)) => break Err(err),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                break Err(Error::Unavailable("the arbiter link ended".into()));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        let mut said = Vec::new();
        asked.take(&mut said);
        // A stand-down goes first: it may cancel a takeover booked for rules that are gone,
        // before these rules ask. (A primary's connection drops one: only a backup stands down.)
        let stand_down = asked.stand_down.take().filter(|_| !primary);
        let outgoing: Vec<ToArbiter> = stand_down
            .map(|activation| ToArbiter::StoodDown { activation })
            .into_iter()
            .chain(said)
            .collect();
        for message in &outgoing {
            if let Err(err) = write_frame_sync(&mut writer, message) {
                // A stand-down must reach the arbiter: the next connection carries it (unless
                // a newer one was asked meanwhile).
                if let ToArbiter::StoodDown { activation } = message {
                    asked.stand_down.get_or_insert(*activation);
                }
                return Err(err);
            }
        }
        if !outgoing.is_empty() {
            last_ping = Instant::now();
        } else if last_ping.elapsed() >= ping_every {
            write_frame_sync(&mut writer, &ToArbiter::Ping)?;
            last_ping = Instant::now();
        }
    })();
    // The reader thread holds a clone of the socket: shut it down so the arbiter sees the end.
    let _ = stream.shutdown(Shutdown::Both);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the driver asks is taken in order: what is to be said goes to the connection, the
    /// booked mode and a stand-down are kept across connections, fresh rules forget the mode
    /// and owe a stand-down naming no activation when they are a backup's.
    #[test]
    fn the_link_keeps_the_booked_mode_and_a_stand_down_and_says_the_rest_in_order() {
        let (tx, inbox) = mpsc::channel();
        let mut asked = Asked::new(inbox);
        tx.send(ArbiterInput::Say(ToArbiter::Ask)).unwrap();
        tx.send(ArbiterInput::Booked(Some(7))).unwrap();
        tx.send(ArbiterInput::StandDown(3)).unwrap();
        tx.send(ArbiterInput::Say(ToArbiter::Ping)).unwrap();
        let mut said = Vec::new();
        asked.take(&mut said);
        assert_eq!(said, [ToArbiter::Ask, ToArbiter::Ping]);
        assert_eq!((asked.booked, asked.stand_down), (Some(7), Some(3)));
        // A new connection drops what was to be said on the old one, and keeps the rest.
        tx.send(ArbiterInput::Say(ToArbiter::Ask)).unwrap();
        asked.take(&mut Vec::new());
        said.clear();
        asked.take(&mut said);
        assert!(said.is_empty());
        assert_eq!((asked.booked, asked.stand_down), (Some(7), Some(3)));
        tx.send(ArbiterInput::FreshRules { backup: true }).unwrap();
        asked.take(&mut said);
        assert_eq!((asked.booked, asked.stand_down), (None, Some(0)));
        tx.send(ArbiterInput::FreshRules { backup: false }).unwrap();
        asked.take(&mut said);
        assert_eq!((asked.booked, asked.stand_down), (None, None));
    }
}
