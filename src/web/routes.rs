//! Every route of the web port, in one table: the portal's pages, the Mirror Monitor and the
//! mirror's pages, the demo applications (pages and `/api`), the `/api` endpoints, and the
//! unauthenticated few (health, the load balancer's status, static files).
//!
//! The handlers live beside what they show ([`super::portal`], [`super::mirror`],
//! [`super::api`], [`crate::apps`]); this module only says which URL reaches which. Login is
//! enforced by the handlers' extractors on pages (a `PortalUser` argument redirects to the login
//! page) and by one layer on the protected `/api` ([`super::auth::require_api_user`]); the layers
//! every answer gets (body limit, timeout, headers) are added in [`super::router`].

use axum::Router;
use axum::middleware;
use axum::response::Redirect;
use axum::routing::{get, post};

use super::{
    AppState, api, auth, css, favicon, lab, mirror, mirror_status, portal, refresh_script,
};
use crate::apps::{company, phonebook};

/// The whole table (see the module essay).
pub(super) fn all(state: &AppState) -> Router<AppState> {
    let protected_api =
        api_endpoints()
            .merge(app_endpoints())
            .route_layer(middleware::from_fn_with_state(
                state.clone(),
                auth::require_api_user,
            ));
    let api = Router::new()
        .route("/health", get(api::health))
        .merge(protected_api)
        .fallback(super::api_not_found);
    Router::new()
        .route("/", get(|| async { Redirect::to("/portal/") }))
        .route("/mirror_status", get(mirror_status))
        // The path IRIS serves it on, so a load balancer set up for IRIS works unchanged.
        .route("/csp/user/mirror_status.cxw", get(mirror_status))
        .merge(metrics_route(state))
        .route("/static/portal.css", get(css))
        .route("/static/favicon.svg", get(favicon))
        .route("/static/refresh.js", get(refresh_script))
        .nest("/api", api)
        .merge(portal_pages())
        .merge(mirror_pages())
        .merge(app_pages())
        .fallback(super::page_not_found)
}

/// `GET /metrics`, which Prometheus scrapes: open (figures, no data), unless the member was
/// started with `--metrics-login`, which asks for a portal user's login as `/api` does.
fn metrics_route(state: &AppState) -> Router<AppState> {
    let route = Router::new().route("/metrics", get(super::metrics::metrics));
    if state.instance.settings.metrics_login {
        route.route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_api_user,
        ))
    } else {
        route
    }
}

/// The management portal's pages outside mirroring.
fn portal_pages() -> Router<AppState> {
    Router::new()
        .route("/portal", get(|| async { Redirect::permanent("/portal/") }))
        .route("/portal/", get(portal::home))
        .route(
            "/portal/login",
            get(portal::login_page).post(portal::login_submit),
        )
        .route("/portal/logout", post(portal::logout))
        .route("/portal/config/databases", get(portal::databases))
        .route(
            "/portal/config/databases/{db}/{action}",
            post(portal::database_action),
        )
        .route("/portal/config/namespaces", get(portal::namespaces))
        .route("/portal/operation/journals", get(portal::journals))
        .route(
            "/portal/operation/journals/purge",
            post(portal::purge_journals),
        )
        .route(
            "/portal/explorer/sql",
            get(portal::sql_page).post(portal::sql_run),
        )
        .route(
            "/portal/security/password",
            get(portal::password_page).post(portal::password_change),
        )
}

/// Mirror Settings, the Mirror Monitor, Local Databases, Backup, Freeze and Thaw.
fn mirror_pages() -> Router<AppState> {
    Router::new()
        .route("/portal/mirror/settings", get(mirror::settings))
        .route("/portal/mirror/service", post(mirror::set_service))
        .route(
            "/portal/mirror/create",
            get(mirror::create_page).post(mirror::create),
        )
        .route(
            "/portal/mirror/join",
            get(mirror::join_page).post(mirror::join),
        )
        .route("/portal/mirror/join/next", post(mirror::join_next))
        .route(
            "/portal/mirror/join-async",
            get(mirror::join_async_page).post(mirror::join_async),
        )
        .route(
            "/portal/mirror/join-async/next",
            post(mirror::join_async_next),
        )
        .route(
            "/portal/mirror/edit",
            get(mirror::edit_page).post(mirror::edit),
        )
        .route("/portal/mirror/remove", post(mirror::remove))
        .route("/portal/mirror/remove-member", post(mirror::remove_member))
        .route("/portal/mirror/authorize", post(mirror::authorize))
        .route("/portal/mirror/reject", post(mirror::reject))
        .route(
            "/portal/mirror/remove-pending",
            post(mirror::remove_pending),
        )
        .route("/portal/mirror/monitor", get(mirror::monitor))
        .route(
            "/portal/mirror/monitor/{action}",
            post(mirror::monitor_action),
        )
        .route(
            "/portal/mirror/databases/{db}/{action}",
            post(mirror::database_action),
        )
        .route(
            "/portal/config/local-databases",
            get(mirror::local_databases),
        )
        .route(
            "/portal/config/local-databases/add-to-mirror",
            post(mirror::add_to_mirror),
        )
        .route("/portal/operation/backup", get(mirror::backup_page))
        .route("/portal/operation/backup/{db}", post(mirror::backup))
        .route("/portal/operation/freeze", post(mirror::freeze))
        .route("/portal/operation/thaw", post(mirror::thaw))
        .route("/portal/lab", get(lab::page))
        .route("/portal/lab/kill", post(lab::kill))
        .route("/portal/lab/hang", post(lab::hang))
        .route("/portal/lab/cut", post(lab::cut))
        .route("/portal/lab/mend", post(lab::mend))
        .route("/portal/lab/ledger/start", post(lab::ledger_start))
        .route("/portal/lab/ledger/stop", post(lab::ledger_stop))
}

