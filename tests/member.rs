//! The member as processes: the agent outlives its instance and reports it truthfully, SIGTERM
//! stops everything gracefully, settings come from flags or environment variables, and a
//! restart installs nothing twice.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{BINARY, TestMember, free_port};
use mirrorlab::agent::{self, AgentRequest};
use mirrorlab::os::{Signal, send_signal};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_outlives_its_instance_and_does_not_restart_it() {
    let member = TestMember::start().await;
    let (status, _) = member
        .post("/api/apps/companies", json!({"name": "Acme"}))
        .await
        .unwrap();
    assert_eq!(status, 201);
    let before = member.status().await;
    assert_eq!(before.state, mirrorlab::agent::InstanceState::Running);
    assert_eq!(before.starts, 1);

    member.kill_instance().await;
    let down = member.status().await;
    assert_eq!(down.pid, None);
    assert_eq!(down.last_exit.as_deref(), Some("killed by signal 9"));
    // It stays down: the agent answers, the portal does not.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        member.status().await.state,
        mirrorlab::agent::InstanceState::Down
    );
    assert!(
        member
            .client
            .get(format!("{}/api/health", member.url))
            .send()
            .await
            .is_err()
    );

    member.start_instance().await;
    let again = agent::call(&member.agent, AgentRequest::Start)
        .await
        .unwrap();
    assert!(
        again.message.contains("already running"),
        "{}",
        again.message
    );
    member.wait_ready().await;
    let (_, companies) = member.get("/api/apps/companies").await;
    assert_eq!(companies[0]["name"], "Acme");
    assert_eq!(member.status().await.starts, 2);

    // A graceful stop through the agent, then a start.
    let stopped = agent::call(&member.agent, AgentRequest::Stop)
        .await
        .unwrap();
    assert_eq!(stopped.instance.last_exit.as_deref(), Some("exit status 0"));
    member.start_instance().await;
    member.wait_ready().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_instance_and_agent_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let web = format!("127.0.0.1:{}", free_port());
    let agent_addr = format!("127.0.0.1:{}", free_port());
    // Settings through environment variables only, as Docker Compose passes them.
    let mut child = Command::new(BINARY)
        .arg("member")
        .env("MIRRORLAB_DATA_DIR", dir.path().join("durable"))
        .env("MIRRORLAB_WEB", &web)
        .env("MIRRORLAB_AGENT", &agent_addr)
        .env(
            "MIRRORLAB_SUPERSERVER",
            format!("127.0.0.1:{}", free_port()),
        )
        .env("MIRRORLAB_HOST_NAME", "envhost")
        .env("MIRRORLAB_INSTALL", "/nonexistent")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let health = loop {
        if let Ok(r) = client.get(format!("http://{web}/api/health")).send().await {
            break r.json::<serde_json::Value>().await.unwrap();
        }
        assert!(Instant::now() < deadline, "member did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(health["status"], "ok");
    // The host name came from the environment (the health check tells nobody; a user may ask).
    let view: serde_json::Value = client
        .get(format!("http://{web}/api/mirror"))
        .basic_auth("superuser", Some("SYS"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(view["host"], "envhost", "{view}");
    let instance_pid = agent::call(&agent_addr, AgentRequest::Status)
        .await
        .unwrap()
        .instance
        .pid
        .unwrap();

    send_signal(child.id(), Signal::Term).unwrap();
    let started = Instant::now();
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "member did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exit.success(), "agent exit: {exit:?}");
    // The instance is gone too, and it closed its databases cleanly (no WAL left behind).
    assert!(
        !std::path::Path::new(&format!("/proc/{instance_pid}")).exists(),
        "instance still running"
    );
    let log = std::fs::read_to_string(dir.path().join("durable/mgr/messages.log")).unwrap();
    assert!(log.contains("instance stopped"), "{log}");
    assert!(
        !dir.path()
            .join("durable/mgr/company/database.sqlite-wal")
            .exists()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn restarting_installs_nothing_twice() {
    let member = TestMember::start().await;
    let config_path = member.data_dir().join("mirrorlab.cpf");
    let config_before = std::fs::read(&config_path).unwrap();
    let identity = |m: &TestMember| {
        let conn =
            rusqlite::Connection::open(m.data_dir().join("mgr/company/database.sqlite")).unwrap();
        conn.query_row(
            "SELECT value FROM mirrorlab_meta WHERE key = 'guid'",
            [],
            |r| r.get::<_, String>(0),
        )
        .unwrap()
    };
    let guid_before = identity(&member);
    member
        .post("/api/apps/companies", json!({"name": "Kept"}))
        .await
        .unwrap();
    for _ in 0..2 {
        let stopped = agent::call(&member.agent, AgentRequest::Stop)
            .await
            .unwrap();
        assert!(stopped.ok);
        member.start_instance().await;
        member.wait_ready().await;
    }
    assert_eq!(
        std::fs::read(&config_path).unwrap(),
        config_before,
        "configuration unchanged"
    );
    assert_eq!(identity(&member), guid_before, "database not recreated");
    let (_, companies) = member.get("/api/apps/companies").await;
    assert_eq!(companies.as_array().unwrap().len(), 1);
    let (_, namespaces) = member.get("/api/namespaces").await;
    assert_eq!(namespaces.as_array().unwrap().len(), 2);
}

/// Text that would change the database if it were pasted into SQL instead of bound as a value.
const INJECTIONS: [&str; 6] = [
    "x'); DROP TABLE Company; --",
    "' OR '1'='1",
    "Robert'); DELETE FROM Company WHERE ('1'='1",
    "1; UPDATE Company SET name = 'pwned'",
    "\"; ATTACH DATABASE 'pwn.db' AS pwn; --",
    "'||(SELECT group_concat(name) FROM sqlite_master)||'",
];

#[tokio::test(flavor = "multi_thread")]
async fn sql_injection_through_the_apps_is_stored_as_text_and_changes_nothing_else() {
    let member = TestMember::start().await;
    let (status, employer) = member
        .post("/api/apps/companies", json!({"name": "Employer"}))
        .await
        .unwrap();
    assert_eq!(status, 201, "{employer}");
    let schema_before = member
        .sql(
            "COMPANY",
            "SELECT type, name, sql FROM sqlite_master ORDER BY name",
        )
        .await;

    for text in INJECTIONS {
        let tax_id: String = text.chars().take(40).collect(); // the field's limit
        let (status, company) = member
            .post(
                "/api/apps/companies",
                json!({"name": text, "mission": text, "tax_id": tax_id}),
            )
            .await
            .unwrap();
        assert_eq!(status, 201, "{text}: {company}");
        assert_eq!(company["name"], json!(text), "{company}");
        assert_eq!(company["mission"], json!(text), "{company}");
        assert_eq!(company["tax_id"], json!(tax_id), "{company}");
        let (status, contact) = member
            .post(
                "/api/apps/contacts",
                json!({"name": text, "phone": "1", "company_id": employer["id"]}),
            )
            .await
            .unwrap();
        assert_eq!(status, 201, "{text}: {contact}");
        assert_eq!(contact["name"], json!(text));

        // Ids and paging parameters are numbers or nothing.
        let encoded = url::form_urlencoded::byte_serialize(text.as_bytes()).collect::<String>();
        for path in [
            format!("/api/apps/companies/{encoded}"),
            format!("/api/apps/companies?after={encoded}"),
            format!("/api/apps/companies?limit={encoded}"),
        ] {
            let (status, body) = member.get(&path).await;
            assert_eq!(status, 400, "{path}: {body}");
        }
    }

    // Every text came back verbatim, nothing else changed: the other row, the table, the
    // schema; no database was attached or created.
    let (status, companies) = member.get("/api/apps/companies?limit=100").await;
    assert_eq!(status, 200);
    let names: Vec<&str> = companies
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    let mut expected = vec!["Employer"];
    expected.extend(INJECTIONS);
    assert_eq!(names, expected);
    let schema_after = member
        .sql(
            "COMPANY",
            "SELECT type, name, sql FROM sqlite_master ORDER BY name",
        )
        .await;
    assert_eq!(schema_after, schema_before);
    let attached = member.sql("COMPANY", "PRAGMA database_list").await;
    assert!(!attached.to_string().contains("pwn"), "{attached}");
    assert!(!member.data_dir().join("pwn.db").exists());
    assert!(
        std::fs::read_dir(member.data_dir()).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains("pwn"))
    );
}

#[test]
fn with_mirrorlab_log_json_every_line_on_stderr_is_a_json_object() {
    use std::io::BufRead;
    let mut arbiter = Command::new(BINARY)
        .args(["arbiter", "--agent", "127.0.0.1:0"])
        .env("MIRRORLAB_LOG", "json")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Its first line says where it listens.
    let mut line = String::new();
    let read = std::io::BufReader::new(arbiter.stderr.take().unwrap()).read_line(&mut line);
    let _ = arbiter.kill();
    let _ = arbiter.wait();
    assert!(read.unwrap() > 0, "the arbiter logged nothing");
    let event: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}"));
    assert_eq!(event["level"], "INFO", "{event}");
    assert!(event["timestamp"].is_string(), "{event}");
    assert!(
        event["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("arbiter listening on 127.0.0.1:")),
        "{event}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_are_open_unless_the_member_is_started_to_ask_for_a_login() {
    let open = TestMember::start().await;
    let guarded = TestMember::start_with("guarded", &["--metrics-login"]).await;
    let plain = reqwest::Client::new();
    let scrape = |url: &str| plain.get(format!("{url}/metrics")).send();
    assert_eq!(scrape(&open.url).await.unwrap().status().as_u16(), 200);
    // Asked for a login: refused without one (as /api refuses), served with one. The flag
    // reaches the instance the agent starts.
    let refused = scrape(&guarded.url).await.unwrap();
    assert_eq!(refused.status().as_u16(), 401);
    assert!(refused.text().await.unwrap().contains("error"));
    let text = guarded.api().metrics().await;
    assert!(text.contains("mirrorlab_mirror_role"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_password_file_gives_the_superuser_its_first_password_instead_of_sys() {
    // The file a Kubernetes Secret mounts, with its trailing line break.
    let secrets = tempfile::tempdir().unwrap();
    let file = secrets.path().join("password");
    std::fs::write(&file, "not-the-default\n").unwrap();
    let member = TestMember::start_with(
        "secretive",
        &["--superuser-password-file", file.to_str().unwrap()],
    )
    .await;
    let client = reqwest::Client::new();
    let with = |password: &'static str| {
        client
            .get(format!("{}/api/databases", member.url))
            .basic_auth("superuser", Some(password))
            .send()
    };
    assert_eq!(with("SYS").await.unwrap().status().as_u16(), 401);
    assert_eq!(
        with("not-the-default").await.unwrap().status().as_u16(),
        200
    );

    // Read at every start but used only at the first: an unfit file stops the start with a
    // message naming it; another password in the file changes nothing once installed.
    member.kill_instance().await;
    std::fs::write(&file, "x\n").unwrap();
    let out = Command::new(BINARY)
        .args(["instance", "--data-dir"])
        .arg(member.data_dir())
        .args(["--superuser-password-file", file.to_str().unwrap()])
        .args(["--web", "127.0.0.1:0", "--superserver", "127.0.0.1:0"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(said.contains("superuser password file"), "{said}");
    // A member (its agent) with such a file does not start at all, so an orchestrator shows
    // the container failing instead of an agent whose instance never runs.
    let out = Command::new(BINARY)
        .args(["member", "--data-dir"])
        .arg(secrets.path().join("unused"))
        .args(["--superuser-password-file", file.to_str().unwrap()])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("superuser password file"), "{said}");
    std::fs::write(&file, "another-one\n").unwrap();
    member.start_instance().await;
    member.wait_ready().await;
    assert_eq!(with("another-one").await.unwrap().status().as_u16(), 401);
    assert_eq!(
        with("not-the-default").await.unwrap().status().as_u16(),
        200
    );
}
