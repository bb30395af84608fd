//! The agent: a small process beside the instance, the analogue of the ISCAgent.
//!
//! # What it is
//!
//! `mirrorlab member` starts the agent; the agent listens on the agent port (2188) and starts the
//! instance as a child process (`mirrorlab instance` with the same settings). Because it is a
//! separate process, it outlives an instance crash and can answer truthfully "my instance is
//! down" — the fact a backup needs to take over safely. It never restarts the instance by
//! itself: a crashed instance stays down until someone starts it again (`mirrorlab ctl start`,
//! or a new `mirrorlab member`), as in IRIS.
//!
//! # Protocol
//!
//! Length-prefixed JSON frames ([`crate::wire`]): a request `{"op": "status" | "start" | "stop"}`
//! gets one [`AgentReply`] with the instance's state (`running` with its pid, or `down` with the
//! reason it ended). For the failover rules it also answers:
//!
//! - `confirm_down`: the backup lost the primary and asks whether its instance is down. A
//!   running instance is probed on its superserver port; one that accepts the connection but
//!   does not answer within the given time is hung, and the agent forces it down (SIGKILL) before
//!   it answers "down". A forced-down instance stays down until someone starts it.
//! - `journal_tail`: a backup that was not active asks for the mirror journal records of the
//!   down instance after its own end; with them it holds everything and may take over.
//! - `mirror_role`: a restarted former primary asks the other failover member who it says the
//!   primary is, and in which epoch. A running instance is asked; for a down one the agent reads
//!   its configuration file.
//!
//! # Who may ask
//!
//! Anyone may ask for the status and start a down instance. When the instance's mirror
//! requires SSL/TLS, everything else — stopping the instance, confirming or forcing it down,
//! its journal, its role — is carried out only over TLS for a member of the mirror (its
//! certificate fingerprint is in the configuration), and the mirror's description only over
//! TLS; a plain request gets a refusal saying so. Without TLS the agent answers anyone on the
//! network, as an ISCAgent of a mirror without TLS does.
//!
//! # Signals
//!
//! SIGTERM or SIGINT to the agent stops the instance gracefully (SIGTERM, then SIGKILL after
//! [`STOP_TIMEOUT`]) and then the agent itself: `docker stop` stops the whole member cleanly.
//!
//! # Left out
//!
//! Authentication of requests in a mirror without TLS.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;
use tokio::sync::watch;

use crate::config::mirror::MemberName;
use crate::error::{Error, Result};
use crate::journal::{Epoch, StreamId};
use crate::limits::{AGENT_CONNECTIONS, ConnectionSlots};
use crate::os::{Signal, send_signal};
use crate::tls::{self, Identity};
use crate::util::now_ms;
use crate::wire::{MAX_AGENT_FRAME, read_frame, write_frame};

mod ask;
mod client;
mod probe;

use ask::{AskError, ask_instance, local_address};
use probe::{Probe, probe_instance};

pub use client::{Target, call, call_blocking, call_raw, call_to};

/// How a person starts a down instance again (the agent never does by itself).
pub const START_AGAIN: &str = "start it with `mirrorlab ctl start` on its host (in the Compose lab: \
     `docker exec <member> mirrorlab ctl start`, or `docker restart <member>`)";

