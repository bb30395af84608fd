//! Keeps `mirrorlab bench` working: one-second runs against a temporary standalone member and a
//! temporary mirrored pair must both produce figures. No timing is asserted here; figures are for
//! people (see the README).

mod common;

use std::process::Command;

/// Runs `mirrorlab bench ARGS`, expects success, returns what it printed.
fn bench(args: &[&str]) -> String {
    let output = Command::new(common::BINARY)
        .arg("bench")
        .args(args)
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

#[test]
fn bench_runs_against_a_temporary_member_and_prints_figures() {
    let stdout = bench(&["--clients", "1,3", "--seconds", "1"]);
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|cols| cols.len() == 6 && cols[0].parse::<usize>().is_ok())
        .collect();
    // Two client counts for the standalone member, two for the mirrored pair.
    assert_eq!(rows.len(), 4, "four steps expected:\n{stdout}");
    assert!(stdout.contains("standalone member"), "{stdout}");
    assert!(stdout.contains("mirrored pair"), "{stdout}");
    for row in rows {
        let commits: f64 = row[1].parse().unwrap();
        let errors: u64 = row[4].parse().unwrap();
        assert!(commits > 0.0, "no commits in {row:?}");
        assert_eq!(errors, 0, "errors in {row:?}");
    }
}

#[test]
fn the_failover_bench_kills_each_way_once_and_prints_figures() {
    let stdout = bench(&["--mode", "failover", "--kills", "1", "--qos-ms", "1000"]);
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
