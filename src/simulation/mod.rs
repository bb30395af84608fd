//! Deterministic simulation: long random runs of a mirror's failover members, from one seed.
//!
//! # What it runs
//!
//! The [`world`]: two failover members, each driven by its own real [`MemberCore`] (the failover
//! rules and the decisions of the member's failover driver), an arbiter keeping the real
//! [`ArbiterBook`], the members' agents, the data channel and the arbiter links, a clock, and
//! clients writing. The world checks its invariants after every step (at most one member
//! acknowledges writes, no acknowledged write is lost, a member that may not take over asks
//! nobody, the monitors show what the arbiter holds, a booked takeover is carried out or
//! cancelled).
//!
//! With a folder for files, each member also keeps a real mirror journal and a real SQLite
//! database ([`data`]), and a primary runs the instance's real writer thread on them: every
//! client write goes through it — a real statement, its changeset in a real journal frame,
//! appended through the member's real replication hub and fsynced, the batch parked until
//! the hub acknowledges it, the writes that come meanwhile queued behind it and committed as
//! one batch — and at every write the writer's answer must be the world's (waiting for the
//! backup, or acknowledged alone or once the backup stored it); a backup reads the real bytes
//! the primary sent it (the superserver's catch-up from the files, then what the hub queued in
//! the link's outbox) and stores them with the receiver's own receive round, and its
//! acknowledgements go back as bytes the primary's superserver code reads; each member
//! applies what is committed with the dejournaling code; a hello cuts what the primary's
//! history does not share; an async member finds the primary by its receiver's own decisions
//! ([`crate::mirror::core::follow`]: the member it knows, then each failover member in turn,
//! a stale primary among them) and follows it; clients read rows
//! on any member now and then. The files then answer for the invariants about rows: a member
//! that takes over holds every acknowledged write; nothing a cut removes was applied; at the
//! end the final primary holds every acknowledged write and every row any client read, and the
//! backup's and the async member's rows are the primary's, row by row — the async member
//! having found the final primary in at most two attempts.
//!
//! # How a run goes
//!
//! [`run`] takes a seed; everything random in the run comes from it, so a seed replays exactly.
//!
//! 1. **Faults.** From a healthy pair (arbiter controlled in three runs of four), 60 to 360
//!    steps chosen at random among those the world allows: messages delivered in any order the
//!    connections allow, time passing, and a handful of faults — links between the members or to
//!    the arbiter cut, instances and whole hosts crashed, whole hosts frozen (the others notice
//!    the silence after half a QoS to a QoS), an agent stopped while its host and instance run
//!    on, graceful stops (a primary hands over), a backup's
//!    process stalled, half-open links, one-way partitions to the arbiter (the member stops
//!    hearing it and closes; the arbiter notices later), Stop Mirror, No Failover, a database
//!    made unready, and
//!    (with files) a write that meets a torn append, a failed fsync or a full disk, on the
//!    primary's journal or on the active backup's as it stores the write, and stops that
//!    instance — with clients writing throughout. Faults are undone rarely
//!    while they strike, so several overlap.
//! 2. **Healing.** Every fault is undone (links healed, members restarted, settings cleared) and
//!    the members are left to their protocol: messages delivered, connections made, time passing
//!    once every message is delivered and every timer had its turn (a restarted former primary
//!    asks the other member every second, the receiver and the arbiter link retry every second:
//!    [`is_periodic`]).
//! 3. **Liveness.** Within QoS + 1 s of simulated time after the last fault was undone there must
//!    be a primary that accepts writes, and by the end of the run its backup must be connected
//!    and active, with every acknowledged write ([`RunReport`] counts them).
//!
//! A violation of any invariant ends the run with the steps that led to it ([`Violation`]).
//!
//! # Why random runs beside the explorer
//!
//! The explorer (`mirror/failover/tests/explorer.rs`) tries *every* interleaving of the same
//! world, but only a dozen steps deep and within a twelve-second horizon. The bugs that leave a
//! mirror without a primary show after a handover, a restart and a second fault — thirty steps
//! or more. Random runs go hundreds of steps deep, many times, with the liveness check at the
//! end that a bounded search cannot make.
//!
//! # What it found
//!
//! A backup frozen while Stop Mirror was undone and a database became unready looked once on
//! thawing, with both changes; the core fed them to the rules in that order, and rules that had
//! lost their primary asked the primary's agent in between (which forces a hung primary down).
//! The core now feeds settings that changed together restrictions first
//! (`settings_that_change_together_reach_the_rules_restrictions_first` keeps it).
//!
//! A primary frozen while its backup took over thawed and, still believing itself primary,
//! welcomed the async member (which tries the failover members in turn) and told it to keep
//! only what this stale primary had made durable — dropping records committed and applied in
//! the newer epoch. A primary now turns away a member whose records are from a newer epoch
//! than its own ([`crate::mirror::core::hello`],
//! `a_stale_primary_turns_away_a_member_from_a_newer_epoch`).
//!
//! With one-way partitions: a backup that lost the primary asked the arbiter, which booked its
//! takeover, and the verdict was lost when the arbiter connection went quiet; the backup asked
//! the primary's agent (no answer), then a copy became unready — it stopped asking without
//! standing down, and the takeover stayed booked, so the old primary could never start again.
//! A backup that becomes unable to take over while it asks now stands down (the failover
//! rules' `blocker_changed`; `testscripts/verdict-lost-then-unready.txt` keeps it).
//!
//! Checking the real hub against the world at every write: a primary that heard through the
//! arbiter that its backup stood down (the backup had lost the data channel, which the primary
//! had not noticed yet) stopped waiting for it in its rules but not in its hub: the hub kept
//! holding each mirrored commit for that backup's acknowledgement until the QoS timeout revoked
//! it — writes stood still for up to a QoS although the rules let them go on. The driver now
//! has the hub end that activation at once ([`crate::mirror::hub::Hub::relayed_stand_down`],
//! `a_stand_down_relayed_by_the_arbiter_stops_the_wait_for_that_activation_only`).
//!
//! With the hubs' clocks moving with the world's (so that a hub may revoke a backup by
//! itself), the world turned out to hold writes the real member answers: writes that waited
//! for a backup which then stood down through the arbiter stayed unanswered in the world,
//! where the hub releases them at once (the rules no longer count that backup, and there is no
//! trouble state to end). The world now answers them; the check that found it — the hub must
//! not release writes the world holds — stays. It finds a hub that answers waiting writes after
//! a QoS instead of revoking the backup, or one that revokes it without holding writes, within
//! a hundred seeds (tried by putting each into the hub).
//!
//! Checking the order of the writer's calls as they happen (its replication is the hub
//! wrapped, see [`data`]'s writer): the writer told the hub a batch was committed — and the
//! hub told every member it may apply it — *before* its own `COMMIT`. A backup could show a
//! row for a moment before the primary did, and a `COMMIT` that failed had been announced
//! all the same. The writer now announces after its commit, and only when it succeeded;
//! every seed found the old order.
//!
//! Running seeds twice (the test runs the first ones again and compares the digests of their
//! traces, [`RunReport::trace_digest`]): the writer answered the simulation's "settled?"
//! before the look at its parked batch that it takes after every command. A writer thread
//! slow to get there (a debug build, several seeds at once) looked only after the simulation
//! had moved the clock — at a frozen primary, whose writer the simulation does not wait for —
//! and revoked its backup at a moment thread timing chose, so that a seed sometimes went
//! another way. The writer now answers once that look, and whatever it let go, are done
//! (`WriterHandle::settled`).
//!
//! # Left out (for now)
//!
//! The world carries out what the cores decide through a model of the driver's and the
//! receiver's threads (the receiver's storing is its own code, fed the hub's real bytes). The
//! threads themselves run on the in-process network of [`crate::transport`] (two real members
//! in `node::pair_tests`), but not here: a thread blocked on a socket's timeout or its channel
//! does not tell the simulation when it has settled, as the writer does, so a seed would not
//! replay. And the world says when a write
//! should be acknowledged — checked against the real writer and hub at every write and whenever
//! writes that waited are answered, and decided by them in one case (the hub revokes a backup
//! that left writes waiting a QoS, and the world follows). On the data channel a one-way
//! partition is a half-open link (one side notices before the other); TCP turns any one-way
//! loss into that.
//!
//! [`MemberCore`]: crate::mirror::core::MemberCore
//! [`ArbiterBook`]: crate::mirror::failover::ArbiterBook

