//! The arbiter: a small process on a third host that both failover members stay connected to.
//!
//! # What it answers
//!
//! It tells each failover member whether it still sees the other one, and answers the two
//! questions of the failover rules from its [`ArbiterBook`]: the primary that lost its backup
//! asks "do you still see it?" (a "no" books the primary as going on alone), and the backup that
//! lost its primary asks "may I take over?" (a "yes" books the takeover, which the old primary
//! hears if it ever comes back). One lock serves both questions, so they never both win.
//!
//! # Seeing a member
//!
//! A member is seen while its connection is open and it spoke within its QoS timeout (members
//! ping every quarter of it). A question about a partner that is still seen is answered only
//! after that partner speaks again — fresh proof that it lives — or when it falls silent or
//! disconnects: the two members and the arbiter notice a dead host at slightly different
//! moments, and the question must not be answered from a view older than the asker's.
//!
//! # Protocol
//!
//! Length-prefixed JSON frames ([`crate::wire`]) on the agent port (2188). A member sends
//! [`ToArbiter::Hello`] (mirror, member, role, epoch, QoS), then pings, its mode (primary) and
//! questions; the arbiter sends [`FromArbiter`] messages. A `status` request from anyone gets a
//! summary (the container's health check uses it).
//!
//! With `--metrics ADDR` it also serves Prometheus metrics there: the members it sees, the
//! answers it gave ([`metrics`]).
//!
//! # Left out
//!
//! Authentication (see the security issue): anyone who can reach the port can speak.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{Sender, channel};

use crate::config::mirror::MemberName;
use crate::error::{Error, Result};
use crate::journal::{Epoch, StreamId};
use crate::limits::{ARBITER_CONNECTIONS, ConnectionSlots};
use crate::mirror::failover::{ArbiterBook, Mode, ToPrimary};
use crate::wire::{MAX_AGENT_FRAME, read_frame, write_frame};

pub mod metrics;

/// What a failover member (or a health check) says to the arbiter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ToArbiter {
    /// A failover member connects.
    Hello {
        /// The mirror's id.
        mirror_id: StreamId,
        /// The mirror's name.
        mirror_name: String,
        /// The member's name.
        member: MemberName,
        /// Whether it is the primary (else the backup).
        primary: bool,
        /// Its epoch: a higher one starts a fresh book.
        epoch: Epoch,
        /// The mirror's QoS timeout (ms).
        qos_ms: u64,
        /// The primary is in arbiter-controlled mode.
        #[serde(default)]
        arbiter_mode: bool,
        /// The backup's activation that arbiter mode was booked with.
        #[serde(default)]
        activation: u64,
    },
    /// Still here.
    Ping,
    /// The primary's failover mode.
    Mode {
        /// In arbiter-controlled mode.
        arbiter: bool,
        /// The backup's activation it is booked with (arbiter mode ends only with its
        /// stand-down).
        #[serde(default)]
        activation: u64,
    },
    /// The failover question of the member's role.
    Ask,
    /// The backup is no longer active (it lost the primary and will not take over): relayed to
    /// the primary, which may then go on in agent-controlled mode.
    StoodDown {
        /// The activation it ends (the primary's token; 0 when it never was active).
        activation: u64,
    },
    /// A health check: what does the arbiter serve?
    Status,
}

/// What the arbiter says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromArbiter {
    /// Whether it sees the other failover member (sent on connecting and on every change, and as
    /// the answer to the primary's question).
    SeesPartner {
        /// It does.
        sees: bool,
    },
    /// The answer to the backup's question.
    Verdict {
        /// Take over.
        take_over: bool,
    },
    /// To the primary: its mode is booked (the answer to [`ToArbiter::Mode`]).
    ModeBooked {
        /// The mode booked is arbiter controlled.
        arbiter: bool,
        /// With this activation of the backup.
        #[serde(default)]
        activation: u64,
    },
    /// To a former primary: the backup took over.
    BackupTookOver,
    /// To the primary: the backup stood down (it will not take over), ending the activation
    /// named.
    PartnerStoodDown {
        /// The activation it ends.
        activation: u64,
    },
    /// Sent when idle.
    Heartbeat,
    /// The answer to a health check.
    Status {
        /// Mirror names served, with how many members are connected.
        mirrors: Vec<(String, usize)>,
        /// The mirrors whose primary is booked in arbiter-controlled mode (a backup that
        /// loses it gets the takeover approved): what the monitors' Arbiter Controlled promises.
        #[serde(default)]
        arbiter_mode: Vec<String>,
    },
}

