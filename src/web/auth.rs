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
//! Failed logins are counted per *source address and user name*, and per source address alone.
//! After [`FREE_FAILURES`] wrong passwords in a row for one name from one source, or
//! [`FREE_SOURCE_FAILURES`] from one source whatever the names, further attempts from that source
//! — form or Basic — are refused without checking the password until a wait has passed: one
//! second, doubling with each further failure, at most [`MAX_LOCKOUT`]. A right password after the
//! wait clears the count of that name and source. The lock is the guesser's alone: the same name
//! from another address is checked as usual, so a guesser cannot lock the real admin out, and
//! credentials verified before keep working. An unknown name counts like a known one.
//!
//! The counts live in two bounded tables ([`MAX_TRACKED`] entries each). Entries with no failure
//! for [`FORGET_AFTER`] go first; if the table is still full, the entry whose last failure is the
//! oldest goes. Nothing ever clears a whole table, so a flood of names cannot lift other locks.
//! Behind a NAT or Docker's published ports many people share one source address; they then
//! share its counts too.
//!
//! # Password checks
//!
//! Argon2 is slow and takes about 19 MiB while it runs, on purpose. Every check — form login,
//! Basic header, the current password of a change — and every new hash waits for one of
//! [`CONCURRENT_CHECKS`] permits, on a blocking thread; at most [`WAITING_CHECKS`] wait, and an
//! attempt beyond that is answered "busy" at once. So a flood of logins costs a bounded amount of
//! memory and threads, and what it took is given back when it ends.
//!
//! # Password changes
//!
//! A change ends every other session of the user and forgets every remembered Basic header at
//! once. A check that was running during the change — it may have seen the old password — is
//! neither remembered nor turned into a session: each change bumps a generation, and a check
//! whose generation moved counts as refused.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::header::{AUTHORIZATION, COOKIE, SET_COOKIE, WWW_AUTHENTICATE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine;
use serde::de::DeserializeOwned;

use crate::config::ConfigStore;
use crate::error::Error;
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

/// Wrong passwords in a row for one user name from one source before its attempts must wait.
pub const FREE_FAILURES: u32 = 5;
/// Wrong passwords in a row from one source, whatever the names, before its attempts must wait.
pub const FREE_SOURCE_FAILURES: u32 = 20;
/// The longest wait between attempts after repeated failures.
pub const MAX_LOCKOUT: Duration = Duration::from_secs(300);
/// Entries each failure table keeps at most.
pub const MAX_TRACKED: usize = 10_000;
/// A failure count with no new failure for this long is forgotten (longer than any wait).
pub const FORGET_AFTER: Duration = Duration::from_secs(3600);
/// Password checks (and hashes) running at once.
pub const CONCURRENT_CHECKS: usize = 4;
/// Password checks waiting for a permit at most; more are refused as busy.
pub const WAITING_CHECKS: usize = 64;

/// Failed logins in a row of one key.
#[derive(Debug, Clone, Copy)]
struct Failures {
    in_a_row: u32,
    last: Instant,
    locked_until: Option<Instant>,
}

/// Failure counts keyed by `K`, bounded in size.
#[derive(Debug)]
struct FailureTable<K> {
    free: u32,
    entries: HashMap<K, Failures>,
}

impl<K: std::hash::Hash + Eq + Clone> FailureTable<K> {
    fn new(free: u32) -> Self {
        FailureTable {
            free,
            entries: HashMap::new(),
        }
    }

    /// How long attempts under `key` must still wait, if they must.
    fn wait(&self, key: &K, now: Instant) -> Option<Duration> {
        let until = self.entries.get(key)?.locked_until?;
        until.checked_duration_since(now).filter(|d| !d.is_zero())
    }

    fn failed(&mut self, key: &K, now: Instant) {
        if !self.entries.contains_key(key) && self.entries.len() >= MAX_TRACKED {
            self.make_room(now);
        }
        let entry = self.entries.entry(key.clone()).or_insert(Failures {
            in_a_row: 0,
            last: now,
            locked_until: None,
        });
        if now.duration_since(entry.last) >= FORGET_AFTER {
            entry.in_a_row = 0;
        }
        entry.in_a_row += 1;
        entry.last = now;
        if entry.in_a_row >= self.free {
            let doublings = (entry.in_a_row - self.free).min(16);
            let wait = Duration::from_secs(1 << doublings).min(MAX_LOCKOUT);
            entry.locked_until = Some(now + wait);
        }
    }

    fn cleared(&mut self, key: &K) {
        self.entries.remove(key);
    }