/// How long a graceful stop may take before the instance is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A request to the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum AgentRequest {
    /// Report the instance's state.
    Status,
    /// Start the instance if it is down.
    Start,
    /// Stop the instance gracefully.
    Stop,
    /// Confirm that the instance is down; force it down when it runs but does not answer on its
    /// superserver port within `timeout_ms` (hung).
    ConfirmDown {
        /// How long the instance may take to answer.
        timeout_ms: u64,
    },
    /// Force the instance down (SIGKILL) if it still acts as `member`, primary of `mirror_name`
    /// in an epoch before `epoch` (or does not answer): the other member took over through the
    /// arbiter. A restarted instance that no longer claims the role is left alone.
    ForceDown {
        /// The mirror.
        mirror_name: String,
        /// The old primary's member name.
        member: MemberName,
        /// The epoch of the takeover.
        epoch: Epoch,
    },
    /// The mirror journal records from position `from` on, read from the files of the down
    /// instance: what a backup that was not active needs to take over.
    JournalTail {
        /// The mirror.
        mirror_name: String,
        /// The mirror's id.
        mirror_id: StreamId,
        /// The first position wanted.
        from: u64,
    },
    /// The Lab page's "hang this instance": stop the instance's process (SIGSTOP) and let it
    /// go on (SIGCONT) after `seconds`, unless it was forced down meanwhile. Only an agent
    /// started with `--lab` does it.
    Hang {
        /// How long, 1 to 60 s.
        seconds: u64,
    },
    /// Who the instance says is the primary of `mirror_name`, and in which epoch.
    MirrorRole {
        /// The mirror.
        mirror_name: String,
    },
    /// The instance's mirror events at or after `since_ms`, read from its files (so a down
    /// instance answers too): the other failover member merges them into its own.
    MirrorEvents {
        /// The oldest time wanted (ms since the Unix epoch).
        since_ms: i64,
    },
    /// Describe the instance's mirror (Join as Failover, first step).
    MirrorInfo {
        /// The mirror the joining member names.
        mirror_name: String,
        /// The instance name the joining member names.
        instance_name: String,
    },
}

/// Whether the instance runs, as the agent sees it (`running` or `down` on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceState {
    /// The agent started it and it has not ended.
    Running,
    /// Never started, stopped, crashed, or forced down.
    Down,
}

impl std::fmt::Display for InstanceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            InstanceState::Running => "running",
            InstanceState::Down => "down",
        })
    }
}

/// The instance's state as the agent sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceStatus {
    /// Running or down.
    pub state: InstanceState,
    /// The instance's process id while it runs.
    pub pid: Option<u32>,
    /// When the state began (ms since the Unix epoch).
    pub since_ms: i64,
    /// How the last run ended (`exit status: 0`, `killed by signal 9`, …).
    pub last_exit: Option<String>,
    /// Why the agent forced the last run down (a hung instance, a former primary the other
    /// failover member superseded), while it stays down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forced_down: Option<String>,
    /// How many times the agent started the instance.
    pub starts: u32,
}

/// The agent's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentReply {
    /// Whether the request was carried out.
    pub ok: bool,
    /// What happened, for people.
    pub message: String,
    /// The instance's state afterwards.
    pub instance: InstanceStatus,
    /// The agent's host name.
    pub host: String,
    /// The mirror's description (answer to `mirror_info`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<crate::mirror::protocol::MirrorDescription>,
    /// The answer to `mirror_role`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<RoleReport>,
    /// The answer to `journal_tail`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub journal: Option<JournalTail>,
    /// The answer to `mirror_events`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<crate::mirror::events::MirrorEvent>>,
}

/// Journal records of a down instance (answer to `journal_tail`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalTail {
    /// The first position sent (the one asked for).
    pub first: u64,
    /// The last position sent (the end of the instance's mirror journal); `first - 1` when
    /// there is nothing after what the asker has.
    pub last: u64,
    /// The records' frames, exactly as the journal stores them, in base64.
    pub frames: String,
}

/// Most journal bytes one `journal_tail` answer carries (the frame limit, with room for base64).
const MAX_TAIL_BYTES: usize = MAX_AGENT_FRAME / 2;

/// What an instance says about its mirror's primary (answer to `mirror_role`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleReport {
    /// Whether it belongs to the mirror at all.
    pub member: bool,
    /// Whether the instance runs (false: read from its configuration file).
    pub running: bool,
    /// The member it names as primary.
    pub primary: Option<MemberName>,
    /// Its epoch.
    pub epoch: Epoch,
    /// It does not know its role yet (restarting former primary, or taking over).
    #[serde(default)]
    pub deciding: bool,
}