/// Most messages waiting for one member's connection: the arbiter says little, and a member
/// that lets this many pile up has stopped reading.
const ARBITER_QUEUE: usize = 64;

/// A connected failover member.
#[derive(Debug, Clone)]
struct Slot {
    conn: u64,
    tx: Sender<FromArbiter>,
}

/// A question waiting for the partner to speak (or to be lost).
#[derive(Debug, Clone, Copy)]
struct Pending {
    /// The asker is the primary.
    from_primary: bool,
    deadline: Instant,
}

#[derive(Debug, Default)]
struct MirrorRecord {
    name: String,
    epoch: Epoch,
    qos: Duration,
    book: ArbiterBook,
    primary: Option<Slot>,
    backup: Option<Slot>,
    pending: Vec<Pending>,
    /// Connections whose member stopped reading (see `send`).
    overflowed: Vec<u64>,
}

impl MirrorRecord {
    fn slot(&mut self, primary: bool) -> &mut Option<Slot> {
        if primary {
            &mut self.primary
        } else {
            &mut self.backup
        }
    }

    fn sync_book(&mut self) {
        self.book.sees_primary = self.primary.is_some();
        self.book.sees_backup = self.backup.is_some();
    }

    /// Sends to the member in slot `primary`. A member that does not read what it is sent
    /// (its queue is full) is dropped as lost — never a message skipped, never a queue without
    /// end.
    fn send(&mut self, primary: bool, message: FromArbiter) {
        let slot = if primary { &self.primary } else { &self.backup };
        if let Some(slot) = slot
            && let Err(tokio::sync::mpsc::error::TrySendError::Full(_)) = slot.tx.try_send(message)
        {
            self.overflowed.push(slot.conn);
        }
    }

    /// Answers the question of the primary (`from_primary`) or of the backup from the book.
    fn answer(&mut self, from_primary: bool) {
        self.sync_book();
        if from_primary {
            let message = match self.book.ask_from_primary() {
                ToPrimary::SeesBackup(sees) => {
                    metrics::answered("sees_backup", if sees { "yes" } else { "no" });
                    FromArbiter::SeesPartner { sees }
                }
                ToPrimary::BackupTookOver => {
                    metrics::answered("sees_backup", "backup_took_over");
                    FromArbiter::BackupTookOver
                }
            };
            tracing::info!("arbiter: {}: told the primary {message:?}", self.name);
            self.send(true, message);
        } else {
            let take_over = self.book.ask_from_backup();
            metrics::answered("may_take_over", if take_over { "yes" } else { "no" });
            tracing::info!(
                "arbiter: {}: told the backup take_over = {take_over}",
                self.name
            );
            self.send(false, FromArbiter::Verdict { take_over });
        }
    }

    /// The member in slot `primary` spoke: questions waiting for proof of its life are answered.
    fn heard(&mut self, primary: bool) {
        let (waiting, rest): (Vec<Pending>, Vec<Pending>) = self
            .pending
            .drain(..)
            .partition(|p| p.from_primary != primary);
        self.pending = rest;
        for p in waiting {
            self.answer(p.from_primary);
        }
    }

    /// The member in slot `primary` is gone.
    fn lost(&mut self, primary: bool) {
        *self.slot(primary) = None;
        self.sync_book();
        if primary {
            self.send(false, FromArbiter::SeesPartner { sees: false });
        } else {
            // Telling the primary "I do not see the backup" always books it as going on alone
            // (it may act on it): from now on the backup cannot take over through the arbiter.
            self.pending.retain(|p| !p.from_primary);
            self.answer(true);
        }
        self.heard(primary);
    }
}

/// The arbiter's state: one record per mirror.
#[derive(Debug, Default)]
pub struct Arbiter {
    mirrors: HashMap<StreamId, MirrorRecord>,
    /// Connection id → (mirror id, primary slot).
    conns: HashMap<u64, (StreamId, bool)>,
    next_conn: u64,
}

