//! The portal's mirror pages: Mirror Settings (Enable Mirror Service), Create a Mirror, Join as
//! Failover (two steps), Edit Mirror, the Mirror Monitor, Local Databases with Add to Mirror,
//! and System Operation › Backup (Freeze, Thaw, consistent copies).

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::mirror::protocol::MirrorDescription;
use crate::mirror::service::{
    CreateRequest, EditRequest, JoinInfoRequest, JoinRequest, MirrorService, MirrorView,
    MonitorAction,
};
use crate::mirror::state::Role;
use crate::names::DbName;

use super::auth::{CsrfForm, PortalUser};
use super::error::PageError;
use super::portal::{DatabaseRow, Empty, database_rows};
use super::{AppState, Layout, flash_and_redirect};

fn service(state: &AppState) -> &MirrorService {
    &state.mirror_service
}

/// A form field that may be empty: `None` when it is.
fn filled(value: &Option<String>) -> Option<String> {
    value
        .as_ref()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

pub(crate) fn number<T: std::str::FromStr>(
    label: &str,
    value: &Option<String>,
) -> Result<Option<T>> {
    match filled(value) {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| Error::InvalidInput(format!("{label} must be a number, not {v:?}"))),
    }
}

// ---------------------------------------------------------------------------------------------
// Mirror Settings

#[derive(Template, WebTemplate)]
#[template(path = "portal/mirror_settings.html")]
pub(crate) struct SettingsPage {
    layout: Layout,
    enabled: bool,
    member: bool,
    mirror_name: String,
}

pub(crate) async fn settings(State(state): State<AppState>, user: PortalUser) -> SettingsPage {
    let config = state.instance.config.get();
    let crumbs = vec!["System Administration", "Configuration"];
    SettingsPage {
        layout: Layout::new(&state, &user, "Mirror Settings", crumbs, "mirror-settings"),
        enabled: config.mirror.service_enabled,
        member: config.mirror.membership.is_some(),
        mirror_name: config
            .mirror
            .membership
            .as_ref()
            .map(|m| m.mirror.name.clone())
            .unwrap_or_default(),
    }
}

#[derive(Deserialize)]
pub(crate) struct ServiceForm {
    #[serde(default)]
    enabled: Option<String>,
}

pub(crate) async fn set_service(
    State(state): State<AppState>,
    CsrfForm(user, form): CsrfForm<ServiceForm>,
) -> Response {
    let result = service(&state).set_service(form.enabled.is_some());
    flash_and_redirect(&state, &user, result, "/portal/mirror/settings")
}

// ---------------------------------------------------------------------------------------------
// Create a Mirror

#[derive(Template, WebTemplate)]
#[template(path = "portal/mirror_create.html")]
struct CreatePage {
    layout: Layout,
    member_name: String,
    superserver: String,
    agent_port: u16,
    agent_host: String,
}

fn agent_host(superserver: &str) -> String {
    crate::config::mirror::split_address(superserver, 1972)
        .map(|(h, _)| h)
        .unwrap_or_default()
}

pub(crate) async fn create_page(State(state): State<AppState>, user: PortalUser) -> Response {
    if !state.instance.config.get().mirror.service_enabled {
        return flash_and_redirect(
            &state,
            &user,
            Err(Error::Conflict(
                "the mirror service is disabled: enable it first".into(),
            )),
            "/portal/mirror/settings",
        );
    }
    let (member_name, superserver, agent_port) = service(&state).defaults();
    let crumbs = vec!["System Administration", "Configuration", "Mirror Settings"];
    CreatePage {
        layout: Layout::new(&state, &user, "Create Mirror", crumbs, "mirror-settings"),
        member_name,
        agent_host: agent_host(&superserver),
        superserver,
        agent_port,
    }
    .into_response()
}

#[derive(Deserialize)]
pub(crate) struct CreateForm {
    #[serde(default)]
    mirror_name: String,
    require_tls: Option<String>,
    use_arbiter: Option<String>,
    arbiter_address: Option<String>,
    arbiter_port: Option<String>,
    use_virtual_ip: Option<String>,
    member_name: Option<String>,
    superserver_address: Option<String>,
    agent_port: Option<String>,
    qos_timeout_ms: Option<String>,
    mirror_private_address: Option<String>,
    agent_address: Option<String>,
}

