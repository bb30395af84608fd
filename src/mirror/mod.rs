//! Mirroring: a primary and a backup kept identical by shipping the journal, as IRIS does.
//!
//! # Members and roles
//!
//! A mirror has one primary — the only member whose mirrored databases accept writes — and a
//! backup, the other failover member, which keeps read-only copies up to date and is ready to
//! take over. Creating a
//! mirror makes the creating member its primary at once. Another instance joins as failover in
//! two steps: it asks the primary's agent about the mirror, then stores its own member
//! information and connects.
//!
//! # Two journals
//!
//! Every member keeps its own journal for its local databases and a *mirror journal*
//! (`MIRROR-<NAME>-YYYYMMDD.NNN`) whose positions are the same on every member. A database added
//! to the mirror switches its applied position to the mirror journal: from then on its changes
//! are written to the mirror journal on the primary and *applied* (dejournaled) from it on the
//! backup. Mirror events (mirror created, database added) are records of the mirror journal too.
//!
//! # Synchronous transfer
//!
//! The backup connects to the primary's mirror private address on the superserver port
//! ([`server`], [`receiver`]) and asks for the journal after its last position. The primary's
//! writer hands each batch to the [`hub`] before its own fsync; the backup appends it at the same
//! positions, fsyncs and acknowledges; the primary commits the batch — makes it visible — and
//! answers its clients only after that acknowledgement (when the backup is *active*). One round
//! trip serves a whole batch. Every member applies only what the primary committed.
//!
//! # Start-up
//!
//! A member's process is wired in [`crate::node`]: the instance prepares (configuration,
//! journal), the mirror decides the member's role and opens its journal ([`start`]), the
//! instance recovers and starts its writer with the mirror's [`steps`] as the writer's extension
//! and the [`hub`] as its replication, and the [`service`] starts the superserver and the
//! mirror's threads.
//!
//! # Copies, Activate, Catchup
//!
//! Add to Mirror marks databases mirrored. Every other member needs a copy of each file: dismount
//! it there, copy the primary's file (`cp`, while no one writes or after Freeze), mount it. The
//! member checks that the copy is the mirrored database (same mirror, same database id), and
//! after Activate and Catchup applies the mirror journal from the position stored inside the
//! copy — fetching older records from the primary when its own journal does not reach back.
//!
//! # Failover
//!
//! What a failover member does when links break, the arbiter answers or the other host's agent
//! reports is decided by one pure state machine, [`failover`]: events and the time in, actions
//! out, every rule of the reference a unit test beside it, and an explorer that checks the
//! invariants below over every interleaving of faults up to a depth. The [`driver`] thread feeds
//! it (from the [`hub`], the [`receiver`], the [`arbiter_link`] and the agents) and carries out
//! its actions: holding acknowledgements in the trouble state, taking over in a new epoch,
//! asking agents and the arbiter. A former primary that comes back learns its role from the
//! other member, and one from an older epoch undoes its [`divergence`] before it follows.
//!
//! # SSL/TLS
//!
//! A mirror created with Require SSL/TLS runs its data channel and agent requests over mutual
//! TLS ([`crate::tls`]). Every member knows every other member's certificate fingerprint and
//! accepts no other; a new member waits in Pending New Members on the primary ([`server`],
//! [`pending`]) until someone authorizes its certificate, and only then receives journal.
//!
//! # Async members
//!
//! Disaster recovery and reporting members receive the journal like the backup but never count
//! as active, so they never delay a commit and never take over; after a failover they try the
//! failover members in turn until the new primary welcomes them.
//!
//! # Invariants
//!
//! - Only the primary writes mirrored databases; everywhere else they are read-only.
//! - A commit acknowledged while a backup is active is in the backup's journal; losing an
//!   active backup (its link breaks, times out, or another connection replaces it) holds
//!   mirrored commits until it is known not to take over, and mirrored writes wait before
//!   they begin meanwhile.
//! - No member — the primary included — shows a mirrored row before the active backup holds
//!   it, so no read ever returns a row that a takeover undoes; members apply nothing beyond what
//!   the primary committed, so a restarted primary can always tell a member to cut the rest.
//! - Every takeover starts a new epoch, and a member's history is compared at the fork.
//! - Whenever a monitor shows Arbiter Controlled, the arbiter holds the primary booked in
//!   arbiter mode: a new primary starts in agent mode and enters arbiter mode only through its
//!   own booking; a backup that may not take over asks nobody, and a stand-down cancels what
//!   the arbiter booked for it.
//! - A `hello` never rewrites a configured member's addresses, and without TLS one is accepted
//!   only from an address the configuration names for that member.
//!
//! # Lock order
//!
//! The hub's lock is taken before a member's outbox lock (publishing writes into outboxes under
//! the hub's lock); nothing takes them the other way round. The receiver holds the backup's
//! journal lock while the writer rolls a divergent tail back; the writer never takes that lock.
//!
//! # Left out (for now)
//!
//! Virtual IPs, and TLS on the arbiter's connections.

