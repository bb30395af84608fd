//! Helpers for tests that run the real `mirrorlab` binary: a member (agent + instance) on free
//! loopback ports in a temporary folder, its API, and ways to crash it.

#![allow(dead_code)]

pub mod browser;
pub mod docker;
pub mod pair;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use docker::{docker, text};
use mirrorlab::agent::{self, AgentRequest, InstanceStatus};
use mirrorlab::os::{Signal, send_signal};
use serde_json::{Value, json};

/// The binary under test, built once by cargo for all integration tests.
pub const BINARY: &str = env!("CARGO_BIN_EXE_mirrorlab");

/// The host ports the compose lab publishes.
pub const LAB_PORTS: [u16; 4] = [52775, 52776, 52777, 52780];

/// A free loopback port for a member to listen on, never one handed out before in this test
/// process (a member restarted after a kill binds its old ports again, and another test must
/// not have been given one of them meanwhile).
///
/// Between this call and the member's bind the port must stay free, so it is taken:
/// - **outside the kernel's ephemeral range** (32768–60999 on Linux): no connection's source
///   port, and no listener on port 0, can take it meanwhile;
/// - **claimed across the test processes running at once** (nextest runs each test in a process
///   of its own): by an exclusive lock on a lease file in a shared folder, held until this
///   process ends — the kernel lets go of it then, whatever way the process ends.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<std::fs::File>> = std::sync::Mutex::new(Vec::new());
    const FIRST: u16 = 20_000;
    const COUNT: u16 = 12_000;
    let mut given = GIVEN.lock().unwrap();
    let dir = std::env::temp_dir().join("mirrorlab-test-ports");
    std::fs::create_dir_all(&dir).unwrap();
    // Processes start at different places, so they seldom try the same ports.
    let start = (std::process::id() % u32::from(COUNT)) as u16;
    for i in 0..COUNT {
        let port = FIRST + (start + i) % COUNT;
        if LAB_PORTS.contains(&port) {
            continue;
        }
        let lease = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(port.to_string()))
            .unwrap();
        // Held by another process, or by this one for a port it gave out already.
        if lease.try_lock().is_err() {
            continue;
        }
        // Something else may listen there.
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        given.push(lease);
        return port;
    }
    panic!("no free port between {FIRST} and {}", FIRST + COUNT);
}

/// A small deterministic random source; each test prints its seed so a failure can be replayed.
pub struct Rng(u64);

