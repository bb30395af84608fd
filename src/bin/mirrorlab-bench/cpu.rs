//! Where the CPU time of a benchmark step went: per commit, per process, and for the machine.
//!
//! Throughput figures alone cannot say whether a step was limited by the CPU or by waiting (for
//! a disk, for the backup's acknowledgement). This module reads the kernel's own accounting
//! around a step, so each row of the benchmark can also say how many microseconds of CPU one
//! commit cost in each process and how busy the whole machine was:
//!
//! - `/proc/<pid>/task/<tid>/schedstat`: the nanoseconds every thread spent running. A member is
//!   its agent process and everything below it (the instance), found through the parent
//!   process ids in `/proc/<pid>/stat`; the benchmark's own clients are the threads of this
//!   process only, without its children.
//! - `/proc/stat`: the machine's busy and idle time, in clock ticks, over all CPUs. This
//!   includes what no process above is charged with (the kernel's disk and network workers).
//!
//! Dividing the machine's CPU time per second (cores × 1 s) by a step's machine-wide time per
//! commit gives the commits per second the machine could sustain if nothing ever waited: the
//! *CPU bound*. The benchmark prints the mirrored pair's bound over standalone's measured rate.
//! Well above the measured ratio, it says the CPU is not what holds the pair back — waiting is
//! (for a disk, for a thread to be woken, for the backup's acknowledgement).
//!
//! Left out: threads that end during a step take their time with them (members' threads live
//! for the whole run), and on a system without `/proc` every figure is simply absent.

use std::fs;

/// CPU time used so far by each group of processes, and by the machine.
#[derive(Debug, Clone)]
struct Reading {
    /// Nanoseconds of CPU time used by each group, in the order given to [`CpuClock::start`].
    groups: Vec<u64>,
    /// The machine's busy and total clock ticks.
    machine: (u64, u64),
}

/// Clock ticks per second in `/proc/stat` (`USER_HZ`: 100 on Linux, whatever the kernel's own
/// tick rate).
const USER_HZ: u64 = 100;

/// What to account for: a name and how to find its processes.
#[derive(Debug, Clone)]
pub enum Group {
    /// A process and all its descendants.
    Tree(&'static str, u32),
    /// This process's own threads, without its children.
    ThisProcess(&'static str),
}

impl Group {
    fn name(&self) -> &'static str {
        match self {
            Group::Tree(name, _) | Group::ThisProcess(name) => name,
        }
    }

    /// `parents`: every process's parent, read once for all the groups of one reading.
    fn cpu_ns(&self, parents: &[(u32, u32)]) -> Option<u64> {
        match self {
            Group::Tree(_, root) => descendants_and_self(*root, parents)
                .into_iter()
                .map(process_cpu_ns)
                .sum(),
            Group::ThisProcess(_) => process_cpu_ns(std::process::id()),
        }
    }
}

/// The CPU accounting of one step: started before it, read after it.
pub struct CpuClock {
    groups: Vec<Group>,
    before: Option<Reading>,
}

/// CPU time per commit during one step.
#[derive(Debug, Clone)]
pub struct CpuUse {
    /// Each group's name and its microseconds of CPU time per commit.
    pub per_commit_us: Vec<(&'static str, f64)>,
    /// The whole machine's busy CPU time per commit (µs), every process and the kernel.
    pub machine_per_commit_us: f64,
    /// Share of the machine's CPU time that was busy during the step (0–1).
    pub busy: f64,
}

impl CpuClock {
    /// Starts accounting for `groups`.
    pub fn start(groups: Vec<Group>) -> CpuClock {
        let before = read(&groups);
        CpuClock { groups, before }
    }

