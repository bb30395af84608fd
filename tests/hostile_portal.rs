//! Hostile clients of the portal: what a stranger on the same network can try without a password,
//! and what a logged-in user can ask of the instance. Each test attacks a real member (agent and
//! instance processes) over real TCP and checks that the member keeps serving everyone else.
//!
//! Attackers connect from 127.0.0.2 (or other loopback addresses): Linux routes all of
//! 127.0.0.0/8 to this host, so the member sees them as other sources than the test's own
//! requests from 127.0.0.1, as it would see another machine.

mod common;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::TestMember;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const FORM: reqwest::header::HeaderName = reqwest::header::CONTENT_TYPE;
const FORM_TYPE: &str = "application/x-www-form-urlencoded";

/// A client whose connections come from `source`, without redirects or kept-alive connections.
fn client_from(source: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(source.parse::<IpAddr>().unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Connects to `address` from `source`.
async fn connect_from(source: &str, address: &str) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{source}:0").parse().unwrap())?;
    socket.connect(address.parse().unwrap()).await
}

/// A line of `/proc/<pid>/status` in kB (`VmHWM`, `VmRSS`) or as a count (`Threads`).
fn proc_status(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

async fn instance_pid(member: &TestMember) -> u32 {
    member.status().await.pid.expect("the instance runs")
}

/// A lone member that is the primary of a mirror, so `/mirror_status` says SUCCESS.
async fn lone_primary() -> TestMember {
    let a = TestMember::start_named("mirrora").await;
    a.ok("/api/mirror/service", json!({"enabled": true})).await;
    a.ok(
        "/api/mirror/create",
        json!({"mirror_name": "MIRRORSET", "superserver_address": a.superserver,
               "agent_address": "127.0.0.1", "agent_port": a.agent_port()}),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = client_from("127.0.0.1")
            .get(format!("{}/mirror_status", a.url))
            .send()
            .await
            .unwrap()
            .status();
        if status == 200 {
            return a;
        }
        assert!(
            Instant::now() < deadline,
            "the lone primary never said SUCCESS"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The login form's cookie and token, as a browser gets them.
async fn login_form(client: &reqwest::Client, url: &str) -> (String, String) {
    let page = client
        .get(format!("{url}/portal/login"))
        .send()
        .await
        .unwrap();
    let cookie = page
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .collect::<Vec<_>>()
        .join("; ");
    let text = page.text().await.unwrap();
    let token = text
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a token in the login form")
        .to_string();
    (cookie, token)
}

/// Posts the login form; returns the status and the `Set-Cookie` values.
async fn post_login(
    client: &reqwest::Client,
    url: &str,
    cookie: &str,
    token: &str,
    user: &str,
    password: &str,
) -> (u16, Vec<String>) {
    let answer = client
        .post(format!("{url}/portal/login"))
        .header(reqwest::header::COOKIE, cookie)
        .header(FORM, FORM_TYPE)
        .body(
            serde_urlencoded::to_string([
                ("username", user),
                ("password", password),
                ("csrf", token),
                ("next", "/portal/"),
            ])
            .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let cookies = answer
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok().map(String::from))
        .collect();
    (answer.status().as_u16(), cookies)
}

/// The status of an API GET with Basic credentials, from `client`.
async fn basic_get(client: &reqwest::Client, url: &str, user: &str, password: &str) -> u16 {
    client
        .get(format!("{url}/api/databases"))
        .basic_auth(user, Some(password))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slowloris_leaves_the_portal_and_mirror_status_answering() {
    let a = lone_primary().await;
    let url = a.url.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let closed_early = Arc::new(AtomicUsize::new(0));
    let closed_by_deadline = Arc::new(AtomicUsize::new(0));
    // 256 connections from one address, each sending a request's header lines one every three
    // seconds and never finishing; a closed one is opened again at once.
    let attackers: Vec<_> = (0..256)
        .map(|_| {
            let (stop, web) = (stop.clone(), a.web.clone());
            let (early, deadline) = (closed_early.clone(), closed_by_deadline.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut stream) = connect_from("127.0.0.2", &web).await else {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    };
                    let opened = Instant::now();
                    let mut line = b"GET /portal/ HTTP/1.1\r\n".to_vec();
                    let mut byte = [0u8; 64];
                    while !stop.load(Ordering::Relaxed) {
                        if stream.write_all(&line).await.is_err() {
                            break;
                        }
                        line = b"X-Slow: yes\r\n".to_vec();
                        // Wait three seconds, or until the member closes the connection.
                        match tokio::time::timeout(Duration::from_secs(3), stream.read(&mut byte))
                            .await
                        {
                            Err(_) => continue,
                            Ok(_) => break,
                        }
                    }
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    if opened.elapsed() < Duration::from_secs(1) {
                        early.fetch_add(1, Ordering::Relaxed);
                    } else {
                        deadline.fetch_add(1, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Meanwhile a browser and a load balancer elsewhere ask, each time on a new connection.
    let honest = client_from("127.0.0.1");
    let started = Instant::now();
    let (mut asked, mut answered, mut status_asked, mut status_ok) = (0, 0, 0, 0);
    while started.elapsed() < Duration::from_secs(24) {
        for path in ["/portal/login", "/api/health"] {
            asked += 1;
            let reply = tokio::time::timeout(
                Duration::from_secs(3),
                honest.get(format!("{url}{path}")).send(),
            )
            .await;
            if matches!(&reply, Ok(Ok(r)) if r.status() == 200) {
                answered += 1;
            }
        }
        status_asked += 1;
        let reply = tokio::time::timeout(
            Duration::from_secs(3),
            honest.get(format!("{url}/mirror_status")).send(),
        )
        .await;
        if let Ok(Ok(r)) = reply
            && r.status() == 200
            && r.text().await.unwrap_or_default() == "SUCCESS"
        {
            status_ok += 1;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for attacker in attackers {
        attacker.abort();
    }
    let early = closed_early.load(Ordering::Relaxed);
    let by_deadline = closed_by_deadline.load(Ordering::Relaxed);
    println!(
        "slowloris of 256 connections from one address, 24 s: portal and /api/health answered \
         {answered} of {asked}, /mirror_status SUCCESS {status_ok} of {status_asked}; \
         the member closed {early} attacker connections at once and {by_deadline} at the header deadline"
    );
    assert_eq!(
        answered, asked,
        "the portal stopped answering under the slowloris"
    );
    assert_eq!(status_ok, status_asked, "/mirror_status stopped answering");
    // The connections over the address's share were closed unread, the others when their
    // headers did not arrive in time (well before the 24 s the attack lasted).
    assert!(
        early >= 100,
        "only {early} connections were refused at once"
    );
    assert!(
        by_deadline >= 100,
        "only {by_deadline} connections ended at the header deadline"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_guesser_locks_only_itself_out() {
    let a = TestMember::start().await;
    let url = a.url.clone();
    let guesser = client_from("127.0.0.2");
    let admin = client_from("127.0.0.1");
    for _ in 0..5 {
        assert_eq!(basic_get(&guesser, &url, "superuser", "wrong").await, 401);
    }
    // The guesser is locked out, even with the right password ...
    assert_eq!(basic_get(&guesser, &url, "superuser", "SYS").await, 429);
    let (cookie, token) = login_form(&guesser, &url).await;
    let (status, _) = post_login(&guesser, &url, &cookie, &token, "superuser", "SYS").await;
    assert_eq!(status, 429, "the guesser's form login");
    // ... and the admin elsewhere is not: Basic and the form both work.
    assert_eq!(basic_get(&admin, &url, "superuser", "SYS").await, 200);
    let (cookie, token) = login_form(&admin, &url).await;
    let (status, cookies) = post_login(&admin, &url, &cookie, &token, "superuser", "SYS").await;
    assert_eq!(status, 303, "the admin's form login: {cookies:?}");
    // Guesses under many other names are throttled too (the source is locked after a while,
    // whatever the names), and still do not touch the admin. (That a flood of names cannot
    // empty the failure tables is checked beside them, in `web::auth`.)
    let mut throttled = 0;
    for i in 0..300 {
        let status = basic_get(&guesser, &url, &format!("name{i}"), "wrong").await;
        assert!(status == 401 || status == 429, "{status}");
        throttled += (status == 429) as usize;
    }
    assert!(
        throttled >= 250,
        "only {throttled} of 300 guesses were throttled"
    );
    assert_eq!(basic_get(&admin, &url, "superuser", "SYS").await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_password_change_ends_old_credentials_and_other_sessions_at_once() {
    let a = TestMember::start().await;
    let url = a.url.clone();
    let client = client_from("127.0.0.1");
    // Two browser sessions of the same user: the change is made in the first.
    let session = |cookies: Vec<String>| -> String {
        cookies
            .iter()
            .filter_map(|c| c.split(';').next())
            .filter(|c| !c.ends_with('='))
            .collect::<Vec<_>>()
            .join("; ")
    };
    let mut sessions = Vec::new();
    for _ in 0..2 {
        let (cookie, token) = login_form(&client, &url).await;
        let (status, cookies) =
            post_login(&client, &url, &cookie, &token, "superuser", "SYS").await;
        assert_eq!(status, 303);
        sessions.push(session(cookies));
    }
    let page = client
        .get(format!("{url}/portal/security/password"))
        .header(reqwest::header::COOKIE, &sessions[0])
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a token in the password form")
        .to_string();
    // Many checks of the old password are still running when the change is made.
    let checks: Vec<_> = (0..40)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move { basic_get(&client, &url, "superuser", "SYS").await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let changed = client
        .post(format!("{url}/portal/security/password"))
        .header(reqwest::header::COOKIE, &sessions[0])
        .header(FORM, FORM_TYPE)
        .body(
            serde_urlencoded::to_string([
                ("csrf", csrf.as_str()),
                ("current", "SYS"),
                ("new_password", "a new secret"),
                ("confirm", "a new secret"),
            ])
            .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), 303);
    for check in checks {
        let status = check.await.unwrap();
        // Accepted before the change, refused after it (throttled once refused often enough).
        assert!(matches!(status, 200 | 401 | 429), "{status}");
    }
    // From now on the old password is refused, every time, and the new one works. (Each try
    // from its own address, and fewer than five: a run of wrong passwords would be throttled.)
    for i in 0..4 {
        let elsewhere = client_from(&format!("127.0.2.{}", i + 1));
        assert_eq!(
            basic_get(&elsewhere, &url, "superuser", "SYS").await,
            401,
            "the old password still works after the change"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        basic_get(&client, &url, "superuser", "a new secret").await,
        200
    );
    // The session that made the change goes on; the other one ended with the change.
    for (session, expected) in [(&sessions[0], 200), (&sessions[1], 303)] {
        let page = client
            .get(format!("{url}/portal/"))
            .header(reqwest::header::COOKIE, session)
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), expected);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_wrong_logins_costs_bounded_memory_that_comes_back() {
    let a = TestMember::start().await;
    let url = a.url.clone();
    let pid = instance_pid(&a).await;
    // One login from each of 200 addresses (so no throttle stops them early), all at once.
    let mut forms = Vec::new();
    for i in 0..200 {
        let client = client_from(&format!("127.0.1.{}", i + 1));
        let (cookie, token) = login_form(&client, &url).await;
        forms.push((client, cookie, token));
    }
    let before_rss = proc_status(pid, "VmRSS");
    let before_peak = proc_status(pid, "VmHWM");
    let logins: Vec<_> = forms
        .into_iter()
        .map(|(client, cookie, token)| {
            let url = url.clone();
            tokio::spawn(async move {
                post_login(&client, &url, &cookie, &token, "superuser", "wrong")
                    .await
                    .0
            })
        })
        .collect();
    let mut max_threads = 0;
    let mut statuses = std::collections::BTreeMap::new();
    for login in logins {
        max_threads = max_threads.max(proc_status(pid, "Threads"));
        *statuses.entry(login.await.unwrap()).or_insert(0) += 1;
    }
    let peak = proc_status(pid, "VmHWM");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_rss = proc_status(pid, "VmRSS");
    println!(
        "200 concurrent wrong logins: answers {statuses:?}; RSS {} MiB before, peak {} MiB \
         (peak before {} MiB), {} MiB after; at most {max_threads} threads",
        before_rss / 1024,
        peak / 1024,
        before_peak / 1024,
        after_rss / 1024
    );
    // Every answer is a refusal or "busy", never a failure of the member.
    assert!(
        statuses.keys().all(|s| *s == 401 || *s == 503),
        "{statuses:?}"
    );
    assert!(
        statuses.get(&401).copied().unwrap_or(0) >= 4,
        "{statuses:?}"
    );
    // Four argon2 checks at a time take about 80 MiB; 200 at once took gigabytes.
    assert!(
        peak < before_peak.max(before_rss) + 200 * 1024,
        "peak RSS {} MiB",
        peak / 1024
    );
    assert!(max_threads < 100, "{max_threads} threads");
    assert!(
        after_rss < before_rss + 120 * 1024,
        "RSS stayed at {} MiB after the flood",
        after_rss / 1024
    );
    // The member still logs people in.
    let client = client_from("127.0.0.1");
    assert_eq!(basic_get(&client, &url, "superuser", "SYS").await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn results_and_statements_are_bounded() {
    let a = TestMember::start().await;
    let pid = instance_pid(&a).await;
    let peak_before = proc_status(pid, "VmHWM");
    // One huge value, and many values that are huge together: clear errors, no memory spent.
    for (sql, says) in [
        ("SELECT zeroblob(300000000)", "larger than 16 MiB"),
        (
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 40) \
             SELECT zeroblob(1000000) FROM n",
            "larger than 16 MiB",
        ),
    ] {
        a.refused(
            "/api/sql",
            json!({"namespace": "COMPANY", "sql": sql}),
            400,
            says,
        )
        .await;
    }
    let peak = proc_status(pid, "VmHWM");
    println!(
        "huge results refused; peak RSS {} MiB (before {} MiB)",
        peak / 1024,
        peak_before / 1024
    );
    assert!(
        peak < peak_before + 100 * 1024,
        "peak RSS {} MiB",
        peak / 1024
    );

    // A runaway write is stopped after the write limit (5 s by default), and a write queued
    // behind it commits long before the 30 s a read may take.
    let runaway = {
        let api = a.api();
        tokio::spawn(async move {
            let started = Instant::now();
            let reply = api
                .post(
                    "/api/sql",
                    json!({"namespace": "COMPANY", "sql":
                        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) \
                         UPDATE Company SET name = name WHERE id IN (SELECT i FROM n)"}),
                )
                .await
                .unwrap();
            (reply, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let (status, body) = a
        .post("/api/apps/companies", json!({"name": "behind the runaway"}))
        .await
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(status, 201, "{body}");
    let ((status, body), ran) = runaway.await.unwrap();
    println!("runaway write stopped after {ran:?}; the write behind it waited {waited:?}");
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("ran longer than 5000 ms"),
        "{body}"
    );
    assert!(waited < Duration::from_secs(15), "{waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pages_refuse_framing_and_logins_from_elsewhere_and_names_refuse_hidden_characters() {
    let a = TestMember::start().await;
    let url = a.url.clone();
    let client = client_from("127.0.0.1");
    // Security headers on pages, on the API and on errors.
    for path in ["/portal/login", "/api/health", "/no/such/page"] {
        let answer = client.get(format!("{url}{path}")).send().await.unwrap();
        let header = |name: &str| {
            answer
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        assert_eq!(header("x-frame-options"), "DENY", "{path}");
        assert!(
            header("content-security-policy").contains("frame-ancestors 'none'"),
            "{path}"
        );
        assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(header("referrer-policy"), "same-origin", "{path}");
    }
    // Liveness only, without a login.
    let health: serde_json::Value = client
        .get(format!("{url}/api/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health, json!({"status": "ok"}));

    // The login form's token belongs to its cookie: the old double-submit (token = cookie),
    // another form's token, and a post from another site are refused.
    let (cookie, token) = login_form(&client, &url).await;
    let (_, other_token) = login_form(&client, &url).await;
    let nonce = cookie.split('=').nth(1).unwrap().to_string();
    for (token, origin) in [
        (nonce.as_str(), None),
        (other_token.as_str(), None),
        (token.as_str(), Some("http://evil.example")),
    ] {
        let mut request = client
            .post(format!("{url}/portal/login"))
            .header(reqwest::header::COOKIE, &cookie)
            .header(FORM, FORM_TYPE)
            .body(
                serde_urlencoded::to_string([
                    ("username", "superuser"),
                    ("password", "SYS"),
                    ("csrf", token),
                ])
                .unwrap(),
            );
        if let Some(origin) = origin {
            request = request
                .header("origin", origin)
                .header("sec-fetch-site", "cross-site");
        }
        let status = request.send().await.unwrap().status();
        assert_eq!(status, 403, "token {token:?} from {origin:?}");
    }
    let (status, _) = post_login(&client, &url, &cookie, &token, "superuser", "SYS").await;
    assert_eq!(status, 303, "the form's own token");

    // Names with invisible characters: a member name and an application's name.
    a.ok("/api/mirror/service", json!({"enabled": true})).await;
    a.refused(
        "/api/mirror/create",
        json!({"mirror_name": "MIRRORSET", "member_name": "MIRRORA\u{200B}/IRIS",
               "superserver_address": a.superserver, "agent_address": "127.0.0.1",
               "agent_port": a.agent_port()}),
        400,
        "may not contain",
    )
    .await;
    a.refused(
        "/api/apps/companies",
        json!({"name": "Acme\u{202E}emcA"}),
        400,
        "invisible or control character",
    )
    .await;

    // Backups: each call keeps a copy, and only the last three stay.
    for _ in 0..5 {
        a.ok("/api/databases/COMPANY/backup", json!({})).await;
        // Copies are named by the second they were made in.
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let copies: Vec<_> = std::fs::read_dir(a.data_dir().join("mgr/backup"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("company-"))
        .collect();
    assert_eq!(copies.len(), 3, "{copies:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn join_information_says_the_same_for_every_port_that_is_not_the_mirror() {
    let a = lone_primary().await;
    let b = TestMember::start_named("mirrorb").await;
    b.ok("/api/mirror/service", json!({"enabled": true})).await;
    // A port that answers with a banner, one that is closed, and the real agent with a wrong
    // mirror name: one message for all three, naming only the address asked.
    let banner = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let banner_address = banner.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = banner.accept().await {
            let _ = stream
                .write_all(b"SSH-2.0-OpenSSH_9.2 secret-banner\r\n")
                .await;
        }
    });
    let closed = format!("127.0.0.1:{}", common::free_port());
    for (mirror, address) in [
        ("MIRRORSET", banner_address.to_string()),
        ("MIRRORSET", closed.clone()),
        ("OTHERSET", format!("127.0.0.1:{}", a.agent_port())),
    ] {
        let (status, body) = b
            .post(
                "/api/mirror/join-info",
                json!({"mirror_name": mirror, "agent_address": address}),
            )
            .await
            .unwrap();
        assert_eq!(status, 409, "{body}");
        let message = body["error"].as_str().unwrap();
        assert_eq!(
            message,
            format!(
                "no mirror {mirror} answered at {address}: check the mirror name, the agent's \
                 address and its port"
            ),
            "{body}"
        );
    }
}
