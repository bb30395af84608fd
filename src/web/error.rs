//! How errors reach people: an error page in the portal, `{"error": ...}` on `/api`.
//!
//! Both keep the status code of the error's kind (400 bad input, 404 unknown, 409 refused by the
//! current state, 503 unavailable, 500 for the rest) and its message, which is written for the
//! person reading it. Failures that are not the caller's are also logged.

use askama::Template;
use axum::Json;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

use crate::error::Error;

fn status_of(err: &Error) -> StatusCode {
    StatusCode::from_u16(err.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn log_if_ours(err: &Error) {
    if err.http_status() >= 500 {
        tracing::error!("{err}");
    }
}

/// An error shown as a portal page.
#[derive(Debug)]
pub struct PageError(pub Error);

impl From<Error> for PageError {
    fn from(err: Error) -> Self {
        PageError(err)
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    status: u16,
    reason: &'a str,
    message: String,
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        log_if_ours(&self.0);
        let status = status_of(&self.0);
        let page = ErrorPage {
            status: status.as_u16(),
            reason: status.canonical_reason().unwrap_or("Error"),
            message: self.0.to_string(),
        };
        match page.render() {
            Ok(html) => (status, Html(html)).into_response(),
            Err(_) => (status, self.0.to_string()).into_response(),
        }
    }
}

/// An error answered as JSON on `/api`.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(err: Error) -> Self {
        ApiError(err)
    }
}

impl ApiError {
    /// An error with an explicit status (for rejections that carry their own).
    pub fn response(status: StatusCode, message: impl Into<String>) -> Response {
        (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        log_if_ours(&self.0);
        ApiError::response(status_of(&self.0), self.0.to_string())
    }
}