/// How the agent starts its instance.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    /// Address to listen on.
    pub listen: String,
    /// The program to run (this binary).
    pub program: PathBuf,
    /// Its arguments (`instance --data-dir ...`).
    pub args: Vec<OsString>,
    /// Host name reported.
    pub host_name: String,
    /// The instance's name.
    pub instance_name: String,
    /// The instance's superserver address (to ask it about its mirror).
    pub superserver: String,
    /// The instance's data directory (its configuration is read there while it is down).
    pub data_dir: PathBuf,
    /// The install folder (a supplied TLS certificate is looked for there).
    pub install_dir: PathBuf,
    /// The Lab page is on: the agent hangs its instance when asked.
    pub lab: bool,
}

struct Supervisor {
    settings: AgentSettings,
    /// The member's TLS identity, shared with its instance (the same files).
    identity: Arc<Identity>,
    status: Mutex<InstanceStatus>,
    /// Bumped whenever the instance exits, so a stop can wait for it.
    exits: watch::Sender<u64>,
    /// Held while the agent reads the down instance's files (its journal) and while it starts
    /// the instance: a Start waits for a read to end, and a read never begins beside a running
    /// instance.
    files: tokio::sync::Mutex<()>,
}

impl Supervisor {
    fn status(&self) -> InstanceStatus {
        self.status.lock().unwrap().clone()
    }

    /// Whether `request` may be carried out for a caller showing `peer` (None: plain TCP).
    /// The configuration is read at each request: it is small, and a member authorized a moment
    /// ago on the primary is in it as soon as the instance wrote it.
    fn permit(
        &self,
        request: &AgentRequest,
        peer: Option<&str>,
    ) -> std::result::Result<(), String> {
        if matches!(request, AgentRequest::Status | AgentRequest::Start) {
            return Ok(());
        }
        let config =
            crate::config::read_config(&self.settings.data_dir).map_err(|e| e.to_string())?;
        let Some(membership) = config
            .as_ref()
            .and_then(|c| c.mirror.membership.as_ref())
            .filter(|m| m.mirror.require_tls)
        else {
            return Ok(());
        };
        match (request, peer) {
            (_, None) => Err(format!(
                "mirror {} requires SSL/TLS: this request is answered only over TLS",
                membership.mirror.name
            )),
            // A member about to join shows a certificate nobody authorized yet.
            (AgentRequest::MirrorInfo { .. }, Some(_)) => Ok(()),
            (_, Some(peer)) if membership.authorized(peer) => Ok(()),
            (_, Some(peer)) => Err(format!(
                "the certificate {peer} is not one of mirror {}'s members",
                membership.mirror.name
            )),
        }
    }

    fn reply(&self, ok: bool, message: impl Into<String>) -> AgentReply {
        AgentReply {
            ok,
            message: message.into(),
            instance: self.status(),
            host: self.settings.host_name.clone(),
            mirror: None,
            role: None,
            journal: None,
            events: None,
        }
    }

