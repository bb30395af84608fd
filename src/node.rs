//! The composition root: one member's process, wired here and nowhere else.
//!
//! A member is an [`Instance`] (the database server), a mirror (its state, the hub, the
//! receiver, the failover driver, the superserver — [`crate::mirror`]) and the web layer on
//! top. None of them knows every other: the instance knows the mirror only through the seams it
//! owns ([`MemberRole`](crate::instance::role::MemberRole),
//! [`Replication`](crate::instance::writer::replication::Replication),
//! [`WriterExtension`](crate::instance::writer::extension::WriterExtension)); the mirror
//! reaches the instance through its writer handle and catalog; the web holds a [`Node`]. This
//! module is the one place that builds all of them, in the order start-up needs:
//!
//! 1. the instance prepares: lock, configuration, installation, journal;
//! 2. the mirror decides the member's role and opens its journal ([`crate::mirror::start`]);
//! 3. the instance recovers its databases and starts its writer, with the mirror's state as its
//!    role, the hub as its replication and the mirror's steps as the writer's extension;
//! 4. the mirror's service binds the superserver and starts the mirror's threads.
//!
//! Stopping runs the other way ([`Node::close`]): the writer first, so a primary's last commits
//! are shipped, then the mirror, which hands over to an active backup. The two ways a member
//! stops by itself — its writer failed, or the other member took over — are [`Exits`] the
//! caller passes in: the process ends on them, a test records them.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::instance::{Attachments, Instance, InstanceSettings};
use crate::mirror::service::MirrorService;
use crate::mirror::state::MirrorState;
use crate::mirror::steps::MirrorSteps;
use crate::mirror::{FailedHook, MirrorContext, SupersededHook};

/// One member's process: its instance and its mirror.
pub struct Node {
    /// The database server.
    pub instance: Arc<Instance>,
    /// The mirror's runtime state (the monitor reads it).
    pub mirror: Arc<MirrorState>,
    /// The mirror's actions and the superserver.
    pub mirror_service: Arc<MirrorService>,
}

/// The ways a member stops by itself, as the caller carries them out (see the module essay).
pub struct Exits {
    /// Called when the writer, or the mirror journal on a receiving member, failed in a way
    /// the instance cannot go on from (perhaps more than once: both may fail).
    pub failed: FailedHook,
    /// Called when the other member took over and this instance must stop at once.
    pub superseded: SupersededHook,
}

impl Exits {
    /// Exits that panic: for tests in which neither may happen.
    pub fn unexpected() -> Exits {
        Exits {
            failed: Arc::new(|why| panic!("the instance failed: {why}")),
            superseded: Arc::new(|| panic!("superseded by the other member")),
        }
    }
}

impl Node {
    /// Starts a member on `settings.data_dir` (blocking: installs, recovers, starts the writer
    /// and the mirror).
    pub fn open(settings: InstanceSettings, exits: Exits) -> Result<Arc<Node>> {
        // Before the writer counts its first commit.
        crate::metrics::install();
        let prepared = Instance::prepare(settings)?;
        let member = crate::mirror::start::open_member(&prepared)?;
        let journal_dir = prepared.journal_dir.clone();
        let settings = prepared.settings.clone();
        // The agent made the files before it started this instance; a lone instance makes them.
        let identity = Arc::new(crate::tls::Identity::load_or_create(
            &settings.data_dir,
            Some(&settings.install_dir),
            &settings.host_name,
        )?);
        // The network's error names the address ("listen on …: Address in use").
        let superserver = settings
            .network
            .listen(&settings.superserver)
            .map_err(|e| match e {
                Error::Io(why) => Error::Io(format!("the superserver port: {why}")),
                other => other,
            })?;
        let mirror = member.state;
        let instance = prepared.start(
            Attachments {
                role: mirror.clone(),
                replication: mirror.hub.clone(),
                extension: Some(Box::new(MirrorSteps::new(mirror.clone()))),
                mirror_journal: member.primary_journal,
            },
            {
                let failed = exits.failed.clone();
                Box::new(move |why| failed(why))
            },
        )?;
        let context = Arc::new(MirrorContext {
            config: instance.config.clone(),
            catalog: instance.catalog.clone(),
            mirror: mirror.clone(),
            writer: instance.writer().clone(),
            data_dir: settings.data_dir.clone(),
            journal_dir,
            max_segment_bytes: settings.max_segment_bytes,
            host_name: settings.host_name.clone(),
            instance_name: settings.instance_name.clone(),
            superserver: settings.superserver.clone(),
            agent: settings.agent.clone(),
            identity,
            network: settings.network.clone(),
            superseded: exits.superseded,
            journal_failed: exits.failed,
            journal_io: settings.journal_io.clone(),
        });
        let mirror_service = MirrorService::start(context, superserver, member.receiver_journal);
        Ok(Arc::new(Node {
            instance,
            mirror,
            mirror_service,
        }))
    }

    /// Stops the writer after the work already queued, then the mirror (blocking). A primary
    /// with an active backup hands over to it: everything it committed has been sent first, so
    /// the backup holds it all and may take over at once (a graceful shutdown is the first
    /// outage the backup covers).
    pub fn close(&self) {
        let mirror = &self.mirror_service.context().mirror;
        if self.instance.config.get().mirror.membership.is_some() {
            mirror.record(
                crate::mirror::events::EventKind::Stopping,
                "the instance stops gracefully (a primary hands over to its active backup)",
            );
        }
        self.instance.close();
        self.mirror_service.hand_over();
        self.mirror_service.stop();
        // Everything recorded up to the end is on disk before the process ends.
        mirror.events.flush(std::time::Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod pair_tests;