    /// Forgets the stale entries, or else an eighth of the table: unlocked entries before
    /// locked ones, the oldest first. Never all, so a flood of new keys cannot lift the locks
    /// already set; an eighth at a time, so a flood costs one sort per many failures.
    fn make_room(&mut self, now: Instant) {
        let before = self.entries.len();
        self.entries
            .retain(|_, f| now.duration_since(f.last) < FORGET_AFTER);
        if self.entries.len() < before {
            return;
        }
        let locked = |f: &Failures| f.locked_until.is_some_and(|until| until > now);
        let mut ranked: Vec<((bool, Instant), K)> = self
            .entries
            .iter()
            .map(|(k, f)| ((locked(f), f.last), k.clone()))
            .collect();
        let forget = (ranked.len() / 8).max(1);
        ranked.select_nth_unstable_by_key(forget - 1, |(rank, _)| *rank);
        for (_, key) in &ranked[..forget] {
            self.entries.remove(key);
        }
    }
}

/// The login throttle: counts per source and name, and per source.
#[derive(Debug)]
struct Throttle {
    by_name: FailureTable<(IpAddr, String)>,
    by_source: FailureTable<IpAddr>,
}

impl Throttle {
    fn new() -> Self {
        Throttle {
            by_name: FailureTable::new(FREE_FAILURES),
            by_source: FailureTable::new(FREE_SOURCE_FAILURES),
        }
    }

    fn wait(&self, source: IpAddr, user: &str, now: Instant) -> Option<Duration> {
        let by_name = self.by_name.wait(&(source, user.to_string()), now);
        let by_source = self.by_source.wait(&source, now);
        by_name.max(by_source)
    }

    fn failed(&mut self, source: IpAddr, user: &str, now: Instant) {
        self.by_name.failed(&(source, user.to_string()), now);
        self.by_source.failed(&source, now);
    }

    fn succeeded(&mut self, source: IpAddr, user: &str) {
        self.by_name.cleared(&(source, user.to_string()));
        self.by_source.cleared(&source);
    }
}

/// The outcome of a login attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Login {
    /// The password is right: the user's name.
    Accepted(String),
    /// Wrong user name or password (or none given).
    Refused,
    /// Too many failures from this source: try again after this long.
    Throttled(Duration),
    /// Too many password checks wait already: try again in a moment.
    Busy,
}

