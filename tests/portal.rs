//! Portal, applications and API through the router (no network): login, CSRF, pages, the SQL
//! page, escaping, and the answers to bad input.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use base64::Engine;
use http_body_util::BodyExt;
use mirrorlab::instance::{Instance, InstanceSettings};
use mirrorlab::node::Node;
use serde_json::{Value, json};
use tower::ServiceExt;

struct Portal {
    _dir: tempfile::TempDir,
    instance: Arc<Instance>,
    app: Router,
}

struct Reply {
    status: StatusCode,
    location: Option<String>,
    cookies: Vec<String>,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|_| panic!("not JSON: {}", self.body))
    }
}

fn basic() -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("superuser:SYS")
    )
}

impl Portal {
    fn new() -> Portal {
        Self::with(|_| {})
    }

    /// A portal over an instance whose settings `adjust` changed.
    fn with(adjust: impl FnOnce(&mut InstanceSettings)) -> Portal {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = InstanceSettings::for_dir(dir.path());
        adjust(&mut settings);
        let node = Node::open(settings, mirrorlab::node::Exits::unexpected()).unwrap();
        let app = mirrorlab::web::router(&node);
        Portal {
            _dir: dir,
            instance: node.instance.clone(),
            app,
        }
    }

    async fn send(&self, request: Request<Body>) -> Reply {
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let location = response
            .headers()
            .get(header::LOCATION)
            .map(|v| v.to_str().unwrap().to_string());
        let cookies = response
            .headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_string())
            .collect();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            location,
            cookies,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    async fn get(&self, path: &str, cookie: &str) -> Reply {
        self.send(
            Request::get(path)
                .header(header::COOKIE, cookie)
                .body(Body::empty())
                .unwrap(),
        )
        .await
    }

    async fn post_form(&self, path: &str, cookie: &str, form: &[(&str, &str)]) -> Reply {
        let body = serde_urlencoded::to_string(form).unwrap();
        let request = Request::post(path)
            .header(header::COOKIE, cookie)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(body))
            .unwrap();
        self.send(request).await
    }

    async fn api(&self, method: &str, path: &str, body: Option<Value>) -> Reply {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, basic());
        let body = match body {
            Some(json) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Body::from(json.to_string())
            }
            None => Body::empty(),
        };
        self.send(request.body(body).unwrap()).await
    }

    /// Opens the login page and submits its form as superuser with `password`, going on to
    /// `next` afterwards.
    async fn submit_login(&self, password: &str, next: &str) -> Reply {
        let page = self.get("/portal/login", "").await;
        assert_eq!(page.status, StatusCode::OK);
        self.post_form(
            "/portal/login",
            &page.cookies[0],
            &[
                ("username", "superuser"),
                ("password", password),
                ("csrf", &csrf_of(&page.body)),
                ("next", next),
            ],
        )
        .await
    }

    /// Logs in through the form; returns the session cookie and the session's CSRF token.
    async fn login(&self) -> (String, String) {
        let reply = self.submit_login("SYS", "/portal/").await;
        assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
        let session = reply
            .cookies
            .iter()
            .find(|c| !c.contains("login") && !c.ends_with('='))
            .unwrap()
            .clone();
        let home = self.get("/portal/", &session).await;
        assert_eq!(home.status, StatusCode::OK);
        (session, csrf_of(&home.body))
    }
}

fn csrf_of(html: &str) -> String {
    let start = html
        .find("name=\"csrf\" value=\"")
        .expect("page has a CSRF field")
        + 19;
    html[start..start + html[start..].find('"').unwrap()].to_string()
}

const PAGES: &[&str] = &[
    "/portal/",
    "/portal/mirror/settings",
    "/portal/mirror/monitor",
    "/portal/config/local-databases",
    "/portal/config/databases",
    "/portal/config/namespaces",
    "/portal/operation/journals",
    "/portal/operation/backup",
    "/portal/explorer/sql",
    "/portal/security/password",
    "/apps/company",
    "/apps/phonebook",
];

