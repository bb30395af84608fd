//! The figures beside throughput (`--mode all`): a member's idle memory, the Mirror Monitor
//! page's latency while clients write, how fast a backup catches up on a backlog, and how fast a
//! database file is copied.
//!
//! - **Idle RSS**: the resident memory (`VmRSS` in `/proc/<pid>/status`) of a fresh standalone
//!   member's agent and instance, after two idle seconds.
//! - **Monitor under load**: one client logs in to the portal like a browser (login form, CSRF
//!   token, session cookie) and loads `/portal/mirror/monitor` twenty times a second while the
//!   writers of a mirrored step run; its p50 / p99 are the page's.
//! - **Catchup**: the backup is stopped (Stop Mirror On This Member), the primary inserts a
//!   backlog of rows (10 000 per statement, so the backlog builds fast), the backup is started
//!   again and the clock runs until its copy of COMPANY has applied the primary's last record:
//!   rows per second, and the mirror journal's bytes per second over the same time (the journal
//!   download).
//! - **Copy**: COMPANY's database file copied under Freeze and fsynced, in MB/s — the initial
//!   copy a new member needs.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{TemporaryMember, percentile};
use mirrorlab::error::{Error, Result};

/// Resident memory of a fresh member's two processes, in KiB.
pub struct IdleMemory {
    pub agent_kib: u64,
    pub instance_kib: u64,
}

/// Reads `VmRSS` of a process.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The idle memory of `member` after two quiet seconds.
pub async fn idle_memory(member: &TemporaryMember) -> Result<IdleMemory> {
    tokio::time::sleep(Duration::from_secs(2)).await;
    let agent_pid = member
        .child
        .id()
        .ok_or_else(|| Error::Internal("the member's agent has exited".into()))?;
    let status =
        mirrorlab::agent::call(&member.agent, mirrorlab::agent::AgentRequest::Status).await?;
    let instance_pid = status
        .instance
        .pid
        .ok_or_else(|| Error::Internal("the member's instance is not running".into()))?;
    Ok(IdleMemory {
        agent_kib: rss_kib(agent_pid).unwrap_or(0),
        instance_kib: rss_kib(instance_pid).unwrap_or(0),
    })
}

/// Logs in to the portal as a browser does and returns the `Cookie` header of the session.
pub async fn portal_session(url: &str, user: &str, password: &str) -> Result<String> {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| Error::Internal(e.to_string()))?;
    let unavailable = |e: reqwest::Error| Error::Unavailable(format!("{url}: {e}"));
    let form = client
        .get(format!("{url}/portal/login"))
        .send()
        .await
        .map_err(unavailable)?;
    let login_cookies = cookies(form.headers());
    let page = form.text().await.map_err(unavailable)?;
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .ok_or_else(|| Error::Internal("the login page has no CSRF token".into()))?;
    let form_body = serde_urlencoded::to_string([
        ("username", user),
        ("password", password),
        ("csrf", csrf),
        ("next", "/portal/"),
    ])
    .map_err(|e| Error::Internal(e.to_string()))?;
    let answer = client
        .post(format!("{url}/portal/login"))
        .header(reqwest::header::COOKIE, &login_cookies)
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(form_body)
        .send()
        .await
        .map_err(unavailable)?;
    let session = cookies(answer.headers());
    if session.is_empty() {
        return Err(Error::Unavailable(format!(
            "{url}: the portal login answered {} without a session",
            answer.status()
        )));
    }
    Ok(session)
}

/// The `name=value` pairs of a response's `Set-Cookie` headers, as one `Cookie` header.
fn cookies(headers: &reqwest::header::HeaderMap) -> String {
    headers
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok()?.split(';').next())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Time between the starts of two page loads.
const PAGE_PACE: Duration = Duration::from_millis(50);

