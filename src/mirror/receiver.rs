//! The receiving end of journal transfer, on a backup (or async).
//!
//! One thread keeps a connection to the primary's mirror private address. It says how far its
//! mirror journal goes (`Hello`), cuts records the primary says it never made durable, then
//! stores every batch it receives at the same positions: all batches that have arrived are
//! appended together and made durable with one `fdatasync`, then acknowledged with one `Ack`
//! (group acknowledgement). The writer is asked to dejournal up to what is durable here *and*
//! announced durable by the primary — never further, so nothing is applied that a restarted
//! primary might not have. What a round does with the frames it read — check them, gather them,
//! append and fsync them after the journal's end — is [`round::Round`], apart from the socket,
//! so the simulation stores what a primary's hub sent with this very code.
//!
//! Whether to connect now, to whom, and what follows when a connection ends are decisions of
//! the member core ([`follow`](super::core::follow)): a link that failed is tried again a
//! second later, an async member whose attempts keep failing tries the failover members in
//! turn; the monitor shows `Disconnected on <time>` meanwhile. Every change of the link
//! (connected, active, lost) is reported to the failover driver, which decides about a
//! takeover; while it asks the primary's agent the receiver does not reconnect (see
//! [`Failover::may_connect`](super::failover::Failover::may_connect)). What the driver wants of
//! the link comes back as messages on the receiver's own channel ([`ReceiverInput`]): drop the
//! connection and connect afresh, or tell the primary something on the next round. A new
//! connection starts with that channel emptied: what was meant for the old one is forgotten
//! before the driver hears of the new one.
//!
//! A former primary coming back from an older epoch may be told that the end of its journal is
//! a *divergent tail*: it first has the writer undo what it applied of it (keeping the rows in
//! quarantine), and only then cuts its journal.
//!
//! # A journal that fails stops the instance
//!
//! When the mirror journal fails a write, an fsync or a cut, the receiver acknowledges nothing
//! more, never reconnects, and has the instance stop ([`MirrorContext::journal_failed`]), as the
//! writer does on the primary. Reconnecting instead would be wrong after a failed fsync: the
//! journal's end already counts the batch, the hello would say so, and the next fsync that
//! succeeds would acknowledge records the system may have dropped from its cache without ever
//! writing them — acknowledged writes that a takeover would lose. A restart opens the journal
//! from the files, whatever they hold.

