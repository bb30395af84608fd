//! Users and passwords.
//!
//! A fresh instance has one user, `superuser`, with the password `SYS`, as the article's lab
//! does — or, outside the lab, with the password in a file named at first start (a Kubernetes or
//! Swarm secret: `--superuser-password-file`), so that no member of a real deployment ever
//! answers to the well-known one. Passwords are stored only as Argon2id hashes (PHC strings) in
//! the configuration file.

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

/// The users of a fresh instance: `superuser` with `password`, or with [`DEFAULT_PASSWORD`]
/// (which the portal then asks to change) when none is given.
pub fn initial_users(password: Option<&str>) -> Vec<UserConfig> {
    vec![UserConfig {
        name: DEFAULT_USER.into(),
        password_hash: hash_password(password.unwrap_or(DEFAULT_PASSWORD))
            .expect("hashing the initial password"),
        default_password: password.is_none(),
    }]
}

/// The superuser's initial password from `path` (a mounted secret): the file's text without
/// its final line break, held to the rules of a new password.
pub fn read_password_file(path: &std::path::Path) -> Result<String> {
    let unfit = |why: &dyn std::fmt::Display| {
        Error::InvalidInput(format!(
            "the superuser password file {}: {why}",
            path.display()
        ))
    };
    let text = std::fs::read_to_string(path).map_err(|e| unfit(&e))?;
    let password = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&text);
    check_new_password(password).map_err(|e| unfit(&e))?;
    Ok(password.to_string())
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

    #[test]
    fn a_password_file_sets_the_initial_password_without_its_line_break() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        std::fs::write(&file, "s3cret-Pass\r\n").unwrap();
        let password = read_password_file(&file).unwrap();
        assert_eq!(password, "s3cret-Pass");
        let users = initial_users(Some(&password));
        assert!(verify_password(&users[0].password_hash, "s3cret-Pass"));
        assert!(!verify_password(&users[0].password_hash, DEFAULT_PASSWORD));
        assert!(!users[0].default_password);
        assert!(initial_users(None)[0].default_password);

        std::fs::write(&file, "ab\n").unwrap();
        let err = read_password_file(&file).unwrap_err().to_string();
        assert!(err.contains("at least 3 characters"), "{err}");
        let err = read_password_file(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("superuser password file"), "{err}");
    }
}