pub(crate) mod arbiter_link;
pub mod auto;
pub mod copy;
pub(crate) mod core;
pub(crate) mod divergence;
pub(crate) mod driver;
pub mod events;
pub(crate) mod failover;
pub(crate) mod hub;
pub(crate) mod outbox;
pub mod pending;
pub mod protocol;
pub(crate) mod receiver;
pub(crate) mod server;
pub(crate) mod service;
pub(crate) mod start;
pub(crate) mod state;
pub(crate) mod status;
pub(crate) mod steps;

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::ConfigStore;
use crate::error::Result;
use crate::journal::JournalPos;

/// What the mirror's threads and actions share.
pub struct MirrorContext {
    /// The instance configuration.
    pub config: Arc<ConfigStore>,
    /// Databases and namespaces.
    pub catalog: Arc<crate::storage::Catalog>,
    /// Runtime mirror state.
    pub mirror: Arc<state::MirrorState>,
    /// The writer.
    pub writer: crate::instance::writer::WriterHandle,
    /// The data directory.
    pub data_dir: PathBuf,
    /// The journal folder.
    pub journal_dir: PathBuf,
    /// Journal segment size.
    pub max_segment_bytes: u64,
    /// This host's name.
    pub host_name: String,
    /// This instance's name.
    pub instance_name: String,
    /// The superserver bind address.
    pub superserver: String,
    /// The agent bind address.
    pub agent: String,
    /// This member's TLS key and certificate.
    pub identity: Arc<crate::tls::Identity>,
    /// Where connections to the other members go ([`crate::transport`]).
    pub network: Arc<dyn crate::transport::Network>,
    /// What stopping at once means here (see [`SupersededHook`]).
    pub superseded: SupersededHook,
    /// Called when this member's mirror journal failed on the receiving side: the instance
    /// stops, as it does when the writer fails (see [`receiver`]).
    pub journal_failed: FailedHook,
    /// The journal files' write path (the real file calls, or a test's faults).
    pub journal_io: Arc<dyn crate::journal::JournalIo>,
}

/// Called when a part of the instance failed in a way it cannot go on from: the instance stops.
pub type FailedHook = Arc<dyn Fn(&str) + Send + Sync>;

/// Called when the other member took over and this instance must stop at once (the failover
/// rules' `ShutDown`): the member's process exits with status 3; a test records it instead, and
/// the failover driver stops deciding.
pub type SupersededHook = Arc<dyn Fn() + Send + Sync>;

/// The certificate `member` must show in a mirror that requires SSL/TLS.
fn expected_certificate(member: &crate::config::mirror::MemberInfo) -> Result<String> {
    member.certificate.clone().ok_or_else(|| {
        crate::error::Error::Conflict(format!(
            "no certificate is known for member {}; it must join the mirror again",
            member.name
        ))
    })
}

/// How to reach `member`'s agent: over TLS, pinned to its certificate, when the mirror requires
/// SSL/TLS; plain otherwise.
pub fn agent_target(
    identity: &Arc<crate::tls::Identity>,
    m: &crate::config::mirror::Membership,
    member: &crate::config::mirror::MemberInfo,
) -> Result<crate::agent::Target> {
    let address = member.agent_connect_address()?;
    if !m.mirror.require_tls {
        return Ok(crate::agent::Target::plain(address));
    }
    Ok(crate::agent::Target {
        address,
        tls: Some((identity.clone(), Some(expected_certificate(member)?))),
    })
}