pub(crate) mod data;
pub(crate) mod world;

use std::path::{Path, PathBuf};

use data::{Data, DataEvent, JournalFault};

use crate::mirror::failover::FailoverRole;

use world::{Budget, QOS, Step, World};

/// Sets the length of a run's fault phase: a fifth of this, and up to this many more steps
/// (the seed chooses).
const FAULT_STEPS: usize = 300;
/// Client writes in the fault phase of one run.
const WRITES: u8 = 60;
/// Most steps the healing phase may take before the run counts as stuck.
const HEAL_STEPS: usize = 2_000;
/// How long after the last fault was undone a primary must accept writes (ms).
pub const LIVENESS_MS: u64 = QOS + 1_000;

/// A bug found in the member once, which a run can put back to show that the simulation finds
/// it (the two worst of the failover-correctness work: each left the mirror without a primary).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    /// A takeover kept the backup's failover mode: after a graceful handover the new primary
    /// showed Arbiter Controlled that the arbiter never booked, and no backup could ever take
    /// over again.
    TakeoverKeepsMode,
    /// A backup that stood down left its takeover booked at the arbiter: the old primary could
    /// never start again.
    StandDownKeepsBooking,
}

/// What one run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunReport {
    /// Steps taken.
    pub steps: usize,
    /// Faults injected.
    pub faults: u64,
    /// Of them, journal faults (a torn append, a failed fsync, a full disk) that stopped a
    /// primary or an active backup.
    pub journal_faults: u64,
    /// Of them, faults of an active backup's journal as it stored a write.
    pub backup_journal_faults: u64,
    /// Torn journal tails cut when a member restarted after a torn append.
    pub torn_tails_cut: u64,
    /// Active backups a primary's hub revoked because writes waited a QoS for them.
    pub qos_revocations: u64,
    /// Batches of writes that queued behind a parked batch (group commits of a waiting
    /// primary).
    pub queued_batches: u64,
    /// Writes acknowledged to clients.
    pub writes: u64,
    /// Takeovers (new epochs) during the run.
    pub takeovers: u64,
    /// Simulated time (ms).
    pub simulated_ms: u64,
    /// Steps of the healing phase.
    pub healing_steps: usize,
    /// How long after the last fault was undone a primary accepted writes (ms; 0 when one
    /// did all along).
    pub recovery_ms: u64,
    /// A digest of every step the run took and what the members' files did (its trace): a
    /// seed that runs again the same way gives the same digest, which is how a replay is
    /// checked.
    pub trace_digest: u64,
}

