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
    pb.browser.close().await.unwrap();
}