    /// Starts the instance unless it runs; waits while the agent reads its files.
    async fn start(self: &Arc<Self>) -> AgentReply {
        let _files = self.files.lock().await;
        let mut status = self.status.lock().unwrap();
        if status.state == InstanceState::Running {
            let pid = status.pid.unwrap_or(0);
            drop(status);
            return self.reply(true, format!("the instance is already running (pid {pid})"));
        }
        let mut command = Command::new(&self.settings.program);
        command
            .args(&self.settings.args)
            .stdin(Stdio::null())
            .kill_on_drop(false);
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(err) => {
                drop(status);
                return self.reply(false, format!("could not start the instance: {err}"));
            }
        };
        let pid = child.id().unwrap_or(0);
        *status = InstanceStatus {
            state: InstanceState::Running,
            pid: Some(pid),
            since_ms: now_ms(),
            last_exit: status.last_exit.clone(),
            forced_down: None,
            starts: status.starts + 1,
        };
        drop(status);
        tracing::info!("agent: started the instance (pid {pid})");
        let supervisor = self.clone();
        tokio::spawn(async move {
            let ended = match child.wait().await {
                Ok(exit) => describe_exit(exit),
                Err(err) => format!("lost track of the instance: {err}"),
            };
            if ended == "exit status 0" {
                tracing::info!("agent: the instance (pid {pid}) stopped");
            } else {
                tracing::warn!("agent: the instance (pid {pid}) ended: {ended}");
            }
            {
                let mut status = supervisor.status.lock().unwrap();
                status.state = InstanceState::Down;
                status.pid = None;
                status.since_ms = now_ms();
                status.last_exit = Some(ended);
            }
            supervisor.exits.send_modify(|n| *n += 1);
        });
        self.reply(true, format!("the instance started (pid {pid})"))
    }

    /// See [`AgentRequest::Hang`].
    fn hang(self: &Arc<Self>, seconds: u64) -> AgentReply {
        if !self.settings.lab {
            return self.reply(
                false,
                "the Lab is off on this member: start it with --lab (MIRRORLAB_LAB=1) to hang it",
            );
        }
        if !(1..=60).contains(&seconds) {
            return self.reply(false, "a hang lasts 1 to 60 seconds");
        }
        let Some(pid) = self.status().pid else {
            return self.reply(false, "the instance is down");
        };
        if let Err(err) = send_signal(pid, Signal::Stop) {
            return self.reply(false, format!("could not hang the instance: {err}"));
        }
        tracing::warn!("agent: the Lab hangs the instance (pid {pid}) for {seconds} s");
        let supervisor = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(seconds)).await;
            // Forced down meanwhile (a backup's agent question found it hung): nothing to wake,
            // and the pid may be another process's by now.
            if supervisor.status().pid == Some(pid) {
                let _ = send_signal(pid, Signal::Cont);
                tracing::info!("agent: the instance (pid {pid}) goes on after the Lab's hang");
            }
        });
        self.reply(
            true,
            format!("the instance (pid {pid}) hangs for {seconds} s"),
        )
    }

    /// Kills the instance (SIGKILL) and waits until it is gone.
    async fn force_down(&self, why: &str) -> AgentReply {
        let mut exits = self.exits.subscribe();
        let before = *exits.borrow_and_update();
        let Some(pid) = self.status().pid else {
            return self.reply(true, "the instance is down");
        };
        tracing::warn!("agent: forcing the instance (pid {pid}) down: {why}");
        if let Err(err) = send_signal(pid, Signal::Kill) {
            return self.reply(false, format!("could not force the instance down: {err}"));
        }
        let _ = exits.wait_for(|n| *n != before).await;
        {
            let mut status = self.status.lock().unwrap();
            if status.state == InstanceState::Down {
                status.forced_down = Some(why.to_string());
            }
        }
        // It stays down until a person starts it: say how, where a person looks first.
        tracing::warn!(
            "agent: the instance is down and stays down until started again: {}",
            START_AGAIN
        );
        self.reply(true, format!("the instance was forced down: {why}"))
    }

    /// See [`AgentRequest::JournalTail`]. Opening the journal may cut a torn tail and fsync, so
    /// it happens only under the data directory's lock — the one the instance takes at start —
    /// and a Start waits meanwhile.
    async fn journal_tail(
        &self,
        mirror_name: String,
        mirror_id: StreamId,
        from: u64,
    ) -> AgentReply {
        let _files = self.files.lock().await;
        if self.status().state == InstanceState::Running {
            return self.reply(
                false,
                "the instance is running: its journal is served by the instance",
            );
        }
        let data_dir = self.settings.data_dir.clone();
        let read = tokio::task::spawn_blocking(move || {
            let _lock = crate::instance::lock_data_dir(&data_dir)?;
            let dir = data_dir.join("mgr").join("journal");
            read_tail(&dir, &mirror_name, mirror_id, from)
        })
        .await;
        match read {
            Ok(Ok(tail)) => AgentReply {
                journal: Some(tail),
                ..self.reply(true, "journal records of the down instance")
            },
            Ok(Err(err)) => self.reply(false, err.to_string()),
            Err(err) => self.reply(false, err.to_string()),
        }
    }

    /// See [`AgentRequest::ForceDown`].
    async fn force_down_stale(
        &self,
        mirror_name: String,
        member: MemberName,
        epoch: Epoch,
    ) -> AgentReply {
        if self.status().state != InstanceState::Running {
            return self.reply(true, "the instance is down");
        }
        let address = local_address(&self.settings.superserver);
        let probe = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::task::spawn_blocking(move || ask_instance(&address, &mirror_name)),
        )
        .await;
        match probe {
            Ok(Ok(Ok(d))) if d.primary.as_ref() == Some(&member) && d.epoch < epoch && !d.deciding => {
                self.force_down(&format!(
                    "it still acts as primary of epoch {} and the other failover member took over in epoch {epoch}",
                    d.epoch
                ))
                .await
            }
            Ok(Ok(Ok(_))) | Ok(Ok(Err(AskError::NotMember(_)))) => {
                self.reply(true, "the instance no longer acts as the primary: left running")
            }
            // Not listening yet: starting up, so not acting as primary.
            Ok(Ok(Err(AskError::NotListening(_)))) => {
                self.reply(true, "the instance is starting: left running")
            }
            _ => self.force_down("it does not answer").await,
        }
    }

    /// See [`AgentRequest::ConfirmDown`].
    async fn confirm_down(&self, timeout: Duration) -> AgentReply {
        if self.status().state != InstanceState::Running {
            return self.reply(true, "the instance is down");
        }
        let address = local_address(&self.settings.superserver);
        let probe = tokio::task::spawn_blocking(move || probe_instance(&address, timeout)).await;
        match probe {
            Ok(Probe::Silent) => {
                self.force_down(&format!(
                    "it did not answer within {} ms (hung)",
                    timeout.as_millis()
                ))
                .await
            }
            Ok(Probe::Answered) => self.reply(true, "the instance is running"),
            Ok(Probe::NotListening) => self.reply(
                true,
                "the instance is running but not listening yet (starting up)",
            ),
            Err(err) => self.reply(false, format!("probe failed: {err}")),
        }
    }

    /// See [`AgentRequest::MirrorRole`].
    async fn mirror_role(&self, mirror_name: String) -> AgentReply {
        if self.status().state == InstanceState::Running {
            let address = local_address(&self.settings.superserver);
            let name = mirror_name.clone();
            let asked = tokio::task::spawn_blocking(move || ask_instance(&address, &name)).await;
            let report = match asked {
                Ok(Ok(description)) => RoleReport {
                    member: true,
                    running: true,
                    primary: description.primary,
                    epoch: description.epoch,
                    deciding: description.deciding,
                },
                Ok(Err(AskError::NotMember(_))) => RoleReport {
                    member: false,
                    running: true,
                    primary: None,
                    epoch: Epoch(0),
                    deciding: false,
                },
                Ok(Err(err)) => return self.reply(false, err.to_string()),
                Err(err) => return self.reply(false, err.to_string()),
            };
            return AgentReply {
                role: Some(report),
                ..self.reply(true, "mirror role")
            };
        }
        let config = match crate::config::read_config(&self.settings.data_dir) {
            Ok(config) => config,
            Err(err) => return self.reply(false, err.to_string()),
        };
        let membership = config
            .as_ref()
            .and_then(|c| c.mirror.membership.as_ref())
            .filter(|m| m.mirror.name == mirror_name);
        let report = RoleReport {
            member: membership.is_some(),
            running: false,
            primary: membership.and_then(|m| m.primary_name.clone()),
            epoch: config.as_ref().map(|c| c.epoch).unwrap_or_default(),
            deciding: false,
        };
        AgentReply {
            role: Some(report),
            ..self.reply(true, "mirror role (the instance is down)")
        }
    }

    /// Stops the instance gracefully; kills it if it does not stop within [`STOP_TIMEOUT`].
    async fn stop(&self) -> AgentReply {
        // Subscribe before reading the pid, so an exit between the two is still seen.
        let mut exits = self.exits.subscribe();
        let before = *exits.borrow_and_update();
        let Some(pid) = self.status().pid else {
            return self.reply(true, "the instance is already down");
        };
        if let Err(err) = send_signal(pid, Signal::Term) {
            return self.reply(false, format!("could not signal the instance: {err}"));
        }
        let stopped = tokio::time::timeout(STOP_TIMEOUT, exits.wait_for(|n| *n != before))
            .await
            .is_ok();
        if !stopped {
            tracing::warn!("agent: the instance did not stop within {STOP_TIMEOUT:?}; killing it");
            let _ = send_signal(pid, Signal::Kill);
            let _ = exits.wait_for(|n| *n != before).await;
        }
        self.reply(true, "the instance stopped")
    }
}

