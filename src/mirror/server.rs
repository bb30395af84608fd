//! The superserver port: every member listens; the primary serves journal to its members.
//!
//! One thread accepts connections; each connection gets a thread that reads its first message:
//!
//! - `Hello` (a backup or async wants the journal): on the primary, the member is registered with
//!   the hub, sent what it lacks from the journal files, then every live batch; a second thread
//!   reads its acknowledgements and reports (mode, stand-down, No Failover). Anywhere else:
//!   refused with a reason. A member from an older epoch is first told where its history forks
//!   from this primary's (its divergent tail).
//! - `Fetch` (older records for a Catchup): streamed from the journal files, if still kept.
//! - `Info` (the local agent, for a joining member): a description of the mirror.
//!
//! Sockets are blocking with timeouts: a member that stops reading is dropped after the QoS
//! timeout instead of stalling the primary.

use std::io::{BufReader, BufWriter, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::journal::{JournalPos, JournalShared};
use crate::limits::{ConnectionSlots, SUPERSERVER_CONNECTIONS};
use crate::util::now_ms;

use super::MirrorContext;
use super::config::{MemberInfo, MemberKind};
use super::hub::Outgoing;
use super::protocol::{Control, Message, read_message, write_control, write_frames};
use super::state::Role;

/// Frames per message when sending from the journal files.
const BACKLOG_CHUNK_BYTES: usize = 1 << 20;

/// Starts accepting on `listener`; stops when `stop` is set (and a connection wakes it).
pub fn start(
    listener: TcpListener,
    context: Arc<MirrorContext>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("superserver".into())
        .spawn(move || {
            let slots = ConnectionSlots::new("superserver", SUPERSERVER_CONNECTIONS);
            for stream in listener.incoming() {
                if stop.load(Ordering::Acquire) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                // Full: the connection is closed (dropped) before a thread is spent on it.
                let Some(slot) = slots.try_take() else {
                    continue;
                };
                let context = context.clone();
                let _ = std::thread::Builder::new()
                    .name("mirror-link".into())
                    .spawn(move || {
                        let _slot = slot;
                        let peer = stream
                            .peer_addr()
                            .map(|a| a.to_string())
                            .unwrap_or_default();
                        if let Err(err) = serve(stream, &context) {
                            tracing::debug!("superserver connection from {peer} ended: {err}");
                        }
                    });
            }
        })
        .expect("spawn the superserver thread")
}

fn serve(stream: TcpStream, context: &Arc<MirrorContext>) -> Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = BufWriter::new(stream.try_clone()?);
    let first = match read_message(&mut reader)? {
        Some(Message::Control(control)) => *control,
        Some(_) => {
            return Err(Error::InvalidInput(
                "a conversation must start with a control message".into(),
            ));
        }
        None => return Ok(()),
    };
    let refuse = |writer: &mut BufWriter<TcpStream>, reason: String| -> Result<()> {
        write_control(writer, &Control::Refused { reason })?;
        writer.flush()?;
        Ok(())
    };
    match first {
        Control::Info { mirror_name } => match context.describe() {
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
        },
        Control::Fetch {
            mirror_id,
            from,
            to,
        } => match fetch_source(context, &mirror_id) {
            Ok(journal) => serve_fetch(&mut writer, &journal, JournalPos(from), JournalPos(to)),
            Err(err) => refuse(&mut writer, err.to_string()),
        },
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
            let fresh = journal_first == 0;
            let accepted = accept_member(
                context,
                &mirror_name,
                &mirror_id,
                &member,
                JournalPos(journal_end),
                last_epoch,
                fresh,
            );
            match accepted {
                Ok((journal, cut, from)) => {
                    serve_member(stream, reader, writer, context, journal, member, cut, from)
                }
                Err(err) => refuse(&mut writer, err.to_string()),
            }
        }
        other => refuse(&mut writer, format!("unexpected first message {other:?}")),
    }
}

