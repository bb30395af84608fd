//! The superserver port: every member listens; the primary serves journal to its members.
//!
//! One thread accepts connections; each connection gets a thread that reads its first message:
//!
//! - `Hello` (a backup or async wants the journal): on the primary, the member is registered with
//!   the hub, sent what it lacks from the journal files, then every live batch; a second thread
//!   reads its acknowledgements and reports (mode, stand-down, No Failover). Anywhere else:
//!   refused with a reason. A member from an older epoch is first told where its history forks
//!   from this primary's (its divergent tail): the member core decides what a member keeps
//!   ([`super::core::hello`]).
//! - `Fetch` (older records for a Catchup): streamed from the journal files, if still kept.
//! - `Copy` (Copy from Primary): a consistent copy of a mirrored database's file
//!   ([`super::copy`]).
//! - `Info` (the local agent, for a joining member): a description of the mirror.
//!
//! # SSL/TLS
//!
//! A connection that starts with a TLS handshake is accepted as TLS, and the client's
//! certificate fingerprint comes with it. In a mirror that requires SSL/TLS, journal (`Hello`,
//! `Fetch`) goes only over TLS and only to members whose certificate the mirror lists; a
//! certificate the primary does not know yet is recorded in Pending New Members, under the name
//! it gives and with the address it came from, and refused as awaiting authorization (a flag
//! of `Control::Refused`, so the member keeps asking and a joining member keeps its
//! configuration) until someone authorizes exactly that name and certificate (the rules of that list, its
//! bounds and expiry, are in [`super::pending`]). Plain `Info` is still answered to this host
//! (the local agent's probes and questions arrive that way), to others only over TLS.
//!
//! Sockets are blocking with timeouts: a member that stops reading is dropped after the QoS
//! timeout instead of stalling the primary. The listener and its connections come from the
//! member's network ([`crate::transport`]): TCP, or a test's in-process network.
//!
//! # Strangers on the port
//!
//! Anyone who reaches the port can open connections, and each one costs a thread until it
//! ends. Two rules keep strangers from keeping the mirror's own members out (a restarted backup
//! once stayed disconnected for as long as 64 connections trickled half a message):
//!
//! - a connection must deliver its first message — TLS handshake included — within
//!   [`SUPERSERVER_FIRST_MESSAGE`] in all, not per read, so trickling a byte now and then does
//!   not keep it open;
//! - the accept loop takes a slot by source address ([`ConnectionSlots::try_take_from`]): the
//!   addresses the configured members' superserver, mirror private and agent addresses resolve
//!   to, and this host's own, may use every slot; other addresses share at most
//!   [`SUPERSERVER_STRANGER_CONNECTIONS`], a few each. The members' addresses are resolved by a
//!   thread of their own every [`MEMBER_ADDRESSES_REFRESH`], so the accept loop never waits on
//!   a name server.

use std::io::{BufReader, BufWriter, Read, Write};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::journal::{Epoch, JournalPos, JournalShared, StreamId};
use crate::lab::cuts;
use crate::limits::{
    ConnectionSlots, SUPERSERVER_CONNECTIONS, SUPERSERVER_CONNECTIONS_PER_STRANGER,
    SUPERSERVER_FIRST_MESSAGE, SUPERSERVER_STRANGER_CONNECTIONS,
};
use crate::tls::Channel;
use crate::transport::{Connection, Incoming, Listener};
use crate::util::now_ms;

use super::MirrorContext;
use super::core::hello::{AtHello, Cut, Hello, at_hello};
use super::hub::Hub;
use super::pending::{self, Heard};
use super::protocol::{Control, Message, read_message, write_control, write_frames};
use super::state::Role;
use crate::config::mirror::{MemberInfo, MemberKind, MemberName};

/// Why the primary turns a member away at its hello: said on the wire as `Control::Refused`,
/// whose flag tells a member that waits (and keeps asking) from one refused.
#[derive(Debug)]
enum Refusal {
    /// It waits in Pending New Members until someone authorizes it here.
    AwaitingAuthorization(String),
    /// It may not follow this primary as it asked; the reason, for people.
    Refused(String),
}

impl From<Error> for Refusal {
    fn from(err: Error) -> Refusal {
        Refusal::Refused(err.to_string())
    }
}

fn refused(reason: String) -> Refusal {
    Refusal::Refused(reason)
}