/// An invariant a run broke, with the steps that led there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The seed that replays it.
    pub seed: u64,
    /// What went wrong.
    pub why: String,
    /// The steps, in order.
    pub trace: Vec<String>,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "seed {}: {}", self.seed, self.why)?;
        writeln!(f, "after {} steps:", self.trace.len())?;
        for step in &self.trace {
            writeln!(f, "  {step}")?;
        }
        Ok(())
    }
}

/// A small, fast generator (SplitMix64): every choice of a run comes from it.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// How likely a step that is not a fault is to be chosen among those allowed: messages flow
/// more often than time passes.
fn weight(step: &Step) -> u64 {
    match step {
        Step::Deliver(_) => 12,
        Step::DeliverWithoutJournal(_) => 2,
        Step::Advance => 3,
        Step::Write => 4,
        Step::Connect
        | Step::CatchUp
        | Step::ConnectArbiter(_)
        | Step::Decide(_)
        | Step::RepeatMode
        | Step::ForceDown
        | Step::PrimaryNoticesHalfOpen => 4,
        // Faults are undone rarely while they strike, so that several overlap.
        _ => 1,
    }
}

/// One of `steps` (not empty), chosen at random by [`weight`].
fn pick(rng: &mut Rng, steps: &[Step]) -> Step {
    let total: u64 = steps.iter().map(weight).sum();
    let mut left = rng.below(total);
    for step in steps {
        if left < weight(step) {
            return step.clone();
        }
        left -= weight(step);
    }
    unreachable!("the pick is below the total weight")
}

