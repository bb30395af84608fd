//! A person at a browser: headless Chromium driven through chromedriver (both from Debian's
//! packages) with the WebDriver protocol, and the walk-through clicked in two portals.
//!
//! Every page visited must leave nothing in the browser's console (no script error, no resource
//! that failed to load) and show no failure message, and every link seen on the way must answer
//! 200. Screenshots go to `target/screenshots/`, or to the folder named by
//! `MIRRORLAB_SCREENSHOTS` (the README's pictures: `MIRRORLAB_SCREENSHOTS=docs/screenshots`).

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use super::free_port;
use super::pair::DATABASES;

/// chromedriver on a free port; killed when dropped.
pub struct Driver {
    process: Child,
    url: String,
}

impl Driver {
    pub async fn start() -> Driver {
        let port = free_port();
        // Its own process group, so that dropping the driver also ends every browser it
        // started, whatever state the test left them in.
        let process = Command::new("chromedriver")
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver runs (Debian: apt-get install chromium chromium-driver)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Driver {
            process,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// A new browser with its own profile folder (one profile serves one browser at a time).
    async fn browser(&self, profile: &tempfile::TempDir) -> Client {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium(),
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--disable-background-networking", "--disable-component-update",
                         "--disable-sync", "--no-first-run", "--window-size=1280,1500",
                         format!("--user-data-dir={}", profile.path().display())],
            }),
        );
        caps.insert("goog:loggingPrefs".into(), json!({"browser": "ALL"}));
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("a chromium session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let group = format!("-{}", self.process.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

fn chromium() -> String {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("chromium")
        .to_string()
}

/// chromedriver's `POST /session/{id}/se/log`: the browser console since the last call.
#[derive(Debug)]
pub struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(r#"{"type":"browser"}"#.into()))
    }
}

/// One portal in one browser tab, as a person uses it.
pub struct Portal {
    pub browser: Client,
    _profile: tempfile::TempDir,
    pub origin: String,
    name: &'static str,
    links: BTreeSet<String>,
}

impl Portal {
    pub async fn open(driver: &Driver, origin: String, name: &'static str) -> Portal {
        let profile = tempfile::tempdir().unwrap();
        Portal {
            browser: driver.browser(&profile).await,
            _profile: profile,
            origin,
            name,
            links: BTreeSet::new(),
        }
    }

    /// Goes to a page of this portal and checks it.
    pub async fn visit(&mut self, path: &str) {
        self.browser
            .goto(&format!("{}{path}", self.origin))
            .await
            .unwrap();
        self.checked().await;
    }