/// Frames per message when sending from the journal files.
const BACKLOG_CHUNK_BYTES: usize = 1 << 20;

/// How often the members' addresses are resolved again (a member that came back with a new
/// address is recognised by then; until then it shares the strangers' slots).
pub const MEMBER_ADDRESSES_REFRESH: Duration = Duration::from_secs(2);

/// How long a connection may wait for its next bytes once its first message has arrived.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts accepting on `listener`; stops when `stop` is set (and a connection wakes it).
pub fn start(
    listener: Listener,
    context: Arc<MirrorContext>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    let members = MemberAddresses::start(context.clone(), stop.clone());
    std::thread::Builder::new()
        .name("superserver".into())
        .spawn(move || {
            let slots = ConnectionSlots::keeping_room(
                "superserver",
                SUPERSERVER_CONNECTIONS,
                SUPERSERVER_STRANGER_CONNECTIONS,
                SUPERSERVER_CONNECTIONS_PER_STRANGER,
            );
            loop {
                let incoming = listener.accept();
                if stop.load(Ordering::Acquire) {
                    break;
                }
                let incoming = match incoming {
                    Ok(incoming) => incoming,
                    // Nobody can connect any more (an in-process network's listener).
                    Err(err) if err.kind() == std::io::ErrorKind::NotConnected => break,
                    Err(_) => continue,
                };
                let (peer, local) = (incoming.peer, incoming.local);
                // This host's own address on both ends is the local agent's probes and
                // questions (a Confirm Down that finds no slot would take the instance for hung).
                // Not loopback as a whole: any local process may pick another loopback source
                // address, and it is no more a member for that (the tests play strangers from
                // 127.0.0.2).
                let known = peer.ip() == local.ip() || members.contain(peer.ip());
                // Full: the connection is closed (dropped) before a thread is spent on it.
                let Some(slot) = slots.try_take_from(peer.ip(), known) else {
                    continue;
                };
                let context = context.clone();
                let _ = std::thread::Builder::new()
                    .name("mirror-link".into())
                    .spawn(move || {
                        let _slot = slot;
                        if let Err(err) = serve(incoming, &context) {
                            tracing::debug!("superserver connection from {peer} ended: {err}");
                        }
                    });
            }
        })
        .expect("spawn the superserver thread")
}

/// The IP addresses of the mirror's members (this one included), as their configured
/// addresses last resolved.
struct MemberAddresses(RwLock<Vec<IpAddr>>);

impl MemberAddresses {
    /// Resolves now, then again every [`MEMBER_ADDRESSES_REFRESH`] on a thread of its own
    /// until `stop`.
    fn start(context: Arc<MirrorContext>, stop: Arc<AtomicBool>) -> Arc<MemberAddresses> {
        let resolve = move || -> Vec<IpAddr> {
            let config = context.config.get();
            let Some(m) = config.mirror.membership.as_ref() else {
                return Vec::new();
            };
            std::iter::once(&m.this)
                .chain(&m.others)
                .flat_map(|member| member.addresses())
                .collect()
        };
        let members = Arc::new(MemberAddresses(RwLock::new(resolve())));
        let refreshed = members.clone();
        let _ = std::thread::Builder::new()
            .name("superserver-members".into())
            .spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    std::thread::sleep(MEMBER_ADDRESSES_REFRESH);
                    let addresses = resolve();
                    *refreshed.0.write().unwrap() = addresses;
                }
            });
        members
    }

    fn contain(&self, ip: IpAddr) -> bool {
        self.0.read().unwrap().contains(&ip.to_canonical())
    }
}

/// Reads through `reader` (whose socket `channel` is) until `deadline`, however the bytes
/// trickle in: before every read the socket's timeout is set to what is left. A read timeout
/// alone restarts with each byte, so a peer sending one byte now and then would never time out.
struct UntilDeadline<'a> {
    channel: &'a Channel,
    reader: &'a mut BufReader<Channel>,
    deadline: Instant,
}

impl Read for UntilDeadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "no complete first message within {} s",
                    SUPERSERVER_FIRST_MESSAGE.as_secs()
                ),
            ));
        }
        self.channel.set_read_timeout(Some(left))?;
        self.reader.read(buf)
    }
}

