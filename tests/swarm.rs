//! The mirror on Docker Swarm: `deploy/swarm/docker-stack.yml`, unchanged, deployed with
//! `docker stack deploy` on this machine's engine as a one-node swarm whose node carries all three
//! placement labels, with the image `tests/docker/build-offline.sh` built.
//!
//! The stack must come up mirrored by itself (the no-click mirror from the stack's config), and
//! its disaster recovery async, scaled from none to one, must join by itself. Then, with writers
//! running: the primary's container is killed, the other member takes over, Swarm
//! restarts the killed one and it comes back as the backup; the same for the other member. A
//! person stops the backup's instance: Swarm must leave that container alone (its health check
//! passes while the agent answers), and the instance stays down until started. At the end every
//! acknowledged write is on the primary, no read returned a row it lacks, no two members
//! accepted writes at the same time, and all three members hold the same rows.
//!
//! The swarm is left as it was found: a swarm this test created is left again, labels it added
//! are removed, and the stack, its volumes and its network go.
//!
//! It needs a Docker engine and the image `mirrorlab:latest`; without either it fails, it never
//! skips. It publishes the lab's host ports 52775, 52776 and 52777, so a running lab makes it
//! fail.

mod common;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use common::docker::{assert_docker_has, docker, docker_ok, phase, text};
use common::pair::*;
use common::{Api, LogSource};

/// The stack's name: its services, volumes and network carry it as a prefix.
const STACK: &str = "mirrorlab-test";
const MEMBERS: [&str; 2] = ["mirrorA", "mirrorB"];
const LABELS: [&str; 4] = [
    "mirrorlab.arbiter",
    "mirrorlab.mirrorA",
    "mirrorlab.mirrorB",
    "mirrorlab.mirrorC",
];

/// The swarm as the test found it, restored when dropped: the stack removed (and waited for),
/// its volumes deleted, the labels this test added taken off, a swarm this test created left.
struct Swarm {
    created: bool,
    /// `docker swarm init` makes the bridge `docker_gwbridge`, which `swarm leave` keeps.
    gwbridge_existed: bool,
    node: String,
    added_labels: Vec<&'static str>,
}