/// Opens a connection to `member` at `address` (its superserver port) on `network`: over TLS,
/// pinned to its certificate, when the mirror requires SSL/TLS; plain otherwise.
pub fn dial(
    network: &dyn crate::transport::Network,
    identity: &crate::tls::Identity,
    m: &crate::config::mirror::Membership,
    member: &crate::config::mirror::MemberInfo,
    address: &str,
    timeout: std::time::Duration,
) -> Result<crate::tls::Channel> {
    // While the Lab cuts the link to the other members, no connection to one is made.
    crate::lab::cuts::global().wait_to_connect(crate::lab::cuts::Link::Members, timeout)?;
    let connection = network.connect(address, timeout)?;
    if !m.mirror.require_tls {
        return Ok(connection.plain());
    }
    let crate::transport::Connection::Tcp(tcp) = connection else {
        return Err(crate::error::Error::Conflict(format!(
            "mirror {} requires SSL/TLS, which this network does not carry",
            m.mirror.name
        )));
    };
    crate::tls::connect_blocking(
        tcp,
        identity,
        Some(&expected_certificate(member)?),
        crate::tls::HANDSHAKE_TIMEOUT,
    )
    .map(|(channel, _)| channel)
}

/// Opens a conversation with `member`'s superserver (over TLS when the mirror requires it) and
/// sends its first message: the channel's two halves, buffered, and reads that give up after
/// `read_timeout`. For the short conversations a member starts itself: a Fetch, a Copy.
pub fn open_conversation(
    network: &dyn crate::transport::Network,
    identity: &crate::tls::Identity,
    m: &crate::config::mirror::Membership,
    member: &crate::config::mirror::MemberInfo,
    first: &protocol::Control,
    read_timeout: std::time::Duration,
) -> Result<(
    std::io::BufReader<crate::tls::Channel>,
    std::io::BufWriter<crate::tls::Channel>,
)> {
    use std::io::Write as _;
    let address = member.data_channel_address()?;
    let stream = dial(
        network,
        identity,
        m,
        member,
        &address,
        std::time::Duration::from_secs(5),
    )?;
    stream.set_read_timeout(Some(read_timeout))?;
    stream.set_write_timeout(Some(read_timeout))?;
    let reader = std::io::BufReader::new(stream.try_clone()?);
    let mut writer = std::io::BufWriter::new(stream);
    protocol::write_control(&mut writer, first)?;
    writer.flush()?;
    Ok((reader, writer))
}

impl MirrorContext {
    /// The mirror as this member describes it to others.
    pub fn describe(&self) -> Option<protocol::MirrorDescription> {
        let config = self.config.get();
        let m = config.mirror.membership.as_ref()?;
        let journal = self.mirror.journal();
        // One look at the published status: the role, the link and the driver's decisions of
        // the same moment.
        let (role, deciding, connected, taking_over, undecided) = self.mirror.read(|s| {
            (
                s.role,
                s.deciding,
                s.link.connected,
                s.failover.taking_over,
                s.failover.undecided,
            )
        });
        let primary = if role == state::Role::Primary {
            Some(m.this.name.clone())
        } else {
            m.primary_name.clone()
        };
        let mut members: Vec<crate::config::mirror::MemberInfo> = std::iter::once(m.this.clone())
            .chain(m.others.iter().cloned())
            .collect();
        members.sort_by_key(|member| Some(&member.name) != primary.as_ref()); // primary first
        Some(protocol::MirrorDescription {
            mirror: m.mirror.clone(),
            members,
            primary,
            databases: m.databases.clone(),
            journal_first: journal.as_ref().map_or(JournalPos(1), |j| j.first_pos()),
            journal_end: journal.as_ref().map_or(JournalPos(0), |j| j.durable_end()),
            epoch: config.epoch,
            epochs: m.epochs.clone(),
            // A restarted former primary asking must wait while this member may be about to take
            // over: it is deciding itself, taking over, or a backup that has not yet noticed
            // the loss of the primary (it still counts itself connected) or has not settled it
            // (it waits for the arbiter's verdict, or asks the primary's agent, again while the
            // agent cannot be reached).
            deciding: deciding
                || taking_over
                || (role == state::Role::Backup && (connected || undecided)),
        })
    }

