//! Logging in: portal sessions with CSRF tokens, and HTTP Basic for `/api`.
//!
//! # Portal
//!
//! A successful login creates a session: a random token in an `HttpOnly`, `SameSite=Lax` cookie
//! whose name carries this instance's id (two lab members on `localhost:52775` and
//! `localhost:52776` share a cookie jar, since cookies ignore ports). Each session has its own
//! CSRF token, embedded in every form; a form posted without the right token is refused. The
//! login form itself is protected the same way with a short-lived pre-login cookie. Sessions live
//! in memory, expire after [`SESSION_IDLE_MS`] without use, and end when the instance restarts.
//!
//! # API
//!
//! `/api` takes HTTP Basic credentials of a portal user. Argon2 is deliberately slow, so a
//! header that verified once is remembered (in memory, until a password changes). `GET`
//! requests also accept a portal session, so the portal's own pages can refresh from `/api`.
//! Writes through `/api` need Basic credentials and a JSON body, which a cross-site form cannot
//! send.
//!
//! # Guessing
//!
//! After [`FREE_FAILURES`] wrong passwords in a row for one user name, every further attempt
//! with that name — form or Basic — is refused without checking the password until a wait has
//! passed: one second, doubling with each further failure, at most [`MAX_LOCKOUT`]. A right
//! password after the wait clears the count. Credentials verified before keep working (a guesser
//! cannot lock out the scripts already logged in), and an unknown name counts like a known one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::header::{AUTHORIZATION, COOKIE, SET_COOKIE, WWW_AUTHENTICATE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine;
use serde::de::DeserializeOwned;

use crate::error::Error;
use crate::instance::config::ConfigStore;
use crate::instance::users::{hash_password, verify_password};
use crate::util::{now_ms, random_hex};

use super::AppState;
use super::error::{ApiError, PageError};

/// A session ends after this long without a request.
pub const SESSION_IDLE_MS: i64 = 8 * 3600 * 1000;
/// Verified Basic headers remembered at most.
const MAX_CACHED_CREDENTIALS: usize = 64;

/// A message shown once on the next page (the result of a form post).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flash {
    /// Success (true) or failure (false).
    pub ok: bool,
    /// The text.
    pub text: String,
}

#[derive(Debug, Clone)]
struct SessionData {
    user: String,
    csrf: String,
    expires_ms: i64,
    flash: Option<Flash>,
}

/// Wrong passwords in a row for one user name before attempts must wait.
pub const FREE_FAILURES: u32 = 5;
/// The longest wait between attempts after repeated failures.
pub const MAX_LOCKOUT: std::time::Duration = std::time::Duration::from_secs(300);
/// User names whose failures are remembered at most (a flood of names starts over).
const MAX_TRACKED_NAMES: usize = 10_000;

/// Failed logins of one user name.
#[derive(Debug, Default)]
struct Failures {
    in_a_row: u32,
    locked_until: Option<std::time::Instant>,
}

/// The outcome of a login attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Login {
    /// The password is right: the user's name.
    Accepted(String),
    /// Wrong user name or password (or none given).
    Refused,
    /// Too many failures for this name: try again after this long.
    Throttled(std::time::Duration),
}

/// Sessions and remembered credentials.
pub struct Auth {
    config: Arc<ConfigStore>,
    sessions: Mutex<HashMap<String, SessionData>>,
    verified_basic: Mutex<HashMap<String, String>>,
    failures: Mutex<HashMap<String, Failures>>,
    /// Bumped on every password change.
    password_generation: std::sync::atomic::AtomicU64,
    /// Bounds concurrent password checks.
    checks: tokio::sync::Semaphore,
    dummy_hash: OnceLock<String>,
    /// Name of the session cookie.
    pub cookie: String,
    /// Name of the pre-login cookie that protects the login form.
    pub login_cookie: String,
}

/// A logged-in portal user (extractor). Not logged in: a redirect to the login page.
#[derive(Debug, Clone)]
pub struct PortalUser {
    /// User name.
    pub name: String,
    /// The session's CSRF token, for the forms of the page.
    pub csrf: String,
    /// The session token.
    pub token: String,
    /// A message left by the previous form post.
    pub flash: Option<Flash>,
}

impl Auth {
    /// Sessions for an instance whose id is `instance_guid`.
    pub fn new(config: Arc<ConfigStore>, instance_guid: &str) -> Self {
        let tag: String = instance_guid.chars().take(8).collect();
        Auth {
            config,
            sessions: Mutex::new(HashMap::new()),
            verified_basic: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            password_generation: std::sync::atomic::AtomicU64::new(0),
            checks: tokio::sync::Semaphore::new(4),
            dummy_hash: OnceLock::new(),
            cookie: format!("mirrorlab_{tag}"),
            login_cookie: format!("mirrorlab_login_{tag}"),
        }
    }

