//! The Docker CLI for the tests that run containers (the Compose lab, the Swarm stack): run a
//! command, run one that must succeed, read what it printed, and the check that the engine and
//! the images they need are there (these tests never skip).

#![allow(dead_code)]

use std::process::{Command, Output};
use std::time::Instant;

/// Runs `docker ARGS`.
pub fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("run docker")
}

/// Runs `docker ARGS`, which must succeed; returns what it printed on stdout, trimmed.
pub fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(out.status.success(), "docker {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Both streams of a command's output.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Fails unless a Docker engine answers and it holds `image` (which `built_by`, a script of
/// `tests/docker/`, builds without a registry).
pub fn assert_docker_has(image: &str, built_by: &str) {
    let answered = Command::new("docker").arg("info").output();
    assert!(
        answered.as_ref().is_ok_and(|o| o.status.success()),
        "no Docker engine answers (`docker info`): {answered:?}"
    );
    assert!(
        docker(&["image", "inspect", image]).status.success(),
        "the image {image} is missing: build it with tests/docker/{built_by}"
    );
}

/// Prints how far a long test has got, for whoever reads its output.
pub fn phase(started: Instant, what: &str) {
    eprintln!("[{:>6.1} s] {what}", started.elapsed().as_secs_f64());
}
