//! Prometheus metrics: what a member counts and measures, served as text at `GET /metrics` on
//! its portal port.
//!
//! # Two kinds
//!
//! - **Counted where it happens**, through the `metrics` crate's macros into the process's one
//!   recorder: commits and how long each group commit took from `BEGIN` to its clients'
//!   answer, each journal fsync's time, the size of each group commit, and takeovers by how
//!   they came about. These cost a lookup in the recorder's registry and an atomic add or a
//!   histogram sample (a few per group commit, not per write); nothing is formatted there.
//! - **Read when scraped**: the role, the epoch, the failover mode, the arbiter link, each
//!   member link, the mirror journal's end, each member's lag behind the primary, the time spent
//!   in the trouble state, Freeze, the quarantine. The web layer sets these as gauges from the
//!   member's published status ([`crate::mirror::state::MemberStatus`]) and the hub just before
//!   it renders the text ([`crate::web`]'s `metrics` handler), so one scrape shows one moment.
//!
//! The recorder is `metrics-exporter-prometheus`'s, installed once per process ([`install`])
//! without a listener of its own: the portal serves the text. Time histograms have fixed
//! buckets, so they are Prometheus histograms that add up across members and scrapes, not
//! summaries.
//!
//! The arbiter, which has no portal, serves its own (members seen, answers given) on the
//! address `mirrorlab arbiter --metrics ADDR` names, through the same recorder
//! ([`crate::arbiter::metrics`]).
//!
//! `/metrics` asks for no login (it shows no data, only figures) unless the member runs with
//! `--metrics-login`.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// `mirrorlab_mirror_role{role}`: 1 for this member's role, 0 for the others.
pub const ROLE: &str = "mirrorlab_mirror_role";
/// `mirrorlab_mirror_epoch`: the epoch this member knows.
pub const EPOCH: &str = "mirrorlab_mirror_epoch";
/// `mirrorlab_failover_mode{mode}`: 1 for the failover mode in effect here (`agent`, `arbiter`).
pub const FAILOVER_MODE: &str = "mirrorlab_failover_mode";
/// `mirrorlab_arbiter_connected`: 1 while the arbiter link is up.
pub const ARBITER_CONNECTED: &str = "mirrorlab_arbiter_connected";
/// `mirrorlab_member_link_up{member}`: 1 while the data channel to that member is up.
pub const MEMBER_LINK_UP: &str = "mirrorlab_member_link_up";
/// `mirrorlab_journal_end_position`: the mirror journal's durable end here.
pub const JOURNAL_END: &str = "mirrorlab_journal_end_position";
/// `mirrorlab_backup_lag_bytes{member}`: journal bytes the member has not acknowledged (primary).
pub const LAG_BYTES: &str = "mirrorlab_backup_lag_bytes";
/// `mirrorlab_backup_lag_seconds{member}`: age of the oldest record the member lacks (primary).
pub const LAG_SECONDS: &str = "mirrorlab_backup_lag_seconds";
/// `mirrorlab_commits_total`: writes committed and answered.
pub const COMMITS: &str = "mirrorlab_commits_total";
/// `mirrorlab_commit_seconds`: a group commit's time from `BEGIN` to its clients' answer.
pub const COMMIT_SECONDS: &str = "mirrorlab_commit_seconds";
/// `mirrorlab_journal_fsync_seconds`: one journal fsync.
pub const FSYNC_SECONDS: &str = "mirrorlab_journal_fsync_seconds";
/// `mirrorlab_group_commit_size`: writes in one group commit.
pub const GROUP_COMMIT_SIZE: &str = "mirrorlab_group_commit_size";
/// `mirrorlab_trouble_seconds_total`: time mirrored commits were held in the trouble state.
pub const TROUBLE_SECONDS: &str = "mirrorlab_trouble_seconds_total";
/// `mirrorlab_failovers_total{reason}`: takeovers by this member.
pub const FAILOVERS: &str = "mirrorlab_failovers_total";
/// `mirrorlab_frozen`: 1 while writes are frozen (Freeze).
pub const FROZEN: &str = "mirrorlab_frozen";
/// `mirrorlab_quarantined_rows`: row changes of divergent tails kept in quarantine here.
pub const QUARANTINED_ROWS: &str = "mirrorlab_quarantined_rows";