/// Takes TLS when the connection starts with a handshake; returns the connection and the
/// client's certificate fingerprint (None: plain). The handshake must be over by `deadline`.
fn open(
    connection: Connection,
    context: &MirrorContext,
    deadline: Instant,
) -> Result<(Channel, Option<String>)> {
    // Only a TCP connection may carry TLS (see `crate::transport`).
    let Connection::Tcp(tcp) = connection else {
        return Ok((connection.plain(), None));
    };
    tcp.set_nodelay(true)?;
    let left = || deadline.saturating_duration_since(Instant::now());
    tcp.set_read_timeout(Some(left().max(Duration::from_millis(1))))?;
    let mut first = [0u8; 1];
    if tcp.peek(&mut first)? == 1 && crate::tls::is_tls_start(first[0]) {
        let (channel, peer) = crate::tls::accept_blocking(tcp, &context.identity, left())?;
        return Ok((channel, Some(peer)));
    }
    Ok((Channel::Plain(tcp), None))
}

fn serve(incoming: Incoming, context: &Arc<MirrorContext>) -> Result<()> {
    // The clock for the first message starts at once (see the module's essay).
    let deadline = Instant::now() + SUPERSERVER_FIRST_MESSAGE;
    // Loopback, or this host's own address on both ends (an agent bound to a LAN address).
    let from_this_host =
        incoming.peer.ip().is_loopback() || incoming.peer.ip() == incoming.local.ip();
    let peer_ip = Some(incoming.peer.ip());
    let (stream, peer) = open(incoming.connection, context, deadline)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = BufWriter::new(stream.try_clone()?);
    // The first message says who calls: this member's own agent (Info) or another member. It
    // is read past the Lab's cuts, which stop only the other members (see `crate::lab::cuts`).
    let first = cuts::unchecked(|| {
        read_message(&mut UntilDeadline {
            channel: &stream,
            reader: &mut reader,
            deadline,
        })
    });
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    let first = match first? {
        Some(Message::Control(control)) => *control,
        Some(_) => {
            return Err(Error::InvalidInput(
                "a conversation must start with a control message".into(),
            ));
        }
        None => return Ok(()),
    };
    let refuse_as = |writer: &mut BufWriter<Channel>,
                     reason: String,
                     awaiting_authorization: bool|
     -> Result<()> {
        write_control(
            writer,
            &Control::Refused {
                reason,
                awaiting_authorization,
            },
        )?;
        writer.flush()?;
        Ok(())
    };
    let refuse = |writer: &mut BufWriter<Channel>, reason: String| refuse_as(writer, reason, false);
    if !matches!(first, Control::Info { .. }) {
        // Another member: while the Lab cuts the link to the members, the conversation is as
        // good as never begun.
        let left = deadline.saturating_duration_since(Instant::now());
        cuts::global().wait_to_connect(cuts::Link::Members, left)?;
    }
    match first {
        Control::Info { mirror_name } => cuts::unchecked(|| match context.describe() {
            // The member list, addresses and fingerprints go in plain only to this host's own
            // agent; anyone else asks over TLS.
            Some(description)
                if description.mirror.require_tls && peer.is_none() && !from_this_host =>
            {
                refuse(
                    &mut writer,
                    format!(
                        "mirror {} requires SSL/TLS: connect over TLS",
                        description.mirror.name
                    ),
                )
            }
            Some(description) if description.mirror.name == mirror_name => {
                write_control(&mut writer, &Control::InfoReply { description })?;
                writer.flush()?;
                Ok(())
            }
            Some(description) => refuse(
                &mut writer,
                format!(
                    "this instance belongs to mirror {}, not {mirror_name}",
                    description.mirror.name
                ),
            ),
            None => refuse(
                &mut writer,
                "this instance is not a member of a mirror".into(),
            ),
        }),
        Control::Fetch {
            mirror_id,
            from,
            to,
        } => match fetch_source(context, mirror_id, peer.as_deref()) {
            Ok(journal) => serve_fetch(
                &mut writer,
                &journal,
                from,
                // Only what the primary committed: a copy never gets ahead of the mirror.
                to.min(context.mirror.hub.committed_end()),
            ),
            Err(err) => refuse(&mut writer, err.to_string()),
        },
        Control::Copy {
            mirror_id,
            database,
            snapshot,
            offset,
            max_bytes_per_s,
        } => {
            let allowed =
                check_member_request(context, mirror_id, peer.as_deref()).and_then(|()| {
                    let db = crate::names::DbName::new(&database)?;
                    let config = context.config.get();
                    let mirrored = config
                        .mirror
                        .member()?
                        .databases
                        .iter()
                        .any(|d| d.name == db);
                    if !mirrored {
                        return Err(Error::NotFound(format!("{db} is not a mirrored database")));
                    }
                    Ok(db)
                });
            match allowed {
                // A copy is long: the member reads it at its pace, so the write timeout is
                // the usual read timeout, not the QoS.
                Ok(db) => {
                    stream.set_write_timeout(Some(READ_TIMEOUT))?;
                    let served = super::copy::serve(
                        &mut writer,
                        context,
                        &db,
                        snapshot.as_deref(),
                        offset,
                        max_bytes_per_s,
                    );
                    match served {
                        Err(err @ (Error::Conflict(_) | Error::NotFound(_))) => {
                            refuse(&mut writer, err.to_string())
                        }
                        other => other,
                    }
                }
                Err(err) => refuse(&mut writer, err.to_string()),
            }
        }
        Control::Hello {
            mirror_name,
            mirror_id,
            member,
            journal_first,
            journal_end,
            last_epoch,
        } => {
            // A member without a mirror journal starts at the current end; the database copies
            // it receives carry the rest (and Catchup fetches what a copy lacks).
            let fresh = journal_first == JournalPos(0);
            let accepted = accept_member(
                context,
                peer.as_deref(),
                peer_ip,
                &mirror_name,
                mirror_id,
                &member,
                journal_end,
                last_epoch,
                fresh,
            );
            match accepted {
                Ok((journal, member, cut, from)) => {
                    serve_member(stream, reader, writer, context, journal, member, cut, from)
                }
                Err(Refusal::AwaitingAuthorization(reason)) => refuse_as(&mut writer, reason, true),
                Err(Refusal::Refused(reason)) => refuse(&mut writer, reason),
            }
        }
        other => refuse(&mut writer, format!("unexpected first message {other:?}")),
    }
}