pub(crate) async fn create(
    State(state): State<AppState>,
    CsrfForm(user, form): CsrfForm<CreateForm>,
) -> Response {
    let result = async {
        let request = CreateRequest {
            mirror_name: form.mirror_name,
            use_arbiter: form.use_arbiter.is_some(),
            arbiter_address: filled(&form.arbiter_address).unwrap_or_default(),
            arbiter_port: number("Arbiter port", &form.arbiter_port)?,
            member_name: filled(&form.member_name),
            superserver_address: filled(&form.superserver_address),
            agent_port: number("Agent Port", &form.agent_port)?,
            qos_timeout_ms: number("Quality of Service Timeout", &form.qos_timeout_ms)?,
            require_tls: form.require_tls.is_some(),
            use_virtual_ip: form.use_virtual_ip.is_some(),
            mirror_private_address: filled(&form.mirror_private_address),
            agent_address: filled(&form.agent_address),
        };
        service(&state).create(request).await
    }
    .await;
    let to = if result.is_ok() {
        "/portal/mirror/monitor"
    } else {
        "/portal/mirror/create"
    };
    flash_and_redirect(&state, &user, result, to)
}

// ---------------------------------------------------------------------------------------------
// Join as Failover

#[derive(Template, WebTemplate)]
#[template(path = "portal/mirror_join.html")]
struct JoinPage {
    layout: Layout,
    description: Option<MirrorDescription>,
    mirror_name: String,
    agent_address: String,
    agent_port: String,
    instance_name: String,
    member_name: String,
    superserver: String,
    local_agent_port: u16,
    agent_host: String,
    /// Join as Async (else as Failover).
    async_join: bool,
    /// Where the forms post (`/portal/mirror/join` or `/portal/mirror/join-async`).
    base: &'static str,
}

fn join_page_for(
    state: &AppState,
    user: &PortalUser,
    step1: &JoinForm,
    description: Option<MirrorDescription>,
    async_join: bool,
) -> JoinPage {
    let (member_name, superserver, local_agent_port) = service(state).defaults();
    let crumbs = vec!["System Administration", "Configuration", "Mirror Settings"];
    JoinPage {
        layout: Layout::new(
            state,
            user,
            if async_join {
                "Join Mirror as Async"
            } else {
                "Join Mirror as Failover"
            },
            crumbs,
            "mirror-settings",
        ),
        async_join,
        base: if async_join {
            "/portal/mirror/join-async"
        } else {
            "/portal/mirror/join"
        },
        description,
        mirror_name: step1.mirror_name.clone().unwrap_or_default(),
        agent_address: step1.agent_address.clone().unwrap_or_default(),
        agent_port: step1.agent_port.clone().unwrap_or_else(|| "2188".into()),
        instance_name: step1
            .instance_name
            .clone()
            .unwrap_or_else(|| crate::instance::DEFAULT_INSTANCE_NAME.into()),
        member_name,
        agent_host: agent_host(&superserver),
        superserver,
        local_agent_port,
    }
}

pub(crate) async fn join_page(State(state): State<AppState>, user: PortalUser) -> Response {
    join_page_of(&state, &user, false)
}

pub(crate) async fn join_async_page(State(state): State<AppState>, user: PortalUser) -> Response {
    join_page_of(&state, &user, true)
}

