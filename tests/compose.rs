//! The Docker Compose lab end to end: the project's `docker-compose.yml`, the image that
//! `tests/docker/build-offline.sh` built (`tests/run.sh` builds it first), and the walk-through
//! clicked in headless Chromium on ports 52775 and 52776 as a person would do it (checked again
//! through `/api`) — then the faults a person can cause with Docker: `docker kill`, `docker
//! network disconnect`, `docker pause`, `docker stop arbiter`.
//!
//! The lab runs in a temporary copy of the compose file and `install/`, so the checkout's own
//! `sharedA` / `sharedB` are never touched, and its members run with this process's user and
//! group ids, so everything they write can be removed afterwards. Writers insert companies
//! through the whole fault sequence; at the end every acknowledged one must be on the primary,
//! no two members may have accepted writes at the same time, and both members must hold the same
//! rows.
//!
//! This test needs a Docker engine and the image `mirrorlab:latest`: without either it fails,
//! it never skips. It uses the lab's fixed container names and host ports, so a lab that is
//! already running makes it fail with a message saying so.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use common::browser::{Driver, Portal, Typed, click_through_walkthrough, take_pictures};
use common::docker::{assert_docker_has, docker, docker_ok, phase, text};
use common::pair::*;
use common::{Api, LogSource, TestMember};
use serde_json::json;

const CONTAINERS: [&str; 3] = ["arbiter", "mirrorA", "mirrorB"];
/// Every container a lab of these tests may start (the profiles' too).
const ALL_CONTAINERS: [&str; 6] = [
    "arbiter",
    "mirrorA",
    "mirrorB",
    "mirrorC",
    "prometheus",
    "haproxy",
];
const QOS_MS: u64 = 2000;

/// One lab at a time: the labs share container names and host ports.
static ONE_LAB: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The running lab in its temporary folder; `docker compose down` when dropped.
struct Lab {
    dir: tempfile::TempDir,
    compose: Vec<String>,
    /// `--profile` arguments for every command.
    profiles: Vec<String>,
    /// Environment of the `up` (the compose file reads it).
    env: Vec<(String, String)>,
    /// This process's user and group ids: the members run with them, so that everything they
    /// write can be removed by this test.
    ids: (String, String),
}