fn fetch_source(
    context: &MirrorContext,
    mirror_id: StreamId,
    peer: Option<&str>,
) -> Result<Arc<JournalShared>> {
    check_member_request(context, mirror_id, peer)?;
    context
        .mirror
        .journal()
        .ok_or_else(|| Error::Conflict("no mirror journal".into()))
}

/// What a member may fetch (older journal, a database copy) only this primary serves, only for
/// its own mirror, and with Require SSL/TLS only over TLS to a member's certificate.
fn check_member_request(
    context: &MirrorContext,
    mirror_id: StreamId,
    peer: Option<&str>,
) -> Result<()> {
    let config = context.config.get();
    let membership = config.mirror.member()?;
    if membership.mirror.id != mirror_id {
        return Err(Error::Conflict(
            "this member belongs to another mirror".into(),
        ));
    }
    if membership.mirror.require_tls && !peer.is_some_and(|p| membership.authorized(p)) {
        return Err(Error::Conflict(format!(
            "mirror {} requires SSL/TLS: journal and database copies go only to its members' certificates",
            membership.mirror.name
        )));
    }
    if context.mirror.role() != Role::Primary {
        return Err(Error::Conflict(
            "older journal records and database copies are fetched from the primary".into(),
        ));
    }
    Ok(())
}

fn serve_fetch(
    writer: &mut BufWriter<Channel>,
    journal: &JournalShared,
    from: JournalPos,
    to: JournalPos,
) -> Result<()> {
    if from < journal.first_pos() {
        write_control(
            writer,
            &Control::Refused {
                awaiting_authorization: false,
                reason: format!(
                    "the primary's oldest mirror journal record is {}; records from {from} are no longer kept",
                    journal.first_pos()
                ),
            },
        )?;
        writer.flush()?;
        return Ok(());
    }
    let to = to.min(journal.durable_end());
    send_range(writer, journal, JournalPos(from.0 - 1), to)?;
    write_control(writer, &Control::FetchDone)?;
    writer.flush()?;
    Ok(())
}

/// What a member that connected is sent before the hub's outbox opens: the records it lacks up
/// to the hub's snapshot (`after+1..=snapshot`: everything later waits in the outbox), from
/// the journal files, then what it may apply — only what the primary committed (see
/// `Hub::committed`). The simulation sends a connecting backup the same bytes.
pub(crate) fn catch_up(
    writer: &mut impl Write,
    journal: &JournalShared,
    after: JournalPos,
    snapshot: JournalPos,
    committed: JournalPos,
) -> Result<()> {
    send_range(writer, journal, after, snapshot)?;
    write_control(writer, &Control::Durable { pos: committed })
}