/// Whether `step` is one a member repeats on a timer, at least once per
/// [`STEP_MS`](world::STEP_MS): a
/// restarted former primary asks the other member every second, the receiver and the arbiter
/// link retry every second, a primary repeats its arbiter mode, the agent keeps trying to force
/// a former primary down, and each side notices a half-open link.
fn is_periodic(step: &Step) -> bool {
    matches!(
        step,
        Step::Decide(_)
            | Step::Connect
            | Step::ConnectArbiter(_)
            | Step::RepeatMode
            | Step::ForceDown
            | Step::PrimaryNoticesHalfOpen
    )
}

/// Whether `step` injects a fault.
fn is_fault(step: &Step) -> bool {
    matches!(
        step,
        Step::CutLink
            | Step::CutArbiterLink(_)
            | Step::ArbiterGoesQuiet(_)
            | Step::Crash(_)
            | Step::CrashHost(_)
            | Step::Shutdown(_)
            | Step::Stall(_)
            | Step::Freeze(_)
            | Step::StopAgent(_)
            | Step::HalfOpen
            | Step::StopMirror
            | Step::SetNoFailover
            | Step::Unready
    )
}

/// Whether `step` undoes a fault.
fn heals(step: &Step) -> bool {
    matches!(
        step,
        Step::HealLink
            | Step::HealArbiterLink(_)
            | Step::Restart(_)
            | Step::Thaw(_)
            | Step::StartAgent(_)
            | Step::StartMirror
            | Step::ClearNoFailover
            | Step::Ready
    )
}

/// One run of the simulation from `seed`, with `bug` put back if given; with `files`, the
/// members keep real journals and databases in a folder under it ([`data`]).
pub fn run(seed: u64, bug: Option<Bug>, files: Option<&Path>) -> Result<RunReport, Violation> {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let (result, trace) = run_traced(seed, bug, files);
    result.map(|mut report| {
        // The same hasher in the same binary: comparable within one test run.
        let mut hasher = DefaultHasher::new();
        trace.hash(&mut hasher);
        report.trace_digest = hasher.finish();
        report
    })
}

/// [`run`], and every step the run took (for a replay).
pub fn run_traced(
    seed: u64,
    bug: Option<Bug>,
    files: Option<&Path>,
) -> (Result<RunReport, Violation>, Vec<String>) {
    let mut rng = Rng::new(seed);
    let mut world = World::healthy(rng.below(4) != 0);
    world.horizon_ms = u64::MAX;
    world.one_way = true;
    let data = match files {
        Some(dir) => {
            world.data_log = Some(Vec::new());
            let dir = dir.join(format!("seed-{seed}"));
            // The files start as the healthy pair did: the backup connected on the world's
            // channel and caught up (the world made that start before it kept a log).
            let generation = world.channel.map_or(0, |c| c.generation);
            let start = [
                DataEvent::Connected {
                    primary: 0,
                    backup: 1,
                    epoch: world.m[0].epoch,
                    generation,
                },
                DataEvent::CaughtUp {
                    primary: 0,
                    backup: 1,
                    heard: true,
                },
            ];
            match Data::create(dir).and_then(|mut data| {
                start.iter().try_for_each(|event| data.follow(event))?;
                Ok(data)
            }) {
                Ok(data) => Some(data),
                Err(why) => {
                    let why = format!("the members' files: {why}");
                    return (
                        Err(Violation {
                            seed,
                            why,
                            trace: Vec::new(),
                        }),
                        Vec::new(),
                    );
                }
            }
        }
        None => None,
    };
    match bug {
        Some(Bug::TakeoverKeepsMode) => world.legacy.takeover_keeps_mode = true,
        Some(Bug::StandDownKeepsBooking) => world.legacy.stand_down_keeps_booking = true,
        None => {}
    }
    let start = world.now;
    let mut run = Run {
        seed,
        world,
        trace: Vec::new(),
        report: RunReport::default(),
        taken_this_tick: Vec::new(),
        data,
    };
    let result = drive(&mut run, &mut rng, start).map(|()| run.report.clone());
    (result, std::mem::take(&mut run.trace))
}

