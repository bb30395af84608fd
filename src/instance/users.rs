//! Users and passwords.
//!
//! A fresh instance has one user, `superuser`, with the password `SYS`, as the article's lab
//! does. Passwords are stored only as Argon2id hashes (PHC strings) in the configuration file.

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};

use crate::error::{Error, Result};

use crate::config::UserConfig;

/// The installed user.
pub const DEFAULT_USER: &str = "superuser";
/// The installed user's password until someone changes it.
pub const DEFAULT_PASSWORD: &str = "SYS";
/// Shortest password accepted when changing it.
pub const MIN_PASSWORD_LEN: usize = 3;
/// Longest password accepted (hashing cost grows with length).
pub const MAX_PASSWORD_LEN: usize = 128;

/// Hashes a password with Argon2id and a random salt.
pub fn hash_password(password: &str) -> Result<String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|hash| hash.to_string())
        .map_err(|e| Error::Internal(format!("hash password: {e}")))
}

/// True when `password` matches the stored `hash`.
pub fn verify_password(hash: &str, password: &str) -> bool {
    Argon2::default()
        .verify_password(password.as_bytes(), hash)
        .is_ok()
}

/// Checks a new password against the rules.
pub fn check_new_password(password: &str) -> Result<()> {
    let len = password.chars().count();
    if len < MIN_PASSWORD_LEN {
        return Err(Error::InvalidInput(format!(
            "the password must have at least {MIN_PASSWORD_LEN} characters"
        )));
    }
    if len > MAX_PASSWORD_LEN {
        return Err(Error::InvalidInput(format!(
            "the password may have at most {MAX_PASSWORD_LEN} characters"
        )));
    }
    Ok(())
}

/// The users of a fresh instance.
pub fn default_users() -> Vec<UserConfig> {
    vec![UserConfig {
        name: DEFAULT_USER.into(),
        password_hash: hash_password(DEFAULT_PASSWORD).expect("hashing the default password"),
        default_password: true,
    }]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_differ_by_salt() {
        let a = hash_password("SYS").unwrap();
        let b = hash_password("SYS").unwrap();
        assert!(a.starts_with("$argon2id$"));
        assert_ne!(a, b);
        assert!(verify_password(&a, "SYS"));
        assert!(!verify_password(&a, "sys"));
        assert!(!verify_password("not a hash", "SYS"));
    }
}