    /// The page the browser shows now: no console entries, no failure flash; its links noted.
    pub async fn checked(&mut self) {
        let log = self.browser.issue_cmd(BrowserLog).await.unwrap();
        let errors: Vec<&Value> = log
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["level"] != "INFO" && e["level"] != "DEBUG")
            .collect();
        let url = self.browser.current_url().await.unwrap();
        assert!(errors.is_empty(), "{}: console says {errors:?}", url);
        if let Ok(flash) = self.browser.find(Locator::Css(".flash.fail")).await {
            panic!("{url}: the portal says {:?}", flash.text().await.unwrap());
        }
        let links = self
            .browser
            .execute(
                "return Array.from(document.querySelectorAll('a[href]'), a => a.href)",
                vec![],
            )
            .await
            .unwrap();
        for link in links.as_array().unwrap() {
            self.links.insert(link.as_str().unwrap().to_string());
        }
    }

    pub async fn log_in(&mut self) {
        self.visit("/portal/").await;
        self.type_into("input[name=username]", "superuser").await;
        self.type_into("input[name=password]", "SYS").await;
        self.click("form.login button[type=submit]").await;
        let title = self.browser.title().await.unwrap();
        assert!(
            !title.starts_with("Login"),
            "still on the login page: {title}"
        );
    }

    /// Replaces the text of an input.
    pub async fn type_into(&self, css: &str, text: &str) {
        let input = self.browser.find(Locator::Css(css)).await.unwrap();
        input.clear().await.unwrap();
        input.send_keys(text).await.unwrap();
    }

    /// Whether the element `css` is disabled.
    pub async fn disabled(&self, css: &str) -> bool {
        let element = self.browser.find(Locator::Css(css)).await.unwrap();
        element.prop("disabled").await.unwrap().as_deref() == Some("true")
    }

    /// The form `css` lays its fields out as IRIS's pages do: every text field and list in one
    /// column to the right of its label (same left edge, past the label's text), and none shows
    /// a placeholder that could pass for a value.
    pub async fn check_form_grid(&self, css: &str) {
        let layout = self
            .browser
            .execute(
                "const form = document.querySelector(arguments[0]);
                 const fields = Array.from(form.querySelectorAll(
                     'div.form > label > input:not([type=checkbox]), div.form > label > select'));
                 // One column per panel: the Create page shows its two panels side by side.
                 const sections = Array.from(form.querySelectorAll('section'));
                 return {
                     placeholders: form.querySelectorAll('[placeholder]').length,
                     lefts: fields.map(f => [sections.indexOf(f.closest('section')),
                                             Math.round(f.getBoundingClientRect().left)]),
                     offsets: fields.map(f => Math.round(
                         f.getBoundingClientRect().left - f.closest('label').getBoundingClientRect().left)),
                 };",
                vec![json!(css)],
            )
            .await
            .unwrap();
        assert_eq!(layout["placeholders"], 0, "{css}: {layout}");
        let lefts = layout["lefts"].as_array().unwrap();
        assert!(lefts.len() >= 3, "{css}: {layout}");
        let left_of_panel =
            |panel: &Value| lefts.iter().find(|l| &l[0] == panel).unwrap()[1].clone();
        assert!(
            lefts.iter().all(|l| l[1] == left_of_panel(&l[0])),
            "{css}: the fields of a panel are not in one column: {layout}"
        );
        assert!(
            layout["offsets"]
                .as_array()
                .unwrap()
                .iter()
                .all(|o| o.as_i64().unwrap() > 80),
            "{css}: a field sits under or on its label: {layout}"
        );
    }

    /// Clicks, waits for the page the click leads to, and checks it.
    pub async fn click(&mut self, css: &str) {
        // Mark the page shown now, so that the wait below sees the next one, not this one.
        self.browser
            .execute("document.documentElement.dataset.left = 'yes'", vec![])
            .await
            .unwrap();
        self.tick(css).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let arrived = self
                .browser
                .execute(
                    "return document.readyState === 'complete' \
                     && document.documentElement.dataset.left !== 'yes'",
                    vec![],
                )
                .await;
            if arrived.is_ok_and(|v| v == json!(true)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: clicking {css} led to no new page",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.checked().await;
    }

    /// Clicks something that stays on the page (a checkbox).
    pub async fn tick(&self, css: &str) {
        let element = self.browser.find(Locator::Css(css)).await;
        let element = element.unwrap_or_else(|e| panic!("{}: no {css}: {e}", self.name));
        element.click().await.unwrap();
    }

    /// Reloads a page (the monitor refreshes itself too) until `text` is on it.
    pub async fn wait_for_text(&mut self, path: &str, text: &str, seconds: u64) {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        loop {
            self.visit(path).await;
            let body = self.body().await;
            if body.contains(text) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} {path} never showed {text:?}:\n{body}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    pub async fn body(&self) -> String {
        let body = self.browser.find(Locator::Css("body")).await.unwrap();
        body.text().await.unwrap()
    }

    pub async fn screenshot(&self, file: &str) {
        let png = self.browser.screenshot().await.unwrap();
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(file), png).unwrap();
    }

    /// Every link seen on this portal answers 200 (fetched by the browser, with its session).
    pub async fn check_links(&mut self) {
        self.visit("/portal/").await;
        for link in std::mem::take(&mut self.links) {
            assert!(
                link.starts_with(&self.origin),
                "{}: a link leaves the portal: {link}",
                self.name
            );
            let status = self
                .browser
                .execute_async(
                    "const [url, done] = arguments; \
                     fetch(url).then(r => done(r.status)).catch(e => done(String(e)))",
                    vec![json!(link)],
                )
                .await
                .unwrap();
            assert_eq!(status, json!(200), "{}: broken link {link}", self.name);
        }
    }
}

