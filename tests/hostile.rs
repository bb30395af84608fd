//! Hostile bytes on the mirror's own ports. A mirrored pair with an arbiter runs with writers;
//! meanwhile connections to both superserver ports, both agent ports and the arbiter send
//! random bytes, a length prefix of 4 GiB, a body that is not JSON, JSON of the wrong shape,
//! and half a frame followed by silence. Each such connection must be closed by the member
//! (without an answer that acts on it), and afterwards nothing has changed: A is still the
//! primary, B its active backup under the arbiter's control, every acknowledged write is on A,
//! no two members accepted writes at once, and both hold the same rows. The same holds after a
//! flood of idle connections to every port, and after strangers at another address hold as
//! many superserver connections as they can, trickling half a message, while the backup
//! restarts: it must be active again at once, and no such connection outlives the deadline for
//! a first message.

mod common;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use common::pair::*;
use common::{Rng, TestArbiter, TestMember};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What one hostile connection sends.
fn payload(kind: usize, rng: &mut Rng) -> Vec<u8> {
    match kind {
        // Random bytes, of a random length.
        0 => (0..1 + rng.below(4096))
            .map(|_| rng.below(256) as u8)
            .collect(),
        // A length prefix of 4 GiB, then a little.
        1 => [0xff, 0xff, 0xff, 0xff, b'{', b'"'].to_vec(),
        // A well-formed frame whose body is not JSON.
        2 => frame(b"\x00\x01not json at all\xfe"),
        // JSON of the wrong shape.
        3 => frame(br#"{"op":"take_over","epoch":18446744073709551615,"member":"../../etc"}"#),
        // Half a frame, then nothing.
        _ => [0, 0, 0, 100, b'{'].to_vec(),
    }
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut bytes = (body.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(body);
    bytes
}

/// Sends `bytes` to `address` and waits until the other side closes the connection; returns
/// what it answered before closing.
async fn send_and_wait_for_close(
    name: &str,
    address: &str,
    bytes: &[u8],
    within: Duration,
) -> Vec<u8> {
    let mut stream = TcpStream::connect(address).await.unwrap();
    // The peer may close while we still write: that is a refusal too.
    let _ = stream.write_all(bytes).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "{name} ({address}) kept a connection open {within:?} after {} hostile bytes ({:?}…)",
        bytes.len(),
        &bytes[..bytes.len().min(8)]
    );
    answer
}

/// An arbiter, and A primary with B its active backup under the arbiter's control, with three
/// writers on whichever accepts writes.
async fn pair_with_writers(
    prefix: &str,
) -> (
    TestArbiter,
    TestMember,
    TestMember,
    Arc<AtomicBool>,
    Writers,
) {
    let arbiter = TestArbiter::start().await;
    let (a, b, _) = pair_full(2000, &[], false, Some(&arbiter.address)).await;
    mirror_databases(&a, &b).await;
    wait_arbiter_controlled(&a, &b).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers_on_primary([a.api(), b.api()], 3, prefix, stop.clone());
    (arbiter, a, b, stop, writers)
}

/// A is still the primary, B its active backup under the arbiter's control; then the writers
/// stop and the invariants are checked (every acknowledged write kept, one writer at a time,
/// both members identical).
async fn nothing_changed(a: &TestMember, b: &TestMember, stop: &AtomicBool, writers: Writers) {
    let view = a.get("/api/mirror").await.1;
    assert_eq!(view["status"], "Primary", "{view:#}");
    assert_eq!(
        TestMember::member_row(&view, "MIRRORB/IRIS")["journal_transfer"],
        "Active",
        "{view:#}"
    );
    wait_arbiter_controlled(a, b).await;
    finish_writers(stop, writers, a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_bytes_on_every_port_are_refused_and_the_mirror_keeps_working() {
    let (arbiter, a, b, stop, writers) = pair_with_writers("hostile").await;

    let seed = Rng::from_env_or_clock().below(u64::MAX);
    let ports = [
        ("A's superserver", a.superserver.clone()),
        ("B's superserver", b.superserver.clone()),
        ("A's agent", a.agent.clone()),
        ("B's agent", b.agent.clone()),
        ("the arbiter", arbiter.address.clone()),
    ];
    // The ports are attacked at once; each gets every kind, three times but the slow last one
    // (half a frame waits for the member's idle timeout).
    let started = Instant::now();
    let attacks = ports.into_iter().enumerate().map(|(i, (name, address))| {
        tokio::spawn(async move {
            let mut rng = Rng::seeded(seed.wrapping_add(i as u64));
            for kind in 0..5 {
                for _ in 0..if kind == 4 { 1 } else { 3 } {
                    let bytes = payload(kind, &mut rng);
                    let answer =
                        send_and_wait_for_close(name, &address, &bytes, Duration::from_secs(15))
                            .await;
                    // An answer, if any, is a refusal.
                    let text = String::from_utf8_lossy(&answer);
                    assert!(
                        !text.contains("\"ok\":true"),
                        "{name} answered hostile bytes with {text}"
                    );
                }
            }
        })
    });
    for attack in attacks.collect::<Vec<_>>() {
        attack.await.unwrap();
    }
    eprintln!("hostile connections done in {:?}", started.elapsed());

    tokio::time::sleep(Duration::from_millis(300)).await;
    nothing_changed(&a, &b, &stop, writers).await;
}

/// Opens `count` connections to `address` that send nothing, and returns them with how many the
/// other side closed within two seconds.
async fn idle_connections(address: &str, count: usize) -> (Vec<TcpStream>, usize) {
    let mut streams = Vec::with_capacity(count);
    for _ in 0..count {
        streams.push(TcpStream::connect(address).await.unwrap());
    }
    let checks = streams.into_iter().map(|mut stream| {
        tokio::spawn(async move {
            let mut byte = [0u8; 1];
            let closed = matches!(
                tokio::time::timeout(Duration::from_secs(2), stream.read(&mut byte)).await,
                Ok(Ok(0) | Err(_))
            );
            (stream, closed)
        })
    });
    let mut kept = Vec::new();
    let mut closed = 0;
    for check in checks.collect::<Vec<_>>() {
        let (stream, was_closed) = check.await.unwrap();
        closed += was_closed as usize;
        kept.push(stream);
    }
    (kept, closed)
}

/// Opens 40 idle connections more than `limit` to `address` and checks that at least the
/// surplus was closed; returns the connections, still open where the port kept them.
async fn flood(name: &str, address: &str, limit: usize) -> Vec<TcpStream> {
    let extra = 40;
    let (streams, closed) = idle_connections(address, limit + extra).await;
    eprintln!(
        "{name}: {closed} of {} idle connections closed",
        limit + extra
    );
    assert!(
        closed >= extra,
        "{name} kept {} idle connections open (limit {limit})",
        limit + extra - closed
    );
    streams
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_idle_connections_is_cut_off_and_the_mirror_keeps_working() {
    use mirrorlab::limits::{AGENT_CONNECTIONS, ARBITER_CONNECTIONS, SUPERSERVER_CONNECTIONS};
    use mirrorlab::web::serve::PORTAL_CONNECTIONS_PER_SOURCE;
    let (arbiter, a, b, stop, writers) = pair_with_writers("flood").await;

    // More idle connections than each port serves: the surplus is closed at once, while the
    // mirror's own connections (opened before) go on working.
    let mut held = Vec::new();
    for (name, address, limit) in [
        (
            "A's superserver",
            a.superserver.clone(),
            SUPERSERVER_CONNECTIONS,
        ),
        ("A's agent", a.agent.clone(), AGENT_CONNECTIONS),
        ("the arbiter", arbiter.address.clone(), ARBITER_CONNECTIONS),
    ] {
        held.push(flood(name, &address, limit).await);
    }
    let (status, _) = a
        .post(
            "/api/apps/companies",
            serde_json::json!({"name": "during the flood"}),
        )
        .await
        .unwrap();
    assert_eq!(status, 201);
    drop(held);
    // The portal too (all from this test's address, so its share per source is the limit); the
    // flood ends before the writers need new connections.
    drop(flood("A's portal", &a.web, PORTAL_CONNECTIONS_PER_SOURCE).await);
    nothing_changed(&a, &b, &stop, writers).await;
}

/// Connections the superserver flood keeps trying to hold (more than the port serves).
const FLOOD_CONNECTIONS: usize = 80;

/// How long the flood goes on at most: the backup must be back well before it ends.
const FLOOD_LASTS: Duration = Duration::from_secs(45);

/// A stranger at `from` holding a connection to `to` for as long as the member lets it: half a
/// frame (a length of 1000, a control message begins), then one more byte every 500 ms, so no
/// single read ever waits long, but the message never ends. When the member closes it, the
/// stranger opens another at once. Returns the longest time the member kept one open.
async fn trickle(
    from: std::net::IpAddr,
    to: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    opened: Arc<std::sync::atomic::AtomicUsize>,
) -> Duration {
    use std::sync::atomic::Ordering;
    let mut longest = Duration::ZERO;
    let mut counted = false;
    while !stop.load(Ordering::Relaxed) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(std::net::SocketAddr::new(from, 0)).unwrap();
        let Ok(mut stream) = socket.connect(to).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let since = Instant::now();
        let mut alive = stream.write_all(&[0, 0, 3, 232, 1, b'{']).await.is_ok();
        if !counted {
            opened.fetch_add(1, Ordering::Relaxed);
            counted = true;
        }
        let mut byte = [0u8; 1];
        while alive && !stop.load(Ordering::Relaxed) {
            match tokio::time::timeout(Duration::from_millis(500), stream.read(&mut byte)).await {
                // Closed by the member (or it answered, which it must not before the message).
                Ok(_) => alive = false,
                Err(_) => alive = stream.write_all(b" ").await.is_ok(),
            }
        }
        longest = longest.max(since.elapsed());
        // A closed connection is replaced, but not in a busy loop.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    longest
}

/// Strangers could keep the backup out: 64 connections trickling half a frame held every
/// superserver slot, and a restarted backup stayed disconnected for as long as they went on.
/// Now a connection must deliver its first message within a deadline, and strangers (here all
/// at 127.0.0.2) share only part of the slots, so the backup, started again in the middle of
/// the flood, is active again at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn strangers_holding_the_superserver_do_not_keep_a_restarted_backup_out() {
    use mirrorlab::limits::SUPERSERVER_FIRST_MESSAGE;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (_arbiter, a, b, stop, writers) = pair_with_writers("superserver-flood").await;

    // The backup's instance stops; the primary goes on alone.
    b.stop_instance().await;
    a.wait_mirror(20, "without its backup", |v| {
        TestMember::member_row(v, "MIRRORB/IRIS")["journal_transfer"] != "Active"
    })
    .await;

    // Strangers at 127.0.0.2 (Linux routes all of 127/8 to loopback; the members are at
    // 127.0.0.1) take every superserver connection they can and keep them busy.
    let stranger: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let superserver: std::net::SocketAddr = a.superserver.parse().unwrap();
    let flood_started = Instant::now();
    let flooding = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicUsize::new(0));
    let flood: Vec<_> = (0..FLOOD_CONNECTIONS)
        .map(|_| {
            tokio::spawn(trickle(
                stranger,
                superserver,
                flooding.clone(),
                opened.clone(),
            ))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while opened.load(Ordering::Relaxed) < FLOOD_CONNECTIONS {
        assert!(Instant::now() < deadline, "the flood did not get going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The backup starts again in the middle of the flood and must become active.
    let started = Instant::now();
    b.start_instance().await;
    let mut back = None;
    while started.elapsed() < FLOOD_LASTS {
        let (status, view) = a.get("/api/mirror").await;
        if status == 200
            && TestMember::member_row(&view, "MIRRORB/IRIS")["journal_transfer"] == "Active"
        {
            back = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The flood goes on past the deadline for a first message, so that the connections it
    // holds must have been cut by that deadline (or it shows in `longest`).
    let at_least = SUPERSERVER_FIRST_MESSAGE + Duration::from_secs(3);
    tokio::time::sleep(at_least.saturating_sub(flood_started.elapsed())).await;
    flooding.store(true, Ordering::Relaxed);
    let mut longest = Duration::ZERO;
    for task in flood {
        longest = longest.max(task.await.unwrap());
    }
    let back = back.unwrap_or_else(|| {
        panic!(
            "the backup was not active again after {FLOOD_LASTS:?} of flood:\nA log:\n{}\nB log:\n{}",
            a.log(),
            b.log()
        )
    });
    println!(
        "superserver flood: backup reconnected in {} ms",
        back.as_millis()
    );
    assert!(
        back < FLOOD_LASTS / 3,
        "the backup took {back:?} to become active again during the flood"
    );
    // No stranger's connection outlived the deadline for a first message by much.
    assert!(
        longest < SUPERSERVER_FIRST_MESSAGE + Duration::from_secs(2),
        "a stranger trickling half a message held a connection for {longest:?}"
    );

    b.wait_ready().await;
    nothing_changed(&a, &b, &stop, writers).await;
}