/// The demo applications' pages.
fn app_pages() -> Router<AppState> {
    Router::new()
        .route(
            "/apps/company",
            get(company::list_page).post(company::add_form),
        )
        .route(
            "/apps/company/{id}",
            get(company::edit_page).post(company::edit_form),
        )
        .route("/apps/company/{id}/delete", post(company::delete_form))
        .route("/apps/phonebook", get(phonebook::page))
        .route(
            "/apps/phonebook/contacts",
            post(phonebook::add_contact_form),
        )
        .route(
            "/apps/phonebook/contacts/{id}",
            get(phonebook::edit_contact_page).post(phonebook::edit_contact_form),
        )
        .route(
            "/apps/phonebook/contacts/{id}/delete",
            post(phonebook::delete_contact_form),
        )
        .route(
            "/apps/phonebook/customers",
            post(phonebook::add_customer_form),
        )
        .route(
            "/apps/phonebook/customers/{id}",
            get(phonebook::edit_customer_page).post(phonebook::edit_customer_form),
        )
        .route(
            "/apps/phonebook/customers/{id}/delete",
            post(phonebook::delete_customer_form),
        )
}

/// `/api`: databases, journal, SQL, the mirror's actions, the password (behind login).
fn api_endpoints() -> Router<AppState> {
    Router::new()
        .route("/databases", get(api::databases))
        .route("/databases/{db}/{action}", post(api::database_action))
        .route("/namespaces", get(api::namespaces))
        .route("/journal", get(api::journal))
        .route("/journal/purge", post(api::journal_purge))
        .route("/sql", post(api::sql))
        .route("/mirror", get(api::mirror))
        .route("/mirror/events", get(api::mirror_events))
        .route("/mirror/service", post(api::mirror_service))
        .route("/mirror/create", post(api::mirror_create))
        .route("/mirror/join-info", post(api::mirror_join_info))
        .route("/mirror/join-failover", post(api::mirror_join_failover))
        .route("/mirror/join-async", post(api::mirror_join_async))
        .route("/mirror/edit", post(api::mirror_edit))
        .route("/mirror/remove", post(api::mirror_remove))
        .route("/mirror/remove-member", post(api::mirror_remove_member))
        .route("/mirror/pending", get(api::mirror_pending))
        .route("/mirror/authorize", post(api::mirror_authorize))
        .route("/mirror/reject", post(api::mirror_reject))
        .route("/mirror/remove-pending", post(api::mirror_remove_pending))
        .route("/mirror/add-databases", post(api::mirror_add_databases))
        .route("/mirror/freeze", post(api::mirror_freeze))
        .route("/mirror/no-failover", post(api::mirror_no_failover))
        .route("/mirror/stop", post(api::mirror_stop))
        .route("/mirror/start", post(api::mirror_start))
        .route("/mirror/force-primary", post(api::mirror_force_primary))
        .route("/mirror/demote-to-dr", post(api::mirror_demote_to_dr))
        .route("/mirror/demote-other", post(api::mirror_demote_other))
        .route("/mirror/promote", post(api::mirror_promote))
        .route("/mirror/thaw", post(api::mirror_thaw))
        .route("/password", post(api::password))
        .route("/lab", get(lab::api_view))
        .route("/lab/kill", post(lab::api_kill))
        .route("/lab/hang", post(lab::api_hang))
        .route("/lab/cut", post(lab::api_cut))
        .route("/lab/mend", post(lab::api_mend))
        .route("/lab/ledger/start", post(lab::api_ledger_start))
        .route("/lab/ledger/stop", post(lab::api_ledger_stop))
}

/// `/api/apps/…`: the demo applications' records (behind login).
fn app_endpoints() -> Router<AppState> {
    Router::new()
        .route(
            "/apps/companies",
            get(company::api_list).post(company::api_add),
        )
        .route(
            "/apps/companies/{id}",
            get(company::api_get)
                .put(company::api_update)
                .delete(company::api_delete),
        )
        .route(
            "/apps/contacts",
            get(phonebook::api_contacts).post(phonebook::api_add_contact),
        )
        .route(
            "/apps/contacts/{id}",
            get(phonebook::api_contact)
                .put(phonebook::api_update_contact)
                .delete(phonebook::api_delete_contact),
        )
        .route(
            "/apps/customers",
            get(phonebook::api_customers).post(phonebook::api_add_customer),
        )
        .route(
            "/apps/customers/{id}",
            get(phonebook::api_customer)
                .put(phonebook::api_update_customer)
                .delete(phonebook::api_delete_customer),
        )
}