impl Arbiter {
    /// A member connected; returns its connection id.
    pub fn hello(&mut self, tx: Sender<FromArbiter>, hello: &ToArbiter) -> Option<u64> {
        let conn = self.hello_inner(tx, hello);
        self.drop_overflowed();
        conn
    }

    /// Members that stopped reading are lost (see `MirrorRecord::send`).
    fn drop_overflowed(&mut self) {
        loop {
            let overflowed: Vec<u64> = self
                .mirrors
                .values_mut()
                .flat_map(|r| r.overflowed.drain(..))
                .collect();
            if overflowed.is_empty() {
                return;
            }
            for conn in overflowed {
                tracing::warn!("arbiter: a member stopped reading; its connection counts as lost");
                self.lost_inner(conn);
            }
        }
    }

    fn hello_inner(&mut self, tx: Sender<FromArbiter>, hello: &ToArbiter) -> Option<u64> {
        let ToArbiter::Hello {
            mirror_id,
            mirror_name,
            member,
            primary,
            epoch,
            qos_ms,
            arbiter_mode,
            activation,
        } = hello
        else {
            return None;
        };
        self.next_conn += 1;
        let conn = self.next_conn;
        let record = self.mirrors.entry(*mirror_id).or_default();
        if *primary
            && (*epoch < record.epoch || (*epoch == record.epoch && record.book.backup_took_over))
        {
            // A former primary of an older epoch, or the one whose backup this arbiter let take
            // over: it must stop, and it must hear nothing else first.
            let _ = tx.try_send(FromArbiter::BackupTookOver);
            return None;
        }
        if *epoch > record.epoch {
            // A takeover happened (this member is its primary, or follows it): the old
            // book's answers are settled.
            record.epoch = *epoch;
            record.book = ArbiterBook::default();
        }
        record.name = mirror_name.clone();
        record.qos = Duration::from_millis(*qos_ms);
        if let Some(old) = record.slot(*primary).take() {
            self.conns.remove(&old.conn);
        }
        *record.slot(*primary) = Some(Slot { conn, tx });
        record.sync_book();
        if *primary {
            record.book.primary_mode(
                if *arbiter_mode {
                    Mode::Arbiter
                } else {
                    Mode::Agent
                },
                *activation,
            );
        }
        self.conns.insert(conn, (*mirror_id, *primary));
        tracing::info!(
            "arbiter: {mirror_name}: {member} connected as {}",
            if *primary { "primary" } else { "backup" }
        );
        // A primary hears "not seen" only as an answer that books it as going on alone (see
        // `MirrorRecord::answer`): on connecting it is told only what the arbiter does see.
        // This arbiter's book lives in memory, so after a restart it cannot know whether a
        // takeover happened, and must not let a frozen primary resume on its word.
        if *primary {
            if record.backup.is_some() {
                record.send(true, FromArbiter::SeesPartner { sees: true });
            }
        } else {
            let sees = record.primary.is_some();
            record.send(false, FromArbiter::SeesPartner { sees });
        }
        record.send(!*primary, FromArbiter::SeesPartner { sees: true });
        record.heard(*primary);
        Some(conn)
    }

    /// A member's message after its hello.
    pub fn message(&mut self, conn: u64, message: &ToArbiter) {
        self.message_inner(conn, message);
        self.drop_overflowed();
    }

    fn message_inner(&mut self, conn: u64, message: &ToArbiter) {
        let Some((mirror, primary)) = self.conns.get(&conn).cloned() else {
            return;
        };
        let Some(record) = self.mirrors.get_mut(&mirror) else {
            return;
        };
        record.heard(primary);
        match message {
            ToArbiter::Mode {
                arbiter,
                activation,
            } if primary => {
                let mode = if *arbiter { Mode::Arbiter } else { Mode::Agent };
                record.book.primary_mode(mode, *activation);
                // The primary enters arbiter mode only on this confirmation.
                record.send(
                    true,
                    FromArbiter::ModeBooked {
                        arbiter: *arbiter,
                        activation: *activation,
                    },
                );
            }
            ToArbiter::StoodDown { activation } if !primary => {
                // It cannot take over through the arbiter any more: the primary may go on. A
                // takeover booked for it that it did not carry out is cancelled with it.
                record.book.backup_stood_down(*activation);
                // A backup that was never active (a restarted one cancelling what its earlier
                // life was granted) has nothing to tell the primary.
                if *activation != 0 {
                    record.send(
                        true,
                        FromArbiter::PartnerStoodDown {
                            activation: *activation,
                        },
                    );
                }
            }
            ToArbiter::Ask => {
                let partner_seen = if primary {
                    record.backup.is_some()
                } else {
                    record.primary.is_some()
                };
                if partner_seen {
                    let deadline = Instant::now() + record.qos;
                    tracing::info!(
                        "arbiter: {}: the {} asks; it is answered when the {} speaks again, or \
                         after {} ms of silence",
                        record.name,
                        if primary { "primary" } else { "backup" },
                        if primary { "backup" } else { "primary" },
                        record.qos.as_millis()
                    );
                    record.pending.push(Pending {
                        from_primary: primary,
                        deadline,
                    });
                } else {
                    record.answer(primary);
                }
            }
            _ => {}
        }
    }

