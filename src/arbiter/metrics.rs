//! The arbiter's Prometheus metrics (`mirrorlab arbiter --metrics ADDR`): the failover members
//! it sees per mirror, and the answers it gave, at `GET /metrics` on their own address (the
//! arbiter has no portal). Answers are counted where they are given ([`answered`]); who is seen
//! is read from the arbiter's state when scraped, so one scrape shows one moment.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics::{counter, describe_counter, describe_gauge, gauge};

use super::{Arbiter, FromArbiter};
use crate::error::{Error, Result};

/// `mirrorlab_arbiter_members_seen{mirror}`: failover members connected and speaking (0 to 2).
pub const MEMBERS_SEEN: &str = "mirrorlab_arbiter_members_seen";
/// `mirrorlab_arbiter_answers_total{question, answer}`: answers to the failover rules'
/// questions: `sees_backup` (from a primary: `yes`, `no`, `backup_took_over`) and
/// `may_take_over` (from a backup: `yes`, `no`).
pub const ANSWERS: &str = "mirrorlab_arbiter_answers_total";

/// Counts one answer.
pub(super) fn answered(question: &'static str, answer: &'static str) {
    counter!(ANSWERS, "question" => question, "answer" => answer).increment(1);
}

/// Serves `GET /metrics` on `listener` until the process ends.
pub(super) async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<Mutex<Arbiter>>,
) -> Result<()> {
    crate::metrics::install();
    describe_gauge!(
        MEMBERS_SEEN,
        "Failover members of the mirror the arbiter sees (connected and speaking)."
    );
    describe_counter!(
        ANSWERS,
        "Answers to the failover rules' questions, by question and answer."
    );
    let app = Router::new()
        .route("/metrics", get(render))
        .with_state(state);
    axum::serve(listener, app)
        .await
        .map_err(|e| Error::Io(format!("arbiter metrics: {e}")))
}

async fn render(State(state): State<Arc<Mutex<Arbiter>>>) -> impl IntoResponse {
    let status = state.lock().unwrap().status();
    if let FromArbiter::Status { mirrors, .. } = status {
        for (mirror, seen) in mirrors {
            gauge!(MEMBERS_SEEN, "mirror" => mirror).set(seen as f64);
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::install().render(),
    )
}