pub fn screenshot_dir() -> PathBuf {
    match std::env::var_os("MIRRORLAB_SCREENSHOTS") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("../screenshots"),
    }
}

/// What a person types into the Create and Join forms besides the mirror's name; the lab needs
/// nothing (the defaults are right there), members on loopback need their addresses.
#[derive(Default)]
pub struct Typed {
    /// (input name, text) on Create a Mirror.
    pub create: Vec<(&'static str, String)>,
    /// On Join as Failover's first page.
    pub join_first: Vec<(&'static str, String)>,
    /// On Join as Failover's second page.
    pub join_second: Vec<(&'static str, String)>,
}

impl Portal {
    async fn type_all(&self, fields: &[(&'static str, String)]) {
        for (name, text) in fields {
            self.type_into(&format!("input[name={name}]"), text).await;
        }
    }
}

/// Steps 3–9 of the walk-through, clicked: A (`pa`) creates the mirror, B (`pb`) joins it, the
/// applications get a company and a contact on A, A adds the demo databases to the mirror, B
/// dismounts them, their files are copied from `a_data` to `b_data` under Freeze, B mounts,
/// activates and catches them up; then what A writes shows on B, and B refuses writes.
pub async fn click_through_walkthrough(
    pa: &mut Portal,
    pb: &mut Portal,
    typed: &Typed,
    a_data: &Path,
    b_data: &Path,
) {
    pa.log_in().await;
    pb.log_in().await;

    // mirrorA: Enable Mirror Service, Create a Mirror (with the arbiter).
    pa.visit("/portal/mirror/settings").await;
    pa.tick("#enable-service input[name=enabled]").await;
    pa.click("#enable-service button[type=submit]").await;
    pa.click("#create-mirror").await;
    pa.check_form_grid("#create-form").await;
    pa.type_into("input[name=mirror_name]", "MIRRORSET").await;
    pa.screenshot("form-create-mirror.png").await;
    pa.type_all(&typed.create).await;
    pa.click("#create-form button[type=submit]").await;
    pa.wait_for_text("/portal/mirror/monitor", "Primary", 10)
        .await;

    // mirrorB: Enable, Join as Failover in two steps.
    pb.visit("/portal/mirror/settings").await;
    pb.tick("#enable-service input[name=enabled]").await;
    pb.click("#enable-service button[type=submit]").await;
    pb.click("#join-failover").await;
    pb.type_into("input[name=mirror_name]", "MIRRORSET").await;
    pb.type_into("input[name=agent_address]", "mirrorA").await;
    pb.type_into("input[name=instance_name]", "IRIS").await;
    pb.type_all(&typed.join_first).await;
    pb.click("#join-step-1 button[type=submit]").await;
    pb.check_form_grid("#join-form").await;
    pb.screenshot("form-join-as-failover.png").await;
    pb.type_all(&typed.join_second).await;
    pb.click("#join-form button[type=submit]").await;
    pa.wait_for_text("/portal/mirror/monitor", "Arbiter Controlled", 20)
        .await;
    pa.wait_for_text("/portal/mirror/monitor", "Active", 20)
        .await;

    // The applications on A: a company and a contact.
    pa.visit("/apps/company").await;
    pa.type_into("#add-company input[name=name]", "Acme").await;
    pa.type_into("#add-company input[name=mission]", "Anvils for everyone")
        .await;
    pa.click("#add-company button[type=submit]").await;
    pa.visit("/apps/phonebook").await;
    pa.type_into("#add-contact input[name=name]", "Ann").await;
    pa.type_into("#add-contact input[name=phone]", "555-0100")
        .await;
    let company = pa
        .browser
        .find(Locator::Css("#add-contact select[name=company_id]"));
    company
        .await
        .unwrap()
        .select_by_label("Acme")
        .await
        .unwrap();
    pa.click("#add-contact button[type=submit]").await;
    assert!(pa.body().await.contains("Ann"));

    // Add to Mirror on A's Local Databases.
    pa.visit("/portal/config/local-databases").await;
    for db in DATABASES {
        pa.tick(&format!("#local-databases input[value={db}]"))
            .await;
    }
    pa.click("#add-to-mirror button[type=submit]").await;
    pb.wait_for_text("/portal/mirror/monitor", ":mirror:MIRRORSET:COMPANY", 20)
        .await;

    // On B: dismount each, copy its file from A under Freeze, mount.
    for db in DATABASES {
        pb.visit("/portal/config/databases").await;
        pb.click(&format!(
            "form[action='/portal/config/databases/{db}/dismount'] button"
        ))
        .await;
    }
    pa.visit("/portal/operation/backup").await;
    const FREEZE: &str = "form[action='/portal/operation/freeze'] button";
    const THAW: &str = "form[action='/portal/operation/thaw'] button";
    assert!(!pa.disabled(FREEZE).await && pa.disabled(THAW).await);
    pa.click(FREEZE).await;
    assert!(pa.body().await.contains("Writes are frozen"));
    assert!(
        pa.disabled(FREEZE).await && !pa.disabled(THAW).await,
        "while frozen, Freeze is disabled and Thaw is not"
    );
    for db in DATABASES {
        let dir = format!("mgr/{}/database.sqlite", db.to_ascii_lowercase());
        std::fs::copy(a_data.join(&dir), b_data.join(&dir)).unwrap();
    }
    pa.click(THAW).await;
    assert!(!pa.disabled(FREEZE).await && pa.disabled(THAW).await);
    for db in DATABASES {
        pb.visit("/portal/config/databases").await;
        pb.click(&format!(
            "form[action='/portal/config/databases/{db}/mount'] button"
        ))
        .await;
    }

    // B's Mirror Monitor: Activate, then Catchup, each database.
    for action in ["activate", "catchup"] {
        for db in DATABASES {
            pb.visit("/portal/mirror/monitor").await;
            pb.click(&format!(
                "form[action='/portal/mirror/databases/{db}/{action}'] button"
            ))
            .await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        pb.visit("/portal/mirror/monitor").await;
        let statuses = pb
            .browser
            .execute(
                "return Array.from(document.querySelectorAll('#mirrored-databases td.status'), \
                 td => td.innerText.trim())",
                vec![],
            )
            .await
            .unwrap();
        if statuses == json!(["Dejournaling", "Dejournaling", "Dejournaling"]) {
            break;
        }
        assert!(Instant::now() < deadline, "B's databases: {statuses}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // What A wrote is on B, and a company added on A now appears there within a moment.
    pa.visit("/apps/company").await;
    pa.type_into("#add-company input[name=name]", "Another company")
        .await;
    pa.click("#add-company button[type=submit]").await;
    pb.wait_for_text("/apps/company", "Another company", 10)
        .await;
    assert!(pb.body().await.contains("Acme"));
    pb.wait_for_text("/apps/phonebook", "Ann", 10).await;

    // B is read-only: adding a company there is refused with a message on the page.
    pb.visit("/apps/company").await;
    pb.type_into("#add-company input[name=name]", "Nope").await;
    // Not `click`: the page that answers shows a failure, which `click` would reject.
    pb.tick("#add-company button[type=submit]").await;
    let refusal = pb
        .browser
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(".flash.fail"))
        .await;
    let refusal = refusal.expect("B refuses the write with a message");
    assert!(
        refusal.text().await.unwrap().contains("read-only"),
        "{}",
        refusal.text().await.unwrap()
    );
}

/// Screenshots of both Mirror Monitors and the applications, named `<prefix>-<page>.png`.
pub async fn take_pictures(pa: &mut Portal, pb: &mut Portal, prefix: &str) {
    pa.visit("/portal/mirror/monitor").await;
    pa.screenshot(&format!("{prefix}-monitor-mirrorA.png"))
        .await;
    pb.visit("/portal/mirror/monitor").await;
    pb.screenshot(&format!("{prefix}-monitor-mirrorB.png"))
        .await;
    pa.visit("/apps/company").await;
    pa.screenshot(&format!("{prefix}-company-mirrorA.png"))
        .await;
    pb.visit("/apps/phonebook").await;
    pb.screenshot(&format!("{prefix}-phonebook-mirrorB.png"))
        .await;
    pa.visit("/portal/config/local-databases").await;
    pa.screenshot(&format!("{prefix}-local-databases-mirrorA.png"))
        .await;
}