impl Swarm {
    fn join() -> Swarm {
        assert_docker_has("mirrorlab:latest", "build-offline.sh");
        let state = docker_ok(&["info", "--format", "{{.Swarm.LocalNodeState}}"]);
        let gwbridge_existed = docker(&["network", "inspect", "docker_gwbridge"])
            .status
            .success();
        let created = match state.as_str() {
            "inactive" => {
                // Loopback: the swarm's own ports listen on this machine only.
                docker_ok(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
                true
            }
            "active" => {
                let manager = docker_ok(&["info", "--format", "{{.Swarm.ControlAvailable}}"]);
                assert_eq!(manager, "true", "this node is in a swarm but not a manager");
                false
            }
            other => panic!("this node's swarm state is {other:?}: neither inactive nor active"),
        };
        // From here on, whatever fails leaves the swarm as it was found (Drop).
        let mut swarm = Swarm {
            created,
            gwbridge_existed,
            node: String::new(),
            added_labels: Vec::new(),
        };
        swarm.node = docker_ok(&["info", "--format", "{{.Swarm.NodeID}}"]);
        for label in LABELS {
            let format = format!("{{{{ index .Spec.Labels {label:?} }}}}");
            let value = docker_ok(&["node", "inspect", &swarm.node, "--format", &format]);
            if value != "true" {
                docker_ok(&[
                    "node",
                    "update",
                    "--label-add",
                    &format!("{label}=true"),
                    &swarm.node,
                ]);
                swarm.added_labels.push(label);
            }
        }
        swarm
    }

    fn deploy(&self) {
        let stack_file = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/swarm/docker-stack.yml");
        docker_ok(&[
            "stack",
            "deploy",
            "--resolve-image",
            "never",
            "--compose-file",
            stack_file,
            STACK,
        ]);
    }

    /// Removes the stack and its volumes; false when its containers did not go within 90 s.
    fn remove_stack(&self) -> bool {
        let out = docker(&["stack", "rm", STACK]);
        if !out.status.success() {
            eprintln!("docker stack rm: {}", text(&out));
        }
        // `stack rm` returns before the containers and the network are gone; the volumes can
        // only be removed after the containers.
        let deadline = Instant::now() + Duration::from_secs(90);
        let label = format!("label=com.docker.stack.namespace={STACK}");
        let gone = loop {
            let containers = docker(&["ps", "-aq", "--filter", &label]);
            let networks = docker(&["network", "ls", "-q", "--filter", &label]);
            if text(&containers).trim().is_empty() && text(&networks).trim().is_empty() {
                break true;
            }
            if Instant::now() >= deadline {
                eprintln!("the stack {STACK} is still there after 90 s");
                break false;
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        for member in ["mirrorA", "mirrorB", "mirrorC"] {
            let volume = format!("{STACK}_{member}-data");
            if docker(&["volume", "inspect", &volume]).status.success() {
                let out = docker(&["volume", "rm", &volume]);
                if !out.status.success() {
                    eprintln!("docker volume rm {volume}: {}", text(&out));
                }
            }
        }
        gone
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        self.remove_stack();
        for label in &self.added_labels {
            let out = docker(&["node", "update", "--label-rm", label, &self.node]);
            if !out.status.success() {
                eprintln!("docker node update --label-rm {label}: {}", text(&out));
            }
        }
        if self.created {
            let out = docker(&["swarm", "leave", "--force"]);
            if !out.status.success() {
                eprintln!("docker swarm leave: {}", text(&out));
            }
            if !self.gwbridge_existed {
                let out = docker(&["network", "rm", "docker_gwbridge"]);
                if !out.status.success() {
                    eprintln!("docker network rm docker_gwbridge: {}", text(&out));
                }
            }
        }
    }
}

/// A member's Swarm service: the stack's name before the member's.
fn service(member: &str) -> String {
    format!("{STACK}_{member}")
}

/// The running containers of a member's service.
fn running_containers(member: &str) -> Vec<String> {
    let label = format!("label=com.docker.swarm.service.name={}", service(member));
    let ids = docker_ok(&["ps", "-q", "--filter", &label]);
    ids.lines().map(str::to_string).collect()
}

/// The one running container of a member's service.
fn container_of(member: &str) -> String {
    let ids = running_containers(member);
    assert_eq!(ids.len(), 1, "{member}'s running containers: {ids:?}");
    ids[0].clone()
}

/// Waits until `member`'s running container is healthy and returns it.
async fn wait_healthy(member: &str, seconds: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        if let [id] = &running_containers(member)[..] {
            let health = docker(&["inspect", "--format", "{{.State.Health.Status}}", id]);
            if text(&health).trim() == "healthy" {
                return id.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "{member} has no healthy container after {seconds} s: {}",
            text(&docker(&["service", "ps", "--no-trunc", &service(member)]))
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn member_api(port: u16, member: &str) -> Api {
    Api::new(
        format!("http://127.0.0.1:{port}"),
        LogSource::Service(service(member)),
    )
}

/// Kills `victim`'s container (as a crashed host process would end), waits for `survivor` to
/// take over, and for Swarm to bring `victim` back in a new container as the backup.
async fn kill_and_see_it_return(started: Instant, victim: (&str, &Api), survivor: (&str, &Api)) {
    let before = container_of(victim.0);
    docker_ok(&["kill", &before]);
    survivor
        .1
        .wait_mirror(45, "primary after the kill", |v| v["status"] == "Primary")
        .await;
    phase(
        started,
        &format!("docker kill {}: {} is primary", victim.0, survivor.0),
    );
    // Swarm starts a new container for the killed task; the member finds the other one primary
    // and rejoins as its backup.
    victim.1.wait_ready_within(90).await;
    victim
        .1
        .wait_mirror(90, "the backup again", planned_and_dejournaling("Backup"))
        .await;
    let after = wait_healthy(victim.0, 60).await;
    assert_ne!(
        before, after,
        "Swarm restarted {} in a new container",
        victim.0
    );
    phase(
        started,
        &format!(
            "Swarm restarted {}: the backup again, dejournaling",
            victim.0
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_swarm_stack_comes_up_mirrored_and_survives_each_member_killed() {
    let started = Instant::now();
    let swarm = Swarm::join();
    // A stack left by an interrupted run would hold the ports and the old volumes.
    assert!(
        swarm.remove_stack(),
        "a stack of an earlier run would not go"
    );
    swarm.deploy();
    phase(started, "docker stack deploy");

    let a = member_api(52775, "mirrorA");
    let b = member_api(52776, "mirrorB");
    a.wait_ready_within(120).await;
    b.wait_ready_within(120).await;
    b.wait_mirror(
        120,
        "the active backup, its databases dejournaling",
        planned_and_dejournaling("Backup"),
    )
    .await;
    a.wait_mirror(30, "primary with mirrorB active", |v| {
        v["role"] == "Primary"
            && v["auto_mirror"]["done"] == true
            && common::TestMember::member_row(v, "MIRRORB/IRIS")["journal_transfer"] == "Active"
    })
    .await;
    wait_arbiter_controlled(&a, &b).await;
    for service in ["arbiter", "mirrorA", "mirrorB"] {
        wait_healthy(service, 90).await;
    }
    phase(started, "the stack is mirrored by itself");

    // The disaster recovery async, scaled up from none: it joins by itself too.
    docker_ok(&[
        "service",
        "scale",
        "--detach",
        &format!("{}=1", service("mirrorC")),
    ]);
    let c = member_api(52777, "mirrorC");
    c.wait_ready_within(120).await;
    c.wait_mirror(
        120,
        "a DR async, its databases dejournaling",
        planned_and_dejournaling("Disaster Recovery"),
    )
    .await;
    phase(
        started,
        "docker service scale mirrorC=1: a DR async, dejournaling",
    );

    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers_on_primary([a.clone(), b.clone()], 2, "swarm", stop.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    kill_and_see_it_return(started, ("mirrorA", &a), ("mirrorB", &b)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    kill_and_see_it_return(started, ("mirrorB", &b), ("mirrorA", &a)).await;
    wait_arbiter_controlled(&a, &b).await;

    // A person stops the backup's instance: it stays down, and Swarm leaves its container be
    // (the liveness check passes; three failed checks would have it replaced).
    let backup = container_of("mirrorB");
    let stopped = docker(&["exec", &backup, "mirrorlab", "ctl", "stop"]);
    assert!(stopped.status.success(), "{}", text(&stopped));
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(
        container_of("mirrorB"),
        backup,
        "Swarm replaced a stopped member"
    );
    let status = docker_ok(&["exec", &backup, "mirrorlab", "ctl", "status"]);
    assert!(status.contains("\"down\""), "{status}");
    let health = docker_ok(&["inspect", "--format", "{{.State.Health.Status}}", &backup]);
    assert_eq!(health, "healthy");
    phase(
        started,
        "ctl stop on mirrorB: its instance stays down, its container stays",
    );
    let restarted = docker(&["exec", &backup, "mirrorlab", "ctl", "start"]);
    assert!(restarted.status.success(), "{}", text(&restarted));
    b.wait_ready_within(60).await;
    b.wait_mirror(60, "the backup again", planned_and_dejournaling("Backup"))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let acked = finish_writers(&stop, writers, &a, &b).await;
    // The async followed each new primary and holds the same rows.
    c.wait_mirror(30, "following mirrorA", |v| {
        common::TestMember::member_row(v, "MIRRORA/IRIS")["status"] == "Primary"
    })
    .await;
    assert_identical(&a, &c).await;
    assert_all_present(&c, &acked, "mirrorC").await;
    phase(
        started,
        &format!(
            "{} writes acknowledged, all on mirrorA and mirrorB",
            acked.len()
        ),
    );
    for member in MEMBERS {
        // No task of a member failed but the two killed ones: no restart loop.
        let tasks = docker_ok(&[
            "service",
            "ps",
            "--format",
            "{{.DesiredState}} {{.CurrentState}} {{.Error}}",
            &service(member),
        ]);
        assert_eq!(tasks.lines().count(), 2, "{member}'s tasks:\n{tasks}");
    }
    drop(swarm);
}