impl Lab {
    /// Copies the compose file and `install/` into a fresh folder and runs `up -d --no-build`
    /// with `profiles` and the environment `env`.
    fn up(profiles: &[&str], env: &[(&str, &str)]) -> Lab {
        assert_docker_has("mirrorlab:latest", "build-offline.sh");
        assert_docker_has("prom/prometheus:latest", "build-prometheus-offline.sh");
        assert_docker_has("haproxy:latest", "build-haproxy-offline.sh");
        for name in ALL_CONTAINERS {
            assert!(
                !docker(&["container", "inspect", name]).status.success(),
                "a container called {name} exists already (is the lab running? `docker compose down` it first)"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        std::fs::copy(
            root.join("docker-compose.yml"),
            dir.path().join("docker-compose.yml"),
        )
        .unwrap();
        copy_tree(&root.join("install"), &dir.path().join("install"));
        copy_tree(&root.join("monitoring"), &dir.path().join("monitoring"));
        copy_tree(&root.join("haproxy"), &dir.path().join("haproxy"));
        std::fs::create_dir(dir.path().join("sharedA")).unwrap();
        std::fs::create_dir(dir.path().join("sharedB")).unwrap();
        std::fs::create_dir(dir.path().join("sharedC")).unwrap();
        let lab = Lab {
            dir,
            compose: compose_command(),
            profiles: profiles
                .iter()
                .flat_map(|p| ["--profile".to_string(), p.to_string()])
                .collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ids: ids(),
        };
        let version = lab.compose(&["version"]);
        println!(
            "compose: {} {}",
            lab.compose.join(" "),
            text(&version).trim()
        );
        let up = lab.compose(&["up", "-d", "--no-build"]);
        assert!(up.status.success(), "compose up failed: {}", text(&up));
        lab
    }

    fn compose(&self, args: &[&str]) -> Output {
        let (uid, gid) = &self.ids;
        Command::new(&self.compose[0])
            .args(&self.compose[1..])
            .args(["--project-name", "mirrorlabtest"])
            .args(&self.profiles)
            .args(args)
            .current_dir(self.dir.path())
            .env("MIRRORLAB_UID", uid)
            .env("MIRRORLAB_GID", gid)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap()
    }

    fn data_dir(&self, shared: &str) -> PathBuf {
        self.dir.path().join(shared).join("durable")
    }

    fn member(&self, port: u16, container: &str) -> Api {
        Api::new(
            format!("http://127.0.0.1:{port}"),
            LogSource::Container(container.to_string()),
        )
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let down = self.compose(&["down", "--volumes", "--remove-orphans", "--timeout", "20"]);
        if !down.status.success() {
            eprintln!("compose down failed: {}", text(&down));
        }
    }
}

/// The Compose command the lab is driven with: `MIRRORLAB_COMPOSE` when set (a command line,
/// e.g. the v2 binary `tests/docker/compose-v2.sh` prints, which also runs standalone), else
/// `docker compose` (v2) when the Docker CLI has it, else `docker-compose` (1.29).
fn compose_command() -> Vec<String> {
    if let Ok(command) = std::env::var("MIRRORLAB_COMPOSE") {
        let words: Vec<String> = command.split_whitespace().map(String::from).collect();
        assert!(!words.is_empty(), "MIRRORLAB_COMPOSE is empty");
        return words;
    }
    let v2 = Command::new("docker").args(["compose", "version"]).output();
    if v2.is_ok_and(|o| o.status.success()) {
        vec!["docker".into(), "compose".into()]
    } else {
        vec!["docker-compose".into()]
    }
}

fn ids() -> (String, String) {
    let id = |flag: &str| {
        let out = Command::new("id").arg(flag).output().unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    (id("-u"), id("-g"))
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The container's health as Docker sees it (`healthy`, `starting`, `unhealthy`).
fn health(container: &str) -> String {
    let out = docker(&["inspect", "-f", "{{.State.Health.Status}}", container]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

async fn wait_healthy(containers: &[&str], seconds: u64) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    for container in containers {
        while health(container) != "healthy" {
            assert!(
                Instant::now() < deadline,
                "{container} is not healthy ({}):\n{}",
                health(container),
                text(&docker(&["logs", "--tail", "50", container]))
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The only network the container is on.
fn network_of(container: &str) -> String {
    let out = docker(&[
        "inspect",
        "-f",
        "{{range $name, $_ := .NetworkSettings.Networks}}{{$name}}{{end}}",
        container,
    ]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs `mirrorlab ctl` inside a container (the image has no shell): for a member the host
/// cannot reach.
fn ctl_inside(container: &str, args: &[&str]) -> Output {
    let mut all = vec!["exec", container, "/usr/local/bin/mirrorlab", "ctl"];
    all.extend_from_slice(args);
    docker(&all)
}

/// mirrorB's Mirror Monitor in a browser after `docker kill mirrorA`: the takeover, its reason
/// and the write outage on the timeline (the README's picture).
async fn see_the_takeover_on_the_monitor() {
    let driver = Driver::start().await;
    let mut pb = Portal::open(&driver, "http://127.0.0.1:52776".into(), "B").await;
    pb.log_in().await;
    pb.wait_for_text("/portal/mirror/monitor", "write outage", 30)
        .await;
    let body = pb.body().await;
    assert!(body.contains("Takeover by MIRRORB/IRIS"), "{body}");
    assert!(body.contains("(arbiter controlled)"), "{body}");
    pb.browser
        .execute(
            "document.getElementById('timeline').scrollIntoView()",
            vec![],
        )
        .await
        .unwrap();
    pb.screenshot("lab-timeline-mirrorB.png").await;
    pb.browser.close().await.unwrap();
}

/// Copy from Primary on the backup (mirrorA) while the writers go on: COMPANY, grown to a few
/// megabytes, is dismounted and fetched again over the data channel at 500 kB/s (its progress
/// on the Mirror Monitor is the README's picture); `docker kill mirrorA` halfway leaves its file
/// untouched, and after `docker start` the copy resumes, and COMPANY is dejournaling again.
async fn copy_from_the_primary_through_a_kill(a: &Api, b: &Api, a_data: &Path) {
    // The browser first: started on a loaded machine it can take seconds, and the copy's first
    // half must not pass meanwhile. The pace leaves several seconds between the copy's halfway
    // point and its end for the picture and the kill.
    let driver = Driver::start().await;
    let mut pa = Portal::open(&driver, "http://localhost:52775".into(), "A").await;
    pa.log_in().await;
    b.sql("COMPANY", BULK_COMPANIES).await;
    a.ok("/api/databases/COMPANY/dismount", json!({})).await;
    a.ok(
        "/api/databases/COMPANY/copy?max_bytes_per_s=500000",
        json!({}),
    )
    .await;
    let total = wait_copy_halfway(a, "COMPANY").await;
    pa.visit("/portal/mirror/monitor").await;
    assert!(pa.body().await.contains("Copies from the Primary"));
    pa.browser
        .execute(
            "document.getElementById('copies').closest('section').scrollIntoView()",
            vec![],
        )
        .await
        .unwrap();
    pa.screenshot("lab-copy-from-primary-mirrorA.png").await;
    pa.browser.close().await.unwrap();
    drop(driver);
    docker_ok(&["kill", "mirrorA"]);
    let partial = std::fs::metadata(a_data.join("mgr/company/database.sqlite.copy"))
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(
        partial > 0 && partial < total,
        "partial copy of {partial} bytes"
    );
    docker_ok(&["start", "mirrorA"]);
    a.wait_ready_within(60).await;
    wait_copy_resumed(a, "COMPANY").await;
    wait_dejournaling(a, "COMPANY").await;
    wait_role(a, "Backup", 30).await;
}

/// Prometheus's own UI at the end of the faults: the primary moving between the members, and
/// the backup's lag (the README's pictures). Its classic UI draws the graph with JavaScript
/// once the page loaded: the test waits for the drawing.
async fn graph_in_prometheus() {
    let driver = Driver::start().await;
    let pb = Portal::open(&driver, PROMETHEUS.into(), "Prometheus").await;
    for (file, expr) in [
        ("lab-prometheus-role.png", "mirrorlab:primary"),
        ("lab-prometheus-lag.png", "mirrorlab_backup_lag_bytes"),
    ] {
        let url = format!(
            "{PROMETHEUS}/graph?g0.expr={}&g0.tab=0&g0.range_input=2m",
            urlencode(expr)
        );
        pb.browser.goto(&url).await.unwrap();
        pb.browser
            .wait()
            .at_most(Duration::from_secs(20))
            .for_element(fantoccini::Locator::Css(".graph_area svg, .graph svg"))
            .await
            .unwrap_or_else(|e| panic!("{url} drew no graph: {e}"));
        tokio::time::sleep(Duration::from_millis(500)).await;
        pb.screenshot(file).await;
    }
    pb.browser.close().await.unwrap();
}

/// Prometheus's web UI and HTTP API in the lab (the monitoring profile).
const PROMETHEUS: &str = "http://127.0.0.1:9090";

/// Waits until Prometheus's answer to `query` (an instant vector) holds a sample equal to
/// `value`; it scrapes every 5 s, so `seconds` leaves room for a few scrapes.
async fn wait_prometheus(query: &str, value: f64, seconds: u64) {
    let url = format!("{PROMETHEUS}/api/v1/query?query={}", urlencode(query));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        let answer: serde_json::Value = match reqwest::get(&url).await {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(err) => json!({ "error": err.to_string() }),
        };
        let found = answer["data"]["result"].as_array().is_some_and(|result| {
            result.iter().any(|sample| {
                sample["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok())
                    == Some(value)
            })
        });
        if found {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never answered {value} to {query}: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Percent-encodes a query for a URL.
fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn wait_role(member: &Api, status: &str, seconds: u64) {
    member
        .wait_mirror(seconds, status, |v| v["status"] == status)
        .await;
}

/// Waits until a former primary is back as backup. When the new primary had its agent force
/// it down (it still acted as primary of the old epoch), it is started again, as a person would.
async fn rejoin_as_backup(member: &Api, container: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let url = format!("{}/api/mirror", member.url);
        let asked = member.client.get(&url).basic_auth("superuser", Some("SYS"));
        let status = match asked.send().await {
            Ok(r) => r.json::<serde_json::Value>().await.unwrap_or_default()["status"].clone(),
            Err(_) => serde_json::Value::Null,
        };
        if status == "Backup" {
            return;
        }
        if text(&ctl_inside(container, &["status"])).contains("\"down\"") {
            // The health check says why it is down and how to start it; do as it says.
            let health = ctl_inside(container, &["health"]);
            let said = text(&health);
            assert!(
                !health.status.success()
                    && said.contains("docker exec <member> mirrorlab ctl start"),
                "{said}"
            );
            let started = docker(&["exec", container, "mirrorlab", "ctl", "start"]);
            assert!(started.status.success(), "{}", text(&started));
        }
        assert!(
            Instant::now() < deadline,
            "{container} never rejoined as backup (status {status}):\n{}",
            member.log()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_compose_lab_walkthrough_and_its_faults() {
    let _one_lab = ONE_LAB.lock().await;
    let started = Instant::now();
    // With the monitoring profile (Prometheus scrapes the three) and the haproxy profile (one
    // port that follows the primary).
    let lab = Lab::up(&["monitoring", "haproxy"], &[]);
    let a = lab.member(52775, "mirrorA");
    let b = lab.member(52776, "mirrorB");
    a.wait_ready_within(60).await;
    b.wait_ready_within(60).await;
    eprintln!(
        "figure: compose up -> both portals ready: {:?}",
        started.elapsed()
    );
    wait_healthy(&CONTAINERS, 60).await;

    // Steps 3–9 clicked in a browser, as a person would: in the lab the forms' defaults are
    // right, only the QoS timeout is shortened so that the faults below resolve quickly.
    let driver = Driver::start().await;
    let mut pa = Portal::open(&driver, "http://localhost:52775".into(), "A").await;
    let mut pb = Portal::open(&driver, "http://127.0.0.1:52776".into(), "B").await;
    let typed = Typed {
        create: vec![("qos_timeout_ms", QOS_MS.to_string())],
        ..Typed::default()
    };
    let (a_data, b_data) = (lab.data_dir("sharedA"), lab.data_dir("sharedB"));
    click_through_walkthrough(&mut pa, &mut pb, &typed, &a_data, &b_data).await;
    take_pictures(&mut pa, &mut pb, "lab").await;
    pa.check_links().await;
    pb.check_links().await;
    pa.browser.close().await.unwrap();
    pb.browser.close().await.unwrap();
    drop(driver);
    phase(started, "walk-through clicked");

    // The same facts through /api.
    let view = a
        .wait_mirror(5, "with an active backup", |v| {
            TestMember::member_row(v, "MIRRORB/IRIS")["journal_transfer"] == "Active"
        })
        .await;
    assert_eq!(view["member_name"], "MIRRORA/IRIS");
    assert_eq!(view["qos_timeout_ms"], QOS_MS);
    wait_role(&b, "Backup", 10).await;
    wait_arbiter_controlled(&a, &b).await;
    for db in DATABASES {
        assert_eq!(b.db_status(db).await, "Dejournaling");
    }
    let on_b = names(
        &b.sql("COMPANY", "SELECT name FROM Company ORDER BY id")
            .await,
    );
    assert_eq!(on_b[..2], ["Acme", "Another company"]);
    b.refused(
        "/api/apps/companies",
        json!({"name": "Nope"}),
        409,
        "read-only",
    )
    .await;

    // Prometheus (the monitoring profile) scrapes both members and the arbiter; every series
    // the members and the arbiter serve is there, through its HTTP query API.
    wait_prometheus(r#"count(up{job=~"mirrorlab.*"} == 1)"#, 3.0, 60).await;
    for series in [
        r#"mirrorlab_mirror_role{role="primary",instance="mirrorA"}"#,
        r#"mirrorlab_mirror_role{role="backup",instance="mirrorB"}"#,
        r#"mirrorlab:primary{instance="mirrorA"}"#,
        r#"mirrorlab_mirror_epoch{instance="mirrorA"}"#,
        r#"mirrorlab_failover_mode{mode="arbiter",instance="mirrorB"}"#,
        r#"mirrorlab_arbiter_connected{instance="mirrorA"}"#,
        r#"mirrorlab_member_link_up{member="MIRRORB/IRIS",instance="mirrorA"}"#,
    ] {
        wait_prometheus(series, 1.0, 30).await;
    }
    for series in [
        "mirrorlab_journal_end_position",
        "mirrorlab_backup_lag_bytes",
        "mirrorlab_backup_lag_seconds",
        "mirrorlab_commits_total",
        "mirrorlab_commit_seconds_bucket",
        "mirrorlab_journal_fsync_seconds_bucket",
        "mirrorlab_group_commit_size_bucket",
        "mirrorlab_trouble_seconds_total",
        "mirrorlab_frozen",
        "mirrorlab_quarantined_rows",
        "mirrorlab:commits:rate30s",
    ] {
        wait_prometheus(&format!("count({series}) > bool 0"), 1.0, 30).await;
    }
    wait_prometheus(
        r#"mirrorlab_arbiter_members_seen{mirror="MIRRORSET"}"#,
        2.0,
        30,
    )
    .await;
    phase(started, "prometheus scrapes the lab");

    // Writers through every fault below, on whichever member accepts them; and one through
    // HAProxy's port, which must reach the primary every time.
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers_on_primary([a.clone(), b.clone()], 2, "lab", stop.clone());
    let proxy = Api::new(
        "http://127.0.0.1:52780".into(),
        LogSource::Container("haproxy".into()),
    );
    let proxied = start_writers_on_primary([proxy.clone(), proxy], 1, "proxy", stop.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Step 10: `docker kill mirrorA` — the whole host — and mirrorB takes over.
    docker_ok(&["kill", "mirrorA"]);
    wait_role(&b, "Primary", 20).await;
    phase(started, "docker kill mirrorA: mirrorB is primary");
    // mirrorB's events say why (mirrorA's whole host is gone: the arbiter confirmed it), and
    // its Mirror Monitor shows the takeover and the write outage.
    b.wait_event(
        "MIRRORB/IRIS",
        "takeover",
        "the arbiter lost the primary too",
    )
    .await;
    b.wait_event("MIRRORB/IRIS", "writes_resumed", "writes stopped")
        .await;
    let events = b.events().await;
    assert_eq!(events["members"][1]["reachable"], false, "{events}");
    // Prometheus saw the role change and counts the takeover by its rule.
    wait_prometheus(r#"mirrorlab:primary{instance="mirrorB"}"#, 1.0, 30).await;
    wait_prometheus(
        r#"mirrorlab_failovers_total{instance="mirrorB",reason="arbiter_controlled"}"#,
        1.0,
        30,
    )
    .await;
    wait_prometheus(
        r#"mirrorlab_arbiter_answers_total{question="may_take_over",answer="yes"}"#,
        1.0,
        30,
    )
    .await;
    see_the_takeover_on_the_monitor().await;
    let starting = Instant::now();
    docker_ok(&["start", "mirrorA"]);
    a.wait_ready_within(60).await;
    eprintln!(
        "figure: docker start -> portal ready: {:?}",
        starting.elapsed()
    );
    wait_role(&a, "Backup", 30).await;
    wait_arbiter_controlled(&a, &b).await;
    phase(started, "docker start mirrorA: mirrorA is backup");

    // Isolate the primary (B) from everyone: A takes over through the arbiter; B cannot commit.
    let network = network_of("mirrorB");
    let fault = common::now_ms();
    docker_ok(&["network", "disconnect", &network, "mirrorB"]);
    wait_role(&a, "Primary", 30).await;
    a.wait_event_since(
        fault,
        "MIRRORA/IRIS",
        "takeover",
        "the arbiter lost the primary too",
    )
    .await;
    phase(started, "mirrorB isolated: mirrorA is primary");
    let isolated = ctl_inside(
        "mirrorB",
        &[
            "--timeout-ms",
            "3000",
            "post",
            "/api/apps/companies",
            r#"{"name":"written while isolated"}"#,
        ],
    );
    assert!(
        !isolated.status.success(),
        "the isolated former primary accepted a write: {}",
        text(&isolated)
    );
    docker_ok(&["network", "connect", &network, "mirrorB"]);
    rejoin_as_backup(&b, "mirrorB").await;
    phase(started, "mirrorB reconnected: it is backup");
    wait_arbiter_controlled(&a, &b).await;
    let on_a = names(&a.sql("COMPANY", "SELECT name FROM Company").await);
    assert!(!on_a.contains(&"written while isolated".to_string()));

    // A graceful handover and back, then the new primary's host dies: the arbiter must still
    // approve the takeover (after a handover it once never did).
    let fault = common::now_ms();
    docker_ok(&["stop", "mirrorA"]);
    wait_role(&b, "Primary", 20).await;
    b.wait_event_since(fault, "MIRRORB/IRIS", "takeover", "handed over")
        .await;
    phase(started, "docker stop mirrorA: mirrorB is primary");
    docker_ok(&["start", "mirrorA"]);
    a.wait_ready_within(60).await;
    wait_role(&a, "Backup", 30).await;
    wait_arbiter_controlled(&a, &b).await;
    phase(started, "docker start mirrorA: mirrorA is backup");
    let fault = common::now_ms();
    docker_ok(&["kill", "mirrorB"]);
    wait_role(&a, "Primary", 20).await;
    a.wait_event_since(
        fault,
        "MIRRORA/IRIS",
        "takeover",
        "the arbiter lost the primary too",
    )
    .await;
    phase(started, "docker kill mirrorB: mirrorA is primary");
    docker_ok(&["start", "mirrorB"]);
    b.wait_ready_within(60).await;
    wait_role(&b, "Backup", 30).await;
    wait_arbiter_controlled(&a, &b).await;
    phase(started, "docker start mirrorB: mirrorB is backup");

    // `docker pause` the primary (A): a silent host; B takes over through the arbiter.
    let fault = common::now_ms();
    docker_ok(&["pause", "mirrorA"]);
    wait_role(&b, "Primary", 30).await;
    b.wait_event_since(
        fault,
        "MIRRORB/IRIS",
        "takeover",
        "the arbiter lost the primary too",
    )
    .await;
    phase(started, "docker pause mirrorA: mirrorB is primary");
    docker_ok(&["unpause", "mirrorA"]);
    rejoin_as_backup(&a, "mirrorA").await;
    phase(started, "docker unpause mirrorA: it is backup");
    wait_arbiter_controlled(&a, &b).await;
    copy_from_the_primary_through_a_kill(&a, &b, &lab.data_dir("sharedA")).await;
    phase(
        started,
        "Copy from Primary on mirrorA, resumed after docker kill",
    );

    // `docker stop arbiter`: both go Agent Controlled, and the primary keeps committing.
    docker_ok(&["stop", "arbiter"]);
    for member in [&a, &b] {
        member
            .wait_mirror(20, "agent controlled", |v| {
                v["failover_mode"] == "Agent Controlled"
            })
            .await;
    }
    phase(started, "docker stop arbiter: both agent controlled");
    for (member, name) in [(&a, "MIRRORA/IRIS"), (&b, "MIRRORB/IRIS")] {
        member
            .wait_event(name, "arbiter_lost", "lost the arbiter")
            .await;
        member
            .wait_event(name, "mode_changed", "→ Agent Controlled")
            .await;
    }
    let write = Instant::now();
    created(
        &b,
        "/api/apps/companies",
        json!({"name": "without the arbiter"}),
    )
    .await;
    eprintln!(
        "figure: a commit with the arbiter stopped: {:?}",
        write.elapsed()
    );

    tokio::time::sleep(Duration::from_secs(1)).await;
    let acked = finish_writers(&stop, writers, &b, &a).await;
    eprintln!("{} writes acknowledged across the faults", acked.len());
    // Through HAProxy: every write it got acknowledged (always by the primary of the moment:
    // a backup refuses writes) is on the final primary.
    let through_proxy = finish_writers(&stop, proxied, &b, &a).await;
    eprintln!(
        "{} writes acknowledged through HAProxy across the faults",
        through_proxy.len()
    );
    graph_in_prometheus().await;
    // The outage mirrorB recorded at the first takeover is the one the writers saw.
    let events = b.events().await;
    let first = Api::event(&events, "MIRRORB/IRIS", "writes_resumed")
        .unwrap_or_else(|| panic!("no writes_resumed in {events:#}"));
    let shown = first["outage_ms"].as_i64().unwrap();
    let seen = acked.outages[0].as_millis() as i64;
    eprintln!(
        "figure: write outage after docker kill mirrorA: {shown} ms recorded, {seen} ms seen"
    );
    assert_outage_matches(shown, seen, "mirrorB");
    drop(lab);
    for name in ALL_CONTAINERS {
        assert!(
            !docker(&["container", "inspect", name]).status.success(),
            "{name} is left after compose down"
        );
    }
    assert!(
        !docker(&["network", "inspect", &network]).status.success(),
        "the network {network} is left after compose down"
    );
}

/// `MIRRORLAB_AUTO_MIRROR=1` with the async profile: nobody clicks. Each member carries out
/// `install/mirror.json` — mirrorA creates MIRRORSET with the arbiter and adds the three
/// databases, mirrorB joins as failover and mirrorC as a DR async, and both fetch the databases
/// from the primary over the data channel — and within 60 s of the portals answering mirrorB is
/// the active backup with COMPANY, CUSTOMER and PERSONAL dejournaling. Then `docker kill
/// mirrorA`: mirrorB takes over, mirrorC follows it, and mirrorA, started again, converges as
/// the backup; every acknowledged write is on the new primary and all three hold the same rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_no_click_lab_with_an_async_member() {
    let _one_lab = ONE_LAB.lock().await;
    let started = Instant::now();
    let lab = Lab::up(&["async"], &[("MIRRORLAB_AUTO_MIRROR", "1")]);
    let a = lab.member(52775, "mirrorA");
    let b = lab.member(52776, "mirrorB");
    let c = lab.member(52777, "mirrorC");
    for member in [&a, &b, &c] {
        member.wait_ready_within(60).await;
    }
    let answering = Instant::now();
    b.wait_mirror(
        60,
        "the active backup, its databases dejournaling",
        planned_and_dejournaling("Backup"),
    )
    .await;
    eprintln!(
        "figure: no-click lab: mirrorB the backup with three databases dejournaling {:?} after \
         the portals answered",
        answering.elapsed()
    );
    a.wait_mirror(20, "primary with mirrorB active", |v| {
        v["role"] == "Primary"
            && v["auto_mirror"]["done"] == true
            && TestMember::member_row(v, "MIRRORB/IRIS")["journal_transfer"] == "Active"
    })
    .await;
    c.wait_mirror(
        60,
        "a DR async, its databases dejournaling",
        planned_and_dejournaling("Disaster Recovery"),
    )
    .await;
    wait_arbiter_controlled(&a, &b).await;
    phase(started, "no-click lab in place");

    // The No-Click Mirror panel on mirrorB's monitor (the README's picture).
    let driver = Driver::start().await;
    let mut pb = Portal::open(&driver, "http://127.0.0.1:52776".into(), "B").await;
    pb.log_in().await;
    pb.visit("/portal/mirror/monitor").await;
    let body = pb.body().await;
    assert!(
        body.contains("No-Click Mirror") && body.contains("Join MIRRORSET through mirrorA"),
        "{body}"
    );
    pb.screenshot("lab-no-click-mirrorB.png").await;
    pb.browser.close().await.unwrap();
    drop(driver);

    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers_on_primary([a.clone(), b.clone()], 2, "noclick", stop.clone());
    // The Lab is on in the lab: mirrorB's ledger, with its default members' portals (the lab's
    // host names), writes through the fault too.
    b.ok(
        "/api/lab/ledger/start",
        json!({"writers": 2, "rate": 20, "password": "SYS"}),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    docker_ok(&["kill", "mirrorA"]);
    wait_role(&b, "Primary", 30).await;
    c.wait_mirror(30, "following mirrorB", |v| {
        TestMember::member_row(v, "MIRRORB/IRIS")["status"] == "Primary"
    })
    .await;
    phase(
        started,
        "docker kill mirrorA: mirrorB is primary, mirrorC follows it",
    );
    docker_ok(&["start", "mirrorA"]);
    a.wait_ready_within(60).await;
    a.wait_mirror(60, "the backup again", planned_and_dejournaling("Backup"))
        .await;
    phase(started, "docker start mirrorA: it converged as the backup");
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The ledger stops first: the members are compared row by row only once nobody writes.
    b.ok("/api/lab/ledger/stop", json!({})).await;
    let acked = finish_writers(&stop, writers, &b, &a).await;
    eprintln!("{} writes acknowledged across the fault", acked.len());
    let deadline = Instant::now() + Duration::from_secs(20);
    let ledger = loop {
        let ledger = b.get("/api/lab").await.1["ledger"].clone();
        if ledger["running"] == false && ledger["check"]["acknowledged"] == ledger["acknowledged"] {
            break ledger;
        }
        assert!(
            Instant::now() < deadline,
            "the ledger's last check: {ledger:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(ledger["check"]["lost"], 0, "{ledger:#}");
    assert!(ledger["acknowledged"].as_u64().unwrap() > 20, "{ledger:#}");
    assert_eq!(
        ledger["check"]["primary"], "http://mirrorB:52773",
        "{ledger:#}"
    );
    assert_identical(&b, &c).await;
    assert_all_present(&c, &acked, "mirrorC").await;
}
