//! The `/api` endpoints of the portal's own pages (the applications' endpoints live with the
//! applications). JSON in, JSON out; a refusal is a 4xx with `{"error": "<message>"}`.

use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value as Json_, json};

use crate::error::Error;
use crate::instance::sql::{QueryResult, SqlValue};
use crate::mirror::service::{
    CreateRequest, EditRequest, JoinInfoRequest, JoinRequest, MonitorAction,
};
use crate::names::{DbName, NamespaceName};

use super::AppState;
use super::error::ApiError;

/// The authenticated caller of an `/api` request (set by the authentication middleware).
#[derive(Debug, Clone)]
pub struct ApiUser(pub String);

type ApiResult = Result<Json<Json_>, ApiError>;

/// A JSON body whose rejections (malformed JSON, wrong content type, too large) are answered as
/// `{"error": ...}` like every other API error.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(ApiError::response(
                rejection.status(),
                rejection.body_text(),
            )),
        }
    }
}

/// Liveness (no authentication): answers as long as the instance serves HTTP.
pub async fn health(State(state): State<AppState>) -> Response {
    // Liveness only: this answers without a login, so it tells a stranger nothing more (no
    // process id, no journal position; `/api/mirror` has those for a user).
    if state.instance.failure().is_some() {
        return (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "failed" })),
        )
            .into_response();
    }
    Json(json!({ "status": "ok" })).into_response()
}

pub(crate) async fn databases(State(state): State<AppState>) -> ApiResult {
    let list: Vec<Json_> = state
        .instance
        .databases()
        .await?
        .into_iter()
        .map(|d| {
            json!({
                "name": d.name,
                "directory": d.directory,
                "mounted": d.mounted,
                "read_only": d.read_only,
                "mirrored": d.mirrored,
                "size_bytes": d.size_bytes,
                "applied_position": d.applied_pos.map(|p| p.0),
            })
        })
        .collect();
    Ok(Json(Json_::Array(list)))
}