/// Sends records `after+1..=until` from the journal files in chunks.
fn send_range(
    writer: &mut impl Write,
    journal: &JournalShared,
    after: JournalPos,
    until: JournalPos,
) -> Result<()> {
    let mut buf = Vec::with_capacity(BACKLOG_CHUNK_BYTES);
    let mut first = None;
    let mut last = after;
    for record in journal.read_range(after, until) {
        let record = record?;
        first.get_or_insert(record.pos);
        last = record.pos;
        record.encode_into(&mut buf);
        if buf.len() >= BACKLOG_CHUNK_BYTES {
            write_frames(writer, first.take().unwrap(), last, &buf)?;
            buf.clear();
        }
    }
    if let Some(first) = first {
        write_frames(writer, first, last, &buf)?;
    }
    Ok(())
}

/// Decides whether a member may receive the journal, and from where.
#[allow(clippy::too_many_arguments)]
fn accept_member(
    context: &MirrorContext,
    peer: Option<&str>,
    peer_ip: Option<std::net::IpAddr>,
    mirror_name: &str,
    mirror_id: StreamId,
    member: &MemberInfo,
    member_end: JournalPos,
    member_last_epoch: Epoch,
    fresh: bool,
) -> std::result::Result<(Arc<JournalShared>, MemberInfo, Option<Cut>, JournalPos), Refusal> {
    let config = context.config.get();
    let membership = config
        .mirror
        .membership
        .as_ref()
        .ok_or_else(|| Error::Conflict("this instance is not a member of a mirror".into()))?;
    if membership.mirror.name != mirror_name || membership.mirror.id != mirror_id {
        return Err(refused(format!(
            "this member belongs to mirror {}, not {mirror_name}",
            membership.mirror.name
        )));
    }
    if context.mirror.role() != Role::Primary {
        let primary = membership
            .primary_name
            .clone()
            .map_or_else(|| "unknown".into(), |p| p.to_string());
        return Err(refused(format!(
            "this member is not the primary (the primary is {primary})"
        )));
    }
    if member.name == membership.this.name {
        return Err(refused(format!(
            "{} is this member's own name",
            member.name
        )));
    }
    let known = membership.others.iter().find(|o| o.name == member.name);
    if membership.mirror.require_tls {
        authorize_peer(context, membership, member, peer, peer_ip)?;
    } else if let Some(known) = known {
        // Without TLS nothing proves who says hello; a configured member must at least come
        // from one of its own addresses, or anyone could replace it (see the README).
        let from_known = peer_ip.is_some_and(|ip| known.has_address(ip));
        if !from_known {
            return Err(refused(format!(
                "a hello for {} came from {}, which is none of its configured addresses \
                 ({}, {}, {}): refused",
                member.name,
                peer_ip
                    .map(|ip| ip.to_string())
                    .unwrap_or_else(|| "an unknown address".into()),
                known.superserver_address,
                known.mirror_private_address,
                known.agent_address
            )));
        }
    }
    if member.kind == MemberKind::Failover
        && membership
            .others
            .iter()
            .any(|o| o.kind == MemberKind::Failover && o.name != member.name)
    {
        return Err(refused(
            "the mirror already has two failover members".into(),
        ));
    }
    if member.kind != MemberKind::Failover
        && !membership.others.iter().any(|o| o.name == member.name)
        && membership
            .others
            .iter()
            .filter(|o| o.kind != MemberKind::Failover)
            .count()
            >= super::service::MAX_ASYNC_MEMBERS
    {
        return Err(refused(format!(
            "the mirror already has {} async members",
            super::service::MAX_ASYNC_MEMBERS
        )));
    }
    let journal = context
        .mirror
        .journal()
        .ok_or_else(|| Error::Conflict("the primary has no mirror journal".into()))?;
    // What of its journal the member keeps: the member core's decision (see `core::hello`).
    let hello = Hello {
        end: member_end,
        last_epoch: member_last_epoch,
        fresh,
    };
    let AtHello { cut, from } = at_hello(
        &membership.epochs,
        config.epoch,
        journal.durable_end(),
        hello,
    )
    .map_err(|newer| {
        refused(format!(
            "{} holds records of epoch {}, newer than this member's epoch {}: another member \
             took over since, and this one is no longer the primary",
            member.name, newer.member, newer.primary
        ))
    })?;
    if from < journal.first_pos() {
        return Err(refused(format!(
            "this member's mirror journal ends at {} but the primary keeps records from {} only: \
             the member must be rebuilt (remove its mirror configuration and join again)",
            from.0 - 1,
            journal.first_pos()
        )));
    }
    // Remember the member. Without TLS a member registers itself by joining; with TLS it got
    // here only as a member someone authorized, with the certificate it shows.
    let changed = context.config.update(|c| {
        let Some(m) = c.mirror.membership.as_mut() else {
            return Ok(false);
        };
        Ok(match m.others.iter_mut().find(|o| o.name == member.name) {
            // Its kind (after Demote or Promote) and certificate may change; its addresses
            // only through Edit Mirror (Remove Other Mirror Member and Join again).
            Some(known) if member.keeping_addresses_of(known) == *known => false,
            Some(known) => {
                *known = member.keeping_addresses_of(known);
                true
            }
            None => {
                m.others.push(member.clone());
                true
            }
        })
    })?;
    // The other connected members learn the new member list (a DR promoted later must know
    // that the backup was demoted, for instance).
    if changed && let Some(description) = context.describe() {
        context
            .mirror
            .hub
            .announce(Control::MirrorChanged { description });
    }
    // The member as configured (its addresses are not the hello's to change).
    let member = context
        .config
        .get()
        .mirror
        .membership
        .as_ref()
        .and_then(|m| m.others.iter().find(|o| o.name == member.name).cloned())
        .unwrap_or_else(|| member.clone());
    Ok((journal, member, cut, from))
}