/// The phases of one run (see the module essay).
fn drive(run: &mut Run, rng: &mut Rng, start: u64) -> Result<(), Violation> {
    // 1. Faults: a few of them at random moments of a fault phase of random length, with
    // writes throughout. At each step a fault strikes with the same small chance; otherwise
    // the world goes on (messages, time, reconnections, restarts, healing).
    let phase = FAULT_STEPS / 5 + rng.below(FAULT_STEPS as u64) as usize;
    let faults = 2 + rng.below(7);
    let budget = Budget {
        faults: faults as u8,
        writes: WRITES,
    };
    for _ in 0..phase {
        let steps = run.world.steps(budget);
        let (faulty, calm): (Vec<&Step>, Vec<&Step>) = steps.iter().partition(|s| is_fault(s));
        // Besides the world's faults, a write may meet a journal fault: on the primary, or on
        // the active backup as it stores the write.
        let journal_target = run.journal_fault_target(&steps);
        let backup_target = run.backup_journal_fault_target(&steps);
        let kinds = faulty.len()
            + usize::from(journal_target.is_some())
            + usize::from(backup_target.is_some());
        let step = if kinds > 0 && rng.below(phase as u64) < faults {
            let k = rng.below(kinds as u64) as usize;
            let fault = [
                JournalFault::TornAppend,
                JournalFault::FailedSync,
                JournalFault::DiskFull,
            ][rng.below(3) as usize];
            if k < faulty.len() {
                faulty[k].clone()
            } else if let Some(p) = journal_target.filter(|_| k == faulty.len()) {
                run.journal_fault(p, fault)?;
                continue;
            } else if let Some((p, b)) = backup_target {
                run.backup_journal_fault(p, b, fault)?;
                continue;
            } else {
                unreachable!("a fault kind was counted that is not there")
            }
        } else {
            let calm: Vec<Step> = calm.into_iter().cloned().collect();
            run.fair(pick(rng, &calm), &calm)
        };
        run.take(&step)?;
        run.maybe_read(rng)?;
    }
    // 2. Healing: undo every fault, then let the protocol work.
    let calm = Budget {
        faults: 0,
        writes: 0,
    };
    let mut healed_at = run.world.now;
    let mut live = false;
    for _ in 0..HEAL_STEPS {
        let steps = run.world.steps(calm);
        let step = if let Some(heal) = steps.iter().find(|s| heals(s)) {
            healed_at = run.world.now;
            heal.clone()
        } else if run.settled() {
            break;
        } else if steps.is_empty() {
            return Err(run.violation(format!(
                "the mirror is stuck: nothing can happen {} ms after the last fault was undone: {}",
                run.world.now - healed_at,
                run.describe()
            )));
        } else {
            // A healed network is fast: time passes only once every message is delivered and
            // every periodic step had its turn.
            let moving: Vec<Step> = steps
                .iter()
                .filter(|s| {
                    let waits = matches!(s, Step::Advance | Step::DeliverWithoutJournal(_));
                    let had_its_turn = is_periodic(s) && run.taken_this_tick.contains(s);
                    !waits && !had_its_turn
                })
                .cloned()
                .collect();
            if moving.is_empty() {
                Step::Advance
            } else {
                pick(rng, &moving)
            }
        };
        run.take(&step)?;
        run.maybe_read(rng)?;
        // 3. Liveness: a primary that accepts writes within QoS + 1 s of the last heal.
        run.report.healing_steps += 1;
        if !live {
            live = run.has_writable_primary();
            run.report.recovery_ms = run.world.now - healed_at;
            if !live && run.world.now > healed_at + LIVENESS_MS {
                return Err(run.violation(format!(
                    "no primary accepts writes {} ms after the last fault was undone (allowed: \
                     QoS + 1 s = {LIVENESS_MS} ms)",
                    run.world.now - healed_at
                )));
            }
        }
    }
    if !run.settled() {
        return Err(run.violation(format!(
            "the mirror did not settle within {HEAL_STEPS} steps of healing: {}",
            run.describe()
        )));
    }
    if let (Some(data), Some(p)) = (run.data.as_mut(), run.world.primary()) {
        let checked = data.check_end(p, run.world.m[p].epoch);
        run.report.writes = data.acknowledged() as u64;
        run.report.torn_tails_cut = data.torn_tails_cut;
        run.report.qos_revocations = data.qos_revocations;
        run.report.queued_batches = data.queued_batches;
        checked.map_err(|why| run.violation(format!("the members' files: {why}")))?;
    }
    run.report.faults = u64::from(run.world.faults);
    run.report.simulated_ms = run.world.now - start;
    Ok(())
}