fn fetch_source(context: &MirrorContext, mirror_id: &str) -> Result<Arc<JournalShared>> {
    let config = context.config.get();
    let membership = config.mirror.member()?;
    if membership.mirror.id != mirror_id {
        return Err(Error::Conflict(
            "this member belongs to another mirror".into(),
        ));
    }
    if context.mirror.role() != Role::Primary {
        return Err(Error::Conflict(
            "older journal records are fetched from the primary".into(),
        ));
    }
    context
        .mirror
        .journal()
        .ok_or_else(|| Error::Conflict("no mirror journal".into()))
}

fn serve_fetch(
    writer: &mut BufWriter<TcpStream>,
    journal: &JournalShared,
    from: JournalPos,
    to: JournalPos,
) -> Result<()> {
    if from < journal.first_pos() {
        write_control(
            writer,
            &Control::Refused {
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

/// Sends records `after+1..=until` from the journal files in chunks.
fn send_range(
    writer: &mut BufWriter<TcpStream>,
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
fn accept_member(
    context: &MirrorContext,
    mirror_name: &str,
    mirror_id: &str,
    member: &MemberInfo,
    member_end: JournalPos,
    member_last_epoch: u64,
    fresh: bool,
) -> Result<(Arc<JournalShared>, Option<Cut>, JournalPos)> {
    let config = context.config.get();
    let membership = config
        .mirror
        .membership
        .as_ref()
        .ok_or_else(|| Error::Conflict("this instance is not a member of a mirror".into()))?;
    if membership.mirror.name != mirror_name || membership.mirror.id != mirror_id {
        return Err(Error::Conflict(format!(
            "this member belongs to mirror {}, not {mirror_name}",
            membership.mirror.name
        )));
    }
    if context.mirror.role() != Role::Primary {
        let primary = membership
            .primary_name
            .clone()
            .unwrap_or_else(|| "unknown".into());
        return Err(Error::Conflict(format!(
            "this member is not the primary (the primary is {primary})"
        )));
    }
    if member.name == membership.this.name {
        return Err(Error::Conflict(format!(
            "{} is this member's own name",
            member.name
        )));
    }
    if member.kind == MemberKind::Failover
        && membership
            .others
            .iter()
            .any(|o| o.kind == MemberKind::Failover && o.name != member.name)
    {
        return Err(Error::Conflict(
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
        return Err(Error::Conflict(format!(
            "the mirror already has {} async members",
            super::service::MAX_ASYNC_MEMBERS
        )));
    }
    let journal = context
        .mirror
        .journal()
        .ok_or_else(|| Error::Conflict("the primary has no mirror journal".into()))?;
    let durable = journal.durable_end();
    // A member from an older epoch shares the history only up to where the next epoch began:
    // what it has after that was written by it as an old primary and never reached this one
    // (a divergent tail). Otherwise, a member holding records this primary never made durable
    // (it restarted before its own fsync) must drop them: nothing was applied from them,
    // nothing was acknowledged.
    let fork = super::config::fork_point(&membership.epochs, member_last_epoch).map(JournalPos);
    let cut = match fork {
        Some(fork) if !fresh && member_end > fork => Some(Cut {
            after: fork,
            divergent: true,
        }),
        _ if !fresh && member_end > durable => Some(Cut {
            after: durable,
            divergent: false,
        }),
        _ => None,
    };
    let from = if fresh {
        durable.next()
    } else {
        cut.map(|c| c.after).unwrap_or(member_end).next()
    };
    if from < journal.first_pos() {
        return Err(Error::Conflict(format!(
            "this member's mirror journal ends at {} but the primary keeps records from {} only: \
             the member must be rebuilt (remove its mirror configuration and join again)",
            from.0 - 1,
            journal.first_pos()
        )));
    }
    // Remember the member (no TLS: a member registers itself by joining).
    let changed = context.config.update(|c| {
        let Some(m) = c.mirror.membership.as_mut() else {
            return Ok(false);
        };
        Ok(match m.others.iter_mut().find(|o| o.name == member.name) {
            Some(known) if known == member => false,
            Some(known) => {
                *known = member.clone();
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
    Ok((journal, cut, from))
}

/// Where a member must cut its journal before it receives, and why.
#[derive(Debug, Clone, Copy)]
struct Cut {
    after: JournalPos,
    divergent: bool,
}

#[allow(clippy::too_many_arguments)]
fn serve_member(
    stream: TcpStream,
    mut reader: BufReader<TcpStream>,
    mut writer: BufWriter<TcpStream>,
    context: &Arc<MirrorContext>,
    journal: Arc<JournalShared>,
    member: MemberInfo,
    cut: Option<Cut>,
    from: JournalPos,
) -> Result<()> {
    let hub = &context.mirror.hub;
    let qos = hub.qos();
    let (id, outgoing, snapshot) = match hub.register(member.clone()) {
        Ok(registered) => registered,
        Err(err) => {
            write_control(
                &mut writer,
                &Control::Refused {
                    reason: err.to_string(),
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
                truncate_after: cut.map(|c| c.after.0),
                divergent: cut.is_some_and(|c| c.divergent),
                from: from.0,
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
                    let _ = stream.shutdown(Shutdown::Both);
                })?
        };
        // What the member lacks up to the snapshot comes from the files; the rest is queued.
        send_range(&mut writer, &journal, JournalPos(from.0 - 1), snapshot)?;
        write_control(
            &mut writer,
            &Control::Durable {
                pos: journal.durable_end().0,
            },
        )?;
        writer.flush()?;
        let heartbeat = (qos / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        loop {
            let next = match outgoing.recv_timeout(heartbeat) {
                Ok(next) => next,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    write_control(
                        &mut writer,
                        &Control::Heartbeat {
                            durable: journal.durable_end().0,
                            time_ms: now_ms(),
                        },
                    )?;
                    writer.flush()?;
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            let mut open = send_outgoing(&mut writer, next)?;
            // Send whatever else is queued before the flush: one write for a burst of batches.
            while open && let Ok(next) = outgoing.try_recv() {
                open = send_outgoing(&mut writer, next)?;
            }
            writer.flush()?;
            if !open {
                break;
            }
        }
        let _ = stream.shutdown(Shutdown::Both);
        let _ = acks.join();
        Ok(())
    })();
    if let Err(err) = &result {
        hub.unregister(id, &err.to_string());
        let _ = stream.shutdown(Shutdown::Both);
    }
    result
}

/// Writes one queued item; false when the connection is to be closed.
fn send_outgoing(writer: &mut BufWriter<TcpStream>, next: Outgoing) -> Result<bool> {
    match next {
        Outgoing::Frames(bytes, first, last) => write_frames(writer, first, last, &bytes)?,
        Outgoing::Control(control) => write_control(writer, &control)?,
        Outgoing::Close(why) => {
            write_control(writer, &Control::Refused { reason: why })?;
            writer.flush()?;
            return Ok(false);
        }
    }
    Ok(true)
}

/// Reads a member's acknowledgements and reports until the connection ends; returns why.
fn read_acks(reader: &mut BufReader<TcpStream>, context: &MirrorContext, id: u64) -> String {
    loop {
        match read_message(reader) {
            Ok(Some(Message::Ack(pos))) => context.mirror.hub.on_ack(id, pos),
            Ok(Some(Message::Control(control))) => match *control {
                Control::Status { dejournaling } => context.mirror.hub.on_status(id, dejournaling),
                Control::FailoverMode { arbiter } => {
                    context.mirror.hub.on_partner_mode(id, arbiter)
                }
                Control::StoodDown => context.mirror.hub.on_stood_down(id),
                // The backup asked: the primary's setting is the mirror's, and every member
                // hears it back.
                Control::NoFailover { defined_primary }
                    if super::service::store_no_failover(context, defined_primary.clone())
                        .is_ok() =>
                {
                    context
                        .mirror
                        .hub
                        .announce(Control::NoFailover { defined_primary })
                }
                _ => {}
            },
            Ok(Some(Message::Frames { .. })) => return "the member sent journal frames".into(),
            Ok(None) => return "the member closed the connection".into(),
            Err(err) => return format!("connection lost: {err}"),
        }
    }
}