impl Rng {
    /// Seeded from `MIRRORLAB_TEST_SEED` or the clock.
    pub fn from_env_or_clock() -> Rng {
        let seed = std::env::var("MIRRORLAB_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("random seed: {seed} (set MIRRORLAB_TEST_SEED={seed} to replay)");
        Rng(seed | 1)
    }

    /// A source with a given seed (for one of several tasks of a seeded test).
    pub fn seeded(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    /// The next number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// Lets writers run for about `ms` before the next fault: between half and one and a half times
/// `ms`, drawn from one seeded random source per test process (its seed is printed), so that
/// repeated runs — CI runs the fault tests more than once — hit each fault at a different moment
/// of the write stream. `MIRRORLAB_TEST_SEED` replays a run.
pub async fn before_fault(ms: u64) {
    static RNG: std::sync::Mutex<Option<Rng>> = std::sync::Mutex::new(None);
    let pause = {
        let mut rng = RNG.lock().unwrap();
        ms / 2 + rng.get_or_insert_with(Rng::from_env_or_clock).below(ms + 1)
    };
    tokio::time::sleep(Duration::from_millis(pause)).await;
}

/// Where a member's log can be read, for failure messages.
#[derive(Clone)]
pub enum LogSource {
    /// A file the member's processes write to.
    File(PathBuf),
    /// A Docker container's output (`docker logs`).
    Container(String),
    /// A Swarm service's output, every task's (`docker service logs`): its container is
    /// replaced when it is killed.
    Service(String),
}

/// A member's portal API, reached over HTTP with the default credentials: the same for a member
/// this process started and for one in a container. It outlives the process it talks to.
#[derive(Clone)]
pub struct Api {
    pub url: String,
    pub client: reqwest::Client,
    pub log_source: LogSource,
}

impl Api {
    /// An API at `url` whose member logs to `log_source`.
    pub fn new(url: String, log_source: LogSource) -> Api {
        Api {
            url,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                // The portal closes a connection that stays silent for 10 s between requests;
                // dropping idle ones first means a request never races that close.
                .pool_idle_timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
            log_source,
        }
    }

    /// The member's log (for failure messages).
    pub fn log(&self) -> String {
        match &self.log_source {
            LogSource::File(path) => std::fs::read_to_string(path).unwrap_or_default(),
            LogSource::Container(name) => text(&docker(&["logs", "--tail", "200", name])),
            // Its tasks first: a task Swarm could not place has no log at all.
            LogSource::Service(name) => {
                text(&docker(&["service", "ps", "--no-trunc", name]))
                    + &text(&docker(&["service", "logs", "--tail", "200", name]))
            }
        }
    }

    /// POST JSON with the default credentials.
    pub async fn post(&self, path: &str, body: Value) -> reqwest::Result<(u16, Value)> {
        let r = self
            .client
            .post(format!("{}{path}", self.url))
            .basic_auth("superuser", Some("SYS"))
            .json(&body)
            .send()
            .await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.unwrap_or(Value::Null)))
    }

    /// Waits (up to `seconds`) until `/api/health` answers.
    pub async fn wait_ready_within(&self, seconds: u64) {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        loop {
            if let Ok(r) = self
                .client
                .get(format!("{}/api/health", self.url))
                .send()
                .await
                && r.status().is_success()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "member did not become ready; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// POSTs and expects a refusal: `status`, and an error message containing `says`.
    pub async fn refused(&self, path: &str, body: Value, status: u16, says: &str) {
        let (got, err) = self.post(path, body).await.unwrap();
        assert_eq!(got, status, "POST {path}: {err}");
        let message = err["error"].as_str().unwrap_or_default();
        assert!(
            message.contains(says),
            "POST {path}: expected {says:?} in {err}"
        );
    }

    /// GET an API path with the default credentials.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .client
            .get(format!("{}{path}", self.url))
            .basic_auth("superuser", Some("SYS"))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    /// `GET /metrics`: Prometheus's text, after checking its content type (with a login, which
    /// a member started with `--metrics-login` asks for and any other ignores).
    pub async fn metrics(&self) -> String {
        let r = self
            .client
            .get(format!("{}/metrics", self.url))
            .basic_auth("superuser", Some("SYS"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let kind = r.headers()["content-type"].to_str().unwrap().to_string();
        assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
        r.text().await.unwrap()
    }

    /// One series' value in Prometheus's text (`name` or `name{label="value"}`), if present.
    /// `GET /api/mirror/events` (all kept): both failover members' events, merged.
    pub async fn events(&self) -> Value {
        let (status, events) = self.get("/api/mirror/events?since=0").await;
        assert_eq!(status, 200, "{events}");
        events
    }

    /// The first event of `kind` that `member` recorded, in a `GET /api/mirror/events` answer.
    pub fn event<'a>(events: &'a Value, member: &str, kind: &str) -> Option<&'a Value> {
        events["events"]
            .as_array()?
            .iter()
            .find(|e| e["member"] == member && e["kind"] == kind)
    }

    /// Waits (10 s at most) until the merged events hold one of `kind` recorded by `member`
    /// whose reason contains `says`, and returns it. Events reach the files a moment after
    /// they happen.
    pub async fn wait_event(&self, member: &str, kind: &str, says: &str) -> Value {
        self.wait_event_since(0, member, kind, says).await
    }

    /// [`Api::wait_event`] among the events at or after `since_ms` (see [`now_ms`]).
    pub async fn wait_event_since(
        &self,
        since_ms: i64,
        member: &str,
        kind: &str,
        says: &str,
    ) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (status, events) = self
                .get(&format!("/api/mirror/events?since={since_ms}"))
                .await;
            assert_eq!(status, 200, "{events}");
            let found = events["events"].as_array().unwrap().iter().rev().find(|e| {
                e["member"] == member
                    && e["kind"] == kind
                    && e["reason"].as_str().unwrap_or_default().contains(says)
            });
            if let Some(event) = found {
                return event.clone();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no {kind} event of {member} saying {says:?} in {events:#}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn metric(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .map(|value| value.trim().parse().unwrap())
    }

    /// POST JSON and expect 200; returns the body.
    pub async fn ok(&self, path: &str, body: Value) -> Value {
        let (status, reply) = self.post(path, body).await.unwrap();
        assert_eq!(status, 200, "POST {path}: {reply}");
        reply
    }

    /// Waits until `check` holds for `GET /api/mirror` (up to `seconds`).
    pub async fn wait_mirror(
        &self,
        seconds: u64,
        what: &str,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        loop {
            let (_, view) = self.get("/api/mirror").await;
            if check(&view) {
                return view;
            }
            assert!(
                Instant::now() < deadline,
                "{} never became {what}: {view:#}\nlog:\n{}",
                self.url,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The status of mirrored database `db` in this member's view.
    pub async fn db_status(&self, db: &str) -> String {
        let (_, view) = self.get("/api/mirror").await;
        view["databases"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|d| d["name"] == db)
            .map(|d| d["status"].as_str().unwrap().to_string())
            .unwrap_or_default()
    }

    /// Row-level checksums of every table of a database (reached through `namespace`): one
    /// FNV-1a hash per row, sorted, per table.
    pub async fn checksums(&self, namespace: &str, db: &str) -> Vec<(String, Vec<u64>)> {
        let tables = self.sql(namespace, &format!("SELECT name FROM {db}.sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite%' AND name <> 'mirrorlab_meta' ORDER BY name")).await;
        let mut out = Vec::new();
        for table in tables["rows"].as_array().unwrap() {
            let table = table[0].as_str().unwrap().to_string();
            // One result holds at most 10 000 rows and 16 MiB: read the table in pages, smaller
            // ones where the rows are large.
            let mut hashes: Vec<u64> = Vec::new();
            let mut page_rows = 5000;
            loop {
                let sql = format!(
                    "SELECT * FROM {db}.\"{table}\" ORDER BY rowid LIMIT {page_rows} OFFSET {}",
                    hashes.len()
                );
                let (status, page) = self
                    .post("/api/sql", json!({"namespace": namespace, "sql": sql}))
                    .await
                    .unwrap();
                if status == 400
                    && page["error"]
                        .as_str()
                        .unwrap_or_default()
                        .contains("larger than")
                    && page_rows > 1
                {
                    page_rows = (page_rows / 8).max(1);
                    continue;
                }
                // Dropped while it was read (a member still applying): no match this time, the
                // caller looks again.
                if status == 400
                    && page["error"]
                        .as_str()
                        .unwrap_or_default()
                        .contains("no such table")
                {
                    hashes = vec![u64::MAX];
                    break;
                }
                assert_eq!(status, 200, "{sql}: {page}");
                let rows = page["rows"].as_array().unwrap();
                hashes.extend(rows.iter().map(|r| fnv(r.to_string().as_bytes())));
                if rows.len() < page_rows {
                    break;
                }
            }
            hashes.sort_unstable();
            out.push((table, hashes));
        }
        out
    }

    /// Runs SQL through `/api/sql`.
    pub async fn sql(&self, namespace: &str, sql: &str) -> Value {
        let (status, body) = self
            .post("/api/sql", json!({"namespace": namespace, "sql": sql}))
            .await
            .unwrap();
        assert_eq!(status, 200, "{sql}: {body}");
        body
    }
}

impl TestMember {
    /// The member row called `name` in a member's mirror view.
    pub fn member_row(view: &Value, name: &str) -> Value {
        view["members"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["name"] == name)
            .cloned()
            .unwrap_or(Value::Null)
    }
}

/// A running member.
pub struct TestMember {
    pub dir: tempfile::TempDir,
    /// A small file system mounted over the data directory (see [`TestMember::start_on_tmpfs`]).
    tmpfs: Option<PathBuf>,
    pub web: String,
    pub agent: String,
    pub superserver: String,
    api: Api,
    agent_process: Child,
    host: String,
    extra: Vec<String>,
}

impl TestMember {
    /// Starts `mirrorlab member` and waits until the portal answers.
    pub async fn start() -> TestMember {
        Self::start_named("testhost").await
    }

    /// Starts a member with the given host name.
    pub async fn start_named(host: &str) -> TestMember {
        Self::start_with(host, &[]).await
    }

    /// Starts a member with the given host name and extra `member` arguments.
    pub async fn start_with(host: &str, extra: &[&str]) -> TestMember {
        Self::start_in(tempfile::tempdir().unwrap(), None, host, extra).await
    }

    /// Starts a member whose data directory is a tmpfs of `megabytes` (so a test can fill the
    /// disk). Needs the right to mount (root).
    pub async fn start_on_tmpfs(host: &str, megabytes: u32, extra: &[&str]) -> TestMember {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("durable");
        std::fs::create_dir_all(&data).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(&data)
            .status()
            .expect("run mount");
        assert!(
            mounted.success(),
            "mounting a tmpfs needs root (the test of a full disk): {mounted}"
        );
        Self::start_in(dir, Some(data), host, extra).await
    }

    async fn start_in(
        dir: tempfile::TempDir,
        tmpfs: Option<PathBuf>,
        host: &str,
        extra: &[&str],
    ) -> TestMember {
        let web = format!("127.0.0.1:{}", free_port());
        let agent = format!("127.0.0.1:{}", free_port());
        let superserver = format!("127.0.0.1:{}", free_port());
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let agent_process = spawn_member(&dir, &web, &agent, &superserver, host, &extra);
        let api = Api::new(
            format!("http://{web}"),
            LogSource::File(dir.path().join("member.log")),
        );
        let member = TestMember {
            api,
            dir,
            tmpfs,
            web,
            agent,
            superserver,
            agent_process,
            host: host.to_string(),
            extra,
        };
        member.wait_ready().await;
        member
    }

    /// The whole host dies: agent and instance are killed with SIGKILL.
    pub async fn kill_host(&mut self) {
        let pid = self.status().await.pid;
        send_signal(self.agent_process.id(), Signal::Kill).unwrap();
        if let Some(pid) = pid {
            let _ = send_signal(pid, Signal::Kill);
        }
        let _ = self.agent_process.wait();
    }

    /// `docker stop`: SIGTERM to the agent, which stops its instance gracefully and exits.
    pub async fn stop_host(&mut self) {
        send_signal(self.agent_process.id(), Signal::Term).unwrap();
        let deadline = Instant::now() + Duration::from_secs(40);
        while !matches!(self.agent_process.try_wait(), Ok(Some(_))) {
            assert!(Instant::now() < deadline, "the member did not stop");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The host comes back: a new `mirrorlab member` on the same data directory and ports
    /// (does not wait for readiness).
    pub fn restart_host(&mut self) {
        self.agent_process = spawn_member(
            &self.dir,
            &self.web,
            &self.agent,
            &self.superserver,
            &self.host,
            &self.extra,
        );
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("durable")
    }

    /// The log of agent and instance.
    pub fn log(&self) -> String {
        self.api.log()
    }

    /// Waits until `/api/health` answers.
    pub async fn wait_ready(&self) {
        self.api.wait_ready_within(60).await
    }

    /// The instance's state according to the agent.
    pub async fn status(&self) -> InstanceStatus {
        agent::call(&self.agent, AgentRequest::Status)
            .await
            .unwrap()
            .instance
    }

    /// Kills the instance with SIGKILL (the agent stays) and waits until the agent sees it down.
    pub async fn kill_instance(&self) {
        let pid = self.status().await.pid.expect("instance running");
        send_signal(pid, Signal::Kill).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.status().await.state != mirrorlab::agent::InstanceState::Down {
            assert!(Instant::now() < deadline, "agent did not notice the kill");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// `ctl stop`: asks the agent to stop the instance gracefully (the agent stays), and waits
    /// until it is down.
    pub async fn stop_instance(&self) {
        let reply = agent::call(&self.agent, AgentRequest::Stop).await.unwrap();
        assert!(reply.ok, "{}", reply.message);
        let deadline = Instant::now() + Duration::from_secs(40);
        while self.status().await.state != mirrorlab::agent::InstanceState::Down {
            assert!(Instant::now() < deadline, "the instance did not stop");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Freezes the instance (SIGSTOP): it holds its connections and answers nothing, as a
    /// paused container or a stalled host would. Returns its pid, for [`TestMember::thaw`].
    pub async fn freeze(&self) -> u32 {
        let pid = self.status().await.pid.expect("instance running");
        send_signal(pid, Signal::Stop).unwrap();
        pid
    }

    /// Freezes the whole host (SIGSTOP to agent and instance): nothing answers and nothing
    /// closes, as with `docker pause`. Returns the instance's pid, for [`TestMember::thaw_host`].
    pub async fn freeze_host(&self) -> Option<u32> {
        let pid = self.status().await.pid;
        self.freeze_agent();
        if let Some(pid) = pid {
            send_signal(pid, Signal::Stop).unwrap();
        }
        pid
    }

    /// Freezes the agent process alone (SIGSTOP): it accepts connections and answers nothing,
    /// while its instance runs on.
    pub fn freeze_agent(&self) {
        send_signal(self.agent_process.id(), Signal::Stop).unwrap();
    }

    /// Lets a frozen agent run again.
    pub fn thaw_agent(&self) {
        let _ = send_signal(self.agent_process.id(), Signal::Cont);
    }

    /// Lets a frozen host run again (`docker unpause`).
    pub fn thaw_host(&self, pid: Option<u32>) {
        if let Some(pid) = pid {
            let _ = send_signal(pid, Signal::Cont);
        }
        self.thaw_agent();
    }

    /// Lets a frozen instance run again (SIGCONT); it may have been forced down meanwhile.
    pub fn thaw(&self, pid: u32) {
        let _ = send_signal(pid, Signal::Cont);
    }

    /// Asks the agent to start the instance again (does not wait for readiness).
    pub async fn start_instance(&self) {
        let reply = agent::call(&self.agent, AgentRequest::Start).await.unwrap();
        assert!(reply.ok, "{}", reply.message);
    }

    /// A handle on this member's API.
    pub fn api(&self) -> Api {
        self.api.clone()
    }

    /// The agent's port.
    pub fn agent_port(&self) -> u16 {
        self.agent.rsplit_once(':').unwrap().1.parse().unwrap()
    }
}

/// Everything the API offers, called on the member.
impl std::ops::Deref for TestMember {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

impl Drop for TestMember {
    fn drop(&mut self) {
        if std::env::var_os("MIRRORLAB_KEEP_TEST_DIRS").is_some() {
            eprintln!("keeping {}", self.dir.path().display());
            let _ = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap()).keep();
        }
        // Leave no process behind, whatever happened in the test: the agent stops its instance
        // on SIGTERM before it exits.
        if !matches!(self.agent_process.try_wait(), Ok(Some(_))) {
            let _ = send_signal(self.agent_process.id(), Signal::Term);
            let deadline = Instant::now() + Duration::from_secs(40);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.agent_process.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.agent_process.kill();
            let _ = self.agent_process.wait();
        }
        if let Some(mount) = &self.tmpfs {
            let _ = Command::new("umount").arg(mount).status();
        }
    }
}

fn spawn_member(
    dir: &tempfile::TempDir,
    web: &str,
    agent: &str,
    superserver: &str,
    host: &str,
    extra: &[String],
) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.path().join("member.log"))
        .unwrap();
    Command::new(BINARY)
        .arg("member")
        .arg("--data-dir")
        .arg(dir.path().join("durable"))
        .args(["--web", web, "--agent", agent, "--superserver", superserver])
        .args(["--host-name", host])
        // The built-in install, unless the test gives its own.
        .args(
            (!extra.iter().any(|a| a == "--install"))
                .then_some(["--install", "/nonexistent"])
                .into_iter()
                .flatten(),
        )
        .args(extra)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// A running arbiter process on a free loopback port.
pub struct TestArbiter {
    pub address: String,
    /// Where it serves its Prometheus metrics (`--metrics`).
    pub metrics: String,
    process: Child,
    pub dir: tempfile::TempDir,
}

impl TestArbiter {
    /// Starts `mirrorlab arbiter` and waits until it answers.
    pub async fn start() -> TestArbiter {
        let dir = tempfile::tempdir().unwrap();
        let address = format!("127.0.0.1:{}", free_port());
        let metrics = format!("127.0.0.1:{}", free_port());
        let process = TestArbiter::spawn(&dir, &address, &metrics);
        let arbiter = TestArbiter {
            address,
            metrics,
            process,
            dir,
        };
        arbiter.wait_ready().await;
        arbiter
    }

    fn spawn(dir: &tempfile::TempDir, address: &str, metrics: &str) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("arbiter.log"))
            .unwrap();
        Command::new(BINARY)
            .args(["arbiter", "--agent", address, "--metrics", metrics])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(&self.address).await.is_err() {
            assert!(Instant::now() < deadline, "the arbiter did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Its Prometheus text (`GET /metrics` on its `--metrics` address).
    pub async fn scrape(&self) -> String {
        let url = format!("http://{}/metrics", self.metrics);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match reqwest::get(&url).await {
                Ok(r) if r.status() == 200 => return r.text().await.unwrap(),
                other => assert!(Instant::now() < deadline, "{url}: {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.address.rsplit_once(':').unwrap().1.parse().unwrap()
    }

    /// Kills the arbiter with SIGKILL.
    pub fn kill(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }

    /// Starts it again on the same port.
    pub async fn restart(&mut self) {
        self.process = TestArbiter::spawn(&self.dir, &self.address, &self.metrics);
        self.wait_ready().await;
    }

    /// Its log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("arbiter.log")).unwrap_or_default()
    }

    /// The mirrors whose primary the arbiter holds booked in arbiter-controlled mode (a backup
    /// that loses that primary gets the takeover approved).
    pub async fn booked_arbiter_mode(&self) -> Vec<String> {
        use mirrorlab::arbiter::{FromArbiter, ToArbiter};
        let stream = tokio::net::TcpStream::connect(&self.address).await.unwrap();
        let (mut reader, mut writer) = stream.into_split();
        mirrorlab::wire::write_frame(&mut writer, &ToArbiter::Status)
            .await
            .unwrap();
        match mirrorlab::wire::read_frame::<_, FromArbiter>(&mut reader, 1 << 20).await {
            Ok(Some(FromArbiter::Status { arbiter_mode, .. })) => arbiter_mode,
            other => panic!("the arbiter answered {other:?}"),
        }
    }
}

impl Drop for TestArbiter {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// FNV-1a, 64 bits: a row's checksum.
pub fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100000001b3)
    })
}

/// A fault-injecting TCP proxy on loopback: forwards every connection to `target`. While
/// `hold` is set it keeps what the target sends instead of passing it on (a link that goes quiet
/// one way); while `blackhole` is set nothing moves either way and nothing is closed (a network
/// partition: both ends only notice by timeouts). When one end closes, the proxy closes the
/// other at once, as a dying host's kernel would. With `by_member`, the first frame of each
/// connection (an arbiter hello) names the member, and `cut_member` blackholes that member's
/// connections only.
pub struct Proxy {
    /// Where clients connect.
    pub address: String,
    /// Hold traffic from the target.
    pub hold: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Hold traffic both ways.
    pub blackhole: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cut: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    task: tokio::task::JoinHandle<()>,
}

type Gate = std::sync::Arc<dyn Fn() -> bool + Send + Sync>;

/// Moves bytes from `from` to `to` while `open()`; `held()` keeps them back; returns at either
/// end's close.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    open: Gate,
    held: Gate,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    let mut pending = Vec::new();
    loop {
        if !open() {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        let read = tokio::time::timeout(Duration::from_millis(10), from.read(&mut buf)).await;
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => pending.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        if !held() && !pending.is_empty() {
            if to.write_all(&pending).await.is_err() {
                return;
            }
            pending.clear();
        }
    }
}

impl Proxy {
    /// Starts a proxy to `target` (`host:port`).
    pub async fn start(target: &str) -> Proxy {
        Self::start_with(target, false).await
    }

    /// Starts a proxy in front of an arbiter that can cut one member's link.
    pub async fn start_by_member(target: &str) -> Proxy {
        Self::start_with(target, true).await
    }

    async fn start_with(target: &str, by_member: bool) -> Proxy {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // Bound at once on a port the system picks: no gap for another socket to take it.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let hold = Arc::new(AtomicBool::new(false));
        let blackhole = Arc::new(AtomicBool::new(false));
        let cut: Arc<std::sync::Mutex<std::collections::HashSet<String>>> = Default::default();
        let target = target.to_string();
        let (hold2, black2, cut2) = (hold.clone(), blackhole.clone(), cut.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let (target, hold, blackhole, cut) =
                    (target.clone(), hold2.clone(), black2.clone(), cut2.clone());
                tokio::spawn(async move {
                    let Ok(mut upstream) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    let mut member = String::new();
                    if by_member {
                        // The hello: a 4-byte length and a JSON object naming the member.
                        let mut len = [0u8; 4];
                        if client.read_exact(&mut len).await.is_err() {
                            return;
                        }
                        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
                        if client.read_exact(&mut body).await.is_err() {
                            return;
                        }
                        let hello: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        member = hello["member"].as_str().unwrap_or_default().to_string();
                        // A cut member's hello does not get through either (until healed).
                        while cut.lock().unwrap().contains(&member) {
                            let mut probe = [0u8; 1];
                            let peek = tokio::time::timeout(
                                Duration::from_millis(10),
                                client.peek(&mut probe),
                            )
                            .await;
                            if matches!(peek, Ok(Ok(0)) | Ok(Err(_))) {
                                return;
                            }
                            if peek.is_ok() {
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                        }
                        if upstream.write_all(&len).await.is_err()
                            || upstream.write_all(&body).await.is_err()
                        {
                            return;
                        }
                    }
                    let open: Gate = {
                        let (blackhole, cut, member) =
                            (blackhole.clone(), cut.clone(), member.clone());
                        Arc::new(move || {
                            !blackhole.load(Ordering::Relaxed)
                                && !cut.lock().unwrap().contains(&member)
                        })
                    };
                    let (client_read, client_write) = client.into_split();
                    let (up_read, up_write) = upstream.into_split();
                    let never: Gate = Arc::new(|| false);
                    let held: Gate = {
                        let hold = hold.clone();
                        Arc::new(move || hold.load(Ordering::Relaxed))
                    };
                    // Whichever direction ends first ends both.
                    tokio::select! {
                        _ = pump(client_read, up_write, open.clone(), never) => {}
                        _ = pump(up_read, client_write, open, held) => {}
                    }
                });
            }
        });
        Proxy {
            address,
            hold,
            blackhole,
            cut,
            task,
        }
    }

    /// Blackholes the connections of `member` (an arbiter proxy).
    pub fn cut_member(&self, member: &str) {
        self.cut.lock().unwrap().insert(member.to_string());
    }

    /// Lets `member`'s traffic through again.
    pub fn heal_member(&self, member: &str) {
        self.cut.lock().unwrap().remove(member);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Milliseconds since the Unix epoch, as the members' events count them (one clock here).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}
