//! The benchmark's tables: each system's figures per client count with the ratios of the
//! mirrored pair to the others, and the CPU time a commit cost (see `cpu.rs`).
//!
//! The systems, in their columns' order: mirrorlab standalone, mirrorlab mirrored (primary and
//! active backup), PostgreSQL with a synchronous standby, MariaDB with semi-synchronous
//! replication. A system the run did not measure gets no column; a ratio it cannot have says `-`.

use super::StepResult;

/// The systems' names, in their columns' order (the index of each in [`Results`]).
pub const SYSTEMS: [&str; 4] = [
    "standalone",
    "mirrored",
    "postgres-sync",
    "mariadb-semisync",
];

/// Per system (in [`SYSTEMS`]' order), per client count: the step's figures, if it ran.
pub type Results = [Vec<Option<StepResult>>; 4];

/// One table: each system's commits/s, p50 and p99 per client count, and the ratios.
pub fn print_comparison(clients: &[usize], results: &Results) {
    let shown: Vec<usize> = (0..SYSTEMS.len())
        .filter(|&s| results[s].iter().any(Option::is_some))
        .collect();
    println!();
    let mut header = format!("{:>8}", "clients");
    for &s in &shown {
        header += &format!(
            " | {:>13} {:>8} {:>8} {:>6}",
            format!("{} c/s", SYSTEMS[s]),
            "p50 ms",
            "p99 ms",
            "errors"
        );
    }
    header += " | mirrored/standalone | mirrored/postgres | mirrored/mariadb";
    println!("{header}");
    for (i, c) in clients.iter().enumerate() {
        let mut line = format!("{c:>8}");
        for &s in &shown {
            match &results[s][i] {
                Some(r) => {
                    line += &format!(
                        " | {:>13.0} {:>8.2} {:>8.2} {:>6}",
                        r.commits_per_s, r.p50_ms, r.p99_ms, r.errors
                    )
                }
                None => line += &format!(" | {:>38}", "-"),
            }
        }
        let ratio = |over: usize| match (&results[1][i], &results[over][i]) {
            (Some(m), Some(o)) => format!("{:.2}", m.commits_per_s / o.commits_per_s.max(1.0)),
            _ => "-".into(),
        };
        line += &format!(" | {:>19} | {:>17} | {:>16}", ratio(0), ratio(2), ratio(3));
        println!("{line}");
    }
    if let Some(fsyncs) = results[1]
        .iter()
        .flatten()
        .map(|r| r.commits_per_fsync)
        .reduce(f64::max)
    {
        println!("(mirrored: up to {fsyncs:.1} commits per journal fsync — group commit)");
    }
}

/// A second table: the CPU time one commit cost in each process, and on the whole machine.
///
/// The last column is the mirrored pair's CPU bound (the commits per second `cores` could carry
/// at its CPU time per commit, if nothing waited) over standalone's measured commits per second:
/// how far the CPU alone would let the ratio go on this machine (see `bench/cpu.rs`).
pub fn print_cpu(clients: &[usize], results: &Results, cores: usize) {
    let cpu = |s: usize, i: usize| results[s][i].as_ref().and_then(|r| r.cpu.as_ref());
    let shown: Vec<(usize, &str)> = [(0, "standalone"), (1, "mirrored")]
        .into_iter()
        .filter(|&(s, _)| (0..clients.len()).any(|i| cpu(s, i).is_some()))
        .collect();
    if shown.is_empty() {
        return;
    }
    println!();
    println!(
        "CPU time per commit (µs): each process tree, the whole machine (all processes and the \
         kernel), and how busy the machine was"
    );
    let mut header = format!("{:>8}", "clients");
    let mut widths = Vec::new();
    for &(s, name) in &shown {
        let groups: Vec<&str> = (0..clients.len())
            .find_map(|i| cpu(s, i))
            .map(|c| c.per_commit_us.iter().map(|(g, _)| *g).collect())
            .unwrap_or_default();
        header += &format!(" | {name}:");
        for g in &groups {
            header += &format!(" {g:>8}");
        }
        header += &format!(" {:>8} {:>5}", "machine", "busy");
        widths.push((s, name.len() + 1, groups.len()));
    }
    if shown.len() == 2 {
        header += " | mirrored's CPU bound / standalone";
    }
    println!("{header}");
    for (i, c) in clients.iter().enumerate() {
        let mut line = format!("{c:>8}");
        for &(s, label, groups) in &widths {
            line += &format!(" | {:>label$}", "");
            match cpu(s, i) {
                Some(use_) => {
                    for (_, us) in &use_.per_commit_us {
                        line += &format!(" {us:>8.1}");
                    }
                    line += &format!(
                        " {:>8.1} {:>4.0}%",
                        use_.machine_per_commit_us,
                        use_.busy * 100.0
                    );
                }
                None => line += &format!(" {:>w$}", "-", w = groups * 9 + 14),
            }
        }
        if shown.len() == 2 {
            let standalone = results[0][i].as_ref().map(|r| r.commits_per_s);
            let bound = match (standalone, cpu(1, i)) {
                (Some(rate), Some(m)) if m.machine_per_commit_us > 0.0 && rate > 0.0 => {
                    let mirrored_bound = cores as f64 * 1e6 / m.machine_per_commit_us;
                    format!("{:.2}", mirrored_bound / rate)
                }
                _ => "-".into(),
            };
            line += &format!(" | {bound:>34}");
        }
        println!("{line}");
    }
}