impl Supervisor {
    /// Asks the local instance about its mirror, for a member that wants to join it.
    async fn mirror_info(&self, mirror_name: String, instance_name: String) -> AgentReply {
        if !instance_name.eq_ignore_ascii_case(&self.settings.instance_name) {
            return self.reply(
                false,
                format!(
                    "this host runs instance {}, not {instance_name}",
                    self.settings.instance_name
                ),
            );
        }
        if self.status().state != InstanceState::Running {
            return self.reply(
                false,
                format!("instance {} is down", self.settings.instance_name),
            );
        }
        let address = local_address(&self.settings.superserver);
        let asked = tokio::task::spawn_blocking(move || ask_instance(&address, &mirror_name)).await;
        match asked {
            Ok(Ok(description)) => AgentReply {
                mirror: Some(description),
                ..self.reply(true, "mirror information")
            },
            Ok(Err(err)) => self.reply(false, err.to_string()),
            Err(err) => self.reply(false, err.to_string()),
        }
    }
}

/// Reads the mirror journal of a down instance from `from` to its end.
fn read_tail(
    dir: &std::path::Path,
    mirror_name: &str,
    mirror_id: StreamId,
    from: u64,
) -> Result<JournalTail> {
    use crate::journal::{Journal, JournalOptions, JournalPos};
    use base64::Engine;
    let options = JournalOptions::mirror(
        mirror_name,
        crate::journal::DEFAULT_MAX_SEGMENT_BYTES,
        JournalPos(1),
    );
    if !crate::journal::files_exist(dir, &options.prefix)? {
        return Err(Error::Conflict(format!(
            "this host has no journal of mirror {mirror_name}"
        )));
    }
    // The instance is down and the agent starts it only on request: nothing else has these
    // files open. Opening cuts a torn write at the end, as the instance's own start would.
    let (journal, _) = Journal::open(dir, mirror_id, options)?;
    let shared = journal.shared();
    let from = JournalPos(from.max(1));
    if from < shared.first_pos() {
        return Err(Error::Conflict(format!(
            "the journal here starts at {}; records from {from} are no longer kept",
            shared.first_pos()
        )));
    }
    let mut frames = Vec::new();
    let mut last = from.0 - 1;
    for record in shared.read_range(JournalPos(from.0 - 1), shared.appended_end()) {
        let record = record?;
        record.encode_into(&mut frames);
        last = record.pos.0;
        if frames.len() > MAX_TAIL_BYTES {
            return Err(Error::Conflict(
                "the journal the asker lacks is too large to send through the agent".into(),
            ));
        }
    }
    Ok(JournalTail {
        first: from.0,
        last,
        frames: base64::engine::general_purpose::STANDARD.encode(frames),
    })
}

