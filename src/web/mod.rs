//! The web side of the instance: the management portal, the demo applications' pages and the
//! `/api` endpoints, all on the web port.
//!
//! # Shape
//!
//! [`router`] builds one axum `Router` from a member's [`Node`]; tests call it directly with
//! `tower::ServiceExt::oneshot`, the binary serves it. Every URL is listed in one table,
//! [`routes`] (apps included); the handlers live beside what they show. The Mirror Monitor's
//! actions are one enum ([`crate::mirror::service::MonitorAction`]) that the page's buttons and
//! `/api/mirror/...` both parse into. Pages are askama templates rendered on the
//! server and work without JavaScript: every action is a form post answered with a redirect
//! (post/redirect/get), its result shown once as a flash message. Every form carries the
//! session's CSRF token. Each portal action is also a JSON endpoint under `/api`, with the same
//! messages and status codes as the page shows.
//!
//! # Menus
//!
//! The menu follows the IRIS Management Portal so the article can be followed literally: System
//! Administration (Configuration › Mirror Settings; System Configuration › Local Databases,
//! Databases, Namespaces; Security), System Operation (Mirror Monitor, Journals), System
//! Explorer (SQL), and the COMPANY and PHONEBOOK applications.
//!
//! # Hardening
//!
//! Every answer says it may not be framed by another page (`X-Frame-Options: DENY` and CSP
//! `frame-ancestors 'none'`: a page of another port of the same host is another origin, and could
//! otherwise overlay the Mirror Settings page to steal clicks), must not be sniffed into another
//! type (`nosniff`), and sends no `Referer` to other sites. The port itself is bounded against
//! slow and crowding clients in [`serve`]; logins are throttled per source in [`auth`].
//!
//! # Left out
//!
//! TLS for the portal.

pub(crate) mod api;
pub mod auth;
pub(crate) mod error;
pub(crate) mod lab;
pub(crate) mod metrics;
pub(crate) mod mirror;
pub(crate) mod portal;
pub(crate) mod routes;
pub mod serve;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultOnFailure, TraceLayer};

use crate::error::Error;
use crate::instance::Instance;
use crate::mirror::service::MirrorService;
use crate::mirror::state::MirrorState;
use crate::node::Node;

use auth::{Auth, Flash, PortalUser};
use error::{ApiError, PageError};

/// Largest request body accepted (forms, JSON, SQL text).
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// A request that takes longer than this is answered with 408.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// What every handler gets.
#[derive(Clone)]
pub struct AppState {
    /// The instance.
    pub instance: Arc<Instance>,
    /// The mirror's runtime state (roles, links, the monitor's figures).
    pub mirror: Arc<MirrorState>,
    /// The mirror's actions.
    pub mirror_service: Arc<MirrorService>,
    /// Sessions and credentials.
    pub auth: Arc<Auth>,
    /// The Lab page's faults and ledger (with `--lab`).
    pub lab: Option<Arc<crate::lab::Lab>>,
}

/// The whole web application of an instance.
pub fn router(node: &Node) -> Router {
    let instance = node.instance.clone();
    let auth = Arc::new(Auth::new(
        instance.config.clone(),
        &instance.config.get().instance_guid,
    ));
    let lab = instance.settings.lab.then(Default::default);
    let state = AppState {
        instance,
        mirror: node.mirror.clone(),
        mirror_service: node.mirror_service.clone(),
        auth,
        lab,
    };
    routes::all(&state)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        // A 5xx answer is not an ERROR line by itself: a backup answers `/mirror_status` with
        // 503 to every poll of a load balancer, as it should. Failures that are ours are logged
        // where they happen, with their reason (`error.rs`).
        .layer(
            TraceLayer::new_for_http()
                .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        )
        .layer(SetResponseHeaderLayer::overriding(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("frame-ancestors 'none'; base-uri 'none'; object-src 'none'"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("same-origin"),
        ))
        .with_state(state)
}

/// Load balancers ask this: 200 `SUCCESS` only while this member would acknowledge a write
/// now — the primary, decided, not in trouble, its active backup (if any) answering, writes
/// not frozen, its writer healthy — and 503 `FAILED` otherwise. A primary that is cut off stops
/// saying SUCCESS long before another member takes over, so the balancer moves in time.
async fn mirror_status(axum::extract::State(state): axum::extract::State<AppState>) -> Response {
    let instance = &state.instance;
    let mirror = &state.mirror;
    if mirror.is_settled_primary()
        && mirror.hub.acknowledging_now()
        && !instance.writer().frozen()
        && instance.failure().is_none()
    {
        (StatusCode::OK, "SUCCESS").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "FAILED").into_response()
    }
}

async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        include_str!("../../static/portal.css"),
    )
        .into_response()
}

async fn refresh_script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        include_str!("../../static/refresh.js"),
    )
        .into_response()
}

async fn favicon() -> Response {
    (
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "max-age=86400"),
        ],
        include_str!("../../static/favicon.svg"),
    )
        .into_response()
}

async fn api_not_found() -> ApiError {
    ApiError(Error::NotFound("no such API endpoint".into()))
}

async fn page_not_found() -> PageError {
    PageError(Error::NotFound("there is no page at this address".into()))
}

/// The parts of every portal page around its content.
pub struct Layout {
    /// Page title.
    pub title: String,
    /// Menu path to the page.
    pub crumbs: Vec<&'static str>,
    /// Which menu entry is highlighted.
    pub nav: &'static str,
    /// Host name.
    pub host: String,
    /// Instance name.
    pub instance: String,
    /// Logged-in user.
    pub user: String,
    /// CSRF token for the page's forms.
    pub csrf: String,
    /// Message left by the previous post.
    pub flash: Option<Flash>,
    /// Mirror role shown in the header.
    pub mirror: String,
    /// True while the user still has the installed password.
    pub default_password: bool,
    /// The menu shows the Lab page.
    pub lab: bool,
}

impl Layout {
    /// A layout for `user` on a page.
    pub fn new(
        state: &AppState,
        user: &PortalUser,
        title: impl Into<String>,
        crumbs: Vec<&'static str>,
        nav: &'static str,
    ) -> Self {
        let config = state.instance.config.get();
        let default_password = config
            .users
            .iter()
            .any(|u| u.name == user.name && u.default_password);
        Layout {
            title: title.into(),
            crumbs,
            nav,
            host: state.instance.settings.host_name.clone(),
            instance: state.instance.settings.instance_name.clone(),
            user: user.name.clone(),
            csrf: user.csrf.clone(),
            flash: user.flash.clone(),
            mirror: mirror_label(state),
            default_password,
            lab: state.lab.is_some(),
        }
    }
}

/// `MIRRORSET: Primary`, or `Not a member`, for the page header.
fn mirror_label(state: &AppState) -> String {
    let config = state.instance.config.get();
    match &config.mirror.membership {
        None => "Not a member".into(),
        Some(m) => {
            format!("{}: {}", m.mirror.name, state.mirror.role().display())
        }
    }
}

/// Leaves `result`'s message as the next page's flash and redirects to `to`.
pub fn flash_and_redirect(
    state: &AppState,
    user: &PortalUser,
    result: crate::error::Result<String>,
    to: &str,
) -> Response {
    match result {
        Ok(message) => state.auth.flash(&user.token, true, message),
        Err(err) => state.auth.flash(&user.token, false, err.to_string()),
    }
    Redirect::to(to).into_response()
}