/// One run in progress.
struct Run {
    seed: u64,
    world: World,
    trace: Vec<String>,
    report: RunReport,
    /// The periodic steps taken since time last moved.
    taken_this_tick: Vec<Step>,
    /// The members' real files, when the run keeps them.
    data: Option<Data>,
}

impl Run {
    /// `chosen`, unless it lets time pass while a periodic step among `allowed` has not had its
    /// turn in this tick: the timers of the member are fair (see [`is_periodic`]).
    fn fair(&self, chosen: Step, allowed: &[Step]) -> Step {
        if chosen != Step::Advance {
            return chosen;
        }
        allowed
            .iter()
            .find(|s| is_periodic(s) && !self.taken_this_tick.contains(s))
            .cloned()
            .unwrap_or(chosen)
    }

    /// Takes `step`, checking the world's invariants.
    fn take(&mut self, step: &Step) -> Result<(), Violation> {
        let label = match step {
            Step::Deliver(i) | Step::DeliverWithoutJournal(i) => {
                let d = &self.world.inbox[*i];
                format!(
                    "t={} {step:?}: {:?} to member {} ({:?})",
                    self.world.now, d.event, d.to, d.queue
                )
            }
            other => format!("t={} {other:?}", self.world.now),
        };
        self.trace.push(label);
        let epochs = self.epoch();
        let acknowledges = self
            .world
            .primary()
            .is_some_and(|p| self.world.acknowledges(p));
        self.world.apply(step).map_err(|why| self.violation(why))?;
        self.follow_data()?;
        self.report.steps += 1;
        if *step == Step::Advance {
            self.taken_this_tick.clear();
        } else if is_periodic(step) {
            self.taken_this_tick.push(step.clone());
        }
        if *step == Step::Write && acknowledges {
            self.report.writes += 1;
        }
        if self.epoch() > epochs {
            self.report.takeovers += 1;
        }
        Ok(())
    }

