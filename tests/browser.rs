//! The portal in a real browser, on loopback: two members and an arbiter run as processes here,
//! and a person's clicks go through the walk-through in both portals (see
//! `common::browser`). The compose test clicks the same way through the Docker lab.
//!
//! The two portals are opened as `127.0.0.1` and `localhost`, two sites as far as the browser is
//! concerned, as two tabs on the lab's ports would be.

mod common;

use common::browser::{
    BrowserLog, Driver, Portal, Typed, click_through_walkthrough, take_pictures,
};
use common::{TestArbiter, TestMember};
use serde_json::json;
use std::time::Duration;

fn port_of(address: &str) -> &str {
    address.rsplit_once(':').unwrap().1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_person_clicks_through_the_walkthrough() {
    let arbiter = TestArbiter::start().await;
    let a = TestMember::start_named("mirrorA").await;
    let b = TestMember::start_named("mirrorB").await;
    let driver = Driver::start().await;
    let mut pa = Portal::open(
        &driver,
        format!("http://127.0.0.1:{}", port_of(&a.web)),
        "A",
    )
    .await;
    let mut pb = Portal::open(
        &driver,
        format!("http://localhost:{}", port_of(&b.web)),
        "B",
    )
    .await;

    // The console check can fail: a missing style sheet is reported.
    pa.browser
        .goto(&format!("{}/static/missing.css", pa.origin))
        .await
        .unwrap();
    let log = pa.browser.issue_cmd(BrowserLog).await.unwrap();
    assert!(
        log.to_string().contains("404"),
        "the browser console does not report a missing resource: {log}"
    );

    // On loopback every address must be typed; in the lab the defaults are right.
    let typed = Typed {
        create: vec![
            ("arbiter_address", "127.0.0.1".into()),
            ("arbiter_port", port_of(&arbiter.address).into()),
            ("superserver_address", a.superserver.clone()),
            ("agent_port", a.agent_port().to_string()),
            ("mirror_private_address", a.superserver.clone()),
            ("agent_address", "127.0.0.1".into()),
        ],
        join_first: vec![
            ("agent_address", "127.0.0.1".into()),
            ("agent_port", a.agent_port().to_string()),
        ],
        join_second: vec![
            ("superserver_address", b.superserver.clone()),
            ("agent_port_local", b.agent_port().to_string()),
            ("mirror_private_address", b.superserver.clone()),
            ("agent_address_local", "127.0.0.1".into()),
        ],
    };
    click_through_walkthrough(&mut pa, &mut pb, &typed, &a.data_dir(), &b.data_dir()).await;
    take_pictures(&mut pa, &mut pb, "loopback").await;
    pa.check_links().await;
    pb.check_links().await;
    pa.browser.close().await.unwrap();
    let a_origin = format!("http://127.0.0.1:{}", port_of(&a.web));
    see_a_fault_on_the_monitor(&driver, &a, &b, a_origin, &mut pb).await;
    pb.browser.close().await.unwrap();
}

/// A's instance dies: B's Mirror Monitor shows the takeover, its reason and the write outage on
/// its timeline, refreshing in place (the scroll position stays); then, with No Failover set
/// and B's instance killed, A's monitor says why there is no primary.
async fn see_a_fault_on_the_monitor(
    driver: &Driver,
    a: &TestMember,
    b: &TestMember,
    a_origin: String,
    pb: &mut Portal,
) {
    a.kill_instance().await;
    b.wait_mirror(20, "the primary", |v| v["role"] == "Primary")
        .await;
    // The outage is measured at the new primary's first write.
    let (status, body) = b
        .post("/api/apps/companies", json!({"name": "after the takeover"}))
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
    pb.wait_for_text("/portal/mirror/monitor", "Takeover by MIRRORB/IRIS", 20)
        .await;
    pb.wait_for_text("/portal/mirror/monitor", "write outage", 20)
        .await;
    let body = pb.body().await;
    // Arbiter controlled here: the arbiter or A's agent confirmed it, whichever answered first.
    assert!(
        body.contains("(arbiter controlled)") || body.contains("(agent controlled)"),
        "{body}"
    );
    // The page refreshes itself in place: scrolled to the timeline, it stays there.
    let read = |script: &'static str| {
        let browser = &pb.browser;
        async move { browser.execute(script, vec![]).await.unwrap() }
    };
    let scrolled = read(
        "document.getElementById('timeline').scrollIntoView(); \
         return Math.round(window.scrollY)",
    )
    .await;
    assert!(
        scrolled.as_i64().unwrap() > 0,
        "the monitor does not scroll"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while read("return document.getElementById('live').dataset.refreshed || ''").await == json!("")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the monitor never refreshed itself"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(read("return Math.round(window.scrollY)").await, scrolled);
    pb.screenshot("timeline-mirrorB.png").await;

    // A comes back as B's backup; with No Failover set, B's death leaves no primary, and A's
    // monitor says why and what to do.
    a.start_instance().await;
    a.wait_ready().await;
    b.wait_mirror(20, "with A as active backup", |v| {
        TestMember::member_row(v, "MIRRORA/IRIS")["journal_transfer"] == "Active"
    })
    .await;
    b.ok("/api/mirror/no-failover", json!({"set": true})).await;
    a.wait_mirror(10, "No Failover", |v| v["no_failover"] == true)
        .await;
    b.kill_instance().await;
    let mut pa = Portal::open(driver, a_origin, "A").await;
    pa.log_in().await;
    pa.wait_for_text("/portal/mirror/monitor", "No primary:", 20)
        .await;
    let banner = pa.body().await;
    assert!(banner.contains("No Failover is set"), "{banner}");
    pa.screenshot("no-primary-mirrorA.png").await;
    pa.browser.close().await.unwrap();
}

/// The Lab in a browser: the ledger started on B's Lab page, B's link to A cut and mended
/// there, A's instance killed from A's Lab page, and B's ledger read after the takeover — every acknowledged write found on B, none
/// lost, the outage listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_person_kills_the_primary_from_the_lab_and_reads_the_ledger() {
    use common::pair::{mirror_databases, pair_with};
    let (a, b) = pair_with(1000, &["--lab"]).await;
    mirror_databases(&a, &b).await;
    let driver = Driver::start().await;
    let mut pb = Portal::open(
        &driver,
        format!("http://localhost:{}", port_of(&b.web)),
        "B",
    )
    .await;
    pb.log_in().await;
    pb.visit("/portal/lab").await;
    // On loopback the members' portals must be typed; in the lab the default is right.
    pb.type_into(
        "#ledger-start input[name=members]",
        &format!("http://{} http://{}", a.web, b.web),
    )
    .await;
    pb.type_into("#ledger-start input[name=writers]", "2").await;
    pb.type_into("#ledger-start input[name=password]", "SYS")
        .await;
    pb.click("#ledger-start button[type=submit]").await;
    pb.wait_for_text("/portal/lab", "Found on the primary", 20)
        .await;
    // B's link to A, cut from the form (its defaults: the other members, both ways) and mended
    // from the page before its time.
    pb.type_into("#lab-cut input[name=seconds]", "120").await;
    pb.click("#lab-cut button[type=submit]").await;
    pb.wait_for_text("/portal/lab", "cut both ways", 10).await;
    let cut = pb.body().await;
    assert!(cut.contains("the link to the other members"), "{cut}");
    a.wait_mirror(20, "B no longer active", |v| {
        TestMember::member_row(v, "MIRRORB/IRIS")["journal_transfer"] != "Active"
    })
    .await;
    pb.screenshot("lab-cut-mirrorB.png").await;
    pb.click("#lab-mend button[type=submit]").await;
    pb.wait_for_text("/portal/lab", "No link of this member is cut", 10)
        .await;
    // Active again before the kill, so that B may take over.
    a.wait_mirror(20, "B active again", |v| {
        TestMember::member_row(v, "MIRRORB/IRIS")["journal_transfer"] == "Active"
    })
    .await;

    let mut pa = Portal::open(
        &driver,
        format!("http://127.0.0.1:{}", port_of(&a.web)),
        "A",
    )
    .await;
    pa.log_in().await;
    pa.visit("/portal/lab").await;
    assert!(pa.body().await.contains("This member is Primary"));
    // Not `click`: the page that would answer goes down with the instance.
    pa.tick("#lab-kill button[type=submit]").await;
    b.wait_mirror(20, "the primary", |v| v["role"] == "Primary")
        .await;
    let b_url = format!("http://{}", b.web);
    pb.wait_for_text("/portal/lab", &format!("Writing to {b_url}"), 20)
        .await;
    pb.click("#ledger-stop button[type=submit]").await;
    // Read the figures once the last check counted every acknowledged write.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let figures = loop {
        pb.visit("/portal/lab").await;
        let figures = pb
            .browser
            .execute(
                "const text = id => (document.getElementById(id) || {innerText: ''}).innerText.trim();
                 return [text('ledger-acknowledged'), text('ledger-found'), text('ledger-lost'),
                         text('ledger-outages')];",
                vec![],
            )
            .await
            .unwrap();
        let acknowledged = figures[0].as_str().unwrap().to_string();
        if figures[1]
            .as_str()
            .unwrap()
            .starts_with(&format!("{acknowledged} of {acknowledged} "))
        {
            break figures;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the ledger never counted every write: {figures}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(figures[2], "0", "lost: {figures}");
    assert!(
        figures[3].as_str().unwrap().contains(" ms"),
        "the takeover's outage is listed: {figures}"
    );
    assert!(
        figures[0].as_str().unwrap().parse::<u64>().unwrap() > 50,
        "{figures}"
    );
    pb.screenshot("lab-ledger-mirrorB.png").await;
    pb.browser.close().await.unwrap();
    pa.browser.close().await.unwrap();
}