/// Sessions and remembered credentials.
pub struct Auth {
    config: Arc<ConfigStore>,
    sessions: Mutex<HashMap<String, SessionData>>,
    verified_basic: Mutex<HashMap<String, String>>,
    throttle: Mutex<Throttle>,
    /// Bumped on every password change.
    password_generation: AtomicU64,
    /// Bounds concurrent password checks and hashes.
    checks: Arc<tokio::sync::Semaphore>,
    /// Password checks waiting for a permit.
    waiting_checks: AtomicUsize,
    /// Key of the login form's token (see [`Auth::login_token`]).
    login_key: ring::hmac::Key,
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
            throttle: Mutex::new(Throttle::new()),
            password_generation: AtomicU64::new(0),
            checks: Arc::new(tokio::sync::Semaphore::new(CONCURRENT_CHECKS)),
            waiting_checks: AtomicUsize::new(0),
            login_key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, random_hex(32).as_bytes()),
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

    /// Runs `work` (a password check or hash) on a blocking thread once one of the
    /// [`CONCURRENT_CHECKS`] permits is free; `None` when too many wait already.
    pub async fn with_check_permit<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        // Count first, then wait: the bound holds however many arrive at once.
        if self.waiting_checks.fetch_add(1, Ordering::AcqRel) >= WAITING_CHECKS {
            self.waiting_checks.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let permit = self.checks.clone().acquire_owned().await;
        self.waiting_checks.fetch_sub(1, Ordering::AcqRel);
        let permit = permit.ok()?;
        // The permit goes with the work: a caller that gives up (its connection closed) does
        // not free a place while the hash still runs.
        tokio::task::spawn_blocking(move || {
            let result = work();
            drop(permit);
            result
        })
        .await
        .ok()
    }

    /// A login attempt from `source`: the password is checked unless that source must wait.
    pub async fn login(self: &Arc<Self>, source: IpAddr, user: &str, password: &str) -> Login {
        if let Some(wait) = self
            .throttle
            .lock()
            .unwrap()
            .wait(source, user, Instant::now())
        {
            return Login::Throttled(wait);
        }
        let generation = self.password_generation.load(Ordering::Acquire);
        let auth = self.clone();
        let (name, secret) = (user.to_string(), password.to_string());
        let Some(right) = self
            .with_check_permit(move || auth.check_password(&name, &secret))
            .await
        else {
            return Login::Busy;
        };
        let mut throttle = self.throttle.lock().unwrap();
        if !right {
            throttle.failed(source, user, Instant::now());
            return Login::Refused;
        }
        throttle.succeeded(source, user);
        // The password changed while it was checked: the check may have seen the old one.
        if self.password_generation.load(Ordering::Acquire) != generation {
            return Login::Refused;
        }
        Login::Accepted(user.to_string())
    }

    /// The generation of the passwords, bumped by every change.
    pub fn password_generation(&self) -> u64 {
        self.password_generation.load(Ordering::Acquire)
    }

    /// The login form's token for a pre-login cookie `nonce`: a keyed hash, so a token only
    /// passes with the cookie it was made for, and only tokens this process made pass at all.
    pub fn login_token(&self, nonce: &str) -> String {
        crate::util::hex(ring::hmac::sign(&self.login_key, nonce.as_bytes()).as_ref())
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
        // First the generation, so a check running now cannot remember the old password after
        // the cache below is emptied.
        self.password_generation.fetch_add(1, Ordering::AcqRel);
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

    /// The user named by a Basic `Authorization` header sent from `source`: accepted, refused
    /// (also without a header), throttled after too many failures, or busy.
    pub async fn basic_user(self: &Arc<Self>, source: IpAddr, headers: &HeaderMap) -> Login {
        self.check_basic(source, headers)
            .await
            .unwrap_or(Login::Refused)
    }

    async fn check_basic(self: &Arc<Self>, source: IpAddr, headers: &HeaderMap) -> Option<Login> {
        let header = headers.get(AUTHORIZATION)?.to_str().ok()?.to_string();
        if let Some(user) = self.verified_basic.lock().unwrap().get(&header) {
            return Some(Login::Accepted(user.clone()));
        }
        let generation = self.password_generation.load(Ordering::Acquire);
        let encoded = header.strip_prefix("Basic ")?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (user, password) = decoded.split_once(':')?;
        let login = self.login(source, user, password).await;
        let Login::Accepted(ok) = login else {
            return Some(login);
        };
        let mut cache = self.verified_basic.lock().unwrap();
        // Remember it only if no change happened since before the check (checked under the
        // cache's lock, which the change takes to empty it).
        if self.password_generation.load(Ordering::Acquire) != generation {
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
    let source = super::serve::peer_ip(request.extensions());
    let headers = request.headers();
    let user = match state.auth.basic_user(source, headers).await {
        Login::Accepted(user) => Some(user),
        Login::Throttled(wait) => {
            return ApiError::response(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "too many wrong passwords from this address: try again in {} s",
                    wait.as_secs() + 1
                ),
            );
        }
        Login::Busy => return busy_response(),
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

/// The answer while too many password checks wait.
pub fn busy_response() -> Response {
    let mut response = ApiError::response(
        StatusCode::SERVICE_UNAVAILABLE,
        "too many logins are being checked at once: try again in a moment",
    );
    response.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        HeaderValue::from_static("1"),
    );
    response
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_holds_for_its_source_and_name_and_grows_with_each_failure() {
        let mut throttle = Throttle::new();
        let (guesser, admin): (IpAddr, IpAddr) =
            ("10.0.0.2".parse().unwrap(), "10.0.0.1".parse().unwrap());
        let now = Instant::now();
        for _ in 0..FREE_FAILURES - 1 {
            throttle.failed(guesser, "superuser", now);
        }
        assert_eq!(throttle.wait(guesser, "superuser", now), None);
        throttle.failed(guesser, "superuser", now);
        assert_eq!(
            throttle.wait(guesser, "superuser", now),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            throttle.wait(admin, "superuser", now),
            None,
            "another source"
        );
        assert_eq!(throttle.wait(guesser, "other", now), None, "another name");
        let later = now + Duration::from_secs(1);
        throttle.failed(guesser, "superuser", later);
        assert_eq!(
            throttle.wait(guesser, "superuser", later),
            Some(Duration::from_secs(2))
        );
        // Enough failures from one source lock it for every name.
        for i in 0..FREE_SOURCE_FAILURES {
            throttle.failed(guesser, &format!("name{i}"), later);
        }
        assert!(throttle.wait(guesser, "never tried", later).is_some());
        assert_eq!(throttle.wait(admin, "never tried", later), None);
        // A right password clears that name's count for that source.
        throttle.succeeded(admin, "superuser");
        throttle.succeeded(guesser, "superuser");
        assert_eq!(throttle.wait(guesser, "superuser", later), None);
    }

    #[test]
    fn a_flood_of_new_keys_keeps_the_table_bounded_and_the_locks_in_place() {
        let mut table: FailureTable<u32> = FailureTable::new(2);
        let start = Instant::now();
        // Key 0 is locked; then twice the table's size of other keys fail once each, later —
        // as many names from many addresses would.
        for _ in 0..12 {
            table.failed(&0, start);
        }
        for key in 1..=(2 * MAX_TRACKED as u32) {
            table.failed(&key, start + Duration::from_millis(u64::from(key)));
            assert!(table.entries.len() <= MAX_TRACKED);
        }
        let end = start + Duration::from_millis(2 * MAX_TRACKED as u64);
        assert!(table.wait(&0, start).is_some(), "the lock was forgotten");
        assert!(end < start + MAX_LOCKOUT);
        // Stale entries go first when room is needed again.
        table.make_room(end + FORGET_AFTER);
        assert!(table.entries.is_empty(), "every stale entry is forgotten");
    }
}
