//! A mirror created with Require SSL/TLS, with real member processes on loopback: a member that
//! joins waits in Pending New Members until the primary authorizes it, then replicates over
//! mutual TLS; a member the primary rejects never receives journal; and a stranger — plain or
//! with a certificate of its own, even one claiming a member's name — can neither pull journal
//! nor stop or force down the primary through its agent. Writers run throughout, and the
//! mirror's invariants are checked after the strangers: A stayed the only primary, every
//! acknowledged write is on A, and A and B hold the same rows. Last, a failover over TLS: A's
//! instance is killed, B takes over, A comes back as B's backup, and both converge.
//!
//! Two more tests attack Pending New Members itself, with strangers speaking from other
//! loopback addresses (127.0.0.2, 127.0.0.3, …): a stranger asking under a waiting member's
//! name just before Authorize must not get the journal (a request is a name and a
//! certificate, and Authorize names both), and strangers asking under name after name must not
//! shut new members out for good (places per address, Reject and Remove clear the list, and a
//! configured member is never turned away).

mod common;

use mirrorlab::journal::{Epoch, JournalPos, StreamId};
use std::io::{BufReader, BufWriter, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use common::TestMember;
use common::pair::*;
use mirrorlab::agent::{self, AgentRequest, Target};
use mirrorlab::config::mirror::{MemberInfo, MemberKind, MemberName};
use mirrorlab::mirror::pending::{MAX_PENDING, MAX_PENDING_PER_ADDRESS};
use mirrorlab::mirror::protocol::{Control, Message, read_message, write_control};
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
/// `expected`, or plain) and returns the answer: the refusal's reason (after `awaiting: ` when
/// it says the member waits for authorization), or a description of anything else that came
/// back.
fn superserver_answer(
    address: &str,
    tls: Option<(&Identity, &str)>,
    first: &Control,
) -> Result<String, String> {
    superserver_answer_from(None, address, tls, first)
}

/// [`superserver_answer`] from the source address `from` (Linux routes all of 127/8 to
/// loopback, so a test can speak from 127.0.0.2, 127.0.0.3, … as if from other hosts).
fn superserver_answer_from(
    from: Option<IpAddr>,
    address: &str,
    tls: Option<(&Identity, &str)>,
    first: &Control,
) -> Result<String, String> {
    let tcp = connect_from(from, address).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let channel = match tls {
        None => Channel::Plain(tcp),
        Some((identity, expected)) => {
            mirrorlab::tls::connect_blocking(
                tcp,
                identity,
                Some(expected),
                mirrorlab::tls::HANDSHAKE_TIMEOUT,
            )
            .map_err(|e| e.to_string())?
            .0
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
            Control::Refused {
                reason,
                awaiting_authorization: true,
            } => Ok(format!("awaiting: {reason}")),
            Control::Refused { reason, .. } => Ok(reason),
            other => Err(format!("answered {other:?}")),
        },
        Ok(Some(Message::Frames { first, last, .. })) => {
            Err(format!("sent journal records {first}..={last}"))
        }
        Ok(other) => Err(format!("answered {other:?}")),
        Err(err) => Err(format!("failed: {err}")),
    }
}

/// A blocking TCP connection to `address`, from the source address `from` when given. Runs on
/// a blocking thread of the test's runtime.
fn connect_from(from: Option<IpAddr>, address: &str) -> std::io::Result<TcpStream> {
    let Some(from) = from else {
        return TcpStream::connect(address);
    };
    let to: SocketAddr = address.parse().expect("a socket address");
    let stream = tokio::runtime::Handle::current().block_on(async {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(from, 0))?;
        socket.connect(to).await?.into_std()
    })?;
    stream.set_nonblocking(false)?;
    Ok(stream)
}

