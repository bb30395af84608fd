//! Validated names of databases and namespaces.
//!
//! Names reach the instance from URLs, forms, JSON and the install manifest. They end up in file
//! paths (`mgr/<name>/`) and in SQL (`ATTACH ... AS "<NAME>"`), so they are checked once, here, and
//! carried as types afterwards: a `DbName` cannot hold `..`, a slash, a quote or an empty string.
//! As in IRIS, names are case-insensitive and shown upper-cased.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Longest name accepted (IRIS allows 64 characters for database names).
pub const MAX_NAME_LEN: usize = 64;

/// Schema names SQLite reserves; a database may not use them as its attach name.
const RESERVED: [&str; 3] = ["MAIN", "TEMP", "SQLITE_MASTER"];

/// True for a character a person cannot see or that reorders what they see: control characters
/// and Unicode's invisible format characters (category Cf: zero-width spaces and joiners,
/// bidirectional marks and overrides, the byte-order mark, soft hyphen, tag characters). A name
/// holding one can look exactly like another name, or make the text around it read backwards, so
/// every name a person types refuses them.
pub fn is_hidden_character(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{0600}'..='\u{0605}'
                | '\u{061C}'
                | '\u{06DD}'
                | '\u{070F}'
                | '\u{0890}'..='\u{0891}'
                | '\u{08E2}'
                | '\u{180E}'
                | '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{206F}'
                | '\u{FEFF}'
                | '\u{FFF9}'..='\u{FFFB}'
                | '\u{110BD}'
                | '\u{110CD}'
                | '\u{13430}'..='\u{1343F}'
                | '\u{1BCA0}'..='\u{1BCA3}'
                | '\u{1D173}'..='\u{1D17A}'
                | '\u{E0001}'
                | '\u{E0020}'..='\u{E007F}'
        )
}

fn validate(kind: &str, raw: &str) -> Result<String> {
    let name = raw.trim();
    if name.is_empty() {
        return Err(Error::InvalidInput(format!("{kind} name is empty")));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(Error::InvalidInput(format!(
            "{kind} name is too long ({} characters; at most {MAX_NAME_LEN})",
            name.len()
        )));
    }
    let mut chars = name.chars();
    let first = chars.next().unwrap_or(' ');
    if !first.is_ascii_alphabetic() {
        return Err(Error::InvalidInput(format!(
            "{kind} name {name:?} must start with a letter"
        )));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_'))
    {
        return Err(Error::InvalidInput(format!(
            "{kind} name {name:?} contains {bad:?}; use letters, digits and _ only"
        )));
    }
    let upper = name.to_ascii_uppercase();
    if RESERVED.contains(&upper.as_str()) {
        return Err(Error::InvalidInput(format!(
            "{kind} name {upper} is reserved"
        )));
    }
    Ok(upper)
}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $ty(String);

        impl $ty {
            /// Checks and upper-cases a name.
            pub fn new(raw: &str) -> Result<Self> {
                validate($kind, raw).map(Self)
            }

            /// The upper-cased name.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $ty {
            type Error = Error;
            fn try_from(raw: String) -> Result<Self> {
                Self::new(&raw)
            }
        }

        impl From<$ty> for String {
            fn from(name: $ty) -> String {
                name.0
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

name_type!(
    /// The name of a database (`COMPANY`), also its attach name in namespace connections.
    DbName,
    "database"
);
name_type!(
    /// The name of a namespace (`PHONEBOOK`).
    NamespaceName,
    "namespace"
);

impl DbName {
    /// The folder under `mgr/` that holds this database: the lower-cased name, as IRIS does.
    pub fn directory_name(&self) -> String {
        self.0.to_ascii_lowercase()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_characters_are_told_apart_from_visible_ones() {
        for hidden in [
            '\u{200B}', '\u{200D}', '\u{202E}', '\u{2067}', '\u{FEFF}', '\u{00AD}', '\n', '\u{7F}',
        ] {
            assert!(is_hidden_character(hidden), "{hidden:?}");
        }
        for visible in ['a', 'é', 'ß', 'א', 'م', '字', ' ', '-', '/'] {
            assert!(!is_hidden_character(visible), "{visible:?}");
        }
    }

    #[test]
    fn names_are_upper_cased_and_trimmed() {
        assert_eq!(DbName::new(" company ").unwrap().as_str(), "COMPANY");
        assert_eq!(
            NamespaceName::new("PhoneBook").unwrap().as_str(),
            "PHONEBOOK"
        );
    }

    #[test]
    fn bad_names_are_refused_with_a_reason() {
        for bad in [
            "", "   ", "../etc", "a/b", "a\\b", "1abc", "com pany", "x\"y", "main", "TEMP",
        ] {
            let err = DbName::new(bad).unwrap_err();
            assert!(
                matches!(err, Error::InvalidInput(_)),
                "{bad:?} gave {err:?}"
            );
        }
        let long = "A".repeat(MAX_NAME_LEN + 1);
        assert!(
            DbName::new(&long)
                .unwrap_err()
                .to_string()
                .contains("too long")
        );
        assert!(DbName::new(&"A".repeat(MAX_NAME_LEN)).is_ok());
    }

    #[test]
    fn directory_is_lower_case() {
        assert_eq!(
            DbName::new("PERSONAL").unwrap().directory_name(),
            "personal"
        );
    }
}