    /// Checks a user name and password (slow: call from a blocking thread).
    pub fn check_password(&self, user: &str, password: &str) -> bool {
        let config = self.config.get();
        match config.users.iter().find(|u| u.name == user) {
            Some(u) => verify_password(&u.password_hash, password),
            None => {
                // Spend the same time for unknown users, so timing does not tell which exist.
                let dummy = self
                    .dummy_hash
                    .get_or_init(|| hash_password("not a password").unwrap_or_default());
                let _ = verify_password(dummy, password);
                false
            }
        }
    }

    /// A login attempt: the password is checked unless the name must wait (slow: call from a
    /// blocking thread).
    pub fn attempt_login(&self, user: &str, password: &str) -> Login {
        if let Some(wait) = self.lockout(user) {
            return Login::Throttled(wait);
        }
        if self.check_password(user, password) {
            self.failures.lock().unwrap().remove(user);
            return Login::Accepted(user.to_string());
        }
        let mut failures = self.failures.lock().unwrap();
        if failures.len() >= MAX_TRACKED_NAMES && !failures.contains_key(user) {
            failures.clear();
        }
        let entry = failures.entry(user.to_string()).or_default();
        entry.in_a_row += 1;
        if entry.in_a_row >= FREE_FAILURES {
            let doublings = (entry.in_a_row - FREE_FAILURES).min(16);
            let wait = std::time::Duration::from_secs(1 << doublings).min(MAX_LOCKOUT);
            entry.locked_until = Some(std::time::Instant::now() + wait);
        }
        Login::Refused
    }

    /// How long attempts for `user` must still wait, if they must.
    fn lockout(&self, user: &str) -> Option<std::time::Duration> {
        let failures = self.failures.lock().unwrap();
        let until = failures.get(user)?.locked_until?;
        until.checked_duration_since(std::time::Instant::now())
    }

    /// Starts a session; returns its token.
    pub fn create_session(&self, user: &str) -> String {
        let token = random_hex(32);
        let data = SessionData {
            user: user.to_string(),
            csrf: random_hex(32),
            expires_ms: now_ms() + SESSION_IDLE_MS,
            flash: None,
        };
        let mut sessions = self.sessions.lock().unwrap();
        let now = now_ms();
        sessions.retain(|_, s| s.expires_ms > now);
        sessions.insert(token.clone(), data);
        token
    }

    /// Ends a session.
    pub fn end_session(&self, token: &str) {
        self.sessions.lock().unwrap().remove(token);
    }

    /// Leaves a message for the next page of this session.
    pub fn flash(&self, token: &str, ok: bool, text: impl Into<String>) {
        if let Some(s) = self.sessions.lock().unwrap().get_mut(token) {
            s.flash = Some(Flash {
                ok,
                text: text.into(),
            });
        }
    }

    /// Ends every session of `user` but `keep`, and forgets remembered credentials (after a
    /// password change).
    pub fn password_changed(&self, user: &str, keep: &str) {
        self.sessions
            .lock()
            .unwrap()
            .retain(|token, s| s.user != user || token == keep);
        self.verified_basic.lock().unwrap().clear();
    }

    fn session(&self, token: &str, take_flash: bool) -> Option<PortalUser> {
        let mut sessions = self.sessions.lock().unwrap();
        let now = now_ms();
        let data = sessions.get_mut(token)?;
        if data.expires_ms <= now {
            sessions.remove(token);
            return None;
        }
        data.expires_ms = now + SESSION_IDLE_MS;
        Some(PortalUser {
            name: data.user.clone(),
            csrf: data.csrf.clone(),
            token: token.to_string(),
            flash: if take_flash { data.flash.take() } else { None },
        })
    }

    /// The portal user of a request, if its session cookie is valid.
    pub fn user_of(&self, headers: &HeaderMap, take_flash: bool) -> Option<PortalUser> {
        let token = cookie(headers, &self.cookie)?;
        self.session(&token, take_flash)
    }

    /// The user named by a Basic `Authorization` header: accepted, refused (also without a
    /// header), or throttled after too many failures.
    pub async fn basic_user(self: &Arc<Self>, headers: &HeaderMap) -> Login {
        self.check_basic(headers).await.unwrap_or(Login::Refused)
    }

    async fn check_basic(self: &Arc<Self>, headers: &HeaderMap) -> Option<Login> {
        let header = headers.get(AUTHORIZATION)?.to_str().ok()?.to_string();
        if let Some(user) = self.verified_basic.lock().unwrap().get(&header) {
            return Some(Login::Accepted(user.clone()));
        }
        // A password change while this check runs must not let the old password back in.
        let generation = self
            .password_generation
            .load(std::sync::atomic::Ordering::Acquire);
        // Argon2 is slow and memory-hungry on purpose: a few checks at a time.
        let _permit = self.checks.acquire().await.ok()?;
        let encoded = header.strip_prefix("Basic ")?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (user, password) = decoded.split_once(':')?;
        let (user, password) = (user.to_string(), password.to_string());
        let auth = self.clone();
        let login = tokio::task::spawn_blocking(move || auth.attempt_login(&user, &password))
            .await
            .ok()?;
        let Login::Accepted(ok) = login else {
            return Some(login);
        };
        let mut cache = self.verified_basic.lock().unwrap();
        if self
            .password_generation
            .load(std::sync::atomic::Ordering::Acquire)
            != generation
        {
            return None;
        }
        if cache.len() >= MAX_CACHED_CREDENTIALS {
            cache.clear();
        }
        cache.insert(header, ok.clone());
        Some(Login::Accepted(ok))
    }
}