/// In a mirror that requires SSL/TLS: a member may receive journal only over TLS, showing the
/// certificate the mirror lists for it. A configured member is judged by that alone — Pending
/// New Members, full or not, never stands in its way; one that shows another certificate is
/// refused. Any other name waits in Pending New Members (see [`super::pending`]), unless its
/// certificate was rejected or the list has no place for it.
fn authorize_peer(
    context: &MirrorContext,
    membership: &crate::config::mirror::Membership,
    member: &MemberInfo,
    peer: Option<&str>,
    peer_ip: Option<IpAddr>,
) -> std::result::Result<(), Refusal> {
    let Some(peer) = peer else {
        return Err(refused(format!(
            "mirror {} requires SSL/TLS: connect over TLS",
            membership.mirror.name
        )));
    };
    if member.certificate.as_deref() != Some(peer) {
        return Err(refused(format!(
            "{} names a certificate other than the one it shows",
            member.name
        )));
    }
    match membership.others.iter().find(|o| o.name == member.name) {
        Some(known) if known.certificate.as_deref() == Some(peer) => return Ok(()),
        Some(_) => {
            return Err(refused(format!(
                "{} shows a certificate that is not the one authorized for it",
                member.name
            )));
        }
        None => {}
    }
    let heard = context.config.update(|c| {
        let m = c.mirror.member_mut()?;
        pending::hear(&mut m.pending, member, peer_ip, now_ms())
    })?;
    Err(match heard {
        Heard::Rejected => refused(format!(
            "the primary rejected {}'s certificate {peer}: ask its administrator to authorize it",
            member.name
        )),
        Heard::Listed | Heard::Waiting => {
            if heard == Heard::Listed {
                tracing::warn!(
                    "mirror: {} asks to join with certificate {peer} from {}; it waits in \
                     Pending New Members",
                    member.name,
                    peer_ip.map(|ip| ip.to_string()).unwrap_or_default()
                );
            }
            Refusal::AwaitingAuthorization(format!(
                "{} is awaiting authorization on the primary: there, Edit Mirror → Pending New \
                 Members → Authorize (certificate {peer})",
                member.name
            ))
        }
    })
}