fn join_page_of(state: &AppState, user: &PortalUser, async_join: bool) -> Response {
    if !state.instance.config.get().mirror.service_enabled {
        return flash_and_redirect(
            state,
            user,
            Err(Error::Conflict(
                "the mirror service is disabled: enable it first".into(),
            )),
            "/portal/mirror/settings",
        );
    }
    let empty = JoinForm::default();
    join_page_for(state, user, &empty, None, async_join).into_response()
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct JoinForm {
    mirror_name: Option<String>,
    agent_address: Option<String>,
    agent_port: Option<String>,
    instance_name: Option<String>,
    member_name: Option<String>,
    superserver_address: Option<String>,
    mirror_private_address: Option<String>,
    agent_address_local: Option<String>,
    agent_port_local: Option<String>,
    async_type: Option<String>,
}

impl JoinForm {
    fn info(&self) -> Result<JoinInfoRequest> {
        Ok(JoinInfoRequest {
            mirror_name: filled(&self.mirror_name).unwrap_or_default(),
            agent_address: filled(&self.agent_address).ok_or_else(|| {
                Error::InvalidInput("Agent Address on Other System is required".into())
            })?,
            agent_port: number("Agent Port", &self.agent_port)?,
            instance_name: filled(&self.instance_name),
        })
    }
}

/// Step 1's Next: fetch the mirror's information from the other member's agent.
pub(crate) async fn join_next(
    State(state): State<AppState>,
    CsrfForm(user, form): CsrfForm<JoinForm>,
) -> Response {
    join_next_of(&state, &user, &form, false).await
}

pub(crate) async fn join_async_next(
    State(state): State<AppState>,
    CsrfForm(user, form): CsrfForm<JoinForm>,
) -> Response {
    join_next_of(&state, &user, &form, true).await
}

async fn join_next_of(
    state: &AppState,
    user: &PortalUser,
    form: &JoinForm,
    async_join: bool,
) -> Response {
    let described = async { service(state).join_info(&form.info()?).await }.await;
    match described {
        Ok(description) => {
            join_page_for(state, user, form, Some(description), async_join).into_response()
        }
        Err(err) => {
            let mut page = join_page_for(state, user, form, None, async_join);
            page.layout.flash = Some(super::auth::Flash {
                ok: false,
                text: err.to_string(),
            });
            page.into_response()
        }
    }
}

pub(crate) async fn join(
    State(state): State<AppState>,
    CsrfForm(user, form): CsrfForm<JoinForm>,
) -> Response {
    join_of(&state, &user, form, false).await
}

pub(crate) async fn join_async(
    State(state): State<AppState>,
    CsrfForm(user, form): CsrfForm<JoinForm>,
) -> Response {
    join_of(&state, &user, form, true).await
}

async fn join_of(
    state: &AppState,
    user: &PortalUser,
    form: JoinForm,
    async_join: bool,
) -> Response {
    let result = async {
        let request = JoinRequest {
            info: form.info()?,
            member_name: filled(&form.member_name),
            superserver_address: filled(&form.superserver_address),
            mirror_private_address: filled(&form.mirror_private_address),
            agent_address_local: filled(&form.agent_address_local),
            agent_port_local: number("Agent Port", &form.agent_port_local)?,
            async_type: filled(&form.async_type),
        };
        if async_join {
            service(state).join_async(request).await
        } else {
            service(state).join_failover(request).await
        }
    }
    .await;
    let to = match (result.is_ok(), async_join) {
        (true, _) => "/portal/mirror/monitor",
        (false, true) => "/portal/mirror/join-async",
        (false, false) => "/portal/mirror/join",
    };
    flash_and_redirect(state, user, result, to)
}

// ---------------------------------------------------------------------------------------------
// Edit Mirror

#[derive(Template, WebTemplate)]
#[template(path = "portal/mirror_edit.html")]
pub(crate) struct EditPage {
    layout: Layout,
    view: MirrorView,
    primary: bool,
}

pub(crate) async fn edit_page(
    State(state): State<AppState>,
    user: PortalUser,
) -> Result<EditPage, PageError> {
    if state.instance.config.get().mirror.membership.is_none() {
        return Err(Error::Conflict("this instance is not a mirror member".into()).into());
    }
    let crumbs = vec!["System Administration", "Configuration", "Mirror Settings"];
    Ok(EditPage {
        layout: Layout::new(&state, &user, "Edit Mirror", crumbs, "mirror-settings"),
        view: service(&state).view(),
        primary: state.mirror.role() == Role::Primary,
    })
}

#[derive(Deserialize)]
pub(crate) struct EditForm {
    qos_timeout_ms: Option<String>,
}

pub(crate) async fn edit(
    State(state): State<AppState>,
    CsrfForm(user, form): CsrfForm<EditForm>,
) -> Response {
    let result = async {
        let request = EditRequest {
            qos_timeout_ms: number("Quality of Service Timeout", &form.qos_timeout_ms)?,
        };
        service(&state).edit(request).await
    }
    .await;
    flash_and_redirect(&state, &user, result, "/portal/mirror/edit")
}

#[derive(Deserialize)]
pub(crate) struct RemoveForm {
    confirm: Option<String>,
}

pub(crate) async fn remove(
    State(state): State<AppState>,
    CsrfForm(user, form): CsrfForm<RemoveForm>,
) -> Response {
    if form.confirm.is_none() {
        let err = Err(Error::InvalidInput(
            "tick “I understand” to remove the mirror configuration".into(),
        ));
        return flash_and_redirect(&state, &user, err, "/portal/mirror/edit");
    }
    let result = service(&state).remove().await;
    let to = if result.is_ok() {
        "/portal/mirror/settings"
    } else {
        "/portal/mirror/edit"
    };
    flash_and_redirect(&state, &user, result, to)
}

#[derive(Deserialize)]
pub(crate) struct MemberForm {
    #[serde(default)]
    member_name: String,
}

pub(crate) async fn remove_member(
    State(state): State<AppState>,
    CsrfForm(user, form): CsrfForm<MemberForm>,
) -> Response {
    let result = service(&state).remove_member(&form.member_name);
    flash_and_redirect(&state, &user, result, "/portal/mirror/edit")
}

/// A request in Pending New Members, as its row's buttons send it: the member name and the
/// certificate fingerprint the row shows, so that a button acts on exactly the request the
/// person saw, even if another certificate asked under the same name meanwhile.
#[derive(Deserialize)]
pub(crate) struct PendingForm {
    #[serde(default)]
    member_name: String,
    #[serde(default)]
    certificate: String,
}

pub(crate) async fn authorize(
    State(state): State<AppState>,
    CsrfForm(user, form): CsrfForm<PendingForm>,
) -> Response {
    let result = service(&state).authorize(&form.member_name, &form.certificate);
    flash_and_redirect(&state, &user, result, "/portal/mirror/edit")
}

pub(crate) async fn reject(
    State(state): State<AppState>,
    CsrfForm(user, form): CsrfForm<PendingForm>,
) -> Response {
    let result = service(&state).reject(&form.member_name, &form.certificate);
    flash_and_redirect(&state, &user, result, "/portal/mirror/edit")
}

pub(crate) async fn remove_pending(
    State(state): State<AppState>,
    CsrfForm(user, form): CsrfForm<PendingForm>,
) -> Response {
    let result = service(&state).remove_pending(&form.member_name, &form.certificate);
    flash_and_redirect(&state, &user, result, "/portal/mirror/edit")
}

// ---------------------------------------------------------------------------------------------
// Mirror Monitor

#[derive(Template, WebTemplate)]
#[template(path = "portal/mirror_monitor.html")]
pub(crate) struct MonitorPage {
    layout: Layout,
    view: MirrorView,
    timeline: crate::mirror::service::timeline::Timeline,
    now: String,
}

pub(crate) async fn monitor(State(state): State<AppState>, user: PortalUser) -> MonitorPage {
    MonitorPage {
        layout: Layout::new(
            &state,
            &user,
            "Mirror Monitor",
            vec!["System Operation"],
            "mirror-monitor",
        ),
        view: service(&state).view(),
        timeline: service(&state).timeline().await,
        now: MirrorService::now_text(),
    }
}

#[derive(Deserialize)]
pub(crate) struct MonitorActionForm {
    #[serde(default)]
    confirm: Option<String>,
}

/// The Mirror Monitor's buttons: Set / Clear No Failover, Stop / Start Mirror On This Member,
/// Demote To DR Member, Demote Other Member, Promote to Failover Member, Force This Member To
/// Become Primary.
pub(crate) async fn monitor_action(
    State(state): State<AppState>,
    Path(action): Path<String>,
    CsrfForm(user, form): CsrfForm<MonitorActionForm>,
) -> Result<Response, PageError> {
    let action = MonitorAction::from_word(&action, form.confirm.is_some())?;
    let result = state.mirror_service.monitor_action(action).await;
    Ok(flash_and_redirect(
        &state,
        &user,
        result,
        "/portal/mirror/monitor",
    ))
}

pub(crate) async fn database_action(
    State(state): State<AppState>,
    Path((db, action)): Path<(String, String)>,
    CsrfForm(user, Empty {}): CsrfForm<Empty>,
) -> Result<Response, PageError> {
    let db = DbName::new(&db)?;
    let result = match action.as_str() {
        "mount" => state.instance.mount(db).await,
        "activate" => service(&state).activate(db).await,
        "catchup" => service(&state).catchup(db).await,
        "copy" => state.mirror_service.copy_from_primary(db, None),
        other => {
            return Err(
                Error::NotFound(format!("there is no mirrored database action {other:?}")).into(),
            );
        }
    };
    Ok(flash_and_redirect(
        &state,
        &user,
        result,
        "/portal/mirror/monitor",
    ))
}

// ---------------------------------------------------------------------------------------------
// Local Databases and Add to Mirror

#[derive(Template, WebTemplate)]
#[template(path = "portal/local_databases.html")]
pub(crate) struct LocalDatabasesPage {
    layout: Layout,
    databases: Vec<DatabaseRow>,
    primary: bool,
    mirror_name: String,
    add_hint: String,
}

pub(crate) async fn local_databases(
    State(state): State<AppState>,
    user: PortalUser,
) -> Result<LocalDatabasesPage, PageError> {
    let config = state.instance.config.get();
    let primary = state.mirror.role() == Role::Primary;
    let add_hint = match (&config.mirror.membership, config.mirror.service_enabled) {
        (Some(_), _) if !primary => {
            "Add to Mirror: databases are added on the mirror's primary".into()
        }
        (None, true) => {
            "Add to Mirror: this instance is not a mirror member yet (Mirror Settings)".into()
        }
        (None, false) => "Add to Mirror: mirror service disabled".into(),
        _ => String::new(),
    };
    let crumbs = vec![
        "System Administration",
        "Configuration",
        "System Configuration",
    ];
    Ok(LocalDatabasesPage {
        layout: Layout::new(&state, &user, "Local Databases", crumbs, "local-databases"),
        databases: database_rows(&state).await?,
        primary,
        mirror_name: config
            .mirror
            .membership
            .as_ref()
            .map(|m| m.mirror.name.clone())
            .unwrap_or_default(),
        add_hint,
    })
}

pub(crate) async fn add_to_mirror(
    State(state): State<AppState>,
    CsrfForm(user, fields): CsrfForm<Vec<(String, String)>>,
) -> Response {
    let result = async {
        let dbs = fields
            .iter()
            .filter(|(k, _)| k == "db")
            .map(|(_, v)| DbName::new(v))
            .collect::<Result<Vec<_>>>()?;
        service(&state).add_databases(dbs).await
    }
    .await;
    flash_and_redirect(&state, &user, result, "/portal/config/local-databases")
}

// ---------------------------------------------------------------------------------------------
// Backup, Freeze, Thaw

#[derive(Template, WebTemplate)]
#[template(path = "portal/backup.html")]
pub(crate) struct BackupPage {
    layout: Layout,
    databases: Vec<DatabaseRow>,
    files: Vec<String>,
    frozen: bool,
}

pub(crate) async fn backup_page(
    State(state): State<AppState>,
    user: PortalUser,
) -> Result<BackupPage, PageError> {
    let folder = state.instance.settings.data_dir.join("mgr/backup");
    let files = tokio::task::spawn_blocking(move || {
        let mut files: Vec<String> = std::fs::read_dir(folder)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| format!("mgr/backup/{}", e.file_name().to_string_lossy()))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files
    })
    .await
    .unwrap_or_default();
    Ok(BackupPage {
        layout: Layout::new(&state, &user, "Backup", vec!["System Operation"], "backup"),
        databases: database_rows(&state).await?,
        files,
        frozen: state.instance.writer().frozen(),
    })
}

