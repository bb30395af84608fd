//! The management portal's pages: login, home, mirror settings and monitor, databases,
//! namespaces, journals, the SQL page and the password page.

use askama::Template;
use askama_web::WebTemplate;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use crate::error::Error;
use crate::instance::sql::display_value;
use crate::instance::users::{check_new_password, hash_password};
use crate::names::{DbName, NamespaceName};
use crate::util::{format_bytes, format_time, random_hex};

use super::auth::{
    CsrfForm, Login, PortalUser, constant_time_eq, cookie, from_another_site, set_cookie,
    with_cookie,
};
use super::error::PageError;
use super::serve::Peer;
use super::{AppState, Layout, flash_and_redirect};

type PageResult<T> = Result<T, PageError>;

// ---------------------------------------------------------------------------------------------
// Login and logout

#[derive(Template, WebTemplate)]
#[template(path = "login.html")]
struct LoginPage {
    host: String,
    instance: String,
    csrf: String,
    next: String,
    username: String,
    error: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct LoginQuery {
    next: Option<String>,
}

/// Only local paths are followed after login, never another site.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.contains('\\')
                && n.chars().all(|c| !c.is_control() && !c.is_whitespace())
                && !n.starts_with("/portal/login") =>
        {
            n.to_string()
        }
        _ => "/portal/".to_string(),
    }
}

fn login_form(
    state: &AppState,
    next: String,
    username: String,
    error: Option<String>,
    status: StatusCode,
) -> Response {
    // The cookie holds a random nonce, the form a keyed hash of it: the pair only passes
    // together, and only if this process made it.
    let nonce = random_hex(16);
    let page = LoginPage {
        host: state.instance.settings.host_name.clone(),
        instance: state.instance.settings.instance_name.clone(),
        csrf: state.auth.login_token(&nonce),
        next,
        username,
        error,
    };
    with_cookie(
        (status, page).into_response(),
        set_cookie(&state.auth.login_cookie, &nonce, Some(3600)),
    )
}

pub(crate) async fn login_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<LoginQuery>,
) -> Response {
    let next = safe_next(query.next.as_deref());
    if state.auth.user_of(&headers, false).is_some() {
        return Redirect::to(&next).into_response();
    }
    login_form(&state, next, String::new(), None, StatusCode::OK)
}

#[derive(Deserialize)]
pub(crate) struct LoginForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    next: String,
}

pub(crate) async fn login_submit(
    State(state): State<AppState>,
    Peer(source): Peer,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let next = safe_next(Some(&form.next));
    let nonce = cookie(&headers, &state.auth.login_cookie).unwrap_or_default();
    let expected = state.auth.login_token(&nonce);
    // A login posted from another site is refused too (a forged login would leave the victim
    // working in the attacker's session).
    if nonce.is_empty()
        || !constant_time_eq(expected.as_bytes(), form.csrf.as_bytes())
        || from_another_site(&headers)
    {
        let why = "The login form expired or cookies are disabled; please try again.".to_string();
        return login_form(
            &state,
            next,
            form.username,
            Some(why),
            StatusCode::FORBIDDEN,
        );
    }
    let login = state
        .auth
        .login(source, &form.username, &form.password)
        .await;
    let refusal = match login {
        Login::Accepted(_) => None,
        Login::Refused => Some((
            "Wrong user name or password.".to_string(),
            StatusCode::UNAUTHORIZED,
        )),
        Login::Throttled(wait) => Some((
            format!(
                "Too many wrong passwords from this address: try again in {} seconds.",
                wait.as_secs() + 1
            ),
            StatusCode::TOO_MANY_REQUESTS,
        )),
        Login::Busy => Some((
            "Too many logins are being checked at once; please try again in a moment.".to_string(),
            StatusCode::SERVICE_UNAVAILABLE,
        )),
    };
    if let Some((why, status)) = refusal {
        return login_form(&state, next, form.username, Some(why), status);
    }
    let token = state.auth.create_session(&form.username);
    let response = with_cookie(
        Redirect::to(&next).into_response(),
        set_cookie(&state.auth.cookie, &token, None),
    );
    with_cookie(response, set_cookie(&state.auth.login_cookie, "", Some(0)))
}

#[derive(Deserialize)]
pub(crate) struct Empty {}