    /// The files follow what the world recorded; what a hub decided by itself (revoking a
    /// backup after a QoS) goes back to the world, until neither has news for the other.
    fn follow_data(&mut self) -> Result<(), Violation> {
        loop {
            let Some(data) = self.data.as_mut() else {
                return Ok(());
            };
            let events = self.world.data_log.as_mut().map(std::mem::take);
            let failed = events.unwrap_or_default().iter().find_map(|event| {
                let why = data.follow(event).err()?;
                Some(format!("the members' files, at {event:?}: {why}"))
            });
            let revoked = data.take_revoked();
            if let Some(why) = failed {
                return Err(self.violation(why));
            }
            if revoked.is_empty() {
                return Ok(());
            }
            for i in revoked {
                self.trace.push(format!(
                    "t={} member {i}'s hub revokes its backup (writes waited a QoS)",
                    self.world.now
                ));
                if let Err(why) = self.world.hub_revoked(i) {
                    return Err(self.violation(why));
                }
            }
        }
    }

    /// The primary a journal fault may strike now: one that takes writes, when the run keeps
    /// files and the world may crash it.
    fn journal_fault_target(&self, steps: &[Step]) -> Option<usize> {
        self.data.as_ref()?;
        let p = self.world.primary()?;
        let m = &self.world.m[p];
        (m.rules().accepts_writes() && m.frozen.is_none() && steps.contains(&Step::Crash(p)))
            .then_some(p)
    }

    /// A client's write on primary `p` meets `fault` in the journal: the write fails and the
    /// instance stops (the writer exits rather than go on after a failed write or fsync).
    fn journal_fault(&mut self, p: usize, fault: JournalFault) -> Result<(), Violation> {
        self.trace.push(format!(
            "t={} journal fault on member {p}: {fault:?}",
            self.world.now
        ));
        let epoch = self.world.m[p].epoch;
        let data = self.data.as_mut().expect("journal faults need the files");
        if let Err(why) = data.fail_write(p, epoch, fault) {
            return Err(self.violation(format!("the members' files: {why}")));
        }
        self.report.journal_faults += 1;
        self.take(&Step::Crash(p))
    }

    /// The primary and active backup a journal fault on the backup may strike now: a write
    /// would be acknowledged with the backup, the run keeps files, and the world may crash the
    /// backup.
    fn backup_journal_fault_target(&self, steps: &[Step]) -> Option<(usize, usize)> {
        self.data.as_ref()?;
        let p = self.world.primary()?;
        let b = 1 - p;
        let writes = steps.contains(&Step::Write) && steps.contains(&Step::Crash(b));
        (writes
            && self.world.m[b].frozen.is_none()
            && self.world.write_outcome(p) == data::Outcome::WithBackup)
            .then_some((p, b))
    }

    /// A client's write on primary `p` reaches its active backup `b`, whose journal meets
    /// `fault` storing it: the backup acknowledges nothing and its instance stops (as its
    /// receiver has it do); the write waits for an acknowledgement, as after any loss of the
    /// active backup.
    fn backup_journal_fault(
        &mut self,
        p: usize,
        b: usize,
        fault: JournalFault,
    ) -> Result<(), Violation> {
        self.trace.push(format!(
            "t={} journal fault on backup {b} storing a write: {fault:?}",
            self.world.now
        ));
        if let Err(why) = self.world.write_unacknowledged(p) {
            return Err(self.violation(why));
        }
        let data = self.data.as_mut().expect("journal faults need the files");
        let events = self.world.data_log.as_mut().map(std::mem::take);
        for event in events.unwrap_or_default() {
            if let Err(why) = data.follow(&event) {
                return Err(self.violation(format!("the members' files, at {event:?}: {why}")));
            }
        }
        if let Err(why) = data.fail_backup_store(p, b, fault) {
            return Err(self.violation(format!("the members' files: {why}")));
        }
        self.report.journal_faults += 1;
        self.report.backup_journal_faults += 1;
        self.take(&Step::Crash(b))
    }

