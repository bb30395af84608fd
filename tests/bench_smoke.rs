//! Keeps the benchmarks working: one-second runs against a temporary standalone member and a
//! temporary mirrored pair, and the whole comparison harness (`bench/run.sh --smoke`, with
//! PostgreSQL and MariaDB), must produce their figures. No timing is asserted here; figures are
//! for people (see the README).

mod common;

use std::process::Command;

/// The benchmark program, built with the member's.
const BENCH: &str = env!("CARGO_BIN_EXE_mirrorlab-bench");

/// Runs `mirrorlab-bench ARGS` against members of this build, expects success, returns what it
/// printed.
fn bench(args: &[&str]) -> String {
    let output = Command::new(BENCH)
        .args(args)
        .env("MIRRORLAB_BIN", common::BINARY)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "bench failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The rows of the table whose header line contains `header`: the lines after it that start
/// with a client count.
fn table<'a>(stdout: &'a str, header: &str) -> Vec<&'a str> {
    stdout
        .lines()
        .skip_while(|line| !line.contains(header))
        .skip(1)
        .take_while(|line| {
            let first = line.split('|').next().unwrap_or_default();
            first.trim().parse::<usize>().is_ok()
        })
        .collect()
}

/// The rows of the comparison table: per client count, each system's four figures (commits/s,
/// p50, p99, errors), then the two ratios.
fn comparison_rows(stdout: &str) -> Vec<(usize, Vec<Vec<f64>>, Vec<String>)> {
    table(stdout, "mirrored/standalone")
        .into_iter()
        .filter_map(|line| {
            let parts: Vec<&str> = line.split('|').map(str::trim).collect();
            let clients = parts.first()?.parse().ok()?;
            // The last three columns are the ratios (to standalone, PostgreSQL, MariaDB).
            let (systems, ratios) = parts[1..].split_at(parts.len().checked_sub(4)?);
            let systems = systems
                .iter()
                .map(|s| s.split_whitespace().map(|n| n.parse().unwrap()).collect())
                .collect();
            Some((
                clients,
                systems,
                ratios.iter().map(|r| r.to_string()).collect(),
            ))
        })
        .collect()
}

/// Checks the table has `steps` rows of `systems` systems, each with commits and no errors;
/// returns each row's ratios.
fn checked_rows(stdout: &str, steps: usize, systems: usize) -> Vec<Vec<String>> {
    let rows = comparison_rows(stdout);
    assert_eq!(
        rows.len(),
        steps,
        "{steps} client counts expected:\n{stdout}"
    );
    rows.into_iter()
        .map(|(clients, figures, ratios)| {
            assert_eq!(figures.len(), systems, "{systems} systems:\n{stdout}");
            for system in figures {
                assert!(
                    system[0] > 0.0,
                    "no commits at {clients} clients:\n{stdout}"
                );
                assert_eq!(system[3], 0.0, "errors at {clients} clients:\n{stdout}");
            }
            ratios
        })
        .collect()
}

/// Checks the CPU table: per client count, standalone's member, clients, machine time per
/// commit and busy share, the mirrored pair's primary, backup, clients, machine and busy share,
/// and the pair's CPU bound against standalone.
fn check_cpu_table(stdout: &str, steps: usize) {
    let rows = table(stdout, "CPU bound");
    assert_eq!(rows.len(), steps, "{steps} CPU rows expected:\n{stdout}");
    for row in rows {
        let parts: Vec<&str> = row.split('|').map(str::trim).collect();
        assert_eq!(parts.len(), 4, "{row}");
        for (part, figures) in [(parts[1], 3), (parts[2], 4)] {
            let fields: Vec<&str> = part.split_whitespace().collect();
            assert_eq!(fields.len(), figures + 1, "{row}");
            for us in &fields[..figures] {
                let us: f64 = us.parse().unwrap_or_else(|_| panic!("{us:?} in {row}"));
                assert!(us > 0.0, "no CPU time per commit in {row}");
            }
            let busy: f64 = fields[figures].trim_end_matches('%').parse().unwrap();
            assert!(busy > 0.0 && busy <= 100.0, "busy {busy} % in {row}");
        }
        let bound: f64 = parts[3].parse().unwrap();
        assert!(bound > 0.0, "{row}");
    }
}

#[test]
fn bench_runs_against_a_temporary_member_and_pair_and_prints_one_table() {
    let stdout = bench(&["--clients", "1,3", "--seconds", "1"]);
    for ratios in checked_rows(&stdout, 2, 2) {
        assert!(ratios[0].parse::<f64>().is_ok(), "{stdout}");
        assert_eq!(ratios[1], "-", "no PostgreSQL in this run:\n{stdout}");
        assert_eq!(ratios[2], "-", "no MariaDB in this run:\n{stdout}");
    }
    check_cpu_table(&stdout, 2);
}

/// The whole harness (`bench/run.sh --smoke`): PostgreSQL with a synchronous standby and MariaDB
/// with a semi-synchronous replica beside both mirrorlab setups, the extra figures, and one kill
/// of each kind.
#[test]
fn the_comparison_harness_runs_in_its_smoke_version() {
    let root = env!("CARGO_MANIFEST_DIR");
    let output = Command::new(format!("{root}/bench/run.sh"))
        .arg("--smoke")
        .env("MIRRORLAB_BENCH_BIN", BENCH)
        .env("MIRRORLAB_BIN", common::BINARY)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "bench/run.sh failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for ratios in checked_rows(&stdout, 2, 4) {
        for ratio in ratios {
            assert!(ratio.parse::<f64>().is_ok(), "{stdout}");
        }
    }
    check_cpu_table(&stdout, 2);
    // Every MariaDB commit waited for its replica (the harness checks the server's count).
    assert!(
        stdout.contains("commits acknowledged by the replica, 0 without it"),
        "{stdout}"
    );
    for line in [
        "idle RSS of a fresh member",
        "Mirror Monitor page on the primary",
        "catchup of a 20000-row backlog",
        "copy of COMPANY's file",
    ] {
        assert!(stdout.contains(line), "no {line:?} in:\n{stdout}");
    }
    for kind in ["instance crash", "host killed", "host silent"] {
        let row = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(kind))
            .unwrap_or_else(|| panic!("no {kind} row:\n{stdout}"));
        let cols: Vec<&str> = row.split_whitespace().collect();
        let kills: u64 = cols[cols.len() - 5].parse().unwrap();
        assert_eq!(kills, 1, "{row}");
    }
}