pub(crate) async fn logout(
    State(state): State<AppState>,
    CsrfForm(user, Empty {}): CsrfForm<Empty>,
) -> Response {
    state.auth.end_session(&user.token);
    with_cookie(
        Redirect::to("/portal/login").into_response(),
        set_cookie(&state.auth.cookie, "", Some(0)),
    )
}

// ---------------------------------------------------------------------------------------------
// Home

#[derive(Template, WebTemplate)]
#[template(path = "portal/home.html")]
pub(crate) struct HomePage {
    layout: Layout,
    version: &'static str,
    sqlite_version: &'static str,
    started: String,
    data_dir: String,
    web: String,
    superserver: String,
    agent: String,
    journal_end: String,
    databases: usize,
    mounted: usize,
}

pub(crate) async fn home(State(state): State<AppState>, user: PortalUser) -> HomePage {
    let instance = &state.instance;
    let catalog = instance.catalog.snapshot();
    HomePage {
        layout: Layout::new(&state, &user, "Home", vec!["Management Portal"], "home"),
        version: env!("CARGO_PKG_VERSION"),
        sqlite_version: rusqlite::version(),
        started: format_time(instance.started_ms),
        data_dir: instance.settings.data_dir.display().to_string(),
        web: instance.settings.web.clone(),
        superserver: instance.settings.superserver.clone(),
        agent: instance.settings.agent.clone(),
        journal_end: instance.journal.durable_end().to_string(),
        databases: catalog.databases.len(),
        mounted: catalog.databases.values().filter(|d| d.mounted).count(),
    }
}

// ---------------------------------------------------------------------------------------------
// Databases and namespaces

pub(super) struct DatabaseRow {
    pub(super) name: String,
    pub(super) directory: String,
    pub(super) mounted: bool,
    pub(super) read_only: bool,
    pub(super) mirrored: Option<String>,
    pub(super) size: String,
    pub(super) applied: String,
}

pub(super) async fn database_rows(state: &AppState) -> Result<Vec<DatabaseRow>, Error> {
    Ok(state
        .instance
        .databases()
        .await?
        .into_iter()
        .map(|d| DatabaseRow {
            name: d.name.to_string(),
            directory: d.directory,
            mounted: d.mounted,
            read_only: d.read_only,
            mirrored: d.mirrored,
            size: format_bytes(d.size_bytes),
            applied: d
                .applied_pos
                .map(|p| p.to_string())
                .unwrap_or_else(|| "—".into()),
        })
        .collect())
}

#[derive(Template, WebTemplate)]
#[template(path = "portal/databases.html")]
pub(crate) struct DatabasesPage {
    layout: Layout,
    databases: Vec<DatabaseRow>,
}

pub(crate) async fn databases(
    State(state): State<AppState>,
    user: PortalUser,
) -> PageResult<DatabasesPage> {
    let crumbs = vec![
        "System Administration",
        "Configuration",
        "System Configuration",
    ];
    Ok(DatabasesPage {
        layout: Layout::new(&state, &user, "Databases", crumbs, "databases"),
        databases: database_rows(&state).await?,
    })
}

pub(crate) async fn database_action(
    State(state): State<AppState>,
    Path((db, action)): Path<(String, String)>,
    CsrfForm(user, Empty {}): CsrfForm<Empty>,
) -> PageResult<Response> {
    let db = DbName::new(&db)?;
    let result = match action.as_str() {
        "mount" => state.instance.mount(db).await,
        "dismount" => state.instance.dismount(db).await,
        other => {
            return Err(Error::NotFound(format!("there is no database action {other:?}")).into());
        }
    };
    Ok(flash_and_redirect(
        &state,
        &user,
        result,
        "/portal/config/databases",
    ))
}

struct NamespaceRow {
    name: String,
    default_db: String,
    mapped: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "portal/namespaces.html")]
pub(crate) struct NamespacesPage {
    layout: Layout,
    namespaces: Vec<NamespaceRow>,
}