#[allow(clippy::too_many_arguments)]
fn serve_member(
    stream: Channel,
    mut reader: BufReader<Channel>,
    mut writer: BufWriter<Channel>,
    context: &Arc<MirrorContext>,
    journal: Arc<JournalShared>,
    member: MemberInfo,
    cut: Option<Cut>,
    from: JournalPos,
) -> Result<()> {
    let hub = &context.mirror.hub;
    let qos = hub.qos();
    let (id, outbox, snapshot) = match hub.register(member.clone()) {
        Ok(registered) => registered,
        Err(err) => {
            write_control(
                &mut writer,
                &Control::Refused {
                    reason: err.to_string(),
                    awaiting_authorization: false,
                },
            )?;
            writer.flush()?;
            return Ok(());
        }
    };
    tracing::info!(
        "mirror: {} connected; sending journal from position {from}",
        member.name
    );
    let description = context
        .describe()
        .ok_or_else(|| Error::Internal("mirror vanished".into()))?;
    let result = (|| -> Result<()> {
        write_control(
            &mut writer,
            &Control::Welcome {
                description,
                truncate_after: cut.map(|c| c.after),
                divergent: cut.is_some_and(|c| c.divergent),
                from,
            },
        )?;
        writer.flush()?;
        // Acknowledgements come back on the same connection, read by their own thread.
        stream.set_read_timeout(Some(qos.max(Duration::from_secs(2)) * 3))?;
        stream.set_write_timeout(Some(qos.max(Duration::from_secs(2))))?;
        let acks = {
            let context = context.clone();
            let stream = stream.try_clone()?;
            std::thread::Builder::new()
                .name("mirror-acks".into())
                .spawn(move || {
                    let why = read_acks(&mut reader, &context, id);
                    context.mirror.hub.unregister(id, &why);
                    stream.close();
                })?
        };
        catch_up(
            &mut writer,
            &journal,
            JournalPos(from.0 - 1),
            snapshot,
            hub.committed_end(),
        )?;
        writer.flush()?;
        let heartbeat = (qos / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        // From here on the writer usually sends batches itself; this thread writes what it
        // leaves behind (a full socket buffer), and the heartbeats.
        let mut socket = writer
            .into_inner()
            .map_err(|e| Error::from(e.into_error()))?;
        outbox.open_direct(socket.try_clone()?);
        outbox.serve(&mut socket, heartbeat, || Control::Heartbeat {
            durable: context.mirror.hub.committed_end(),
            time_ms: now_ms(),
        })?;
        stream.close();
        let _ = acks.join();
        Ok(())
    })();
    if let Err(err) = &result {
        hub.unregister(id, &err.to_string());
        stream.close();
    }
    result
}

/// Reads a member's acknowledgements and reports until the connection ends; returns why.
fn read_acks(reader: &mut BufReader<Channel>, context: &MirrorContext, id: u64) -> String {
    let hub = &context.mirror.hub;
    loop {
        let message = match read_message(reader) {
            Ok(message) => message,
            Err(err) => return format!("connection lost: {err}"),
        };
        match hear_member(hub, id, message) {
            MemberSaid::Handled => {}
            // The backup asked: the primary's setting is the mirror's, and every member hears
            // it back.
            MemberSaid::NoFailover(defined_primary) => {
                if super::service::store_no_failover(context, defined_primary.clone()).is_ok() {
                    hub.announce(Control::NoFailover { defined_primary })
                }
            }
            MemberSaid::Ended(why) => return why,
        }
    }
}

/// What the primary does with one message a connected member sent on the data channel.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum MemberSaid {
    /// The hub took it (an acknowledgement, a report, a stand-down) or it means nothing here.
    Handled,
    /// The member asks for No Failover with this defined primary (or for it to end): the
    /// caller stores it and tells every member.
    NoFailover(Option<MemberName>),
    /// The connection ends, for this reason.
    Ended(String),
}

/// Hands one message of link `id` (`None`: the member closed the connection) to the hub — the
/// primary's side of the data channel apart from the socket, so the simulation's backups
/// speak to their primary's hub through it.
pub(crate) fn hear_member(hub: &Hub, id: u64, message: Option<Message>) -> MemberSaid {
    match message {
        Some(Message::Ack(pos)) => hub.on_ack(id, pos),
        Some(Message::Control(control)) => match *control {
            Control::Status { dejournaling } => hub.on_status(id, dejournaling),
            Control::FailoverMode { arbiter } => hub.on_partner_mode(id, arbiter),
            Control::StoodDown => hub.on_stood_down(id),
            Control::NoFailover { defined_primary } => {
                return MemberSaid::NoFailover(defined_primary);
            }
            _ => {}
        },
        Some(Message::Frames { .. } | Message::Chunk { .. }) => {
            return MemberSaid::Ended("the member sent journal frames or copy bytes".into());
        }
        None => return MemberSaid::Ended("the member closed the connection".into()),
    }
    MemberSaid::Handled
}