fn describe_exit(exit: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (exit.code(), exit.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => "ended".into(),
    }
}

/// How long a connection may wait between requests (or inside one) before the agent closes
/// it: callers send their request at once, so a silent or half-sent request is not a caller's.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

async fn serve_connection(supervisor: Arc<Supervisor>, stream: TcpStream) -> Result<()> {
    // One peeked byte tells a TLS handshake from a plain frame.
    let mut first = [0u8; 1];
    match tokio::time::timeout(IDLE_TIMEOUT, stream.peek(&mut first)).await {
        Ok(Ok(1)) if tls::is_tls_start(first[0]) => {
            let accepted = tls::accept(stream, &supervisor.identity).await?;
            serve_requests(supervisor, accepted.stream, Some(accepted.peer)).await
        }
        Ok(Ok(1)) => serve_requests(supervisor, stream, None).await,
        _ => Ok(()),
    }
}

async fn serve_requests<S: AsyncRead + AsyncWrite + Unpin>(
    supervisor: Arc<Supervisor>,
    mut stream: S,
    peer: Option<String>,
) -> Result<()> {
    loop {
        let next = tokio::time::timeout(
            IDLE_TIMEOUT,
            read_frame::<_, AgentRequest>(&mut stream, MAX_AGENT_FRAME),
        );
        let Ok(next) = next.await else {
            return Ok(());
        };
        let Some(request) = next? else {
            return Ok(());
        };
        if let Err(refusal) = supervisor.permit(&request, peer.as_deref()) {
            write_frame(&mut stream, &supervisor.reply(false, refusal)).await?;
            continue;
        }
        let reply = match request {
            AgentRequest::Status => supervisor.reply(true, "status"),
            AgentRequest::Start => supervisor.start().await,
            AgentRequest::Stop => supervisor.stop().await,
            AgentRequest::MirrorInfo {
                mirror_name,
                instance_name,
            } => supervisor.mirror_info(mirror_name, instance_name).await,
            AgentRequest::ConfirmDown { timeout_ms } => {
                supervisor
                    .confirm_down(Duration::from_millis(timeout_ms.clamp(100, 60_000)))
                    .await
            }
            AgentRequest::MirrorRole { mirror_name } => supervisor.mirror_role(mirror_name).await,
            AgentRequest::Hang { seconds } => supervisor.hang(seconds),
            AgentRequest::MirrorEvents { since_ms } => {
                let dir = supervisor.settings.data_dir.clone();
                // Half a frame: the reply's other fields and escaping stay well inside one.
                let read = tokio::task::spawn_blocking(move || {
                    let events = crate::mirror::events::read(&dir, since_ms);
                    crate::mirror::events::newest_within(events, MAX_AGENT_FRAME / 2)
                });
                AgentReply {
                    events: Some(read.await.unwrap_or_default()),
                    ..supervisor.reply(true, "mirror events")
                }
            }
            AgentRequest::JournalTail {
                mirror_name,
                mirror_id,
                from,
            } => supervisor.journal_tail(mirror_name, mirror_id, from).await,
            AgentRequest::ForceDown {
                mirror_name,
                member,
                epoch,
            } => {
                supervisor
                    .force_down_stale(mirror_name, member, epoch)
                    .await
            }
        };
        write_frame(&mut stream, &reply).await?;
    }
}