/// The value of cookie `name` in the request headers.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// A `Set-Cookie` value for a session-scoped, script-invisible cookie.
pub fn set_cookie(name: &str, value: &str, max_age_s: Option<i64>) -> HeaderValue {
    let age = max_age_s
        .map(|s| format!("; Max-Age={s}"))
        .unwrap_or_default();
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; HttpOnly; SameSite=Lax{age}"
    ))
    .expect("cookie values are hex")
}

/// Where to send a person who is not logged in.
fn to_login(parts: &Parts) -> Response {
    let next = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/portal/");
    let next = if parts.method == Method::GET {
        next
    } else {
        "/portal/"
    };
    let encoded: String = serde_urlencoded::to_string([("next", next)]).unwrap_or_default();
    Redirect::to(&format!("/portal/login?{encoded}")).into_response()
}

impl FromRequestParts<AppState> for PortalUser {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let take_flash = parts.method == Method::GET;
        state
            .auth
            .user_of(&parts.headers, take_flash)
            .ok_or_else(|| to_login(parts))
    }
}

/// A form post from a logged-in user whose CSRF token matched (extractor). `T` is the form.
pub struct CsrfForm<T>(pub PortalUser, pub T);

#[derive(serde::Deserialize)]
struct CsrfField {
    #[serde(default)]
    csrf: String,
}

impl<T: DeserializeOwned + Send> FromRequest<AppState> for CsrfForm<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = req.into_parts();
        let user = PortalUser::from_request_parts(&mut parts, state).await?;
        let bytes = Bytes::from_request(Request::from_parts(parts, body), state)
            .await
            .map_err(|rejection| rejection.into_response())?;
        let token = serde_urlencoded::from_bytes::<CsrfField>(&bytes)
            .map(|f| f.csrf)
            .unwrap_or_default();
        if !constant_time_eq(token.as_bytes(), user.csrf.as_bytes()) {
            return Err(PageError(Error::Conflict(
                "this form is out of date or did not come from this portal (missing or wrong CSRF token); \
                 reload the page and try again"
                    .into(),
            ))
            .into_response());
        }
        let form = serde_urlencoded::from_bytes::<T>(&bytes).map_err(|e| {
            PageError(Error::InvalidInput(format!("the form is incomplete: {e}"))).into_response()
        })?;
        Ok(CsrfForm(user, form))
    }
}

/// Compares secrets without stopping at the first differing byte.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Middleware for `/api`: Basic credentials, or a portal session for `GET`.
pub async fn require_api_user(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    let user = match state.auth.basic_user(headers).await {
        Login::Accepted(user) => Some(user),
        Login::Throttled(wait) => {
            return ApiError::response(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "too many wrong passwords for this user: try again in {} s",
                    wait.as_secs() + 1
                ),
            );
        }
        Login::Refused if request.method() == Method::GET => {
            state.auth.user_of(headers, false).map(|u| u.name)
        }
        Login::Refused => None,
    };
    // Browsers remember Basic credentials and send them with cross-site requests: a request
    // that a browser marks as coming from another site may only read.
    if request.method() != Method::GET
        && request.method() != Method::HEAD
        && from_another_site(request.headers())
    {
        return ApiError::response(
            StatusCode::FORBIDDEN,
            "cross-site requests may not change anything: call the API from a script or from this portal",
        );
    }
    let Some(user) = user else {
        let mut response = ApiError::response(
            StatusCode::UNAUTHORIZED,
            "authentication required: HTTP Basic with a portal user (default superuser / SYS)",
        );
        response.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"mirrorlab\""),
        );
        return response;
    };
    request.extensions_mut().insert(super::api::ApiUser(user));
    next.run(request).await
}

/// True when the browser says the request comes from another site (`Sec-Fetch-Site`), or its
/// `Origin` names another host than the one asked.
pub fn from_another_site(headers: &HeaderMap) -> bool {
    let fetch_site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    if matches!(fetch_site, Some(site) if site != "same-origin" && site != "none") {
        return true;
    }
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|v| v.to_str().ok());
    match headers
        .get(axum::http::header::ORIGIN)
        .and_then(|v| v.to_str().ok())
    {
        None | Some("null") if fetch_site.is_none() => false,
        None => false,
        Some(origin) => {
            let origin_host = origin.split_once("://").map(|(_, h)| h).unwrap_or(origin);
            Some(origin_host) != host
        }
    }
}

/// Adds a `Set-Cookie` header to a response.
pub fn with_cookie(mut response: Response, value: HeaderValue) -> Response {
    response.headers_mut().append(SET_COOKIE, value);
    response
}