/// Buckets of the time histograms (seconds): from a fast fsync to a QoS timeout.
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
];
/// Buckets of the group commit size.
const SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// How often histogram samples are folded into their buckets when nobody scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process's recorder, once, and returns what renders it. In a process where
/// another recorder came first, nothing counted reaches this one, and the text holds only the
/// gauges set when scraped.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(GROUP_COMMIT_SIZE.into()), SIZE_BUCKETS)
            })
            .expect("the buckets are not empty")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_ok() {
            describe();
            // Histogram samples pile up until they are folded into their buckets: a scrape
            // does that, and so does this thread, so a member nobody scrapes does not grow.
            let upkeep = handle.clone();
            let _ = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(UPKEEP_EVERY);
                        upkeep.run_upkeep();
                    }
                });
        }
        handle
    })
}

fn describe() {
    describe_gauge!(
        ROLE,
        "This member's role (1) among primary, backup, async, not_member."
    );
    describe_gauge!(EPOCH, "The mirror epoch this member knows.");
    describe_gauge!(
        FAILOVER_MODE,
        "The failover mode in effect here (1): agent or arbiter."
    );
    describe_gauge!(ARBITER_CONNECTED, "Whether the link to the arbiter is up.");
    describe_gauge!(
        MEMBER_LINK_UP,
        "Whether the data channel to the member is up."
    );
    describe_gauge!(
        JOURNAL_END,
        "The mirror journal's durable end (a record position)."
    );
    describe_gauge!(
        LAG_BYTES,
        Unit::Bytes,
        "Journal the member has not acknowledged yet (on the primary)."
    );
    describe_gauge!(
        LAG_SECONDS,
        Unit::Seconds,
        "Age of the oldest record the member lacks (on the primary)."
    );
    describe_counter!(COMMITS, "Writes committed and answered.");
    describe_histogram!(
        COMMIT_SECONDS,
        Unit::Seconds,
        "A group commit from BEGIN to its clients' answer (mirrored: after the backup's acknowledgement)."
    );
    describe_histogram!(FSYNC_SECONDS, Unit::Seconds, "One journal fsync.");
    describe_histogram!(GROUP_COMMIT_SIZE, "Writes in one group commit.");
    describe_gauge!(
        TROUBLE_SECONDS,
        Unit::Seconds,
        "Time mirrored commits were held in the trouble state (never decreases)."
    );
    describe_counter!(
        FAILOVERS,
        "Takeovers by this member, by how they came about."
    );
    describe_gauge!(FROZEN, "Whether writes are frozen (Freeze).");
    describe_gauge!(
        QUARANTINED_ROWS,
        "Row changes of divergent tails kept in quarantine."
    );
}

/// A group commit of `size` writes began.
pub fn group_commit(size: usize) {
    histogram!(GROUP_COMMIT_SIZE).record(size as f64);
}

/// A group commit answered `commits` writes, `took` after its `BEGIN`.
pub fn committed(commits: usize, took: Duration) {
    counter!(COMMITS).increment(commits as u64);
    histogram!(COMMIT_SECONDS).record(took);
}

/// A journal fsync took `took`.
pub fn fsync(took: Duration) {
    histogram!(FSYNC_SECONDS).record(took);
}

/// This member took over. `reason`: `handover` (the primary handed over as it shut down),
/// `arbiter_controlled` or `agent_controlled` (the failover mode in which the rules let it),
/// `forced` (a person forced it).
pub fn failover(reason: &'static str) {
    counter!(FAILOVERS, "reason" => reason).increment(1);
}