pub(crate) async fn backup(
    State(state): State<AppState>,
    Path(db): Path<String>,
    CsrfForm(user, Empty {}): CsrfForm<Empty>,
) -> Response {
    let result = async {
        let db = DbName::new(&db)?;
        let file = state.instance.backup_copy(db.clone()).await?;
        Ok(format!("{db} copied to {file}"))
    }
    .await;
    flash_and_redirect(&state, &user, result, "/portal/operation/backup")
}

#[derive(Deserialize)]
pub(crate) struct FreezeForm {
    timeout_s: Option<String>,
}

pub(crate) async fn freeze(
    State(state): State<AppState>,
    CsrfForm(user, form): CsrfForm<FreezeForm>,
) -> Response {
    let result = async {
        let timeout: u64 = number("Timeout", &form.timeout_s)?.unwrap_or(600);
        if timeout == 0 || timeout > super::api::MAX_FREEZE_S {
            return Err(Error::InvalidInput(format!(
                "the timeout must be between 1 and {} seconds",
                super::api::MAX_FREEZE_S
            )));
        }
        service(&state)
            .freeze(std::time::Duration::from_secs(timeout))
            .await
    }
    .await;
    flash_and_redirect(&state, &user, result, "/portal/operation/backup")
}

pub(crate) async fn thaw(
    State(state): State<AppState>,
    CsrfForm(user, Empty {}): CsrfForm<Empty>,
) -> Response {
    let result = service(&state).thaw().await;
    flash_and_redirect(&state, &user, result, "/portal/operation/backup")
}
