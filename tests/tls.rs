//! A mirror created with Require SSL/TLS, with real member processes on loopback: a member that
//! joins waits in Pending New Members until the primary authorizes it, then replicates over
//! mutual TLS; a member the primary rejects never receives journal; and a stranger — plain or
//! with a certificate of its own, even one claiming a member's name — can neither pull journal
//! nor stop or force down the primary through its agent. Writers run throughout, and the
//! mirror's invariants are checked after the strangers: A stayed the only primary, every
//! acknowledged write is on A, and A and B hold the same rows. Last, a failover over TLS: A's
//! instance is killed, B takes over, A comes back as B's backup, and both converge.

mod common;

use std::io::{BufReader, BufWriter, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use common::TestMember;
use common::pair::*;
use mirrorlab::agent::{self, AgentRequest, Target};
use mirrorlab::mirror::config::{MemberInfo, MemberKind};
use mirrorlab::mirror::protocol::{Control, Message, read_message, write_control};
use mirrorlab::mirror::server::MAX_PENDING;
use mirrorlab::tls::{Channel, Identity};
use serde_json::{Value, json};

const B: &str = "MIRRORB/IRIS";
const C: &str = "MIRRORC/IRIS";

/// Joins `member` to A's mirror as `kind` (`failover`, or an async type); returns the message.
async fn join(member: &TestMember, a: &TestMember, async_type: Option<&str>) -> String {
    member
        .ok("/api/mirror/service", json!({"enabled": true}))
        .await;
    let path = match async_type {
        None => "/api/mirror/join-failover",
        Some(_) => "/api/mirror/join-async",
    };
    let joined = member
        .ok(
            path,
            json!({
                "mirror_name": "MIRRORSET",
                "agent_address": format!("127.0.0.1:{}", a.agent_port()),
                "instance_name": "IRIS",
                "superserver_address": member.superserver,
                "agent_address_local": "127.0.0.1",
                "agent_port_local": member.agent_port(),
                "async_type": async_type,
            }),
        )
        .await;
    joined["message"].as_str().unwrap().to_string()
}

fn pending_names(pending: &Value) -> Vec<String> {
    pending["pending"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["member_name"].as_str().unwrap().to_string())
        .collect()
}

/// Sends `first` on the superserver port `address` (over TLS as `identity`, pinned to
/// `expected`, or plain) and returns the answer: the refusal's reason, or a description of
/// anything else that came back.
fn superserver_answer(
    address: &str,
    tls: Option<(&Identity, &str)>,
    first: &Control,
) -> Result<String, String> {
    let tcp = TcpStream::connect(address).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let channel = match tls {
        None => Channel::Plain(tcp),
        Some((identity, expected)) => {
            mirrorlab::tls::connect_blocking(tcp, identity, expected).map_err(|e| e.to_string())?
        }
    };
    channel
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut writer = BufWriter::new(channel.try_clone().unwrap());
    write_control(&mut writer, first).map_err(|e| e.to_string())?;
    writer.flush().map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(channel);
    match read_message(&mut reader) {
        Ok(Some(Message::Control(control))) => match *control {
            Control::Refused { reason } => Ok(reason),
            other => Err(format!("answered {other:?}")),
        },
        Ok(Some(Message::Frames { first, last, .. })) => {
            Err(format!("sent journal records {first}..={last}"))
        }
        Ok(other) => Err(format!("answered {other:?}")),
        Err(err) => Err(format!("failed: {err}")),
    }
}

fn hello(mirror_id: &str, member: MemberInfo) -> Control {
    Control::Hello {
        mirror_name: "MIRRORSET".into(),
        mirror_id: mirror_id.into(),
        member,
        journal_first: 0,
        journal_end: 0,
        last_epoch: 0,
    }
}

/// A portal session on a member, logged in through the form as a person would.
struct Portal {
    client: reqwest::Client,
    url: String,
    cookie: String,
}

impl Portal {
    async fn login(url: &str) -> Portal {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let page = client
            .get(format!("{url}/portal/login"))
            .send()
            .await
            .unwrap();
        let pre_login = cookies(&page);
        let body = page.text().await.unwrap();
        let form = [
            ("username", "superuser"),
            ("password", "SYS"),
            ("csrf", &csrf_of(&body)),
            ("next", "/portal/"),
        ];
        let reply = client
            .post(format!("{url}/portal/login"))
            .header("cookie", &pre_login)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(serde_urlencoded::to_string(form).unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 303);
        Portal {
            client,
            url: url.to_string(),
            cookie: cookies(&reply),
        }
    }

    async fn get(&self, path: &str) -> String {
        let reply = self
            .client
            .get(format!("{}{path}", self.url))
            .header("cookie", &self.cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 200, "{path}");
        reply.text().await.unwrap()
    }

    /// Posts a form with the session's CSRF token and returns the page it answers with.
    async fn post_page(&self, path: &str, form: &[(&str, &str)]) -> String {
        let home = self.get("/portal/").await;
        let csrf = csrf_of(&home);
        let mut fields = form.to_vec();
        fields.push(("csrf", &csrf));
        let reply = self
            .client
            .post(format!("{}{path}", self.url))
            .header("cookie", &self.cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(serde_urlencoded::to_string(&fields).unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 200, "{path}");
        reply.text().await.unwrap()
    }

    async fn post(&self, path: &str, form: &[(&str, &str)]) -> u16 {
        self.client
            .post(format!("{}{path}", self.url))
            .header("cookie", &self.cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(serde_urlencoded::to_string(form).unwrap())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }
}

/// The `name=value` pairs a response sets, as one Cookie header.
fn cookies(reply: &reqwest::Response) -> String {
    reply
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok()?.split(';').next().map(str::to_string))
        .filter(|c| !c.ends_with('='))
        .collect::<Vec<_>>()
        .join("; ")
}

fn csrf_of(html: &str) -> String {
    let start = html
        .find("name=\"csrf\" value=\"")
        .expect("page has a CSRF field")
        + 19;
    html[start..start + html[start..].find('"').unwrap()].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tls_mirror_admits_only_members_the_primary_authorized() {
    let a = TestMember::start_with("mirrora", &[]).await;
    let b = TestMember::start_with("mirrorb", &[]).await;
    let c = TestMember::start_with("mirrorc", &[]).await;

    a.ok("/api/mirror/service", json!({"enabled": true})).await;
    a.ok(
        "/api/mirror/create",
        json!({
            "mirror_name": "mirrorset",
            "superserver_address": a.superserver,
            "agent_address": "127.0.0.1",
            "agent_port": a.agent_port(),
            "qos_timeout_ms": 2000,
            "require_tls": true,
        }),
    )
    .await;
    let view = a
        .wait_mirror(5, "primary", |v| v["role"] == "Primary")
        .await;
    assert_eq!(view["require_tls"], true, "{view:#}");
    let a_certificate = view["certificate"].as_str().unwrap().to_string();
    assert!(a_certificate.starts_with("SHA256:"), "{view:#}");

    // B joins and waits: nothing is sent to it before someone on A authorizes it.
    let said = join(&b, &a, None).await;
    assert!(said.contains("waits for authorization"), "{said}");
    let b_view = b.get("/api/mirror").await.1;
    assert_ne!(b_view["status"], "Backup", "{b_view:#}");
    let b_certificate = b_view["certificate"].as_str().unwrap().to_string();
    let pending = a.get("/api/mirror/pending").await.1;
    assert_eq!(pending_names(&pending), [B], "{pending:#}");
    assert_eq!(pending["pending"][0]["certificate"], b_certificate.as_str());
    assert_eq!(pending["pending"][0]["rejected"], false);
    // A write on A is acknowledged meanwhile (there is no active backup to wait for).
    created(&a, "/api/apps/companies", json!({"name": "Before B"})).await;
    // Pending members are a primary's business, and a name that waits for nothing is an error.
    b.refused(
        "/api/mirror/authorize",
        json!({"member_name": B}),
        409,
        "primary",
    )
    .await;
    a.refused(
        "/api/mirror/authorize",
        json!({"member_name": "NOBODY/IRIS"}),
        404,
        "no member named",
    )
    .await;

    a.ok("/api/mirror/authorize", json!({"member_name": B}))
        .await;
    a.wait_mirror(15, "with an active backup", |v| {
        TestMember::member_row(v, B)["journal_transfer"] == "Active"
    })
    .await;
    b.wait_mirror(15, "an active backup", |v| v["status"] == "Backup")
        .await;
    assert!(pending_names(&a.get("/api/mirror/pending").await.1).is_empty());
    // A second Authorize does no harm.
    a.refused(
        "/api/mirror/authorize",
        json!({"member_name": B}),
        404,
        "no member named",
    )
    .await;

    // The walk-through over TLS: copies, Activate, Catchup, then writers.
    mirror_databases(&a, &b).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers_on_primary([a.api(), b.api()], 3, "tls", stop.clone());

    // C joins as an async and is rejected: it is told so and never receives journal.
    let said = join(&c, &a, Some("dr")).await;
    assert!(said.contains("waits for authorization"), "{said}");
    a.ok("/api/mirror/reject", json!({"member_name": C})).await;
    let pending = a.get("/api/mirror/pending").await.1;
    assert_eq!(pending["pending"][0]["rejected"], true, "{pending:#}");
    let c_view = c
        .wait_mirror(15, "told it was rejected", |v| {
            v["link_error"]
                .as_str()
                .is_some_and(|e| e.contains("rejected"))
        })
        .await;
    assert!(
        c_view["journal_position"].is_null() || c_view["journal_position"] == 0,
        "{c_view:#}"
    );
    assert!(
        TestMember::member_row(&a.get("/api/mirror").await.1, C).is_null(),
        "a rejected member is not a member"
    );

    // Strangers on A's superserver port.
    let mirror_id = {
        let config: Value = serde_json::from_slice(
            &std::fs::read(a.data_dir().join("mirrorlab.cpf")).expect("A's configuration"),
        )
        .unwrap();
        config["mirror"]["membership"]["mirror"]["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let stranger = Arc::new(Identity::ephemeral("stranger").unwrap());
    let claiming_b = |certificate: &str| MemberInfo {
        name: B.into(),
        kind: MemberKind::Failover,
        superserver_address: "127.0.0.9".into(),
        mirror_private_address: "127.0.0.9".into(),
        agent_address: "127.0.0.9".into(),
        agent_port: 2188,
        instance_guid: "stranger".into(),
        certificate: Some(certificate.into()),
    };
    let superserver = a.superserver.clone();
    let attempts = [
        // Plain TCP, with B's name and certificate.
        (
            None,
            hello(&mirror_id, claiming_b(&b_certificate)),
            "requires SSL/TLS",
        ),
        // TLS with its own certificate, claiming to be B.
        (
            Some(&stranger),
            hello(&mirror_id, claiming_b(stranger.fingerprint())),
            "not the one authorized",
        ),
        // TLS, claiming B's certificate while showing its own.
        (
            Some(&stranger),
            hello(&mirror_id, claiming_b(&b_certificate)),
            "other than the one it shows",
        ),
        // Older journal, over TLS and plain.
        (
            Some(&stranger),
            Control::Fetch {
                mirror_id: mirror_id.clone(),
                from: 1,
                to: 1000,
            },
            "requires SSL/TLS",
        ),
        (
            None,
            Control::Fetch {
                mirror_id: mirror_id.clone(),
                from: 1,
                to: 1000,
            },
            "requires SSL/TLS",
        ),
    ];
    for (tls, first, refusal) in attempts {
        let (superserver, expected, shown) =
            (superserver.clone(), a_certificate.clone(), tls.cloned());
        let asked = first.clone();
        // The blocking client runs where blocking is allowed.
        let answer = tokio::task::spawn_blocking(move || {
            let tls = shown.as_ref().map(|i| (&**i, expected.as_str()));
            superserver_answer(&superserver, tls, &asked)
        })
        .await
        .unwrap();
        match answer {
            Ok(reason) => assert!(reason.contains(refusal), "{first:?}: {reason}"),
            Err(other) => panic!("{first:?}: {other}"),
        }
    }

    // Strangers on A's agent port: no stop, no forced take-over, no journal, plain or TLS.
    let pid = a.status().await.pid;
    let requests = [
        AgentRequest::Stop,
        AgentRequest::ForceDown {
            mirror_name: "MIRRORSET".into(),
            member: "MIRRORA/IRIS".into(),
            epoch: u64::MAX,
        },
        AgentRequest::ConfirmDown { timeout_ms: 100 },
        AgentRequest::JournalTail {
            mirror_name: "MIRRORSET".into(),
            mirror_id: mirror_id.clone(),
            from: 1,
        },
    ];
    for request in requests {
        for tls in [None, Some((stranger.clone(), None))] {
            let target = Target {
                address: a.agent.clone(),
                tls: tls.clone(),
            };
            let (reply, _) = agent::call_to(&target, request.clone()).await.unwrap();
            assert!(!reply.ok, "{request:?} over {}: {reply:?}", tls.is_some());
            assert!(reply.journal.is_none());
            assert!(
                reply.message.contains("SSL/TLS") || reply.message.contains("not one of"),
                "{}",
                reply.message
            );
        }
    }
    // A's agent, asked over TLS by a stranger, shows A's certificate.
    let target = Target {
        address: a.agent.clone(),
        tls: Some((stranger.clone(), None)),
    };
    let (reply, shown) = agent::call_to(&target, AgentRequest::Status).await.unwrap();
    assert!(reply.ok);
    assert_eq!(shown.as_deref(), Some(a_certificate.as_str()));
    // A client that expects A's certificate refuses anyone else's (B's agent here).
    let impostor = Target {
        address: b.agent.clone(),
        tls: Some((stranger.clone(), Some(a_certificate.clone()))),
    };
    let err = agent::call_to(&impostor, AgentRequest::Status)
        .await
        .expect_err("B's agent does not pass for A");
    assert!(err.to_string().contains("not the authorized one"), "{err}");

    // Nothing changed: A is the same running primary, B its active backup, and the writers'
    // acknowledged rows are all on A and identical on B.
    assert_eq!(a.status().await.pid, pid, "A's instance was not restarted");
    let view = a.get("/api/mirror").await.1;
    assert_eq!(view["status"], "Primary", "{view:#}");
    assert_eq!(
        TestMember::member_row(&view, B)["journal_transfer"],
        "Active",
        "{view:#}"
    );
    let b_view = b.get("/api/mirror").await.1;
    assert_eq!(b_view["status"], "Backup", "{b_view:#}");
    created(
        &a,
        "/api/apps/companies",
        json!({"name": "After the strangers"}),
    )
    .await;
    finish_writers(&stop, writers, &a, &b).await;
    assert!(
        names(&b.sql("COMPANY", "SELECT name FROM Company").await)
            .contains(&"After the strangers".to_string())
    );
    assert!(
        names(&c.sql("COMPANY", "SELECT name FROM Company").await).is_empty(),
        "the rejected member has none of the mirror's rows"
    );

    // The portal's Edit Mirror lists C, rejected, with its certificate; a form without its
    // CSRF token does nothing, and Authorize there lifts the rejection: C connects.
    let c_certificate = c.get("/api/mirror").await.1["certificate"]
        .as_str()
        .unwrap()
        .to_string();
    // The Join page of a TLS mirror lists the members' fingerprints, A's among them.
    let joining = Portal::login(&c.url).await;
    let join_page = joining
        .post_page(
            "/portal/mirror/join/next",
            &[
                ("mirror_name", "MIRRORSET"),
                ("agent_address", &format!("127.0.0.1:{}", a.agent_port())),
                ("agent_port", ""),
                ("instance_name", "IRIS"),
            ],
        )
        .await;
    assert!(join_page.contains("member-certificates"), "{join_page}");
    assert!(join_page.contains(&a_certificate), "{join_page}");
    let portal = Portal::login(&a.url).await;
    let page = portal.get("/portal/mirror/edit").await;
    assert!(page.contains("Pending New Members"), "{page}");
    assert!(page.contains(C) && page.contains(&c_certificate), "{page}");
    assert!(page.contains("Rejected"), "{page}");
    let forged = portal
        .post("/portal/mirror/authorize", &[("member_name", C)])
        .await;
    assert_eq!(forged, 409, "a form without its CSRF token is refused");
    assert_eq!(pending_names(&a.get("/api/mirror/pending").await.1), [C]);
    let csrf = csrf_of(&page);
    let authorized = portal
        .post(
            "/portal/mirror/authorize",
            &[("member_name", C), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(authorized, 303);
    a.wait_mirror(20, "with C connected", |v| {
        TestMember::member_row(v, C)["status"] == "Connected"
    })
    .await;
    c.wait_mirror(10, "connected", |v| v["status"] == "Connected")
        .await;

    // Failover over TLS: A's instance dies; B asks A's agent (over TLS) and takes over. A,
    // started again, asks B's agent who is primary (over TLS) and follows B as its backup.
    a.kill_instance().await;
    b.wait_mirror(20, "primary after the takeover", |v| {
        v["status"] == "Primary"
    })
    .await;
    created(
        &b,
        "/api/apps/companies",
        json!({"name": "After the failover"}),
    )
    .await;
    a.start_instance().await;
    a.wait_ready().await;
    a.wait_mirror(30, "the backup of B", |v| v["status"] == "Backup")
        .await;
    b.wait_mirror(15, "with A active", |v| {
        TestMember::member_row(v, "MIRRORA/IRIS")["journal_transfer"] == "Active"
    })
    .await;
    assert_identical(&b, &a).await;
    assert!(
        names(&a.sql("COMPANY", "SELECT name FROM Company").await)
            .contains(&"After the failover".to_string())
    );

    // A stranger asking under name after name fills Pending New Members only up to its bound
    // (on B, the primary now); the rest are refused unrecorded.
    let (superserver, expected) = (b.superserver.clone(), b_certificate.clone());
    let answers = tokio::task::spawn_blocking(move || {
        (0..MAX_PENDING + 3)
            .map(|i| {
                let claim = MemberInfo {
                    name: format!("STRANGER{i}/IRIS"),
                    kind: MemberKind::Dr,
                    ..claiming_b(stranger.fingerprint())
                };
                superserver_answer(
                    &superserver,
                    Some((&stranger, expected.as_str())),
                    &hello(&mirror_id, claim),
                )
                .unwrap()
            })
            .collect::<Vec<String>>()
    })
    .await
    .unwrap();
    assert!(
        answers[..MAX_PENDING]
            .iter()
            .all(|a| a.contains("awaiting authorization")),
        "{answers:?}"
    );
    assert!(
        answers[MAX_PENDING..]
            .iter()
            .all(|a| a.contains("already wait")),
        "{answers:?}"
    );
    assert_eq!(
        pending_names(&b.get("/api/mirror/pending").await.1).len(),
        MAX_PENDING
    );
}
