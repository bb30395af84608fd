//! One error type for the whole crate.
//!
//! Every failure a person can meet is one of a few kinds, and the kind decides how it is shown: a
//! portal page with a status code, or `{"error": ...}` with the same status on `/api`. The message
//! is always written for the person who caused it ("database COMPANY is dismounted"), never a
//! debug dump. Internal failures keep their detail in the log and show a short message.

use std::fmt;

/// The crate-wide result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, grouped by who can fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The request itself is wrong: a bad name, a malformed value, a missing field. (400)
    #[error("{0}")]
    InvalidInput(String),
    /// The named thing does not exist: an unknown database, namespace or row. (404)
    #[error("{0}")]
    NotFound(String),
    /// The request is valid but the current state refuses it: a dismounted database, a read-only
    /// database, a mirror action while the mirror service is disabled. (409)
    #[error("{0}")]
    Conflict(String),
    /// SQLite refused the user's statement (syntax error, constraint violation, no such table). (400)
    #[error("SQL error: {0}")]
    Sql(String),
    /// The instance cannot serve the request right now: it is shutting down, or its writer stopped
    /// after a failure it could not survive. (503)
    #[error("{0}")]
    Unavailable(String),
    /// Stored data failed a check: a bad CRC in the middle of a journal segment, a database file
    /// that is not what the configuration says. Never skipped silently. (500)
    #[error("corruption: {0}")]
    Corrupt(String),
    /// An operating-system I/O failure. (500)
    #[error("I/O error: {0}")]
    Io(String),
    /// A bug or an unexpected library failure. (500)
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The HTTP status that fits this kind of error.
    pub fn http_status(&self) -> u16 {
        match self {
            Error::InvalidInput(_) | Error::Sql(_) => 400,
            Error::NotFound(_) => 404,
            Error::Conflict(_) => 409,
            Error::Unavailable(_) => 503,
            Error::Corrupt(_) | Error::Io(_) | Error::Internal(_) => 500,
        }
    }
}

/// Builds an [`Error::InvalidInput`] from a format string.
#[macro_export]
macro_rules! errinput {
    ($($arg:tt)*) => { $crate::error::Error::InvalidInput(format!($($arg)*)) };
}

/// Builds an [`Error::Conflict`] from a format string.
#[macro_export]
macro_rules! errconflict {
    ($($arg:tt)*) => { $crate::error::Error::Conflict(format!($($arg)*)) };
}

/// Builds an [`Error::Corrupt`] from a format string.
#[macro_export]
macro_rules! errcorrupt {
    ($($arg:tt)*) => { $crate::error::Error::Corrupt(format!($($arg)*)) };
}

impl From<std::io::Error> for Error {
    fn from(err: std::io::Error) -> Self {
        Error::Io(err.to_string())
    }
}

/// Internal SQLite failures (opening files, bookkeeping statements). Errors from a *user's*
/// statement are mapped to [`Error::Sql`] at the place that runs it, where the difference is known.
impl From<rusqlite::Error> for Error {
    fn from(err: rusqlite::Error) -> Self {
        Error::Internal(format!("sqlite: {err}"))
    }
}

impl From<serde_json::Error> for Error {
    fn from(err: serde_json::Error) -> Self {
        Error::InvalidInput(format!("invalid JSON: {err}"))
    }
}

/// Adds context to I/O errors: which file, which step.
pub trait IoContext<T> {
    /// Wraps the error as [`Error::Io`] prefixed with `what`.
    fn io_context(self, what: impl fmt::Display) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn io_context(self, what: impl fmt::Display) -> Result<T> {
        self.map_err(|err| Error::Io(format!("{what}: {err}")))
    }
}
