//! The demo applications of the article: COMPANY and PHONEBOOK.
//!
//! COMPANY keeps company records in the COMPANY database (namespace COMPANY). PHONEBOOK keeps
//! personal contacts (PERSONAL database), each linked to a company, and customers (CUSTOMER
//! database); its namespace maps COMPANY and CUSTOMER next to its default PERSONAL, so one
//! statement joins a contact to its company across two database files.
//!
//! Each application is a set of pages (server-rendered forms) and the same operations as JSON
//! under `/api/apps/...`. Both go through one set of functions per application, which validate
//! input and run fixed, parameterised statements (user input is never spliced into SQL). Writes go
//! through the instance's writer like any other write: journaled, group-committed, durable
//! before the page or the API answers.

pub mod company;
pub mod phonebook;

use crate::error::{Error, Result};
use crate::instance::sql::SqlValue;

/// Rows per page of a list, unless the caller asks for another size.
pub const DEFAULT_PAGE: usize = 1000;
/// Largest page a caller may ask for.
pub const MAX_PAGE: usize = 10_000;

/// Which slice of a list to return: rows with an id above `after`, at most `limit` of them.
/// Lists are ordered by id, so a client pages through everything by passing the last id it saw.
#[derive(Debug, Clone, Copy, Default, serde::Deserialize)]
pub struct PageQuery {
    /// Return rows with an id greater than this.
    pub after: Option<i64>,
    /// At most this many rows.
    pub limit: Option<usize>,
}

impl PageQuery {
    /// The parameters `?1` (after) and `?2` (limit) of a list statement.
    pub fn params(&self) -> Result<Vec<SqlValue>> {
        let limit = self.limit.unwrap_or(DEFAULT_PAGE);
        if limit == 0 || limit > MAX_PAGE {
            return Err(Error::InvalidInput(format!(
                "limit must be between 1 and {MAX_PAGE}"
            )));
        }
        Ok(vec![
            SqlValue::Integer(self.after.unwrap_or(0)),
            SqlValue::Integer(limit as i64),
        ])
    }

    /// The query string of the page after one that ended at `last_id`, when it was full.
    pub fn next(&self, shown: usize, last_id: Option<i64>) -> Option<String> {
        let limit = self.limit.unwrap_or(DEFAULT_PAGE);
        match last_id {
            Some(id) if shown == limit => Some(format!("after={id}&limit={limit}")),
            _ => None,
        }
    }
}

/// Checks a text field: trimmed, required or not, at most `max` characters.
pub fn text_field(label: &str, value: &str, max: usize, required: bool) -> Result<String> {
    let value = value.trim();
    if required && value.is_empty() {
        return Err(Error::InvalidInput(format!("{label} is required")));
    }
    if value.chars().count() > max {
        return Err(Error::InvalidInput(format!(
            "{label} may have at most {max} characters"
        )));
    }
    // Line breaks and tabs are text; other control characters and invisible format characters
    // (zero-width, bidirectional overrides) would let two different names look the same.
    if let Some(hidden) = value
        .chars()
        .find(|c| *c != '\n' && *c != '\t' && crate::names::is_hidden_character(*c))
    {
        return Err(Error::InvalidInput(format!(
            "{label} contains an invisible or control character (U+{:04X})",
            hidden as u32
        )));
    }
    Ok(value.to_string())
}

/// Parses an optional whole number typed into a form.
pub fn optional_number(label: &str, value: &str) -> Result<Option<i64>> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    value
        .parse::<i64>()
        .map(Some)
        .map_err(|_| Error::InvalidInput(format!("{label} must be a whole number, not {value:?}")))
}

/// Parses a record id from a URL.
pub fn parse_id(kind: &str, raw: &str) -> Result<i64> {
    raw.parse::<i64>()
        .map_err(|_| Error::InvalidInput(format!("{kind} id must be a whole number, not {raw:?}")))
}

fn int(value: &SqlValue) -> i64 {
    match value {
        SqlValue::Integer(i) => *i,
        _ => 0,
    }
}

fn opt_int(value: &SqlValue) -> Option<i64> {
    match value {
        SqlValue::Integer(i) => Some(*i),
        _ => None,
    }
}

fn text(value: &SqlValue) -> String {
    crate::instance::sql::display_value(value)
}

fn opt_text(value: &SqlValue) -> Option<String> {
    match value {
        SqlValue::Null => None,
        other => Some(text(other)),
    }
}