#[tokio::test(flavor = "multi_thread")]
async fn every_page_needs_a_login() {
    let portal = Portal::new();
    for page in PAGES {
        let reply = portal.get(page, "").await;
        assert_eq!(reply.status, StatusCode::SEE_OTHER, "{page}");
        let location = reply.location.unwrap();
        assert!(
            location.starts_with("/portal/login?next="),
            "{page} -> {location}"
        );
    }
    // A made-up session cookie is no better.
    let reply = portal.get("/portal/", "mirrorlab_x=forged").await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    // Posts without a session are sent to the login page too, and change nothing.
    let reply = portal
        .post_form("/apps/company", "", &[("name", "Sneaky"), ("csrf", "x")])
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    assert_eq!(
        mirrorlab::apps::company::count(&portal.instance)
            .await
            .unwrap(),
        0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn login_rejects_wrong_passwords_and_forged_forms() {
    let portal = Portal::new();
    let page = portal.get("/portal/login", "").await;
    let login_cookie = page.cookies[0].clone();
    let token = csrf_of(&page.body);
    let wrong = portal
        .post_form(
            "/portal/login",
            &login_cookie,
            &[
                ("username", "superuser"),
                ("password", "nope"),
                ("csrf", &token),
            ],
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.body.contains("Wrong user name or password"));
    assert!(
        wrong
            .cookies
            .iter()
            .all(|c| !c.starts_with("mirrorlab_") || c.contains("login"))
    );
    let forged = portal
        .post_form(
            "/portal/login",
            &login_cookie,
            &[
                ("username", "superuser"),
                ("password", "SYS"),
                ("csrf", "not-the-token"),
            ],
        )
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    // Only local paths are followed after login.
    let reply = portal.submit_login("SYS", "//evil.example/").await;
    assert_eq!(reply.location.as_deref(), Some("/portal/"));
}

/// GET `path` with the given `Authorization` header.
async fn get_with(portal: &Portal, path: &str, authorization: &str) -> Reply {
    let request = Request::get(path)
        .header(header::AUTHORIZATION, authorization)
        .body(Body::empty())
        .unwrap();
    portal.send(request).await
}

#[tokio::test(flavor = "multi_thread")]
async fn repeated_wrong_passwords_make_attempts_wait() {
    let portal = Portal::new();
    let encode = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let wrong = format!("Basic {}", encode("superuser:guess"));
    // The right password in a header not seen before (the space is allowed), so it is checked.
    let fresh_right = format!("Basic  {}", encode("superuser:SYS"));
    // A script logged in before the guessing starts.
    assert_eq!(portal.api("GET", "/api/databases", None).await.status, 200);
    for _ in 0..mirrorlab::web::auth::FREE_FAILURES {
        let reply = get_with(&portal, "/api/databases", &wrong).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.body);
    }
    // Now every attempt with that name waits — even with the right password, by either door.
    let reply = get_with(&portal, "/api/databases", &fresh_right).await;
    assert_eq!(
        reply.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        reply.body
    );
    assert!(
        reply.json()["error"]
            .as_str()
            .unwrap()
            .contains("try again in")
    );
    let form = portal.submit_login("SYS", "/portal/").await;
    assert_eq!(form.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        form.body.contains("Too many wrong passwords"),
        "{}",
        form.body
    );
    // The script that logged in before is not locked out.
    assert_eq!(portal.api("GET", "/api/databases", None).await.status, 200);
    // After the wait (one second after the fifth failure) the right password works, and the
    // count starts over: the next wrong password is merely wrong.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(
        get_with(&portal, "/api/databases", &fresh_right)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        get_with(&portal, "/api/databases", &wrong).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_page_renders_for_a_logged_in_user() {
    let portal = Portal::new();
    let (session, _) = portal.login().await;
    for page in PAGES {
        let reply = portal.get(page, &session).await;
        assert_eq!(reply.status, StatusCode::OK, "{page}: {}", reply.body);
        assert!(reply.body.contains("Management Portal"), "{page}");
    }
    let mirror = portal.get("/portal/mirror/settings", &session).await;
    assert!(mirror.body.contains("mirror service is disabled"));
    let monitor = portal.get("/portal/mirror/monitor", &session).await;
    assert!(monitor.body.contains("Mirror service disabled"));
    // Create and Join wait for the mirror service.
    let create = portal.get("/portal/mirror/create", &session).await;
    assert_eq!(create.location.as_deref(), Some("/portal/mirror/settings"));
    let csrf = csrf_of(&portal.get("/portal/", &session).await.body);
    portal
        .post_form(
            "/portal/mirror/service",
            &session,
            &[("csrf", &csrf), ("enabled", "on")],
        )
        .await;
    let settings = portal.get("/portal/mirror/settings", &session).await;
    assert!(
        settings.body.contains("the mirror service is enabled"),
        "{}",
        settings.body
    );
    assert!(settings.body.contains("id=\"create-mirror\""));
    let create = portal.get("/portal/mirror/create", &session).await;
    assert_eq!(create.status, StatusCode::OK);
    assert!(
        create.body.contains("value=\"LOCALHOST/IRIS\""),
        "default member name"
    );
    assert!(create.body.contains("value=\"8000\""), "default QoS");
    let join = portal.get("/portal/mirror/join", &session).await;
    assert!(join.body.contains("Agent Address on Other System"));
    let databases = portal.get("/portal/config/local-databases", &session).await;
    for db in ["COMPANY", "CUSTOMER", "PERSONAL"] {
        assert!(databases.body.contains(db), "{db} listed");
    }
    let namespaces = portal.get("/portal/config/namespaces", &session).await;
    assert!(namespaces.body.contains("PHONEBOOK") && namespaces.body.contains("COMPANY, CUSTOMER"));
    // Logging out ends the session.
    let (session, csrf) = portal.login().await;
    let out = portal
        .post_form("/portal/logout", &session, &[("csrf", &csrf)])
        .await;
    assert_eq!(out.location.as_deref(), Some("/portal/login"));
    assert_eq!(
        portal.get("/portal/", &session).await.status,
        StatusCode::SEE_OTHER
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn forms_without_the_right_csrf_token_are_refused() {
    let portal = Portal::new();
    let (session, csrf) = portal.login().await;
    for token in ["", "0000", &csrf[..csrf.len() - 1]] {
        let reply = portal
            .post_form(
                "/apps/company",
                &session,
                &[("name", "Forged"), ("csrf", token)],
            )
            .await;
        assert_eq!(reply.status, StatusCode::CONFLICT, "token {token:?}");
        assert!(reply.body.contains("CSRF"));
    }
    let reply = portal
        .post_form("/portal/config/databases/COMPANY/dismount", &session, &[])
        .await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    assert_eq!(
        mirrorlab::apps::company::count(&portal.instance)
            .await
            .unwrap(),
        0
    );
    assert!(
        portal
            .instance
            .catalog
            .snapshot()
            .databases
            .values()
            .all(|d| d.mounted)
    );
    // Another session's token does not work either.
    let (_, other_csrf) = portal.login().await;
    let reply = portal
        .post_form(
            "/apps/company",
            &session,
            &[("name", "Forged"), ("csrf", &other_csrf)],
        )
        .await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_applications_work_through_their_pages() {
    let portal = Portal::new();
    let (session, csrf) = portal.login().await;
    let added = portal
        .post_form(
            "/apps/company",
            &session,
            &[
                ("csrf", &csrf),
                ("name", "<script>alert(1)</script>"),
                ("revenue", "12"),
            ],
        )
        .await;
    assert_eq!(added.status, StatusCode::SEE_OTHER);
    let list = portal.get("/apps/company", &session).await;
    assert!(list.body.contains("added"), "flash message shown");
    assert!(
        list.body
            .contains("&#60;script&#62;alert(1)&#60;/script&#62;"),
        "names are escaped"
    );
    assert!(!list.body.contains("<script>alert(1)"));
    // Bad input comes back as a message, not a crash.
    portal
        .post_form(
            "/apps/company",
            &session,
            &[("csrf", &csrf), ("name", "X"), ("revenue", "lots")],
        )
        .await;
    let list = portal.get("/apps/company", &session).await;
    assert!(
        list.body.contains("Revenue must be a whole number"),
        "{}",
        list.body
    );

    let companies = mirrorlab::apps::company::list(&portal.instance, Default::default())
        .await
        .unwrap();
    let id = companies[0].id.to_string();
    let edited = portal
        .post_form(
            &format!("/apps/company/{id}"),
            &session,
            &[("csrf", &csrf), ("name", "Acme"), ("revenue", "")],
        )
        .await;
    assert_eq!(edited.status, StatusCode::SEE_OTHER);
    assert!(
        portal
            .get(&format!("/apps/company/{id}"), &session)
            .await
            .body
            .contains("value=\"Acme\"")
    );

    portal
        .post_form(
            "/apps/phonebook/contacts",
            &session,
            &[
                ("csrf", &csrf),
                ("name", "Ann"),
                ("phone", "555"),
                ("company_id", &id),
            ],
        )
        .await;
    portal
        .post_form(
            "/apps/phonebook/customers",
            &session,
            &[
                ("csrf", &csrf),
                ("name", "Bob"),
                ("email", "bob@example.com"),
            ],
        )
        .await;
    let phonebook = portal.get("/apps/phonebook", &session).await;
    assert!(
        phonebook.body.contains("Ann")
            && phonebook.body.contains("Acme")
            && phonebook.body.contains("bob@example.com")
    );
    // A contact for a company that does not exist is refused.
    portal
        .post_form(
            "/apps/phonebook/contacts",
            &session,
            &[("csrf", &csrf), ("name", "Nobody"), ("company_id", "999")],
        )
        .await;
    assert!(
        portal
            .get("/apps/phonebook", &session)
            .await
            .body
            .contains("company 999 does not exist")
    );

    // Delete, then delete again: the second click says so and harms nothing.
    let delete = format!("/apps/company/{id}/delete");
    portal
        .post_form(&delete, &session, &[("csrf", &csrf)])
        .await;
    portal
        .post_form(&delete, &session, &[("csrf", &csrf)])
        .await;
    let list = portal.get("/apps/company", &session).await;
    assert!(list.body.contains("already deleted"), "{}", list.body);
    assert_eq!(
        mirrorlab::apps::company::count(&portal.instance)
            .await
            .unwrap(),
        0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sql_page_runs_statements_in_a_namespace() {
    let portal = Portal::new();
    let (session, csrf) = portal.login().await;
    let insert = portal
        .post_form(
            "/portal/explorer/sql",
            &session,
            &[
                ("csrf", &csrf),
                ("namespace", "COMPANY"),
                (
                    "sql",
                    "INSERT INTO Company(name, created_at) VALUES ('Acme', 'now')",
                ),
            ],
        )
        .await;
    assert_eq!(insert.status, StatusCode::OK);
    assert!(
        insert
            .body
            .contains("1 row(s) affected; journaled at position 1"),
        "{}",
        insert.body
    );
    let select = portal
        .post_form(
            "/portal/explorer/sql",
            &session,
            &[
                ("csrf", &csrf),
                ("namespace", "PHONEBOOK"),
                ("sql", "SELECT id, name FROM Company"),
            ],
        )
        .await;
    assert!(select.body.contains("id=\"sql-result\""));
    assert!(select.body.contains("<td>Acme</td>"));
    assert!(
        select.body.contains("COMPANY.Company"),
        "tables of the namespace listed"
    );
    let broken = portal
        .post_form(
            "/portal/explorer/sql",
            &session,
            &[
                ("csrf", &csrf),
                ("namespace", "COMPANY"),
                ("sql", "SELEC nonsense"),
            ],
        )
        .await;
    assert_eq!(broken.status, StatusCode::BAD_REQUEST);
    assert!(broken.body.contains("id=\"sql-error\"") && broken.body.contains("syntax error"));
    assert!(
        broken.body.contains("SELEC nonsense"),
        "the statement is kept for correcting"
    );
    let unknown = portal
        .post_form(
            "/portal/explorer/sql",
            &session,
            &[("csrf", &csrf), ("namespace", "NOPE"), ("sql", "SELECT 1")],
        )
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert!(unknown.body.contains("namespace NOPE does not exist"));
}

#[tokio::test(flavor = "multi_thread")]
async fn mount_and_dismount_from_the_databases_page() {
    let portal = Portal::new();
    let (session, csrf) = portal.login().await;
    let reply = portal
        .post_form(
            "/portal/config/databases/COMPANY/dismount",
            &session,
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(reply.location.as_deref(), Some("/portal/config/databases"));
    let page = portal.get("/portal/config/databases", &session).await;
    assert!(page.body.contains("COMPANY dismounted"));
    assert!(page.body.contains("Dismounted"));
    // The application says why it cannot work.
    let company = portal.get("/apps/company", &session).await;
    assert!(
        company
            .body
            .contains("default database COMPANY is dismounted"),
        "{}",
        company.body
    );
    portal
        .post_form(
            "/portal/config/databases/COMPANY/mount",
            &session,
            &[("csrf", &csrf)],
        )
        .await;
    assert!(
        portal
            .get("/portal/config/databases", &session)
            .await
            .body
            .contains("COMPANY mounted")
    );
    let bad = portal
        .post_form(
            "/portal/config/databases/..%2Fetc/mount",
            &session,
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_journals_page_purges_files_nothing_needs() {
    let portal = Portal::with(|s| s.max_segment_bytes = 4096);
    let (session, csrf) = portal.login().await;
    for i in 0..100 {
        let reply = portal
            .api(
                "POST",
                "/api/apps/companies",
                Some(json!({"name": format!("company {i}")})),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    }
    let files = |reply: Reply| reply.json()["files"].as_array().unwrap().len();
    let before = files(portal.api("GET", "/api/journal", None).await);
    assert!(before > 2, "{before} files");
    let reply = portal
        .post_form(
            "/portal/operation/journals/purge",
            &session,
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(
        reply.location.as_deref(),
        Some("/portal/operation/journals")
    );
    let page = portal.get("/portal/operation/journals", &session).await;
    assert!(page.body.contains("purged "), "{}", page.body);
    assert_eq!(files(portal.api("GET", "/api/journal", None).await), 1);
    // The second click finds nothing more to do and says so.
    portal
        .post_form(
            "/portal/operation/journals/purge",
            &session,
            &[("csrf", &csrf)],
        )
        .await;
    let page = portal.get("/portal/operation/journals", &session).await;
    assert!(
        page.body.contains("no journal file could be purged"),
        "{}",
        page.body
    );
    // Nothing was lost: every company is still there.
    let list = portal.api("GET", "/api/apps/companies", None).await;
    assert_eq!(list.json().as_array().unwrap().len(), 100);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_password_can_be_changed() {
    let portal = Portal::new();
    let (session, csrf) = portal.login().await;
    assert!(
        portal
            .get("/portal/", &session)
            .await
            .body
            .contains("still uses the installed password")
    );
    let form = [
        ("csrf", csrf.as_str()),
        ("current", "SYS"),
        ("new_password", "s3cret"),
        ("confirm", "s3cret"),
    ];
    portal
        .post_form("/portal/security/password", &session, &form)
        .await;
    let page = portal.get("/portal/security/password", &session).await;
    assert!(page.body.contains("was changed"), "{}", page.body);
    assert!(!page.body.contains("still uses the installed password"));
    // The old password no longer opens the API; the new one does.
    assert_eq!(
        portal.api("GET", "/api/databases", None).await.status,
        StatusCode::UNAUTHORIZED
    );
    let stored = portal.instance.config.get().users[0].password_hash.clone();
    assert!(stored.starts_with("$argon2id$") && !stored.contains("s3cret"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_answers_bad_input_with_clear_json_errors() {
    let portal = Portal::new();
    let health = portal
        .send(Request::get("/api/health").body(Body::empty()).unwrap())
        .await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.json()["status"], "ok");

    let anonymous = portal
        .send(Request::get("/api/databases").body(Body::empty()).unwrap())
        .await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    assert!(
        anonymous.json()["error"]
            .as_str()
            .unwrap()
            .contains("authentication required")
    );

    let cases: Vec<(&str, &str, Option<Value>, StatusCode, &str)> = vec![
        (
            "POST",
            "/api/databases/NOPE/mount",
            None,
            StatusCode::NOT_FOUND,
            "database NOPE does not exist",
        ),
        (
            "POST",
            "/api/databases/a..b/mount",
            None,
            StatusCode::BAD_REQUEST,
            "contains",
        ),
        (
            "POST",
            "/api/databases/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA/mount",
            None,
            StatusCode::BAD_REQUEST,
            "too long",
        ),
        (
            "POST",
            "/api/databases/COMPANY/explode",
            None,
            StatusCode::NOT_FOUND,
            "no database action",
        ),
        (
            "POST",
            "/api/databases/COMPANY/add-to-mirror",
            None,
            StatusCode::CONFLICT,
            "not a mirror member",
        ),
        (
            "POST",
            "/api/sql",
            Some(json!({"namespace": "COMPANY", "sql": "SELECT * FROM Nope"})),
            StatusCode::BAD_REQUEST,
            "no such table",
        ),
        (
            "POST",
            "/api/sql",
            Some(json!({"namespace": "NOPE", "sql": "SELECT 1"})),
            StatusCode::NOT_FOUND,
            "namespace NOPE",
        ),
        (
            "POST",
            "/api/sql",
            Some(json!({"namespace": "COMPANY", "sql": "   "})),
            StatusCode::BAD_REQUEST,
            "empty",
        ),
        (
            "POST",
            "/api/sql",
            Some(json!({"namespace": "COMPANY", "sql": "SELECT ?1", "params": [[1]]})),
            StatusCode::BAD_REQUEST,
            "scalar",
        ),
        (
            "POST",
            "/api/sql",
            Some(json!({"sql": "SELECT 1"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "namespace",
        ),
        (
            "POST",
            "/api/apps/companies",
            Some(json!({"name": ""})),
            StatusCode::BAD_REQUEST,
            "Name is required",
        ),
        (
            "POST",
            "/api/apps/companies",
            Some(json!({"name": "x".repeat(201)})),
            StatusCode::BAD_REQUEST,
            "at most 200",
        ),
        (
            "POST",
            "/api/apps/contacts",
            Some(json!({"name": "Ann", "company_id": 42})),
            StatusCode::BAD_REQUEST,
            "company 42 does not exist",
        ),
        (
            "GET",
            "/api/apps/companies/abc",
            None,
            StatusCode::BAD_REQUEST,
            "whole number",
        ),
        (
            "GET",
            "/api/apps/companies/77",
            None,
            StatusCode::NOT_FOUND,
            "company 77 does not exist",
        ),
        (
            "DELETE",
            "/api/apps/customers/5",
            None,
            StatusCode::NOT_FOUND,
            "customer 5 does not exist",
        ),
        (
            "GET",
            "/api/apps/companies?limit=0",
            None,
            StatusCode::BAD_REQUEST,
            "limit",
        ),
        (
            "GET",
            "/api/no/such/thing",
            None,
            StatusCode::NOT_FOUND,
            "no such API endpoint",
        ),
    ];
    for (method, path, body, status, message) in cases {
        let reply = portal.api(method, path, body).await;
        assert_eq!(reply.status, status, "{method} {path}: {}", reply.body);
        let error = reply.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            error.contains(message),
            "{method} {path}: {error:?} lacks {message:?}"
        );
    }

    // Malformed and oversized bodies.
    let malformed = Request::post("/api/sql")
        .header(header::AUTHORIZATION, basic())
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{\"namespace\": "))
        .unwrap();
    let reply = portal.send(malformed).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.json()["error"].is_string());
    let huge =
        json!({"namespace": "COMPANY", "sql": format!("SELECT '{}'", "x".repeat(300 * 1024))});
    let reply = portal.api("POST", "/api/sql", Some(huge)).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(reply.json()["error"].is_string());

    // Dismount twice: the second says so. Writes to the dismounted database are refused.
    assert_eq!(
        portal
            .api("POST", "/api/databases/COMPANY/dismount", None)
            .await
            .json()["mounted"],
        false
    );
    let again = portal
        .api("POST", "/api/databases/COMPANY/dismount", None)
        .await;
    assert_eq!(again.status, StatusCode::OK);
    assert!(
        again.json()["message"]
            .as_str()
            .unwrap()
            .contains("already dismounted")
    );
    let write = portal
        .api("POST", "/api/apps/companies", Some(json!({"name": "Acme"})))
        .await;
    assert_eq!(write.status, StatusCode::CONFLICT);
    assert!(
        write.json()["error"]
            .as_str()
            .unwrap()
            .contains("dismounted")
    );
    let mounted = portal
        .api("POST", "/api/databases/COMPANY/mount", None)
        .await;
    assert_eq!(mounted.json()["mounted"], true);

    // SQL injection through the applications has no effect: values are parameters.
    let evil = "x'); DROP TABLE Company; --";
    let created = portal
        .api("POST", "/api/apps/companies", Some(json!({"name": evil})))
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let listed = portal.api("GET", "/api/apps/companies", None).await.json();
    assert_eq!(listed[0]["name"], evil);

    // A browser request from another site may not change anything, even with credentials.
    for (header, value) in [
        ("origin", "http://evil.example"),
        ("sec-fetch-site", "cross-site"),
    ] {
        let request = Request::post("/api/databases/COMPANY/dismount")
            .header(header::AUTHORIZATION, basic())
            .header(header, value)
            .body(Body::empty())
            .unwrap();
        let reply = portal.send(request).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{header}: {value}");
    }
    assert!(
        portal
            .instance
            .catalog
            .snapshot()
            .databases
            .values()
            .all(|d| d.mounted)
    );
    let same_site = Request::post("/api/databases/COMPANY/mount")
        .header(header::AUTHORIZATION, basic())
        .header("host", "localhost:52773")
        .header("origin", "http://localhost:52773")
        .body(Body::empty())
        .unwrap();
    assert_eq!(portal.send(same_site).await.status, StatusCode::OK);

    // Load balancers see a member that is not primary.
    let status = portal
        .send(Request::get("/mirror_status").body(Body::empty()).unwrap())
        .await;
    assert_eq!(
        (status.status, status.body.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "FAILED")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_runs_the_walkthrough_steps_of_a_standalone_member() {
    let portal = Portal::new();
    let company = portal
        .api(
            "POST",
            "/api/apps/companies",
            Some(json!({"name": "Acme", "mission": "Rockets", "revenue": 7})),
        )
        .await;
    assert_eq!(company.status, StatusCode::CREATED);
    let id = company.json()["id"].as_i64().unwrap();
    let contact = portal
        .api(
            "POST",
            "/api/apps/contacts",
            Some(json!({"name": "Ann", "phone": "555", "company_id": id})),
        )
        .await;
    assert_eq!(contact.status, StatusCode::CREATED, "{}", contact.body);
    let customer = portal
        .api(
            "POST",
            "/api/apps/customers",
            Some(json!({"name": "Bob", "email": "b@example.com"})),
        )
        .await;
    assert_eq!(customer.status, StatusCode::CREATED);
    let contacts = portal.api("GET", "/api/apps/contacts", None).await.json();
    assert_eq!(contacts[0]["company_name"], "Acme");
    let joined = portal
        .api(
            "POST",
            "/api/sql",
            Some(json!({"namespace": "PHONEBOOK", "sql": "SELECT c.name, co.name FROM Contact c JOIN Company co ON co.id = c.company_id WHERE co.id = ?1", "params": [id]})),
        )
        .await
        .json();
    assert_eq!(joined["rows"], json!([["Ann", "Acme"]]));
    let updated = portal
        .api(
            "PUT",
            &format!("/api/apps/companies/{id}"),
            Some(json!({"name": "Acme Inc"})),
        )
        .await;
    assert_eq!(updated.json()["name"], "Acme Inc");
    let journal = portal.api("GET", "/api/journal", None).await.json();
    assert_eq!(journal["end_position"], 4);
    let databases = portal.api("GET", "/api/databases", None).await.json();
    let company_db = databases
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "COMPANY")
        .unwrap();
    assert_eq!(company_db["applied_position"], 4);
    assert_eq!(company_db["read_only"], false);
    assert_eq!(company_db["mirrored"], Value::Null);
}