/// Latency of a page loaded again and again for `duration`.
pub struct PageTimes {
    pub loads: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Loads `url` + `path` with the session `cookie` for `duration`, one load at a time and at
/// most one per [`PAGE_PACE`]; each must show `expect`.
pub async fn page_times(
    client: &reqwest::Client,
    url: &str,
    path: &str,
    expect: &str,
    cookie: &str,
    duration: Duration,
) -> Result<PageTimes> {
    let deadline = Instant::now() + duration;
    let mut latencies_us = Vec::new();
    while Instant::now() < deadline {
        let sent = Instant::now();
        let page = client
            .get(format!("{url}{path}"))
            .header(reqwest::header::COOKIE, cookie)
            .send()
            .await
            .map_err(|e| Error::Unavailable(format!("{url}{path}: {e}")))?;
        // A lost session would be redirected to the login page: time only the page itself.
        if !page.status().is_success() || page.url().path() != path {
            return Err(Error::Unavailable(format!(
                "{url}{path} answered {} at {}",
                page.status(),
                page.url()
            )));
        }
        let body = page.text().await.unwrap_or_default();
        latencies_us.push(sent.elapsed().as_micros() as u64);
        if !body.contains(expect) {
            return Err(Error::Unavailable(format!(
                "{url}{path} does not show {expect:?}"
            )));
        }
        // Twenty loads a second: many people watching, not a flood that would itself take the
        // writers' CPU away.
        tokio::time::sleep(PAGE_PACE.saturating_sub(sent.elapsed())).await;
    }
    latencies_us.sort_unstable();
    Ok(PageTimes {
        loads: latencies_us.len(),
        p50_ms: percentile(&latencies_us, 50.0),
        p99_ms: percentile(&latencies_us, 99.0),
    })
}

/// What catching up on a backlog took.
pub struct Catchup {
    pub rows: u64,
    pub seconds: f64,
    pub journal_bytes: u64,
}

/// Rows inserted per statement while the backlog builds.
const BACKLOG_BATCH: u64 = 10_000;

/// Stops backup `b`, lets primary `a` build a backlog of `rows` rows, starts `b` again and
/// times its catchup.
pub async fn catchup(
    client: &reqwest::Client,
    a: &TemporaryMember,
    b: &TemporaryMember,
    rows: u64,
) -> Result<Catchup> {
    b.call(client, "/api/mirror/stop", json!({})).await?;
    let journal_before = mirror_journal_bytes(&a.dir);
    let mut inserted = 0;
    while inserted < rows {
        let batch = BACKLOG_BATCH.min(rows - inserted);
        let sql = format!(
            "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < {batch}) \
             INSERT INTO Company (name, mission, created_at) \
             SELECT 'backlog ' || ({inserted} + x), 'catchup row', '2026-01-01 00:00:00' FROM n"
        );
        a.call(
            client,
            "/api/sql",
            json!({"namespace": "COMPANY", "sql": sql}),
        )
        .await?;
        inserted += batch;
    }
    let target = applied(client, a).await?;
    let journal_bytes = mirror_journal_bytes(&a.dir).saturating_sub(journal_before);
    let started = Instant::now();
    b.call(client, "/api/mirror/start", json!({})).await?;
    let deadline = started + Duration::from_secs(600);
    while applied(client, b).await? < target {
        if Instant::now() > deadline {
            return Err(Error::Unavailable(
                "the backup did not catch up within 10 minutes".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(Catchup {
        rows,
        seconds: started.elapsed().as_secs_f64(),
        journal_bytes,
    })
}

/// COMPANY's applied position on a member.
async fn applied(client: &reqwest::Client, member: &TemporaryMember) -> Result<u64> {
    let answer = client
        .get(format!("{}/api/databases", member.url))
        .basic_auth("superuser", Some("SYS"))
        .send()
        .await
        .map_err(|e| Error::Unavailable(e.to_string()))?;
    let list: Value = answer
        .json()
        .await
        .map_err(|e| Error::Unavailable(e.to_string()))?;
    list.as_array()
        .into_iter()
        .flatten()
        .find(|d| d["name"] == "COMPANY")
        .and_then(|d| d["applied_position"].as_u64())
        .ok_or_else(|| Error::Unavailable(format!("{}: COMPANY has no position", member.url)))
}

/// Bytes in the member's mirror journal files.
fn mirror_journal_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir.join("mgr/journal"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("MIRROR-"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// How long copying COMPANY's file took.
pub struct Copy {
    pub bytes: u64,
    pub seconds: f64,
}

/// Copies COMPANY's database file of primary `a` under Freeze, fsyncs the copy, and times it.
pub async fn copy_database(client: &reqwest::Client, a: &TemporaryMember) -> Result<Copy> {
    let from = a.dir.join("mgr/company/database.sqlite");
    let to = a.dir.join("mgr/backup/bench-copy.sqlite");
    a.call(client, "/api/mirror/freeze", json!({})).await?;
    let started = Instant::now();
    let copied = tokio::task::spawn_blocking(move || -> std::io::Result<u64> {
        std::fs::create_dir_all(to.parent().expect("a folder"))?;
        let bytes = std::fs::copy(&from, &to)?;
        std::fs::File::open(&to)?.sync_all()?;
        std::fs::remove_file(&to)?;
        Ok(bytes)
    })
    .await
    .map_err(|e| Error::Internal(e.to_string()));
    let seconds = started.elapsed().as_secs_f64();
    a.call(client, "/api/mirror/thaw", json!({})).await?;
    Ok(Copy {
        bytes: copied??,
        seconds,
    })
}