fn hello(mirror_id: StreamId, member: MemberInfo) -> Control {
    Control::Hello {
        mirror_name: "MIRRORSET".into(),
        mirror_id,
        member,
        journal_first: JournalPos(0),
        journal_end: JournalPos(0),
        last_epoch: Epoch(0),
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
    assert_eq!(pending["pending"][0]["another_certificate"], false);
    // A write on A is acknowledged meanwhile (there is no active backup to wait for).
    created(&a, "/api/apps/companies", json!({"name": "Before B"})).await;
    // Pending members are a primary's business, and a name that waits for nothing is an error.
    let b_request = json!({"member_name": B, "certificate": b_certificate});
    b.refused("/api/mirror/authorize", b_request.clone(), 409, "primary")
        .await;
    a.refused(
        "/api/mirror/authorize",
        json!({"member_name": "NOBODY/IRIS", "certificate": b_certificate}),
        404,
        "no member named",
    )
    .await;

    a.ok("/api/mirror/authorize", b_request.clone()).await;
    a.wait_mirror(15, "with an active backup", |v| {
        TestMember::member_row(v, B)["journal_transfer"] == "Active"
    })
    .await;
    b.wait_mirror(15, "an active backup", |v| v["status"] == "Backup")
        .await;
    assert!(pending_names(&a.get("/api/mirror/pending").await.1).is_empty());
    // A second Authorize does no harm.
    a.refused("/api/mirror/authorize", b_request, 404, "no member named")
        .await;

    // The walk-through over TLS, the copies fetched over the data channel (Copy from Primary:
    // only for a member's certificate), then writers.
    a.ok("/api/mirror/add-databases", json!({"databases": DATABASES}))
        .await;
    b.wait_mirror(10, "aware of the mirrored databases", |v| {
        v["missing_databases"].as_array().map(|m| m.len()) == Some(DATABASES.len())
    })
    .await;
    for db in DATABASES {
        b.ok(&format!("/api/databases/{db}/copy"), json!({})).await;
    }
    for db in DATABASES {
        wait_dejournaling(&b, db).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers_on_primary([a.api(), b.api()], 3, "tls", stop.clone());

    // C joins as an async and is rejected: it is told so and never receives journal. Its
    // certificate leaves the list of requests for the list of rejected ones.
    let said = join(&c, &a, Some("dr")).await;
    assert!(said.contains("waits for authorization"), "{said}");
    let c_certificate = certificate_of(&c).await;
    a.ok(
        "/api/mirror/reject",
        json!({"member_name": C, "certificate": c_certificate}),
    )
    .await;
    let pending = a.get("/api/mirror/pending").await.1;
    assert!(pending_names(&pending).is_empty(), "{pending:#}");
    assert_eq!(
        pending_entries(&pending, "rejected"),
        [(C.to_string(), c_certificate.clone())]
    );
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
    // Nor does it get a copy of a database: the primary refuses its certificate.
    c.ok("/api/databases/COMPANY/copy", json!({})).await;
    let refused = c
        .wait_mirror(15, "its copy refused", |v| {
            copy_of(v, "COMPANY")["state"] == "failed"
        })
        .await;
    let refused = copy_of(&refused, "COMPANY");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("go only to its members' certificates"),
        "{refused}"
    );
    assert_eq!(refused["bytes"], 0, "{refused}");

    // Strangers on A's superserver port.
    let mirror_id = mirror_id_of(&a);
    let stranger = Arc::new(Identity::ephemeral("stranger").unwrap());
    let claiming_b = |certificate: &str| MemberInfo {
        name: MemberName::new(B).unwrap(),
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
            hello(mirror_id, claiming_b(&b_certificate)),
            "requires SSL/TLS",
        ),
        // TLS with its own certificate, claiming to be B.
        (
            Some(&stranger),
            hello(mirror_id, claiming_b(stranger.fingerprint())),
            "not the one authorized",
        ),
        // TLS, claiming B's certificate while showing its own.
        (
            Some(&stranger),
            hello(mirror_id, claiming_b(&b_certificate)),
            "other than the one it shows",
        ),
        // Older journal, over TLS and plain.
        (
            Some(&stranger),
            Control::Fetch {
                mirror_id,
                from: JournalPos(1),
                to: JournalPos(1000),
            },
            "requires SSL/TLS",
        ),
        (
            None,
            Control::Fetch {
                mirror_id,
                from: JournalPos(1),
                to: JournalPos(1000),
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
            member: MemberName::new("MIRRORA/IRIS").unwrap(),
            epoch: Epoch(u64::MAX),
        },
        AgentRequest::ConfirmDown { timeout_ms: 100 },
        AgentRequest::JournalTail {
            mirror_name: "MIRRORSET".into(),
            mirror_id,
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

    // The portal's Edit Mirror lists C's certificate as rejected; a form without its CSRF
    // token does nothing, and Authorize there lifts the rejection: C connects.
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
    assert!(page.contains("Rejected Certificates"), "{page}");
    assert!(page.contains(C) && page.contains(&c_certificate), "{page}");
    let c_form = [("member_name", C), ("certificate", &c_certificate)];
    let forged = portal.post("/portal/mirror/authorize", &c_form).await;
    assert_eq!(forged, 409, "a form without its CSRF token is refused");
    assert_eq!(
        pending_entries(&a.get("/api/mirror/pending").await.1, "rejected"),
        [(C.to_string(), c_certificate.clone())]
    );
    let csrf = csrf_of(&page);
    let authorized = portal
        .post(
            "/portal/mirror/authorize",
            &[c_form[0], c_form[1], ("csrf", &csrf)],
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
}

/// Enables the mirror service on `a` and creates MIRRORSET with Require SSL/TLS; returns A's
/// certificate fingerprint.
async fn create_tls_mirror(a: &TestMember) -> String {
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
    view["certificate"].as_str().unwrap().to_string()
}

/// The mirror's id, from the primary's configuration file (what a hello must name).
fn mirror_id_of(a: &TestMember) -> StreamId {
    let config: Value = serde_json::from_slice(
        &std::fs::read(a.data_dir().join("mirrorlab.cpf")).expect("A's configuration"),
    )
    .unwrap();
    config["mirror"]["membership"]["mirror"]["id"]
        .as_str()
        .unwrap()
        .parse()
        .expect("a mirror id")
}

async fn certificate_of(member: &TestMember) -> String {
    member.get("/api/mirror").await.1["certificate"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The member's own key and certificate, read from its data directory: what a test uses to
/// speak as that member.
fn identity_of(member: &TestMember) -> Arc<Identity> {
    let tls = member.data_dir().join("tls");
    Arc::new(
        Identity::from_files(
            &tls.join("CertificateFile.pem"),
            &tls.join("PrivateKeyFile.pem"),
        )
        .unwrap(),
    )
}

/// A member description claiming `name`, with `certificate`, from a host that is not a member.
fn claiming(name: &str, kind: MemberKind, certificate: &str) -> MemberInfo {
    MemberInfo {
        name: MemberName::new(name).unwrap(),
        kind,
        superserver_address: "127.0.0.9".into(),
        mirror_private_address: "127.0.0.9".into(),
        agent_address: "127.0.0.9".into(),
        agent_port: 2188,
        instance_guid: "stranger".into(),
        certificate: Some(certificate.into()),
    }
}

/// Says `first` to `primary`'s superserver over TLS as `identity`, from the source address
/// `from` (None: 127.0.0.1); returns the refusal. Anything else (a welcome, journal) fails
/// the test: these callers must never be served.
async fn refusal(
    primary: &TestMember,
    from: Option<&str>,
    identity: &Arc<Identity>,
    expected: &str,
    first: Control,
) -> String {
    let (address, identity, expected) = (
        primary.superserver.clone(),
        identity.clone(),
        expected.to_string(),
    );
    let from: Option<IpAddr> = from.map(|f| f.parse().unwrap());
    let asked = format!("{first:?}");
    tokio::task::spawn_blocking(move || {
        superserver_answer_from(from, &address, Some((&identity, &expected)), &first)
    })
    .await
    .unwrap()
    .unwrap_or_else(|other| panic!("{asked}: {other}"))
}

/// The pending entries of `pending` as (member name, certificate) pairs, in order.
fn pending_entries(pending: &Value, list: &str) -> Vec<(String, String)> {
    pending[list]
        .as_array()
        .unwrap_or_else(|| panic!("no {list:?} list in {pending:#}"))
        .iter()
        .map(|p| {
            (
                p["member_name"].as_str().unwrap().to_string(),
                p["certificate"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// A waiting member could be hijacked: a stranger's hello under its name replaced the
/// certificate waiting there (and cleared a Reject), and Authorize, which went by name, then
/// admitted the stranger. Now a request is its name and its certificate: a second certificate
/// under a waiting name is listed apart and flagged, Authorize names the certificate the
/// administrator saw, and a rejected certificate stays rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn authorize_admits_only_the_certificate_the_administrator_saw() {
    let a = TestMember::start_with("mirrora", &[]).await;
    let b = TestMember::start_with("mirrorb", &[]).await;
    let c = TestMember::start_with("mirrorc", &[]).await;
    let a_certificate = create_tls_mirror(&a).await;
    let mirror_id = mirror_id_of(&a);

    // B asks to join and waits.
    let said = join(&b, &a, None).await;
    assert!(said.contains("waits for authorization"), "{said}");
    let b_certificate = certificate_of(&b).await;

    // Just before the administrator clicks Authorize, a stranger asks under B's name with a
    // certificate of its own.
    let stranger = Arc::new(Identity::ephemeral("stranger").unwrap());
    let as_b = claiming(B, MemberKind::Failover, stranger.fingerprint());
    let answer = refusal(
        &a,
        Some("127.0.0.3"),
        &stranger,
        &a_certificate,
        hello(mirror_id, as_b.clone()),
    )
    .await;
    assert!(answer.starts_with("awaiting: "), "{answer}");

    // Both requests are listed: B's as it was, the stranger's apart and flagged.
    let pending = a.get("/api/mirror/pending").await.1;
    assert_eq!(
        pending_entries(&pending, "pending"),
        [
            (B.to_string(), b_certificate.clone()),
            (B.to_string(), stranger.fingerprint().to_string())
        ],
        "{pending:#}"
    );
    assert_eq!(pending["pending"][0]["another_certificate"], false);
    assert_eq!(pending["pending"][1]["another_certificate"], true);
    assert_eq!(pending["pending"][1]["asked_from"], "127.0.0.3");
    let portal = Portal::login(&a.url).await;
    let page = portal.get("/portal/mirror/edit").await;
    assert!(
        page.contains(&b_certificate) && page.contains(stranger.fingerprint()),
        "{page}"
    );
    assert!(
        page.contains("another certificate already asked under this name"),
        "{page}"
    );

    // Authorize says which certificate: without one, or with one nobody asked with under B's
    // name, nothing is admitted.
    a.refused(
        "/api/mirror/authorize",
        json!({"member_name": B}),
        400,
        "certificate",
    )
    .await;
    a.refused(
        "/api/mirror/authorize",
        json!({"member_name": B, "certificate": a_certificate}),
        404,
        "no member named",
    )
    .await;
    // The page's Authorize for B's own request admits B.
    let authorized = portal
        .post(
            "/portal/mirror/authorize",
            &[
                ("member_name", B),
                ("certificate", &b_certificate),
                ("csrf", &csrf_of(&page)),
            ],
        )
        .await;
    assert_eq!(authorized, 303);
    a.wait_mirror(15, "with B active", |v| {
        TestMember::member_row(v, B)["journal_transfer"] == "Active"
    })
    .await;
    b.wait_mirror(15, "an active backup", |v| v["status"] == "Backup")
        .await;
    // The stranger's request under B's name went with it, and the stranger gets nothing.
    assert!(pending_names(&a.get("/api/mirror/pending").await.1).is_empty());
    let answer = refusal(
        &a,
        Some("127.0.0.3"),
        &stranger,
        &a_certificate,
        hello(mirror_id, as_b),
    )
    .await;
    assert!(answer.contains("not the one authorized"), "{answer}");

    // A Reject stays: C asks and is rejected; a stranger asking under C's name afterwards is
    // listed apart, flagged, and does not lift the rejection of C's certificate.
    let said = join(&c, &a, Some("dr")).await;
    assert!(said.contains("waits for authorization"), "{said}");
    let c_certificate = certificate_of(&c).await;
    a.ok(
        "/api/mirror/reject",
        json!({"member_name": C, "certificate": c_certificate}),
    )
    .await;
    c.wait_mirror(15, "told it was rejected", |v| {
        v["link_error"]
            .as_str()
            .is_some_and(|e| e.contains("rejected"))
    })
    .await;
    let as_c = claiming(C, MemberKind::Dr, stranger.fingerprint());
    let answer = refusal(
        &a,
        Some("127.0.0.3"),
        &stranger,
        &a_certificate,
        hello(mirror_id, as_c),
    )
    .await;
    assert!(answer.starts_with("awaiting: "), "{answer}");
    let pending = a.get("/api/mirror/pending").await.1;
    assert_eq!(
        pending_entries(&pending, "pending"),
        [(C.to_string(), stranger.fingerprint().to_string())],
        "{pending:#}"
    );
    assert_eq!(pending["pending"][0]["another_certificate"], true);
    assert_eq!(
        pending_entries(&pending, "rejected"),
        [(C.to_string(), c_certificate.clone())],
        "{pending:#}"
    );
    // C itself, asking again with its own key, is still refused as rejected.
    let c_identity = identity_of(&c);
    let c_info = MemberInfo {
        certificate: Some(c_certificate.clone()),
        ..claiming(C, MemberKind::Dr, &c_certificate)
    };
    let answer = refusal(
        &a,
        None,
        &c_identity,
        &a_certificate,
        hello(mirror_id, c_info),
    )
    .await;
    assert!(answer.contains("rejected"), "{answer}");
    assert!(TestMember::member_row(&a.get("/api/mirror").await.1, C).is_null());
    // B was never disturbed.
    let view = a.get("/api/mirror").await.1;
    assert_eq!(
        TestMember::member_row(&view, B)["journal_transfer"],
        "Active",
        "{view:#}"
    );
}

/// Pending New Members could be filled for good: sixteen junk hellos took every place, Reject
/// kept them, nothing removed them, and every real member was refused. Now one address gets
/// few places, Reject clears a certificate's requests (and its later hellos are refused
/// unlisted), Remove clears an entry, and a configured member is never turned away by a full
/// list. (Expiry is checked in `src/mirror/pending.rs`: hours cannot pass in a test.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn strangers_cannot_fill_pending_new_members_for_good() {
    let a = TestMember::start_with("mirrora", &[]).await;
    let b = TestMember::start_with("mirrorb", &[]).await;
    let c = TestMember::start_with("mirrorc", &[]).await;
    let a_certificate = create_tls_mirror(&a).await;
    let mirror_id = mirror_id_of(&a);
    join(&b, &a, None).await;
    let b_certificate = certificate_of(&b).await;
    a.ok(
        "/api/mirror/authorize",
        json!({"member_name": B, "certificate": b_certificate}),
    )
    .await;
    a.wait_mirror(15, "with B active", |v| {
        TestMember::member_row(v, B)["journal_transfer"] == "Active"
    })
    .await;
    mirror_databases(&a, &b).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers_on_primary([a.api(), b.api()], 3, "pending", stop.clone());

    // Two strangers ask under name after name, from four addresses.
    let strangers = [
        Arc::new(Identity::ephemeral("stranger-1").unwrap()),
        Arc::new(Identity::ephemeral("stranger-2").unwrap()),
    ];
    let junk = |stranger: &Arc<Identity>, i: usize| {
        hello(
            mirror_id,
            claiming(
                &format!("JUNK{i}/IRIS"),
                MemberKind::Dr,
                stranger.fingerprint(),
            ),
        )
    };
    // Each address gets its share, the first half of them as the first stranger, the other
    // half as the second; one request more from an address is refused.
    let addresses = MAX_PENDING / MAX_PENDING_PER_ADDRESS;
    let mut i = 0;
    for k in 0..addresses {
        let address = format!("127.0.0.{}", 2 + k);
        let stranger = &strangers[k * 2 / addresses];
        for _ in 0..MAX_PENDING_PER_ADDRESS {
            let answer = refusal(
                &a,
                Some(&address),
                stranger,
                &a_certificate,
                junk(stranger, i),
            )
            .await;
            assert!(answer.starts_with("awaiting: "), "{answer}");
            i += 1;
        }
        let answer = refusal(
            &a,
            Some(&address),
            stranger,
            &a_certificate,
            junk(stranger, 99),
        )
        .await;
        assert!(answer.contains(&format!("from {address}")), "{answer}");
    }
    let pending = a.get("/api/mirror/pending").await.1;
    assert_eq!(pending_names(&pending).len(), MAX_PENDING, "{pending:#}");
    // The list is full: a new name from yet another address is refused unlisted, and so is C.
    let answer = refusal(
        &a,
        Some("127.0.0.100"),
        &strangers[1],
        &a_certificate,
        junk(&strangers[1], 100),
    )
    .await;
    assert!(answer.contains("already wait"), "{answer}");
    c.ok("/api/mirror/service", json!({"enabled": true})).await;
    let c_join = json!({
        "mirror_name": "MIRRORSET",
        "agent_address": format!("127.0.0.1:{}", a.agent_port()),
        "instance_name": "IRIS",
        "superserver_address": c.superserver,
        "agent_address_local": "127.0.0.1",
        "agent_port_local": c.agent_port(),
        "async_type": "dr",
    });
    c.refused(
        "/api/mirror/join-async",
        c_join.clone(),
        409,
        "already wait",
    )
    .await;

    // A configured member is never turned away by a full list: B's instance is killed and
    // started again (a plain Stop is not taken in a TLS mirror), and B becomes the active
    // backup again.
    b.kill_instance().await;
    b.start_instance().await;
    b.wait_ready().await;
    a.wait_mirror(30, "with B active again", |v| {
        TestMember::member_row(v, B)["journal_transfer"] == "Active"
    })
    .await;

    // Reject of one junk request rejects its certificate: every request showing it leaves the
    // list, and its later hellos, under any name and from anywhere, are refused unlisted.
    let first = strangers[0].fingerprint().to_string();
    a.ok(
        "/api/mirror/reject",
        json!({"member_name": "JUNK0/IRIS", "certificate": first}),
    )
    .await;
    let pending = a.get("/api/mirror/pending").await.1;
    assert_eq!(
        pending_names(&pending).len(),
        MAX_PENDING / 2,
        "{pending:#}"
    );
    assert_eq!(
        pending_entries(&pending, "rejected"),
        [("JUNK0/IRIS".to_string(), first.clone())]
    );
    let answer = refusal(
        &a,
        Some("127.0.0.101"),
        &strangers[0],
        &a_certificate,
        junk(&strangers[0], 101),
    )
    .await;
    assert!(answer.contains("rejected"), "{answer}");
    assert_eq!(
        pending_names(&a.get("/api/mirror/pending").await.1).len(),
        MAX_PENDING / 2
    );
    // Remove clears the other stranger's requests one by one.
    for (name, certificate) in pending_entries(&pending, "pending") {
        a.ok(
            "/api/mirror/remove-pending",
            json!({"member_name": name, "certificate": certificate}),
        )
        .await;
    }
    assert!(pending_names(&a.get("/api/mirror/pending").await.1).is_empty());

    // C can ask now, and is admitted.
    let said = c.ok("/api/mirror/join-async", c_join).await;
    assert!(
        said["message"]
            .as_str()
            .unwrap()
            .contains("waits for authorization"),
        "{said}"
    );
    let c_certificate = certificate_of(&c).await;
    a.ok(
        "/api/mirror/authorize",
        json!({"member_name": C, "certificate": c_certificate}),
    )
    .await;
    a.wait_mirror(20, "with C connected", |v| {
        TestMember::member_row(v, C)["status"] == "Connected"
    })
    .await;

    // Remove on a rejected certificate forgets the rejection: its next hello is listed again.
    a.ok(
        "/api/mirror/remove-pending",
        json!({"member_name": "JUNK0/IRIS", "certificate": first}),
    )
    .await;
    let answer = refusal(
        &a,
        Some("127.0.0.2"),
        &strangers[0],
        &a_certificate,
        junk(&strangers[0], 0),
    )
    .await;
    assert!(answer.starts_with("awaiting: "), "{answer}");
    let pending = a.get("/api/mirror/pending").await.1;
    assert_eq!(pending_names(&pending), ["JUNK0/IRIS"], "{pending:#}");

    finish_writers(&stop, writers, &a, &b).await;
}