    /// What the step used, for `commits` commits; `None` without `/proc` or without commits.
    pub fn stop(self, commits: u64) -> Option<CpuUse> {
        let before = self.before?;
        let after = read(&self.groups)?;
        if commits == 0 {
            return None;
        }
        let per_commit = |ns: u64| ns as f64 / 1_000.0 / commits as f64;
        let per_commit_us = self
            .groups
            .iter()
            .enumerate()
            .map(|(i, g)| {
                let used = after.groups[i].saturating_sub(before.groups[i]);
                (g.name(), per_commit(used))
            })
            .collect();
        let busy_ticks = after.machine.0.saturating_sub(before.machine.0);
        let total_ticks = after.machine.1.saturating_sub(before.machine.1).max(1);
        let ns_per_tick = 1_000_000_000 / USER_HZ;
        Some(CpuUse {
            per_commit_us,
            machine_per_commit_us: per_commit(busy_ticks * ns_per_tick),
            busy: busy_ticks as f64 / total_ticks as f64,
        })
    }
}

fn read(groups: &[Group]) -> Option<Reading> {
    let parents = if groups.iter().any(|g| matches!(g, Group::Tree(..))) {
        parent_table()
    } else {
        Vec::new()
    };
    Some(Reading {
        groups: groups
            .iter()
            .map(|g| g.cpu_ns(&parents))
            .collect::<Option<_>>()?,
        machine: machine_ticks()?,
    })
}

/// Busy and total ticks of all CPUs from the first line of `/proc/stat`.
fn machine_ticks() -> Option<(u64, u64)> {
    parse_machine_ticks(&fs::read_to_string("/proc/stat").ok()?)
}

fn parse_machine_ticks(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().next()?;
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    // user nice system idle iowait irq softirq steal (guest time is already inside user).
    let values: Vec<u64> = fields
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    if values.len() < 8 {
        return None;
    }
    // Steal (time a hypervisor gave this machine's CPUs to someone else) is in the total but is
    // nobody's work here.
    let idle = values[3] + values[4];
    let busy = values[0] + values[1] + values[2] + values[5] + values[6];
    Some((busy, busy + idle + values[7]))
}

/// Nanoseconds every thread of `pid` has run (the first field of each thread's `schedstat`).
fn process_cpu_ns(pid: u32) -> Option<u64> {
    let tasks = fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0;
    for task in tasks.flatten() {
        let path = task.path().join("schedstat");
        // A thread may end between listing and reading: it then counts for nothing.
        if let Ok(text) = fs::read_to_string(path)
            && let Some(ns) = text
                .split_whitespace()
                .next()
                .and_then(|f| f.parse::<u64>().ok())
        {
            total += ns;
        }
    }
    Some(total)
}

/// Every process and its parent, from `/proc/<pid>/stat`.
fn parent_table() -> Vec<(u32, u32)> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(entry.path().join("stat")).ok()?;
            Some((pid, parent_of(&stat)?))
        })
        .collect()
}

/// `root` and every process below it, according to `parents` (see [`parent_table`]).
fn descendants_and_self(root: u32, parents: &[(u32, u32)]) -> Vec<u32> {
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            parents
                .iter()
                .filter(|(_, p)| *p == parent)
                .map(|(pid, _)| *pid),
        );
        i += 1;
    }
    tree
}

/// The parent process id from a `/proc/<pid>/stat` line. The command name (field 2) is in
/// parentheses and may itself contain spaces and parentheses, so fields are counted after the
/// last `)`.
fn parent_of(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_ticks_count_busy_and_idle_fields() {
        let stat = "cpu  100 5 50 1000 20 3 7 2 0 0\ncpu0 50 2 25 500 10 1 3 1 0 0\n";
        // busy = user + nice + system + irq + softirq; the rest are idle, iowait and steal.
        assert_eq!(parse_machine_ticks(stat), Some((165, 1187)));
        assert_eq!(parse_machine_ticks("intr 1 2 3\n"), None);
        assert_eq!(parse_machine_ticks("cpu 1 2 3\n"), None);
    }

    #[test]
    fn the_parent_is_read_after_a_command_name_with_spaces_and_parentheses() {
        assert_eq!(parent_of("42 (tokio (rt) worker) S 17 42 42 0"), Some(17));
        assert_eq!(parent_of("42 (sh) R 1 42"), Some(1));
        assert_eq!(parent_of("garbage"), None);
    }

    #[test]
    fn a_busy_thread_of_this_process_is_charged_to_it() {
        let clock = CpuClock::start(vec![Group::ThisProcess("test")]);
        // 50 ms of spinning on this thread. Other tests may share the cores meanwhile, so it
        // surely got some milliseconds of CPU, and the process can have used at most every
        // core for the whole time: a wrong unit (ns for µs, ticks for ns) lands outside.
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while started.elapsed() < std::time::Duration::from_millis(50) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let wall_us = started.elapsed().as_micros() as f64;
        let used = clock.stop(1).expect("this machine has /proc");
        let (name, us) = used.per_commit_us[0];
        assert_eq!(name, "test");
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        assert!(
            us >= 5_000.0 && us <= wall_us * cores + 20_000.0,
            "charged {us} µs for {wall_us} µs of spinning on {cores} cores"
        );
        assert!(used.machine_per_commit_us > 0.0);
        assert!(used.busy > 0.0 && used.busy <= 1.0);
    }

    #[test]
    fn a_tree_includes_the_children_of_its_root() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("spawn sleep");
        let tree = descendants_and_self(std::process::id(), &parent_table());
        let _ = child.kill();
        let _ = child.wait();
        assert!(tree.contains(&std::process::id()));
        assert!(tree.contains(&child.id()), "{tree:?} lacks the child");
    }
}