    /// Now and then the async member receives from the primary (or loses its link), and a
    /// client reads every row of a running member (primary, backup or the async).
    fn maybe_read(&mut self, rng: &mut Rng) -> Result<(), Violation> {
        let Some(data) = self.data.as_mut() else {
            return Ok(());
        };
        if rng.below(40) == 0 {
            if let Err(why) = data.async_lost() {
                return Err(self.violation(format!("the members' files, async member: {why}")));
            }
            self.trace.push(format!(
                "t={} the async member's link breaks",
                self.world.now
            ));
        } else if rng.below(4) == 0 {
            // Failover members that run as primary now (a stale one among them, perhaps).
            let primaries: [Option<u8>; 2] = std::array::from_fn(|i| {
                let m = &self.world.m[i];
                (m.role() == Some(FailoverRole::Primary) && m.frozen.is_none()).then_some(m.epoch)
            });
            let followed = data.async_follows();
            match data.async_turn(primaries) {
                Ok(member) if followed.is_none() => {
                    let welcomed = data.async_follows() == Some(member);
                    self.trace.push(format!(
                        "t={} the async member says hello to member {member}: {}",
                        self.world.now,
                        if welcomed { "welcomed" } else { "not welcomed" }
                    ));
                }
                Ok(_) => {}
                Err(why) => {
                    return Err(self.violation(format!("the members' files, async member: {why}")));
                }
            }
        }
        if rng.below(6) != 0 {
            return Ok(());
        }
        let i = rng.below(3) as usize;
        let running = self
            .world
            .m
            .get(i)
            .is_none_or(|m| m.role().is_some() && m.frozen.is_none());
        if !running {
            return Ok(());
        }
        if let Err(why) = data.read(i) {
            return Err(self.violation(format!("the members' files: {why}")));
        }
        self.trace
            .push(format!("t={} read member {i}", self.world.now));
        Ok(())
    }

    fn epoch(&self) -> u8 {
        self.world.m.iter().map(|m| m.epoch).max().unwrap_or(0)
    }

    fn has_writable_primary(&self) -> bool {
        self.world
            .primary()
            .is_some_and(|p| self.world.m[p].rules().accepts_writes())
    }

    /// Both members run, one primary accepting writes and one backup, connected and active,
    /// with nothing in flight.
    fn settled(&self) -> bool {
        let w = &self.world;
        let (Some(p), Some(b)) = (w.primary(), w.backup()) else {
            return false;
        };
        w.inbox.is_empty()
            && w.m[p].rules().accepts_writes()
            && w.m[p].rules().active()
            && w.m[b].rules().active()
            && !w.m[b].lacks
            && w.channel.is_some_and(|c| c.primary == p && !c.half_open)
    }

    fn describe(&self) -> String {
        let w = &self.world;
        let member = |i: usize| {
            let m = &w.m[i];
            format!(
                "member {i}: {} epoch {} ({})",
                match m.role() {
                    Some(role) => format!("{role:?}"),
                    None if m.deciding => "deciding".into(),
                    None => "down".into(),
                },
                m.epoch,
                m.rules().status()
            )
        };
        format!("{}; {}; {} in flight", member(0), member(1), w.inbox.len())
    }

    fn violation(&self, why: String) -> Violation {
        Violation {
            seed: self.seed,
            why,
            trace: self.trace.clone(),
        }
    }
}

/// Runs seeds `first..first + count` on `threads` threads (with the members' files under
/// `files`, if given); returns the report of each run that kept the invariants, and every
/// violation (in seed order).
pub fn run_many(
    first: u64,
    count: u64,
    threads: usize,
    bug: Option<Bug>,
    files: Option<PathBuf>,
) -> (Vec<RunReport>, Vec<Violation>) {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU64, Ordering};
    let next = AtomicU64::new(first);
    let results = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= first + count {
                        break;
                    }
                    let result = run(seed, bug, files.as_deref());
                    results.lock().unwrap().push((seed, result));
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by_key(|(seed, _)| *seed);
    let mut reports = Vec::new();
    let mut violations = Vec::new();
    for (_, result) in results {
        match result {
            Ok(report) => reports.push(report),
            Err(violation) => violations.push(violation),
        }
    }
    (reports, violations)
}