/// Runs the agent: starts the instance, answers on the agent port, stops everything on
/// `shutdown`.
pub async fn run(
    settings: AgentSettings,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let listener = TcpListener::bind(&settings.listen)
        .await
        .map_err(|e| Error::Io(format!("agent: listen on {}: {e}", settings.listen)))?;
    tracing::info!(
        "agent listening on {}",
        listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default()
    );
    let (exits, _) = watch::channel(0);
    // Made before the instance starts, so the two never race to create the files.
    let identity = Arc::new(Identity::load_or_create(
        &settings.data_dir,
        Some(&settings.install_dir),
        &settings.host_name,
    )?);
    let supervisor = Arc::new(Supervisor {
        identity,
        settings,
        status: Mutex::new(InstanceStatus {
            state: InstanceState::Down,
            pid: None,
            since_ms: now_ms(),
            last_exit: None,
            forced_down: None,
            starts: 0,
        }),
        exits,
        files: tokio::sync::Mutex::new(()),
    });
    let first = supervisor.start().await;
    if !first.ok {
        return Err(Error::Unavailable(first.message));
    }
    tokio::pin!(shutdown);
    let slots = ConnectionSlots::new("agent", AGENT_CONNECTIONS);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let Some(slot) = slots.try_take() else { continue };
                    let supervisor = supervisor.clone();
                    tokio::spawn(async move {
                        let _slot = slot;
                        if let Err(err) = serve_connection(supervisor, stream).await {
                            tracing::debug!("agent connection ended: {err}");
                        }
                    });
                }
                Err(err) => tracing::warn!("agent: accept failed: {err}"),
            },
            _ = &mut shutdown => break,
        }
    }
    tracing::info!("agent: stopping the instance");
    supervisor.stop().await;
    Ok(())
}