    /// A backup learns the mirror's current definition, members and databases from its primary.
    pub fn learn(&self, description: &protocol::MirrorDescription) -> Result<()> {
        self.mirror.hub.set_qos(description.mirror.qos_timeout_ms);
        self.config.update(|c| {
            // The epoch only grows: a member that takes over later starts the next one.
            c.epoch = c.epoch.max(description.epoch);
            if let Some(m) = c.mirror.membership.as_mut() {
                m.epochs = description.epochs.clone();
                m.mirror = description.mirror.clone();
                m.others = description
                    .members
                    .iter()
                    .filter(|o| o.name != m.this.name)
                    .cloned()
                    .collect();
                m.primary_name = description.primary.clone();
                for db in &description.databases {
                    if m.database(&db.name).is_none() {
                        m.databases.push(db.clone());
                    }
                }
            }
            Ok(())
        })
    }

    /// A backup learns that a database was added to the mirror.
    pub fn add_database(&self, database: crate::config::mirror::MirroredDatabase) -> Result<()> {
        tracing::info!("mirror: {} was added to the mirror", database.name);
        self.config.update(|c| {
            if let Some(m) = c.mirror.membership.as_mut()
                && m.database(&database.name).is_none()
            {
                m.databases.push(database.clone());
            }
            Ok(())
        })
    }

    /// Facts about one mirrored database here, for the status rules.
    pub fn database_facts(&self, name: &crate::names::DbName) -> status::DatabaseFacts {
        let (primary, runtime) = self.mirror.read(|s| {
            let runtime = s.databases.get(name).cloned().unwrap_or_default();
            (s.role == state::Role::Primary, runtime)
        });
        self.database_facts_of(name, primary, &runtime)
    }

    /// Facts about one mirrored database here, with the role and runtime facts taken from one
    /// published status (see [`state::MemberStatus`]).
    pub fn database_facts_of(
        &self,
        name: &crate::names::DbName,
        primary: bool,
        runtime: &state::DatabaseRuntime,
    ) -> status::DatabaseFacts {
        let config = self.config.get();
        let activated = config.mirror.activated(name);
        let state = self.catalog.snapshot();
        let entry = state.databases.get(name);
        status::DatabaseFacts {
            primary,
            mounted: entry.is_some_and(|e| e.mounted),
            is_copy: entry.is_some_and(|e| e.mirrored.is_some()),
            activated,
            catchup_running: matches!(runtime.phase, state::CatchupPhase::Running { .. }),
            obsolete: matches!(runtime.phase, state::CatchupPhase::Obsolete(_)),
            stopped: matches!(runtime.phase, state::CatchupPhase::Failed(_)),
            dejournaling: runtime.dejournaling,
        }
    }

    /// The Dejournaling column for this member: `Caught up`, `<time> behind`, or a warning.
    pub fn dejournal_summary(&self) -> String {
        self.dejournal_summary_of(&self.mirror.status())
    }

    /// The Dejournaling column, from one published status.
    pub fn dejournal_summary_of(&self, published: &state::MemberStatus) -> String {
        let config = self.config.get();
        let Some(m) = config.mirror.membership.as_ref() else {
            return "N/A".into();
        };
        let primary = published.role == state::Role::Primary;
        if primary {
            return "N/A".into();
        }
        let target = self.mirror.dejournal_target();
        let mut oldest: Option<JournalPos> = None;
        for db in &m.databases {
            let runtime = published.database(&db.name);
            let facts = self.database_facts_of(&db.name, primary, &runtime);
            match status::database_status(facts) {
                Some("Dejournaling") | Some("Catchup Running") => {
                    let applied = runtime.applied;
                    if applied < target {
                        oldest = Some(oldest.map_or(applied, |o| o.min(applied)));
                    }
                }
                _ => return "Warning! Some databases need attention.".into(),
            }
        }
        let Some(applied) = oldest else {
            return "Caught up".into();
        };
        let Some(journal) = self.mirror.journal() else {
            return "Caught up".into();
        };
        match journal.read_range(applied, applied.next()).next() {
            Some(Ok(record)) => status::behind(crate::util::now_ms() - record.time_ms),
            _ => "Caught up".into(),
        }
    }
}