use std::io::{BufReader, BufWriter, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::journal::{Epoch, Journal, JournalOptions, JournalPos};

use super::MirrorContext;
use super::core::follow::{Before, Ended, Follow, Next, Target};
use super::core::hello::{Cut, check_cut};
use super::failover::{Event, Mode};
use super::protocol::{Control, Message, check_frames, read_message, write_ack, write_control};
use super::state::{DriverInput, LinkError};
use crate::config::mirror::{MemberInfo, MemberKind, Membership};
use crate::tls::Channel;
use crate::util::now_ms;

pub(crate) mod round;
use round::Round;

/// Longest time without an acknowledgement while the primary keeps sending, even when nothing
/// new was stored.
const ACK_REFRESH: Duration = Duration::from_millis(500);

/// The backup's mirror journal, shared by the receiver (appends) and Catchup's fetch (prepends).
pub type SharedJournal = Arc<Mutex<Option<Journal>>>;

/// What the failover driver (or the portal) asks of the receiver's connection.
#[derive(Debug)]
pub enum ReceiverInput {
    /// This member stalled and no longer counts as the active backup: what it reads next may
    /// be stale, so it drops the connection and connects afresh.
    Reconnect,
    /// Tell the primary this on the next round (a failover mode report, No Failover, a
    /// stand-down); `sent` hears once it was written (it is dropped unsent when the connection
    /// ends first).
    Say(Box<Control>, Option<mpsc::SyncSender<()>>),
}

impl ReceiverInput {
    /// Tell the primary `control` on the next round; nobody waits for it.
    pub fn say(control: Control) -> ReceiverInput {
        ReceiverInput::Say(Box::new(control), None)
    }
}

/// Starts the receiver thread; the sender is its channel ([`ReceiverInput`]).
pub fn start(
    context: Arc<MirrorContext>,
    journal: SharedJournal,
    stop: Arc<AtomicBool>,
) -> (JoinHandle<()>, mpsc::Sender<ReceiverInput>) {
    let (inbox_tx, inbox) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("mirror-receiver".into())
        .spawn(move || {
            // Whether to connect, to whom, and what follows an end are the core's decisions.
            let mut follow = Follow::new();
            while !stop.load(Ordering::Acquire) {
                let before = Before {
                    rules_allow: context.mirror.rules_allow_connect(),
                    deciding: context.mirror.deciding(),
                    stopped: context.config.get().mirror.stopped(),
                };
                match follow.next(before) {
                    Next::Connect => {}
                    Next::Wait(how_long) => {
                        pause(&stop, how_long);
                        continue;
                    }
                    Next::Stop => return,
                }
                let result = receive(&context, &journal, &stop, &follow, &inbox);
                let now = now_ms();
                let (was_connected, last_error) = context
                    .mirror
                    .read(|s| (s.link.connected, s.link.last_error.clone()));
                if let Err(err) = &result
                    && last_error.as_ref() != Some(err)
                {
                    tracing::warn!("mirror: link to the primary: {err}");
                }
                // The link's state is published before the event is sent: the driver reads
                // the status after the events, so it never sees an event newer than the status.
                context.mirror.update_link(|link| {
                    if link.connected || link.disconnected_ms.is_none() {
                        link.disconnected_ms = Some(now);
                    }
                    if link.connected {
                        link.active_when_lost = link.active;
                    }
                    link.connected = false;
                    link.active = false;
                    if let Err(err) = &result {
                        link.last_error = Some(err.clone());
                    }
                });
                if was_connected {
                    context
                        .mirror
                        .tell_driver(DriverInput::Receiver(Event::PartnerLost));
                }
                let ended = match &result {
                    Err(LinkError::JournalFailed(_)) => Ended::JournalFailed,
                    // Welcomed, then ended: the primary it reached is still the one to ask.
                    _ if was_connected => Ended::Closed,
                    Ok(()) => Ended::Closed,
                    Err(_) => Ended::Failed,
                };
                match follow.ended(ended) {
                    Next::Stop => {
                        if let Err(err) = result {
                            tracing::error!("mirror: {err}: this instance stops");
                            (context.journal_failed)(&err.to_string());
                        }
                        return;
                    }
                    Next::Wait(how_long) => pause(&stop, how_long),
                    Next::Connect => {}
                }
            }
        })
        .expect("spawn the mirror receiver");
    (thread, inbox_tx)
}

/// Sleeps for `how_long`, or less when asked to stop.
fn pause(stop: &AtomicBool, how_long: Duration) {
    let until = Instant::now() + how_long;
    while !stop.load(Ordering::Acquire) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The member to connect to, as the core chose it ([`Follow::target`]): the primary the
/// configuration names, or — for an async whose attempts keep failing — the failover members in
/// turn (only the primary welcomes it, and its welcome names itself).
fn primary_of(context: &MirrorContext, follow: &Follow) -> Result<MemberInfo> {
    let config = context.config.get();
    let membership = config.mirror.member()?;
    let failover: Vec<&MemberInfo> = membership
        .others
        .iter()
        .filter(|o| o.kind == MemberKind::Failover)
        .collect();
    let names: Vec<&str> = failover.iter().map(|o| o.name.as_str()).collect();
    let known = membership
        .primary_name
        .as_deref()
        .and_then(|p| names.iter().position(|n| *n == p));
    let is_async = membership.this.kind != MemberKind::Failover;
    if let Target::Member(i) = follow.target(is_async, known, &names) {
        return Ok(failover[i].clone());
    }
    let name = membership
        .primary_name
        .as_deref()
        .ok_or_else(|| Error::Conflict("the primary is not known".into()))?;
    membership
        .member(name)
        .cloned()
        .ok_or_else(|| Error::Conflict(format!("member {name} is not known")))
}

/// The highest position any mounted copy of this mirror's databases has applied (read from the
/// copies themselves: what a cut must not reach below).
fn highest_applied(context: &MirrorContext, membership: &Membership) -> Result<JournalPos> {
    let mut highest = JournalPos(0);
    for entry in context.catalog.snapshot().databases.values() {
        if !entry.mounted || entry.mirrored.is_none() {
            continue;
        }
        let identity = crate::instance::recovery::identity_of(entry)?;
        if identity.stream == membership.mirror.id {
            highest = highest.max(identity.applied_pos);
        }
    }
    Ok(highest)
}

/// One connection's life.
fn receive(
    context: &Arc<MirrorContext>,
    shared: &SharedJournal,
    stop: &AtomicBool,
    follow: &Follow,
    inbox: &mpsc::Receiver<ReceiverInput>,
) -> std::result::Result<(), LinkError> {
    let primary = primary_of(context, follow)?;
    let config = context.config.get();
    let membership = config
        .mirror
        .membership
        .clone()
        .ok_or_else(|| Error::Conflict("not a mirror member".into()))?;
    let qos = Duration::from_millis(membership.mirror.qos_timeout_ms);
    let stream = super::dial(
        &*context.network,
        &context.identity,
        &membership,
        &primary,
        &primary.data_channel_address()?,
        qos.max(Duration::from_secs(2)),
    )?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::with_capacity(1 << 20, stream.try_clone()?);
    let mut writer = BufWriter::new(stream.try_clone()?);
    let (first, end, last_epoch) = match shared.lock().unwrap().as_ref() {
        Some(j) => (j.shared().first_pos(), j.end(), j.shared().last_epoch()?),
        None => (JournalPos(0), JournalPos(0), Epoch(0)),
    };
    write_control(
        &mut writer,
        &Control::Hello {
            mirror_name: membership.mirror.name.clone(),
            mirror_id: membership.mirror.id,
            // The certificate this member holds now: if its key was replaced, the primary sees
            // that it differs from the authorized one and says so.
            member: MemberInfo {
                certificate: Some(context.identity.fingerprint().to_string()),
                ..membership.this.clone()
            },
            journal_first: first,
            journal_end: end,
            last_epoch,
        },
    )?;
    writer.flush()?;
    let (description, truncate_after, divergent, from) = match read_message(&mut reader)? {
        Some(Message::Control(control)) => match *control {
            Control::Welcome {
                description,
                truncate_after,
                divergent,
                from,
            } => (description, truncate_after, divergent, from),
            Control::Refused {
                reason,
                awaiting_authorization,
            } => {
                return Err(if awaiting_authorization {
                    LinkError::AwaitingAuthorization(reason)
                } else {
                    LinkError::Refused(reason)
                });
            }
            other => return Err(Error::InvalidInput(format!("unexpected answer {other:?}")).into()),
        },
        _ => return Err(Error::InvalidInput("the primary did not answer".into()).into()),
    };
    context.learn(&description)?;
    {
        let mut guard = shared.lock().unwrap();
        if guard.is_none() {
            // A new member's journal starts where the primary starts sending.
            let options =
                JournalOptions::mirror(&membership.mirror.name, context.max_segment_bytes, from)
                    .with_io(context.journal_io.clone());
            let (journal, _) = Journal::open(&context.journal_dir, membership.mirror.id, options)?;
            context.mirror.set_journal(Some(journal.shared()));
            *guard = Some(journal);
        }
        let journal = guard.as_mut().unwrap();
        if let Some(cut) = truncate_after.filter(|cut| *cut < journal.end()) {
            let asked = Cut {
                after: cut,
                divergent,
            };
            if let Err(unsafe_cut) = check_cut(asked, highest_applied(context, &membership)?) {
                tracing::error!("mirror: {unsafe_cut}");
                return Err(Error::Corrupt(unsafe_cut.to_string()).into());
            }
            if divergent {
                // Ordering: undo and quarantine first, cut second. A crash in between leaves
                // the tail in the journal, and the next connection undoes nothing twice (each
                // copy's applied position says what it holds).
                tracing::warn!(
                    "mirror: records after {cut} were written here in an older epoch and never \
                     reached the new primary: undoing them"
                );
                let message = context.writer.extension_blocking(|reply| {
                    crate::mirror::steps::MirrorCommand::RollBack { after: cut, reply }
                })?;
                tracing::warn!("mirror: {message}");
            } else {
                tracing::warn!(
                    "mirror: dropping journal records after {cut} that the primary never made durable"
                );
            }
            journal
                .truncate_after(cut)
                .map_err(|e| LinkError::JournalFailed(e.to_string()))?;
            context
                .mirror
                .set_dejournal_target(context.mirror.dejournal_target().min(cut));
        }
        if journal.end().next() != from {
            return Err(Error::Conflict(format!(
                "the primary sends from position {from} but this member's mirror journal ends at {}",
                journal.end()
            )).into());
        }
    }
    // What was meant for the old connection is forgotten before the driver hears of the new
    // one (what it asks after that is for this connection).
    while inbox.try_recv().is_ok() {}
    // What the failover decisions read — when the primary was last heard, how long a round
    // took — is on the member's clock, as the driver compares it (see `crate::clock`). How
    // often acknowledgements and reports are repeated, the times shown to people and the
    // sockets' timeouts stay the machine's: they pace the link, they decide nothing.
    let clock = &context.mirror.clock;
    context.mirror.update_link(|link| {
        link.connected = true;
        link.last_heard = Some(clock.now());
        link.primary = Some(primary.clone());
        link.since_ms = now_ms();
        link.disconnected_ms = None;
        link.last_error = None;
    });
    context
        .mirror
        .tell_driver(DriverInput::Receiver(Event::PartnerConnected));
    tracing::info!(
        "mirror: connected to primary {} (receiving from position {from})",
        primary.name
    );
    // The primary sends something at least every quarter QoS; half a QoS without a word means
    // the link is lost (IRIS's effective wait is QoS/2 to QoS). Noticing early leaves the
    // backup time, inside its takeover window, to have the agent confirm a hung primary down.
    stream.set_read_timeout(Some((qos / 2).max(Duration::from_millis(100))))?;
    // This thread also writes the acknowledgements: a write the primary does not take for as
    // long means the link is as lost as that silence would, and must not keep the thread from
    // noticing it.
    stream.set_write_timeout(Some((qos / 2).max(Duration::from_millis(100))))?;

    let mut primary_durable = JournalPos::ZERO;
    let mut round = Round::default();
    let mut last_status: Option<Instant> = None;
    let mut last_ack: Option<(JournalPos, Instant)> = None;
    let mut reports = Vec::new();
    let mut reconnect = false;
    while !stop.load(Ordering::Acquire) {
        // Asked before the next message is read: after a stall, it may be stale.
        reconnect |= take_inputs(inbox, &mut reports);
        if reconnect {
            return Err(Error::Unavailable(
                "reconnecting: this member stalled and no longer counts as the active backup"
                    .into(),
            )
            .into());
        }
        let message = read_message(&mut reader)?
            .ok_or_else(|| Error::Unavailable("the primary closed the connection".into()))?;
        let began = clock.now();
        let mut handle = |message: Message, round: &mut Round| -> Result<()> {
            match message {
                Message::Frames { first, last, bytes } => round.take(first, last, &bytes)?,
                Message::Control(control) => match *control {
                    Control::Durable { pos } => primary_durable = primary_durable.max(pos),
                    Control::Heartbeat { durable, .. } => {
                        primary_durable = primary_durable.max(durable)
                    }
                    Control::Activated { activation } => {
                        tracing::info!("mirror: this member is the active backup");
                        context.mirror.update_link(|link| {
                            link.active = true;
                            link.activation = activation;
                        });
                        context
                            .mirror
                            .tell_driver(DriverInput::Receiver(Event::PartnerActive));
                    }
                    Control::DatabaseAdded { database } => context.add_database(database)?,
                    Control::MirrorChanged { description } => context.learn(&description)?,
                    Control::HandOver => {
                        tracing::warn!("mirror: the primary is shutting down and hands over");
                        context
                            .mirror
                            .tell_driver(DriverInput::Receiver(Event::PartnerHandsOver));
                    }
                    Control::Demote => {
                        tracing::warn!("mirror: the primary asks this member to become a DR async");
                        context.mirror.tell_driver(DriverInput::DemoteRequested);
                    }
                    Control::NoFailover { defined_primary } => {
                        super::service::store_no_failover(context, defined_primary)?
                    }
                    Control::FailoverMode { arbiter } => {
                        context
                            .mirror
                            .tell_driver(DriverInput::Receiver(Event::PartnerMode(if arbiter {
                                Mode::Arbiter
                            } else {
                                Mode::Agent
                            })))
                    }
                    Control::Refused { reason, .. } => {
                        return Err(Error::Unavailable(format!(
                            "the primary closed the link: {reason}"
                        )));
                    }
                    _ => {}
                },
                Message::Ack(_) | Message::Chunk { .. } => {
                    return Err(Error::InvalidInput(
                        "unexpected acknowledgement or copy chunk".into(),
                    ));
                }
            }
            Ok(())
        };
        handle(message, &mut round)?;
        // Everything already buffered joins this round: one fsync, one acknowledgement.
        while buffered_message(&reader) {
            let Some(message) = read_message(&mut reader)? else {
                break;
            };
            handle(message, &mut round)?;
        }
        let received_end = round.store(shared.lock().unwrap().as_mut().expect("opened above"))?;
        // A round that stored nothing new (only the primary's durable end or a heartbeat came)
        // has nothing to acknowledge: the primary would wake only to learn what it knows. Now
        // and then the position is sent anyway, so an idle link is heard from both ways.
        let ack_due = match last_ack {
            None => true,
            // At least every quarter QoS: the primary tells load balancers it acknowledges
            // writes only while it heard from its active backup within half a QoS.
            Some((pos, at)) => received_end > pos || at.elapsed() >= ACK_REFRESH.min(qos / 4),
        };
        if ack_due {
            write_ack(&mut writer, received_end)?;
            last_ack = Some((received_end, Instant::now()));
        }
        reconnect |= take_inputs(inbox, &mut reports);
        for (report, _) in &reports {
            write_control(&mut writer, report)?;
        }
        if last_status.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
            write_control(
                &mut writer,
                &Control::Status {
                    dejournaling: context.dejournal_summary(),
                },
            )?;
            last_status = Some(Instant::now());
        }
        writer.flush()?;
        for (_, sent) in reports.drain(..) {
            if let Some(sent) = sent {
                let _ = sent.try_send(());
            }
        }
        let received = round.len() as u64;
        let stored_ms = round.first().is_some().then(now_ms);
        context.mirror.update_link(|link| {
            link.stored_ms = stored_ms.or(link.stored_ms);
            link.received_bytes += received;
            link.received_end = received_end;
            link.primary_durable = primary_durable;
            link.last_heard = Some(clock.now());
            link.sample();
        });
        round.clear();
        // A round that took half a QoS (a stalled fsync) may have let the primary give up on
        // this member while it could not answer: what it reads next may be stale.
        // (Only while active: a member catching up a large backlog is not waited for.)
        if clock.since(began) > qos / 2 && context.mirror.read(|s| s.link.active) {
            context.mirror.tell_driver(DriverInput::ReceiverStalled);
        }
        let target = received_end.min(primary_durable);
        if target > context.mirror.dejournal_target() {
            context.mirror.raise_dejournal_target(target);
            context.writer.request_turn();
        }
    }
    stream.close();
    Ok(())
}

/// Takes what waits on the receiver's channel: reports to send join `reports`; true when a
/// reconnect was asked.
fn take_inputs(
    inbox: &mpsc::Receiver<ReceiverInput>,
    reports: &mut Vec<(Box<Control>, Option<mpsc::SyncSender<()>>)>,
) -> bool {
    let mut reconnect = false;
    for input in inbox.try_iter() {
        match input {
            ReceiverInput::Reconnect => reconnect = true,
            ReceiverInput::Say(control, sent) => reports.push((control, sent)),
        }
    }
    reconnect
}

/// True when a whole message is already in the read buffer.
fn buffered_message(reader: &BufReader<Channel>) -> bool {
    let buf = reader.buffer();
    buf.len() >= 4 && buf.len() >= 4 + u32::from_be_bytes(buf[0..4].try_into().unwrap()) as usize
}

/// Fetches records `from..=to` from the primary (for a Catchup that needs older journal).
pub fn fetch(
    network: &dyn crate::transport::Network,
    identity: &crate::tls::Identity,
    membership: &Membership,
    primary: &MemberInfo,
    from: JournalPos,
    to: JournalPos,
) -> Result<(JournalPos, JournalPos, Vec<u8>)> {
    let fetch = Control::Fetch {
        mirror_id: membership.mirror.id,
        from,
        to,
    };
    let (mut reader, _writer) = super::open_conversation(
        network,
        identity,
        membership,
        primary,
        &fetch,
        Duration::from_secs(30),
    )?;
    let mut frames = Vec::new();
    let mut next = from;
    loop {
        match read_message(&mut reader)? {
            Some(Message::Frames { first, last, bytes }) => {
                if first != next {
                    return Err(Error::Corrupt(format!(
                        "fetched records start at {first}, {next} expected"
                    )));
                }
                check_frames(&bytes, first, last)?;
                frames.extend_from_slice(&bytes);
                next = last.next();
            }
            Some(Message::Control(control)) => match *control {
                Control::FetchDone => break,
                Control::Refused { reason, .. } => return Err(Error::Conflict(reason)),
                other => return Err(Error::InvalidInput(format!("unexpected answer {other:?}"))),
            },
            _ => {
                return Err(Error::Unavailable(
                    "the primary closed the connection during a fetch".into(),
                ));
            }
        }
    }
    Ok((from, JournalPos(next.0 - 1), frames))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the driver asks reaches the connection in order, and a reconnect among the reports
    /// does not lose the reports asked before it.
    #[test]
    fn the_receivers_channel_keeps_reports_in_order_and_notices_a_reconnect() {
        let (tx, inbox) = mpsc::channel();
        let mut reports = Vec::new();
        assert!(!take_inputs(&inbox, &mut reports));
        let (sent, written) = mpsc::sync_channel(1);
        tx.send(ReceiverInput::Say(Box::new(Control::StoodDown), Some(sent)))
            .unwrap();
        tx.send(ReceiverInput::Reconnect).unwrap();
        tx.send(ReceiverInput::say(Control::FailoverMode { arbiter: true }))
            .unwrap();
        assert!(take_inputs(&inbox, &mut reports));
        let said: Vec<&Control> = reports
            .iter()
            .map(|(control, _)| control.as_ref())
            .collect();
        assert_eq!(
            said,
            [
                &Control::StoodDown,
                &Control::FailoverMode { arbiter: true }
            ]
        );
        // Dropped unsent (the connection ended first): whoever waits hears it at once.
        reports.clear();
        assert!(written.recv().is_err());
    }
}
