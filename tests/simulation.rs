//! The deterministic simulation of the mirror's failover members (see `src/simulation`).
//!
//! `cargo test --release --test simulation` runs `MIRRORLAB_SIM_SEEDS` seeds (1 000 unless set)
//! and ends with the line `simulation: N seeds, 0 violations`; `MIRRORLAB_SIM_SEED=S` replays
//! one seed and prints every step it took. A violation prints the seed and the steps that led
//! to it, and fails the run. Every run keeps the members' real journals and databases in a
//! folder of its own (see `files`), removed afterwards. Then the first 300 seeds
//! (`MIRRORLAB_SIM_REPLAYS`) run again, as many at once: each must take the same steps as the
//! first time, or a failing seed would not replay exactly, and the run fails.
//!
//! Before the summary it shows that the simulation finds the two worst bugs of the
//! failover-correctness work when they are put back: a takeover that kept the backup's
//! arbiter mode, and a stand-down that left a takeover booked at the arbiter. Either left the
//! mirror without a primary; a run that does not find them fails too.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use mirrorlab::simulation::{Bug, RunReport, run_many, run_traced};

/// Seeds tried per old bug before the simulation counts as blind to it.
const BUG_SEEDS: u64 = 500;
/// Seeds run a second time (unless `MIRRORLAB_SIM_REPLAYS` says how many), to check that a
/// seed replays exactly.
const REPLAYED: u64 = 300;

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    match value.parse() {
        Ok(n) => Some(n),
        Err(_) => panic!("{name} must be a number, not {value:?}"),
    }
}

/// Where the members' journals and databases go: `MIRRORLAB_SIM_DIR`, else `/dev/shm` where it
/// exists (the files are real, their fsyncs cheap), else the system's temporary folder.
fn files() -> PathBuf {
    let base = std::env::var_os("MIRRORLAB_SIM_DIR")
        .map(PathBuf::from)
        .or_else(|| Some(PathBuf::from("/dev/shm")).filter(|p| p.is_dir()))
        .unwrap_or_else(std::env::temp_dir);
    base.join(format!("mirrorlab-simulation-{}", std::process::id()))
}

/// Runs the first seeds again, on as many threads as the first time: each must take the same
/// steps, whatever the threads' timing, or a failing seed would not replay exactly. `reports`
/// holds every seed's report, in seed order. True when all matched.
fn replays_match(reports: &[RunReport], files: &std::path::Path) -> bool {
    let again = env_u64("MIRRORLAB_SIM_REPLAYS")
        .unwrap_or(REPLAYED)
        .min(reports.len() as u64);
    let started = Instant::now();
    let (replays, violations) = run_many(0, again, threads(), None, Some(files.to_path_buf()));
    let mut differ: Vec<u64> = violations.iter().map(|v| v.seed).collect();
    if differ.is_empty() {
        differ = (0..again)
            .filter(|&seed| reports[seed as usize] != replays[seed as usize])
            .collect();
    }
    match differ.first() {
        None => {
            println!(
                "replays: the first {again} seeds ran again and took the same steps ({:.1} s)",
                started.elapsed().as_secs_f64()
            );
            true
        }
        Some(seed) => {
            println!(
                "REPLAY: {} of the first {again} seeds took other steps when run again, first \
                 seed {seed} (compare MIRRORLAB_SIM_SEED={seed} runs)",
                differ.len()
            );
            false
        }
    }
}

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn main() -> ExitCode {
    if let Some(seed) = env_u64("MIRRORLAB_SIM_SEED") {
        return replay(seed);
    }
    let seeds = env_u64("MIRRORLAB_SIM_SEEDS").unwrap_or(1_000);
    let mut failed = false;

    for bug in [Bug::TakeoverKeepsMode, Bug::StandDownKeepsBooking] {
        let started = Instant::now();
        let (_, violations) = run_many(0, BUG_SEEDS, threads(), Some(bug), None);
        match violations.first() {
            Some(found) => println!(
                "old bug {bug:?}: found by {} of {BUG_SEEDS} seeds ({:.1} s), first by seed {}: {}",
                violations.len(),
                started.elapsed().as_secs_f64(),
                found.seed,
                found.why
            ),
            None => {
                println!("old bug {bug:?}: NOT found by {BUG_SEEDS} seeds");
                failed = true;
            }
        }
    }

    let started = Instant::now();
    let files = files();
    let (reports, violations) = run_many(0, seeds, threads(), None, Some(files.clone()));
    if violations.is_empty() {
        failed |= !replays_match(&reports, &files);
    }
    let _ = std::fs::remove_dir_all(&files);
    for violation in &violations {
        println!("VIOLATION {violation}");
    }
    let total = reports.iter().fold(RunReport::default(), |mut t, r| {
        t.steps += r.steps;
        t.faults += r.faults;
        t.journal_faults += r.journal_faults;
        t.backup_journal_faults += r.backup_journal_faults;
        t.torn_tails_cut += r.torn_tails_cut;
        t.qos_revocations += r.qos_revocations;
        t.queued_batches += r.queued_batches;
        t.writes += r.writes;
        t.takeovers += r.takeovers;
        t.simulated_ms += r.simulated_ms;
        t.healing_steps += r.healing_steps;
        t.recovery_ms = t.recovery_ms.max(r.recovery_ms);
        t
    });
    let recovering = reports.iter().filter(|r| r.recovery_ms > 0).count();
    println!(
        "runs that kept the invariants: {} steps ({} of them healing), {} faults ({} in the \
         journal, {} of them a backup's; {} torn tails cut at a restart), {} takeovers, {} \
         backups revoked after a QoS, {} batches queued behind a parked one, {} writes \
         acknowledged, {:.0} s simulated, in {:.1} s",
        total.steps,
        total.healing_steps,
        total.faults,
        total.journal_faults,
        total.backup_journal_faults,
        total.torn_tails_cut,
        total.takeovers,
        total.qos_revocations,
        total.queued_batches,
        total.writes,
        total.simulated_ms as f64 / 1000.0,
        started.elapsed().as_secs_f64()
    );
    println!(
        "liveness: {recovering} runs had no writable primary when the last fault was undone; \
         the slowest had one {} ms later (allowed: {} ms)",
        total.recovery_ms,
        mirrorlab::simulation::LIVENESS_MS
    );
    if !violations.is_empty() {
        println!(
            "replay one with MIRRORLAB_SIM_SEED={} cargo test --release --test simulation",
            violations[0].seed
        );
        failed = true;
    }
    println!("simulation: {seeds} seeds, {} violations", violations.len());
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Runs one seed and prints every step it took.
fn replay(seed: u64) -> ExitCode {
    let files = files();
    let (result, trace) = run_traced(seed, None, Some(&files));
    let _ = std::fs::remove_dir_all(&files);
    match result {
        Ok(report) => {
            for step in &trace {
                println!("  {step}");
            }
            println!("seed {seed}: {report:?}");
            println!("simulation: 1 seeds, 0 violations");
            ExitCode::SUCCESS
        }
        Err(violation) => {
            println!("VIOLATION {violation}");
            println!("simulation: 1 seeds, 1 violations");
            ExitCode::FAILURE
        }
    }
}
