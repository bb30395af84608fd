//! The Lab page (System Operation › Lab) and `/api/lab`: kill or hang this instance, cut its
//! links for a while, and the acknowledged-write ledger ([`crate::lab`]). On a member started without `--lab` every one of
//! these answers 404 saying how to turn it on.

use askama::Template;
use askama_web::WebTemplate;
use axum::Json;
use axum::extract::State;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::lab::cuts::{self, CutView, Direction, Link};
use crate::lab::ledger::{LedgerSettings, LedgerView};
use crate::lab::{self, Lab};

use super::api::ApiJson;
use super::auth::{CsrfForm, PortalUser};
use super::error::{ApiError, PageError};
use super::mirror::number;
use super::portal::Empty;
use super::{AppState, Layout, flash_and_redirect};

fn the_lab(state: &AppState) -> Result<&Lab> {
    state.lab.as_deref().ok_or_else(|| {
        Error::NotFound(
            "the Lab page is off on this member: start it with --lab (MIRRORLAB_LAB=1; the \
             Compose lab turns it on)"
                .into(),
        )
    })
}

/// The members' portals a ledger writes to by default: this member's and the other failover
/// member's, on this member's portal port (the lab's members all use the same).
fn default_members(state: &AppState) -> Vec<String> {
    let settings = &state.instance.settings;
    let port = settings
        .web
        .rsplit_once(':')
        .map(|(_, p)| p)
        .unwrap_or("52773");
    let mut members = vec![format!("http://{}:{port}", settings.host_name)];
    let config = state.instance.config.get();
    if let Some(other) = config
        .mirror
        .membership
        .as_ref()
        .and_then(|m| m.other_failover())
    {
        let host = crate::config::mirror::split_address(&other.superserver_address, 1972)
            .map(|(h, _)| h)
            .unwrap_or_else(|_| other.superserver_address.clone());
        members.push(format!("http://{host}:{port}"));
    }
    members
}

#[derive(Template, WebTemplate)]
#[template(path = "portal/lab.html")]
pub(crate) struct LabPage {
    layout: Layout,
    ledger: Option<LedgerView>,
    /// A ledger is running (its Stop button instead of the start form).
    running: bool,
    members: String,
    role: String,
    /// The cuts of this member's links in force.
    cuts: Vec<CutView>,
}

pub(crate) async fn page(
    State(state): State<AppState>,
    user: PortalUser,
) -> Result<LabPage, PageError> {
    let lab = the_lab(&state)?;
    let ledger = lab.ledger();
    Ok(LabPage {
        layout: Layout::new(&state, &user, "Lab", vec!["System Operation"], "lab"),
        running: ledger.as_ref().is_some_and(|l| l.running),
        ledger,
        members: default_members(&state).join(" "),
        role: state.mirror.role().display().to_string(),
        cuts: cuts::global().in_force(),
    })
}

