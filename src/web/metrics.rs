//! `GET /metrics`: this member's figures in Prometheus's text format (see [`crate::metrics`]).
//!
//! What is counted where it happens (commits, fsyncs, group commits, takeovers) is already in
//! the recorder; what describes the member's state is set here, as gauges, from one copy of the
//! member's published status and from the hub, just before the text is rendered. No login (the
//! figures show no data) unless the member runs with `--metrics-login` (see the routes).

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use metrics::gauge;

use super::AppState;
use crate::config::mirror::MemberKind;
use crate::metrics::{
    ARBITER_CONNECTED, EPOCH, FAILOVER_MODE, FROZEN, JOURNAL_END, LAG_BYTES, LAG_SECONDS,
    MEMBER_LINK_UP, QUARANTINED_ROWS, ROLE, TROUBLE_SECONDS,
};
use crate::mirror::state::Role;
use crate::util::now_ms;

/// The text Prometheus scrapes.
pub(super) async fn metrics(State(state): State<AppState>) -> Response {
    // The quarantine's count reads a file: off the async workers.
    match tokio::task::spawn_blocking(move || render(&state)).await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(err) => (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()).into_response(),
    }
}

fn render(state: &AppState) -> String {
    let handle = crate::metrics::install();
    let published = state.mirror.status();
    let config = state.instance.config.get();
    let role = match published.role {
        Role::Primary => "primary",
        Role::Backup => "backup",
        Role::Async(_) => "async",
        Role::NotMember => "not_member",
    };
    for each in ["primary", "backup", "async", "not_member"] {
        gauge!(ROLE, "role" => each).set(flag(each == role));
    }
    gauge!(EPOCH).set(config.epoch.0 as f64);
    // Outside a mirror neither mode is in effect.
    let member = config.mirror.membership.is_some();
    let arbiter_mode = published.failover.arbiter_controlled();
    gauge!(FAILOVER_MODE, "mode" => "arbiter").set(flag(member && arbiter_mode));
    gauge!(FAILOVER_MODE, "mode" => "agent").set(flag(member && !arbiter_mode));
    gauge!(ARBITER_CONNECTED).set(flag(published.arbiter.connected));
    if let Some(m) = config.mirror.membership.as_ref() {
        let now = now_ms();
        let links = state.mirror.hub.links();
        for other in &m.others {
            let member = other.name.to_string();
            if published.role == Role::Primary {
                let link = links.iter().find(|l| l.member.name == other.name);
                gauge!(MEMBER_LINK_UP, "member" => member.clone()).set(flag(link.is_some()));
                if let Some(link) = link {
                    let behind_ms = link.behind_since_ms.map_or(0, |since| (now - since).max(0));
                    gauge!(LAG_BYTES, "member" => member.clone()).set(link.behind_bytes as f64);
                    gauge!(LAG_SECONDS, "member" => member).set(behind_ms as f64 / 1000.0);
                }
            } else if m.primary_name.as_ref() == Some(&other.name)
                || other.kind == MemberKind::Failover && m.this.kind == MemberKind::Failover
            {
                // A following member knows one link: the one to its primary.
                let up = published.link.connected
                    && published.link.primary.as_ref().map(|p| &p.name) == Some(&other.name);
                gauge!(MEMBER_LINK_UP, "member" => member).set(flag(up));
            }
        }
    }
    if let Some(journal) = state.mirror.journal() {
        gauge!(JOURNAL_END).set(journal.durable_end().0 as f64);
    }
    gauge!(TROUBLE_SECONDS).set(state.mirror.hub.trouble_time().as_secs_f64());
    gauge!(FROZEN).set(flag(state.instance.writer().frozen()));
    gauge!(QUARANTINED_ROWS).set(state.mirror_service.quarantined_rows() as f64);
    handle.render()
}

/// A yes-or-no gauge's value.
fn flag(yes: bool) -> f64 {
    if yes { 1.0 } else { 0.0 }
}