    /// A member's connection closed or fell silent.
    pub fn lost(&mut self, conn: u64) {
        self.lost_inner(conn);
        self.drop_overflowed();
    }

    fn lost_inner(&mut self, conn: u64) {
        let Some((mirror, primary)) = self.conns.remove(&conn) else {
            return;
        };
        if let Some(record) = self.mirrors.get_mut(&mirror) {
            let current = if primary {
                &record.primary
            } else {
                &record.backup
            };
            if current.as_ref().is_some_and(|s| s.conn == conn) {
                tracing::warn!(
                    "arbiter: {}: lost the {}",
                    record.name,
                    if primary { "primary" } else { "backup" }
                );
                record.lost(primary);
            }
        }
    }

    /// Questions whose partner stayed silent until the deadline: the partner counts as lost.
    pub fn tick(&mut self, now: Instant) {
        let mut silent = Vec::new();
        for (id, record) in &self.mirrors {
            for p in &record.pending {
                if now >= p.deadline {
                    let partner = if p.from_primary {
                        &record.backup
                    } else {
                        &record.primary
                    };
                    if let Some(slot) = partner {
                        silent.push((*id, slot.conn));
                    }
                }
            }
        }
        for (_, conn) in silent {
            self.lost_inner(conn);
        }
        self.drop_overflowed();
    }

    /// The health check's summary.
    pub fn status(&self) -> FromArbiter {
        FromArbiter::Status {
            mirrors: self
                .mirrors
                .values()
                .map(|r| {
                    (
                        r.name.clone(),
                        r.primary.is_some() as usize + r.backup.is_some() as usize,
                    )
                })
                .collect(),
            arbiter_mode: self
                .mirrors
                .values()
                .filter(|r| r.book.primary_in_arbiter_mode && !r.book.backup_took_over)
                .map(|r| r.name.clone())
                .collect(),
        }
    }
}

async fn serve(state: Arc<Mutex<Arbiter>>, stream: TcpStream) -> Result<()> {
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = stream.into_split();
    let first = tokio::time::timeout(
        Duration::from_secs(10),
        read_frame::<_, ToArbiter>(&mut reader, MAX_AGENT_FRAME),
    )
    .await
    .map_err(|_| Error::Unavailable("no hello".into()))??;
    let Some(first) = first else { return Ok(()) };
    if first == ToArbiter::Status {
        let status = state.lock().unwrap().status();
        return write_frame(&mut writer, &status).await;
    }
    let ToArbiter::Hello { qos_ms, .. } = &first else {
        return Err(Error::InvalidInput("a member must say hello first".into()));
    };
    let qos = Duration::from_millis((*qos_ms).clamp(100, 120_000));
    let (tx, mut rx) = channel::<FromArbiter>(ARBITER_QUEUE);
    let heartbeat = (qos / 4).max(Duration::from_millis(25));
    let send = tokio::spawn(async move {
        loop {
            let next = tokio::time::timeout(heartbeat, rx.recv()).await;
            let message = match next {
                Ok(Some(message)) => message,
                Ok(None) => return,
                Err(_) => FromArbiter::Heartbeat,
            };
            if write_frame(&mut writer, &message).await.is_err() {
                return;
            }
        }
    });
    let Some(conn) = state.lock().unwrap().hello(tx, &first) else {
        return Ok(());
    };
    // A member silent for its QoS timeout is lost.
    let ended = loop {
        match tokio::time::timeout(
            qos,
            read_frame::<_, ToArbiter>(&mut reader, MAX_AGENT_FRAME),
        )
        .await
        {
            Ok(Ok(Some(message))) => state.lock().unwrap().message(conn, &message),
            Ok(Ok(None)) => break "closed".to_string(),
            Ok(Err(err)) => break err.to_string(),
            Err(_) => break format!("silent for {} ms", qos.as_millis()),
        }
    };
    tracing::debug!("arbiter: connection {conn} ended: {ended}");
    state.lock().unwrap().lost(conn);
    send.abort();
    Ok(())
}