pub(crate) async fn database_action(
    State(state): State<AppState>,
    Path((db, action)): Path<(String, String)>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> ApiResult {
    let db = DbName::new(&db)?;
    let service = &state.mirror_service;
    let message = match action.as_str() {
        // Answers at once; `GET /api/mirror` shows the copy's progress under `copies`.
        "copy" => {
            let pace = copy_pace(query.as_deref())?;
            let message = service.copy_from_primary(db.clone(), pace)?;
            return Ok(Json(json!({ "database": db, "message": message })));
        }
        "mount" => state.instance.mount(db.clone()).await?,
        "dismount" => state.instance.dismount(db.clone()).await?,
        "add-to-mirror" => service.add_databases(vec![db.clone()]).await?,
        "activate" => service.activate(db.clone()).await?,
        "catchup" => service.catchup(db.clone()).await?,
        "backup" => {
            let file = state.instance.backup_copy(db.clone()).await?;
            return Ok(Json(
                json!({ "database": db, "file": file, "message": format!("{db} copied to {file}") }),
            ));
        }
        other => {
            return Err(Error::NotFound(format!("there is no database action {other:?}")).into());
        }
    };
    let entry = state.instance.catalog.snapshot().database(&db)?.clone();
    Ok(Json(json!({
        "database": db,
        "mounted": entry.mounted,
        "read_only": entry.read_only,
        "mirrored": entry.mirrored,
        "message": message,
    })))
}

pub(crate) async fn namespaces(State(state): State<AppState>) -> Json<Json_> {
    let catalog = state.instance.catalog.snapshot();
    let list: Vec<Json_> = catalog
        .namespaces
        .values()
        .map(|n| json!({ "name": n.name, "default_database": n.default_db, "mapped": n.mapped }))
        .collect();
    Json(Json_::Array(list))
}

fn journal_json(journal: &crate::journal::JournalShared) -> Json_ {
    let files: Vec<Json_> = journal
        .segments()
        .iter()
        .map(|s| json!({ "name": s.name, "first_position": s.first_pos.0, "created_ms": s.created_ms, "bytes": s.bytes }))
        .collect();
    json!({
        "directory": journal.dir(),
        "end_position": journal.durable_end().0,
        "first_position": journal.first_pos().0,
        "files": files,
        "records_appended": journal.appended(),
        "fsyncs": journal.syncs(),
    })
}

/// `GET /api/journal`: the instance's journal, and the mirror journal when there is one.
pub(crate) async fn journal(State(state): State<AppState>) -> Json<Json_> {
    let mut answer = journal_json(&state.instance.journal);
    answer["mirror"] = state
        .mirror
        .journal()
        .map(|j| journal_json(&j))
        .unwrap_or(Json_::Null);
    Json(answer)
}

/// `POST /api/journal/purge`: deletes the journal files nothing needs any more.
pub(crate) async fn journal_purge(State(state): State<AppState>) -> ApiResult {
    let report = state.instance.purge_journals().await?;
    Ok(Json(json!({
        "message": report.message(),
        "removed": report.local_removed,
        "mirror_removed": report.mirror_removed,
        "kept_because": report.kept_because,
    })))
}

#[derive(Deserialize)]
pub(crate) struct SqlRequest {
    namespace: String,
    sql: String,
    #[serde(default)]
    params: Vec<Json_>,
}

/// A JSON parameter as a SQL value; arrays and objects have no SQL counterpart.
pub fn json_to_sql(value: &Json_) -> Result<SqlValue, Error> {
    Ok(match value {
        Json_::Null => SqlValue::Null,
        Json_::Bool(b) => SqlValue::Integer(*b as i64),
        Json_::Number(n) => match n.as_i64() {
            Some(i) => SqlValue::Integer(i),
            None => SqlValue::Real(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json_::String(s) => SqlValue::Text(s.clone()),
        other => {
            return Err(Error::InvalidInput(format!(
                "a SQL parameter must be a scalar, not {other}"
            )));
        }
    })
}

/// A SQL value as JSON (blobs as `x'hex'` text).
pub fn sql_to_json(value: &SqlValue) -> Json_ {
    match value {
        SqlValue::Null => Json_::Null,
        SqlValue::Integer(i) => json!(i),
        SqlValue::Real(f) => serde_json::Number::from_f64(*f)
            .map(Json_::Number)
            .unwrap_or(Json_::Null),
        SqlValue::Text(s) => json!(s),
        SqlValue::Blob(_) => json!(crate::instance::sql::display_value(value)),
    }
}

/// A statement's result as JSON.
pub fn result_json(result: &QueryResult) -> Json_ {
    let rows: Vec<Json_> = result
        .rows
        .iter()
        .map(|r| Json_::Array(r.iter().map(sql_to_json).collect()))
        .collect();
    json!({
        "columns": result.columns,
        "rows": rows,
        "truncated": result.truncated,
        "rows_affected": result.rows_affected,
        "journal_position": result.position.map(|p| p.0),
    })
}

pub(crate) async fn sql(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<SqlRequest>,
) -> ApiResult {
    let namespace = NamespaceName::new(&request.namespace)?;
    if request.sql.trim().is_empty() {
        return Err(Error::InvalidInput("the statement is empty".into()).into());
    }
    let params = request
        .params
        .iter()
        .map(json_to_sql)
        .collect::<Result<Vec<_>, _>>()?;
    let result = state.instance.sql(&namespace, request.sql, params).await?;
    Ok(Json(result_json(&result)))
}

/// What `GET /api/mirror/events` takes.
#[derive(Deserialize)]
pub(crate) struct EventsQuery {
    /// The oldest event wanted (ms since the Unix epoch); all kept when absent.
    #[serde(default)]
    since: i64,
}

/// `GET /api/mirror/events?since=<ms>`: both failover members' events, merged in time order,
/// and which members could be asked (see [`crate::mirror::events`]).
pub(crate) async fn mirror_events(
    State(state): State<AppState>,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Json_>, ApiError> {
    let Query(query) = query.map_err(|_| {
        Error::InvalidInput(
            "since must be a time in milliseconds since the Unix epoch (e.g. since=0)".into(),
        )
    })?;
    let answer = state.mirror_service.events(query.since).await;
    Ok(Json(serde_json::to_value(answer).unwrap_or_default()))
}

/// `?max_bytes_per_s=N` on a copy: the most the primary sends per second (a copy then leaves
/// the data channel room; the lab's tests slow one down to stop it halfway).
fn copy_pace(query: Option<&str>) -> Result<Option<u64>, Error> {
    #[derive(Deserialize)]
    struct Pace {
        max_bytes_per_s: Option<String>,
    }
    let pace: Pace = serde_urlencoded::from_str(query.unwrap_or_default())
        .map_err(|e| Error::InvalidInput(format!("bad query: {e}")))?;
    pace.max_bytes_per_s
        .map(|n| match n.parse::<u64>() {
            Ok(n) if n >= 4096 => Ok(n),
            _ => Err(Error::InvalidInput(format!(
                "max_bytes_per_s must be a whole number of bytes, at least 4096 (got {n:?})"
            ))),
        })
        .transpose()
}

/// `GET /api/mirror`: this member's view, with the same strings the Mirror Monitor shows.
pub(crate) async fn mirror(State(state): State<AppState>) -> Json<Json_> {
    let view = state.mirror_service.view();
    let databases: Vec<Json_> = view
        .databases
        .iter()
        .map(|d| {
            json!({
                "name": d.name,
                "mirror_path": d.mirror_path,
                "directory": d.directory,
                "status": d.status,
                "read_only": d.read_only,
                "next_record": d.next_record,
                "message": d.message,
            })
        })
        .collect();
    Json(json!({
        "service_enabled": view.service_enabled,
        "member_name": view.member_name,
        "mirror_name": view.mirror_name,
        "role": view.role,
        "status": view.status,
        "failover_mode": view.failover_mode,
        "members": view.members,
        "arbiter": view.arbiter,
        "databases": databases,
        "missing_databases": view.missing,
        "copies": view.copies,
        "auto_mirror": view.auto_mirror,
        "incoming_transfer_rate": view.transfer_rate,
        "qos_timeout_ms": view.qos_timeout_ms,
        "journal_position": view.journal_end,
        "link_error": view.link_error,
        "failover_note": view.failover_note,
        "no_failover": view.no_failover.is_some(),
        "no_primary": view.no_primary,
        "stopped": view.stopped,
        "require_tls": view.require_tls,
        "certificate": view.certificate,
        "quarantine": { "count": view.quarantine.1, "rows": view.quarantine.0 },
        "productions": state
            .instance
            .productions_board
            .lock()
            .unwrap()
            .values()
            .cloned()
            .collect::<Vec<_>>(),
        "host": state.instance.settings.host_name,
    }))
}

fn done(message: String) -> ApiResult {
    Ok(Json(json!({ "message": message })))
}

#[derive(Deserialize)]
pub(crate) struct ServiceRequest {
    enabled: bool,
}

pub(crate) async fn mirror_service(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<ServiceRequest>,
) -> ApiResult {
    done(state.mirror_service.set_service(request.enabled)?)
}

pub(crate) async fn mirror_create(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<CreateRequest>,
) -> ApiResult {
    done(state.mirror_service.create(request).await?)
}

pub(crate) async fn mirror_join_info(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<JoinInfoRequest>,
) -> ApiResult {
    let description = state.mirror_service.join_info(&request).await?;
    Ok(Json(
        serde_json::to_value(description).map_err(|e| Error::Internal(e.to_string()))?,
    ))
}

pub(crate) async fn mirror_join_failover(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<JoinRequest>,
) -> ApiResult {
    done(state.mirror_service.join_failover(request).await?)
}

pub(crate) async fn mirror_join_async(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<JoinRequest>,
) -> ApiResult {
    done(state.mirror_service.join_async(request).await?)
}

pub(crate) async fn mirror_edit(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<EditRequest>,
) -> ApiResult {
    done(state.mirror_service.edit(request).await?)
}

#[derive(Deserialize)]
pub(crate) struct NoFailoverRequest {
    set: bool,
}

/// One of the Mirror Monitor's actions (the same ones its buttons run).
async fn monitor_action(state: &AppState, action: MonitorAction) -> ApiResult {
    done(state.mirror_service.monitor_action(action).await?)
}

pub(crate) async fn mirror_no_failover(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<NoFailoverRequest>,
) -> ApiResult {
    monitor_action(&state, MonitorAction::NoFailover(request.set)).await
}

pub(crate) async fn mirror_demote_to_dr(State(state): State<AppState>) -> ApiResult {
    monitor_action(&state, MonitorAction::DemoteToDr).await
}

pub(crate) async fn mirror_demote_other(State(state): State<AppState>) -> ApiResult {
    monitor_action(&state, MonitorAction::DemoteOther).await
}

pub(crate) async fn mirror_promote(State(state): State<AppState>) -> ApiResult {
    monitor_action(&state, MonitorAction::Promote).await
}

pub(crate) async fn mirror_stop(State(state): State<AppState>) -> ApiResult {
    monitor_action(&state, MonitorAction::StopMirror).await
}

pub(crate) async fn mirror_start(State(state): State<AppState>) -> ApiResult {
    monitor_action(&state, MonitorAction::StartMirror).await
}

#[derive(Deserialize, Default)]
pub(crate) struct ForceRequest {
    #[serde(default)]
    confirm: bool,
}

pub(crate) async fn mirror_force_primary(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<ForceRequest>,
) -> ApiResult {
    let confirmed = request.confirm;
    monitor_action(&state, MonitorAction::ForcePrimary { confirmed }).await
}

pub(crate) async fn mirror_remove(State(state): State<AppState>) -> ApiResult {
    done(state.mirror_service.remove().await?)
}

#[derive(Deserialize)]
pub(crate) struct MemberRequest {
    member_name: String,
}

pub(crate) async fn mirror_remove_member(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<MemberRequest>,
) -> ApiResult {
    done(
        state
            .mirror_service
            .remove_member(&request.member_name.to_ascii_uppercase())?,
    )
}

/// Pending New Members: `{"pending": [{"member_name", "type", "certificate",
/// "superserver_address", "agent_address", "asked_from", "since_ms", "last_ms", "expires_ms",
/// "another_certificate", "warning"}], "rejected": [{"member_name", "type", "certificate",
/// "asked_from", "since_ms", "rejected_ms"}]}`.
pub(crate) async fn mirror_pending(State(state): State<AppState>) -> Json<serde_json::Value> {
    let lists = state.mirror_service.pending();
    let pending: Vec<serde_json::Value> = lists
        .waiting
        .into_iter()
        .map(|row| {
            let p = row.request;
            serde_json::json!({
                "member_name": p.info.name,
                "type": p.info.kind.display(),
                "certificate": p.info.certificate,
                "superserver_address": p.info.superserver_address,
                "agent_address": p.info.agent_address,
                "asked_from": p.asked_from,
                "since_ms": p.since_ms,
                "last_ms": p.last_ms.max(p.since_ms),
                "expires_ms": row.expires_ms,
                "another_certificate": p.another_certificate,
                "warning": row.warning,
            })
        })
        .collect();
    let rejected: Vec<serde_json::Value> = lists
        .rejected
        .into_iter()
        .map(|p| {
            serde_json::json!({
                "member_name": p.info.name,
                "type": p.info.kind.display(),
                "certificate": p.info.certificate,
                "asked_from": p.asked_from,
                "since_ms": p.since_ms,
                "rejected_ms": p.last_ms,
            })
        })
        .collect();
    Json(serde_json::json!({ "pending": pending, "rejected": rejected }))
}

/// A request in Pending New Members: its member name and certificate fingerprint (a missing
/// certificate is refused with a message by the service).
#[derive(Deserialize)]
pub(crate) struct PendingRequest {
    member_name: String,
    #[serde(default)]
    certificate: String,
}

pub(crate) async fn mirror_authorize(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<PendingRequest>,
) -> ApiResult {
    let service = &state.mirror_service;
    done(service.authorize(&request.member_name, &request.certificate)?)
}

pub(crate) async fn mirror_reject(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<PendingRequest>,
) -> ApiResult {
    let service = &state.mirror_service;
    done(service.reject(&request.member_name, &request.certificate)?)
}

pub(crate) async fn mirror_remove_pending(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<PendingRequest>,
) -> ApiResult {
    let service = &state.mirror_service;
    done(service.remove_pending(&request.member_name, &request.certificate)?)
}

#[derive(Deserialize)]
pub(crate) struct DatabasesRequest {
    databases: Vec<String>,
}

pub(crate) async fn mirror_add_databases(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<DatabasesRequest>,
) -> ApiResult {
    let dbs = request
        .databases
        .iter()
        .map(|d| DbName::new(d))
        .collect::<Result<Vec<_>, _>>()?;
    done(state.mirror_service.add_databases(dbs).await?)
}

#[derive(Deserialize, Default)]
struct FreezeRequest {
    #[serde(default)]
    timeout_s: Option<u64>,
}

/// Longest freeze allowed (a forgotten freeze must not stop the primary for good).
pub const MAX_FREEZE_S: u64 = 3600;

pub(crate) async fn mirror_freeze(
    State(state): State<AppState>,
    body: axum::body::Bytes,
) -> ApiResult {
    // The body is optional: `{"timeout_s": 300}` or nothing for the default.
    let request: FreezeRequest = if body.iter().all(|b| b.is_ascii_whitespace()) {
        FreezeRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(Error::from)?
    };
    let timeout = request.timeout_s.unwrap_or(600);
    if timeout == 0 || timeout > MAX_FREEZE_S {
        return Err(
            Error::InvalidInput(format!("timeout_s must be between 1 and {MAX_FREEZE_S}")).into(),
        );
    }
    done(
        state
            .mirror_service
            .freeze(std::time::Duration::from_secs(timeout))
            .await?,
    )
}

pub(crate) async fn mirror_thaw(State(state): State<AppState>) -> ApiResult {
    done(state.mirror_service.thaw().await?)
}

#[derive(Deserialize)]
pub(crate) struct PasswordRequest {
    current_password: String,
    new_password: String,
}

pub(crate) async fn password(
    State(state): State<AppState>,
    Extension(ApiUser(user)): Extension<ApiUser>,
    ApiJson(request): ApiJson<PasswordRequest>,
) -> Result<Response, ApiError> {
    let message = super::portal::change_password(
        &state,
        &user,
        Some(request.current_password),
        request.new_password,
    )
    .await?;
    state.auth.password_changed(&user, "");
    Ok(Json(json!({ "message": message })).into_response())
}