pub(crate) async fn namespaces(State(state): State<AppState>, user: PortalUser) -> NamespacesPage {
    let catalog = state.instance.catalog.snapshot();
    let namespaces = catalog
        .namespaces
        .values()
        .map(|n| NamespaceRow {
            name: n.name.to_string(),
            default_db: n.default_db.to_string(),
            mapped: n
                .mapped
                .iter()
                .map(|d| d.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
        .collect();
    let crumbs = vec![
        "System Administration",
        "Configuration",
        "System Configuration",
    ];
    NamespacesPage {
        layout: Layout::new(&state, &user, "Namespaces", crumbs, "namespaces"),
        namespaces,
    }
}

// ---------------------------------------------------------------------------------------------
// Journals

struct SegmentRow {
    name: String,
    first: u64,
    created: String,
    size: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "portal/journals.html")]
pub(crate) struct JournalsPage {
    layout: Layout,
    local: JournalView,
    mirror: Option<JournalView>,
}

/// One journal's facts and files, newest file first.
struct JournalView {
    directory: String,
    end: u64,
    current: String,
    total_size: String,
    appended: u64,
    syncs: u64,
    per_sync: String,
    segments: Vec<SegmentRow>,
}

impl JournalView {
    fn of(journal: &crate::journal::JournalShared) -> JournalView {
        let segments = journal.segments();
        let (appended, syncs) = (journal.appended(), journal.syncs());
        JournalView {
            directory: journal.dir().display().to_string(),
            end: journal.durable_end().0,
            current: segments.last().map(|s| s.name.clone()).unwrap_or_default(),
            total_size: format_bytes(segments.iter().map(|s| s.bytes).sum()),
            appended,
            syncs,
            per_sync: format!("{:.1}", appended as f64 / syncs.max(1) as f64),
            segments: segments
                .iter()
                .rev()
                .map(|s| SegmentRow {
                    name: s.name.clone(),
                    first: s.first_pos.0,
                    created: format_time(s.created_ms),
                    size: format_bytes(s.bytes),
                })
                .collect(),
        }
    }
}

pub(crate) async fn journals(State(state): State<AppState>, user: PortalUser) -> JournalsPage {
    JournalsPage {
        layout: Layout::new(
            &state,
            &user,
            "Journals",
            vec!["System Operation"],
            "journals",
        ),
        local: JournalView::of(&state.instance.journal),
        mirror: state.mirror.journal().map(|j| JournalView::of(&j)),
    }
}

pub(crate) async fn purge_journals(
    State(state): State<AppState>,
    CsrfForm(user, Empty {}): CsrfForm<Empty>,
) -> Response {
    let result = state
        .instance
        .purge_journals()
        .await
        .map(|report| report.message());
    flash_and_redirect(&state, &user, result, "/portal/operation/journals")
}

// ---------------------------------------------------------------------------------------------
// System Explorer > SQL

struct SqlView {
    summary: String,
    columns: Vec<String>,
    rows: Vec<Vec<String>>,
}

#[derive(Template, WebTemplate)]
#[template(path = "portal/sql.html")]
struct SqlPage {
    layout: Layout,
    namespaces: Vec<String>,
    namespace: String,
    sql: String,
    tables: Vec<String>,
    result: Option<SqlView>,
    error: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct SqlQuery {
    namespace: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct SqlForm {
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    sql: String,
}

/// The tables reachable from a namespace, qualified by database.
async fn tables_of(state: &AppState, namespace: &NamespaceName) -> Vec<String> {
    let listed = state
        .instance
        .read(
            namespace,
            "SELECT schema, name FROM pragma_table_list
             WHERE type = 'table' AND schema NOT IN ('temp', 'main') AND name NOT LIKE 'sqlite%' AND name <> 'mirrorlab_meta'
             ORDER BY schema, name",
            vec![],
        )
        .await;
    listed
        .map(|r| {
            r.rows
                .iter()
                .map(|row| format!("{}.{}", display_value(&row[0]), display_value(&row[1])))
                .collect()
        })
        .unwrap_or_default()
}

async fn sql_view(state: &AppState, user: &PortalUser, namespace: String, sql: String) -> Response {
    let names: Vec<String> = state
        .instance
        .catalog
        .snapshot()
        .namespaces
        .keys()
        .map(|n| n.to_string())
        .collect();
    let namespace = if namespace.is_empty() {
        names.first().cloned().unwrap_or_default()
    } else {
        namespace
    };
    let mut page = SqlPage {
        layout: Layout::new(state, user, "SQL", vec!["System Explorer"], "sql"),
        namespaces: names,
        namespace: namespace.clone(),
        sql: sql.clone(),
        tables: Vec::new(),
        result: None,
        error: None,
    };
    let ns = match NamespaceName::new(&namespace) {
        Ok(ns) => ns,
        Err(err) => {
            page.error = Some(err.to_string());
            return (StatusCode::BAD_REQUEST, page).into_response();
        }
    };
    page.tables = tables_of(state, &ns).await;
    if sql.trim().is_empty() {
        return page.into_response();
    }
    match state.instance.sql(&ns, sql, vec![]).await {
        Ok(result) => {
            let mut summary = if result.columns.is_empty() {
                format!("{} row(s) affected", result.rows_affected)
            } else {
                format!("{} row(s)", result.rows.len())
            };
            if result.truncated {
                summary.push_str(" (only the first rows are shown)");
            }
            if let Some(pos) = result.position {
                summary.push_str(&format!("; journaled at position {pos}"));
            }
            page.result = Some(SqlView {
                summary,
                columns: result.columns,
                rows: result
                    .rows
                    .iter()
                    .map(|r| r.iter().map(display_value).collect())
                    .collect(),
            });
            page.into_response()
        }
        Err(err) => {
            let status = StatusCode::from_u16(err.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
            page.error = Some(err.to_string());
            (status, page).into_response()
        }
    }
}

pub(crate) async fn sql_page(
    State(state): State<AppState>,
    user: PortalUser,
    Query(query): Query<SqlQuery>,
) -> Response {
    sql_view(
        &state,
        &user,
        query.namespace.unwrap_or_default(),
        String::new(),
    )
    .await
}

pub(crate) async fn sql_run(
    State(state): State<AppState>,
    CsrfForm(user, form): CsrfForm<SqlForm>,
) -> Response {
    sql_view(&state, &user, form.namespace, form.sql).await
}

// ---------------------------------------------------------------------------------------------
// Security > Change Password

#[derive(Template, WebTemplate)]
#[template(path = "portal/password.html")]
pub(crate) struct PasswordPage {
    layout: Layout,
}

pub(crate) async fn password_page(State(state): State<AppState>, user: PortalUser) -> PasswordPage {
    let crumbs = vec!["System Administration", "Security"];
    PasswordPage {
        layout: Layout::new(&state, &user, "Change Password", crumbs, "password"),
    }
}

#[derive(Deserialize)]
pub(crate) struct PasswordForm {
    #[serde(default)]
    current: String,
    #[serde(default)]
    new_password: String,
    #[serde(default)]
    confirm: String,
}

/// Changes `user`'s password after checking the current one.
pub async fn change_password(
    state: &AppState,
    user: &str,
    current: Option<String>,
    new_password: String,
) -> Result<String, Error> {
    check_new_password(&new_password)?;
    let auth = state.auth.clone();
    let config = state.instance.config.clone();
    let name = user.to_string();
    // Hashing is slow on purpose and the configuration write fsyncs: both off the async threads,
    // and under the bound of every password check.
    let changed = state.auth.with_check_permit(move || {
        if let Some(current) = current
            && !auth.check_password(&name, &current)
        {
            return Err(Error::InvalidInput("the current password is wrong".into()));
        }
        let hash = hash_password(&new_password)?;
        config.update(|c| {
            let entry = c
                .users
                .iter_mut()
                .find(|u| u.name == name)
                .ok_or_else(|| Error::NotFound(format!("user {name} does not exist")))?;
            entry.password_hash = hash;
            entry.default_password = false;
            Ok(())
        })?;
        Ok(format!("the password of {name} was changed"))
    });
    changed.await.unwrap_or_else(|| {
        Err(Error::Unavailable(
            "too many passwords are being checked at once: try again in a moment".into(),
        ))
    })
}

pub(crate) async fn password_change(
    State(state): State<AppState>,
    CsrfForm(user, form): CsrfForm<PasswordForm>,
) -> Response {
    let result = if form.new_password != form.confirm {
        Err(Error::InvalidInput(
            "the new password and its confirmation differ".into(),
        ))
    } else {
        change_password(&state, &user.name, Some(form.current), form.new_password).await
    };
    if result.is_ok() {
        state.auth.password_changed(&user.name, &user.token);
    }
    flash_and_redirect(&state, &user, result, "/portal/security/password")
}