/// Runs the arbiter on `listen` until `shutdown`.
/// Runs the arbiter on `listen` until `shutdown`; with `metrics`, serves its Prometheus metrics
/// there too ([`metrics`]).
pub async fn run(
    listen: &str,
    metrics: Option<&str>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| Error::Io(format!("arbiter: listen on {listen}: {e}")))?;
    let metrics_listener = match metrics {
        Some(address) => Some(
            TcpListener::bind(address)
                .await
                .map_err(|e| Error::Io(format!("arbiter: metrics: listen on {address}: {e}")))?,
        ),
        None => None,
    };
    tracing::info!(
        "arbiter listening on {}",
        listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default()
    );
    let state = Arc::new(Mutex::new(Arbiter::default()));
    let metrics_server = metrics_listener.map(|listener| {
        tracing::info!(
            "arbiter metrics on http://{}/metrics",
            listener
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default()
        );
        tokio::spawn(metrics::serve(listener, state.clone()))
    });
    let ticker = {
        let state = state.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(25)).await;
                state.lock().unwrap().tick(Instant::now());
            }
        })
    };
    tokio::pin!(shutdown);
    let slots = ConnectionSlots::new("arbiter", ARBITER_CONNECTIONS);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let Some(slot) = slots.try_take() else { continue };
                    let state = state.clone();
                    tokio::spawn(async move {
                        let _slot = slot;
                        if let Err(err) = serve(state, stream).await {
                            tracing::debug!("arbiter connection ended: {err}");
                        }
                    });
                }
                Err(err) => tracing::warn!("arbiter: accept failed: {err}"),
            },
            _ = &mut shutdown => break,
        }
    }
    ticker.abort();
    if let Some(server) = metrics_server {
        server.abort();
    }
    tracing::info!("arbiter stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc::Receiver;

    fn hello(primary: bool, epoch: u64) -> ToArbiter {
        ToArbiter::Hello {
            mirror_id: StreamId([1; 16]),
            mirror_name: "MIRRORSET".into(),
            member: MemberName::new(if primary { "A" } else { "B" }).unwrap(),
            primary,
            epoch: Epoch(epoch),
            qos_ms: 1000,
            arbiter_mode: false,
            activation: 0,
        }
    }

    fn drain(rx: &mut Receiver<FromArbiter>) -> Vec<FromArbiter> {
        let mut out = Vec::new();
        while let Ok(m) = rx.try_recv() {
            out.push(m);
        }
        out
    }

    #[test]
    fn a_backup_takes_over_only_when_the_arbiter_lost_a_primary_in_arbiter_mode() {
        let mut arbiter = Arbiter::default();
        let (ptx, mut prx) = channel(ARBITER_QUEUE);
        let (btx, mut brx) = channel(ARBITER_QUEUE);
        let p = arbiter.hello(ptx, &hello(true, 1)).unwrap();
        let b = arbiter.hello(btx, &hello(false, 1)).unwrap();
        assert_eq!(
            drain(&mut prx),
            vec![FromArbiter::SeesPartner { sees: true }]
        );
        assert_eq!(
            drain(&mut brx),
            vec![FromArbiter::SeesPartner { sees: true }]
        );
        arbiter.message(
            p,
            &ToArbiter::Mode {
                arbiter: true,
                activation: 7,
            },
        );

        // The backup asks while the primary is still seen: no answer until the primary speaks.
        arbiter.message(b, &ToArbiter::Ask);
        assert_eq!(drain(&mut brx), vec![]);
        arbiter.message(p, &ToArbiter::Ping);
        assert_eq!(
            drain(&mut brx),
            vec![FromArbiter::Verdict { take_over: false }]
        );

        // Asked again, and the primary's host dies before it speaks: take over.
        arbiter.message(b, &ToArbiter::Ask);
        arbiter.lost(p);
        assert_eq!(
            drain(&mut brx),
            vec![
                FromArbiter::SeesPartner { sees: false },
                FromArbiter::Verdict { take_over: true }
            ]
        );
        // A backup that stands down is relayed to the primary, and can no longer win.
        let (ptx, mut prx) = channel(ARBITER_QUEUE);
        let (btx, mut brx) = channel(ARBITER_QUEUE);
        let mut second = Arbiter::default();
        let p2 = second.hello(ptx, &hello(true, 1)).unwrap();
        let b2 = second.hello(btx, &hello(false, 1)).unwrap();
        second.message(
            p2,
            &ToArbiter::Mode {
                arbiter: true,
                activation: 7,
            },
        );
        drain(&mut prx);
        drain(&mut brx);
        second.message(b2, &ToArbiter::StoodDown { activation: 7 });
        assert_eq!(
            drain(&mut prx),
            vec![FromArbiter::PartnerStoodDown { activation: 7 }]
        );
        second.lost(p2);
        second.message(b2, &ToArbiter::Ask);
        assert!(drain(&mut brx).contains(&FromArbiter::Verdict { take_over: false }));

        // The old primary comes back in the old epoch: it hears of the takeover, and only that.
        let (otx, mut orx) = channel(ARBITER_QUEUE);
        assert!(arbiter.hello(otx, &hello(true, 1)).is_none());
        assert_eq!(drain(&mut orx), vec![FromArbiter::BackupTookOver]);
    }

    #[test]
    fn a_member_that_stops_reading_is_dropped_instead_of_queueing_without_end() {
        let mut arbiter = Arbiter::default();
        let (ptx, _never_read) = channel(ARBITER_QUEUE);
        arbiter.hello(ptx, &hello(true, 1)).unwrap();
        // The backup comes and goes; every change is news for the primary, which never reads.
        for _ in 0..ARBITER_QUEUE {
            let (btx, _brx) = channel(ARBITER_QUEUE);
            let b = arbiter.hello(btx, &hello(false, 1)).unwrap();
            arbiter.lost(b);
        }
        assert_eq!(
            arbiter.status(),
            FromArbiter::Status {
                mirrors: vec![("MIRRORSET".into(), 0)],
                arbiter_mode: vec![],
            },
            "the primary that stopped reading is no longer counted as connected"
        );
    }

    #[test]
    fn a_primary_that_went_on_alone_cannot_be_taken_over_through_the_arbiter() {
        let mut arbiter = Arbiter::default();
        let (ptx, mut prx) = channel(ARBITER_QUEUE);
        let (btx, mut brx) = channel(ARBITER_QUEUE);
        let p = arbiter.hello(ptx, &hello(true, 1)).unwrap();
        let b = arbiter.hello(btx, &hello(false, 1)).unwrap();
        arbiter.message(
            p,
            &ToArbiter::Mode {
                arbiter: true,
                activation: 7,
            },
        );
        drain(&mut prx);
        drain(&mut brx);
        // The backup falls silent; the primary asks and, after the QoS, hears "not seen".
        arbiter.message(p, &ToArbiter::Ask);
        assert_eq!(drain(&mut prx), vec![]);
        arbiter.tick(Instant::now() + Duration::from_secs(2));
        assert_eq!(
            drain(&mut prx),
            vec![FromArbiter::SeesPartner { sees: false }]
        );
        // A stale former primary is told at once that someone took over.
        let (stx, mut srx) = channel(ARBITER_QUEUE);
        assert!(arbiter.hello(stx, &hello(true, 0)).is_none());
        assert_eq!(drain(&mut srx), vec![FromArbiter::BackupTookOver]);
        // The primary is now booked as alone: a backup that comes back and asks cannot win,
        // even once the primary is gone.
        let (btx, mut brx) = channel(ARBITER_QUEUE);
        let b2 = arbiter.hello(btx, &hello(false, 1)).unwrap();
        arbiter.lost(p);
        arbiter.message(b2, &ToArbiter::Ask);
        assert!(drain(&mut brx).contains(&FromArbiter::Verdict { take_over: false }));
        let _ = b;
    }
}
