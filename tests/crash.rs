//! Crash test with the real binary: concurrent writers through the API, SIGKILL of the instance
//! at random moments, restart through the agent, then every write whose acknowledgement a client
//! saw must be there — and nothing else may be broken.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Rng, TestMember};
use serde_json::{Value, json};

/// Rounds of write-kill-restart (`MIRRORLAB_CRASH_ROUNDS` overrides).
fn rounds() -> usize {
    std::env::var("MIRRORLAB_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20)
}

/// What one writer saw: names it sent, and names whose 201 it received.
#[derive(Default)]
struct Seen {
    sent: Vec<String>,
    acked: Vec<String>,
}

/// Writes until the instance dies (or `stop` is set); `path` is the app endpoint.
async fn writer(
    member: Arc<TestMember>,
    path: &'static str,
    prefix: String,
    company_id: i64,
    stop: Arc<AtomicBool>,
) -> Seen {
    let mut seen = Seen::default();
    for n in 0.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let name = format!("{prefix}-{n}");
        let body = json!({ "name": name, "phone": "555", "company_id": company_id, "mission": "crash test" });
        seen.sent.push(name.clone());
        match member.post(path, body).await {
            Ok((201, _)) => seen.acked.push(name),
            Ok((status, body)) => panic!("{path}: unexpected answer {status}: {body}"),
            Err(_) => break, // connection refused or reset: the instance is gone
        }
    }
    seen
}

/// Every name of a list endpoint, page by page.
async fn names(member: &TestMember, path: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut after = 0;
    loop {
        let (status, body) = member
            .get(&format!("{path}?after={after}&limit=5000"))
            .await;
        assert_eq!(status, 200, "{body}");
        let page = body.as_array().unwrap();
        for row in page {
            names.push(row["name"].as_str().unwrap().to_string());
            after = row["id"].as_i64().unwrap();
        }
        if page.len() < 5000 {
            return names;
        }
    }
}

fn scalar(result: &Value) -> Value {
    result["rows"][0][0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_sigkill_of_the_instance() {
    let member = Arc::new(TestMember::start().await);
    let mut rng = Rng::from_env_or_clock();
    let (status, company) = member
        .post("/api/apps/companies", json!({"name": "Employer"}))
        .await
        .unwrap();
    assert_eq!(status, 201);
    let employer = company["id"].as_i64().unwrap();

    let mut sent_companies: HashSet<String> = HashSet::from(["Employer".to_string()]);
    let mut acked_companies: HashSet<String> = HashSet::from(["Employer".to_string()]);
    let mut sent_contacts: HashSet<String> = HashSet::new();
    let mut acked_contacts: HashSet<String> = HashSet::new();

    for round in 0..rounds() {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for w in 0..6 {
            let path = if w < 4 {
                "/api/apps/companies"
            } else {
                "/api/apps/contacts"
            };
            let prefix = format!("r{round}-w{w}");
            tasks.push(tokio::spawn(writer(
                member.clone(),
                path,
                prefix,
                employer,
                stop.clone(),
            )));
        }
        // Let the writers run for a random while, then crash the instance under them.
        tokio::time::sleep(Duration::from_millis(10 + rng.below(400))).await;
        member.kill_instance().await;
        stop.store(true, Ordering::Relaxed);
        for (w, task) in tasks.into_iter().enumerate() {
            let seen = task.await.unwrap();
            let (sent, acked) = if w < 4 {
                (&mut sent_companies, &mut acked_companies)
            } else {
                (&mut sent_contacts, &mut acked_contacts)
            };
            sent.extend(seen.sent);
            acked.extend(seen.acked);
        }

        // Sometimes crash it again while it recovers, before it ever answers.
        member.start_instance().await;
        if rng.below(3) == 0 {
            tokio::time::sleep(Duration::from_millis(rng.below(40))).await;
            member.kill_instance().await;
            member.start_instance().await;
        }
        member.wait_ready().await;

        let companies = names(&member, "/api/apps/companies").await;
        let contacts = names(&member, "/api/apps/contacts").await;
        for (kind, present, sent, acked) in [
            ("company", &companies, &sent_companies, &acked_companies),
            ("contact", &contacts, &sent_contacts, &acked_contacts),
        ] {
            let unique: HashSet<&String> = present.iter().collect();
            assert_eq!(
                unique.len(),
                present.len(),
                "round {round}: a {kind} appears twice"
            );
            for name in acked {
                assert!(
                    unique.contains(name),
                    "round {round}: acknowledged {kind} {name} is missing"
                );
            }
            for name in present {
                assert!(
                    sent.contains(name),
                    "round {round}: {kind} {name} was never written"
                );
            }
        }
        for namespace in ["COMPANY", "PHONEBOOK"] {
            let check = member.sql(namespace, "PRAGMA integrity_check").await;
            assert_eq!(
                scalar(&check),
                json!("ok"),
                "round {round}: {namespace} integrity: {check}"
            );
        }
        // Positions first, the journal's end second: the end only grows (the HEARTBEAT
        // production writes now and then), so a database ahead of it is a real fault.
        let (_, databases) = member.get("/api/databases").await;
        let (_, journal) = member.get("/api/journal").await;
        let end = journal["end_position"].as_u64().unwrap();
        for db in databases.as_array().unwrap() {
            let applied = db["applied_position"].as_u64().unwrap();
            assert!(
                applied <= end,
                "round {round}: {db} is ahead of the journal end {end}"
            );
        }
        eprintln!(
            "round {round}: {} companies and {} contacts acknowledged so far; journal at {end}",
            acked_companies.len(),
            acked_contacts.len()
        );
    }
    // The whole run must have acknowledged real work, or the test proved nothing.
    assert!(
        acked_companies.len() > rounds() * 4,
        "too few writes were acknowledged: {}",
        acked_companies.len()
    );
    let status = member.status().await;
    assert!(
        status.starts as usize > rounds(),
        "the agent started the instance {} times",
        status.starts
    );
}