#[derive(Deserialize)]
pub(crate) struct HangForm {
    seconds: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct CutForm {
    link: Option<String>,
    direction: Option<String>,
    seconds: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct LedgerForm {
    writers: Option<String>,
    rate: Option<String>,
    members: Option<String>,
    password: Option<String>,
}

async fn hang_for(state: &AppState, seconds: u64) -> Result<String> {
    the_lab(state)?;
    let settings = &state.instance.settings;
    let port = settings
        .agent
        .rsplit_once(':')
        .map(|(_, p)| p)
        .unwrap_or("2188");
    let require_tls = state
        .instance
        .config
        .get()
        .mirror
        .membership
        .as_ref()
        .is_some_and(|m| m.mirror.require_tls);
    lab::hang(
        &format!("127.0.0.1:{port}"),
        state.mirror_service.context().identity.clone(),
        require_tls,
        seconds,
        &state.mirror,
    )
    .await
}

/// Cuts a link as the page or `/api` asked: the other members, both ways, 10 s when not said.
fn cut_for(
    state: &AppState,
    link: Option<&str>,
    direction: Option<&str>,
    seconds: Option<u64>,
) -> Result<String> {
    the_lab(state)?;
    let link = Link::parse(link.unwrap_or("members"))?;
    let direction = Direction::parse(direction.unwrap_or("both"))?;
    lab::cut_link(link, direction, seconds.unwrap_or(10), &state.mirror)
}

fn start_ledger(
    state: &AppState,
    user: &str,
    writers: u64,
    rate: u64,
    members: Option<Vec<String>>,
    password: Option<String>,
) -> Result<String> {
    let lab = the_lab(state)?;
    let password = password.filter(|p| !p.is_empty()).ok_or_else(|| {
        Error::InvalidInput(format!(
            "give {user}'s password: the writers log in to the members' API with it"
        ))
    })?;
    let settings = LedgerSettings {
        writers: writers.min(1_000) as usize,
        rate: rate.min(100_000) as u32,
        members: members
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| default_members(state)),
        user: user.to_string(),
        password,
    };
    lab.start_ledger(settings, &state.mirror)
}

pub(crate) async fn kill(
    State(state): State<AppState>,
    CsrfForm(user, Empty {}): CsrfForm<Empty>,
) -> Response {
    let result = the_lab(&state).map(|_| lab::kill_soon(&state.mirror));
    flash_and_redirect(&state, &user, result, "/portal/lab")
}

pub(crate) async fn hang(
    State(state): State<AppState>,
    CsrfForm(user, form): CsrfForm<HangForm>,
) -> Response {
    let result = async {
        let seconds = number("Seconds", &form.seconds)?.unwrap_or(10);
        hang_for(&state, seconds).await
    }
    .await;
    flash_and_redirect(&state, &user, result, "/portal/lab")
}

pub(crate) async fn cut(
    State(state): State<AppState>,
    CsrfForm(user, form): CsrfForm<CutForm>,
) -> Response {
    let result = number("Seconds", &form.seconds).and_then(|seconds| {
        cut_for(
            &state,
            form.link.as_deref(),
            form.direction.as_deref(),
            seconds,
        )
    });
    flash_and_redirect(&state, &user, result, "/portal/lab")
}

pub(crate) async fn mend(
    State(state): State<AppState>,
    CsrfForm(user, Empty {}): CsrfForm<Empty>,
) -> Response {
    let result = the_lab(&state).map(|_| lab::mend_links(&state.mirror));
    flash_and_redirect(&state, &user, result, "/portal/lab")
}

pub(crate) async fn ledger_start(
    State(state): State<AppState>,
    CsrfForm(user, form): CsrfForm<LedgerForm>,
) -> Response {
    let result = (|| {
        let writers = number("Writers", &form.writers)?.unwrap_or(4);
        let rate = number("Writes a second", &form.rate)?.unwrap_or(20);
        let members = form
            .members
            .as_deref()
            .map(|m| m.split_whitespace().map(String::from).collect());
        start_ledger(&state, &user.name, writers, rate, members, form.password)
    })();
    flash_and_redirect(&state, &user, result, "/portal/lab")
}

pub(crate) async fn ledger_stop(
    State(state): State<AppState>,
    CsrfForm(user, Empty {}): CsrfForm<Empty>,
) -> Response {
    let result = the_lab(&state).and_then(|lab| lab.stop_ledger(&state.mirror));
    flash_and_redirect(&state, &user, result, "/portal/lab")
}

// ---------------------------------------------------------------------------------------------
// /api/lab

type ApiResult = std::result::Result<Json<Value>, ApiError>;

/// `GET /api/lab`: the ledger's figures (null before the first) and the cuts in force.
pub(crate) async fn api_view(State(state): State<AppState>) -> ApiResult {
    let lab = the_lab(&state)?;
    Ok(Json(
        json!({ "ledger": lab.ledger(), "cuts": cuts::global().in_force() }),
    ))
}

/// `POST /api/lab/kill`.
pub(crate) async fn api_kill(State(state): State<AppState>) -> ApiResult {
    the_lab(&state)?;
    Ok(Json(json!({ "message": lab::kill_soon(&state.mirror) })))
}

#[derive(Deserialize)]
pub(crate) struct HangRequest {
    #[serde(default)]
    seconds: Option<u64>,
}

/// `POST /api/lab/hang` `{"seconds"}`: answers once the instance goes on (or never, when it was
/// forced down meanwhile).
pub(crate) async fn api_hang(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<HangRequest>,
) -> ApiResult {
    let message = hang_for(&state, request.seconds.unwrap_or(10)).await?;
    Ok(Json(json!({ "message": message })))
}

#[derive(Deserialize)]
pub(crate) struct CutRequest {
    #[serde(default)]
    link: Option<String>,
    #[serde(default)]
    direction: Option<String>,
    #[serde(default)]
    seconds: Option<u64>,
}

/// `POST /api/lab/cut` `{"link": "members"|"arbiter", "direction": "both"|"out"|"in",
/// "seconds"}` (members, both, 10 when left out).
pub(crate) async fn api_cut(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<CutRequest>,
) -> ApiResult {
    let message = cut_for(
        &state,
        request.link.as_deref(),
        request.direction.as_deref(),
        request.seconds,
    )?;
    Ok(Json(json!({ "message": message })))
}

/// `POST /api/lab/mend`: ends the cuts in force.
pub(crate) async fn api_mend(State(state): State<AppState>) -> ApiResult {
    the_lab(&state)?;
    Ok(Json(json!({ "message": lab::mend_links(&state.mirror) })))
}

#[derive(Deserialize)]
pub(crate) struct LedgerRequest {
    #[serde(default)]
    writers: Option<u64>,
    #[serde(default)]
    rate: Option<u64>,
    #[serde(default)]
    members: Option<Vec<String>>,
    #[serde(default)]
    password: Option<String>,
}

/// `POST /api/lab/ledger/start` `{"writers", "rate", "members", "password"}`.
pub(crate) async fn api_ledger_start(
    State(state): State<AppState>,
    axum::Extension(user): axum::Extension<super::api::ApiUser>,
    ApiJson(request): ApiJson<LedgerRequest>,
) -> ApiResult {
    let message = start_ledger(
        &state,
        &user.0,
        request.writers.unwrap_or(4),
        request.rate.unwrap_or(20),
        request.members,
        request.password,
    )?;
    Ok(Json(json!({ "message": message })))
}

/// `POST /api/lab/ledger/stop`.
pub(crate) async fn api_ledger_stop(State(state): State<AppState>) -> ApiResult {
    let message = the_lab(&state)?.stop_ledger(&state.mirror)?;
    Ok(Json(json!({ "message": message })))
}
