//! Validation of configured names, so none can reach MongoDB as anything but a name.

use cqrs_core::{Error, Result};

/// A database name: 1 to 63 characters of ASCII letters, digits, `_` and `-`.
///
/// # Errors
/// [`Error::Config`] naming the rule.
pub fn validate_database_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "invalid database name {name:?}: use 1 to 63 characters of A-Z, a-z, 0-9, _ and -"
        )))
    }
}

/// A collection prefix: up to 32 characters of ASCII letters, digits and `_`, starting with a
/// letter (or empty).
///
/// # Errors
/// [`Error::Config`] naming the rule.
pub fn validate_collection_prefix(prefix: &str) -> Result<()> {
    let ok = prefix.len() <= 32
        && prefix
            .chars()
            .next()
            .is_none_or(|c| c.is_ascii_alphabetic())
        && prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "invalid collection prefix {prefix:?}: use up to 32 characters of A-Z, a-z, 0-9 \
             and _, starting with a letter"
        )))
    }
}

/// A projection name used as a collection name: 1 to 64 characters of ASCII letters, digits,
/// `_` and `-`.
pub(crate) fn validate_projection(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "invalid projection name {name:?} for MongoDB: use 1 to 64 characters of A-Z, \
             a-z, 0-9, _ and -"
        )))
    }
}

/// A field path of a view: dot-separated segments, none empty, none starting with `$`, no
/// NUL. The path is then only ever used under `view.`.
pub(crate) fn field_path(path: &str) -> Result<String> {
    let ok = !path.is_empty()
        && path
            .split('.')
            .all(|s| !s.is_empty() && !s.starts_with('$') && !s.contains('\0'));
    if ok {
        Ok(format!("view.{path}"))
    } else {
        Err(Error::Config(format!("invalid field path `{path}`")))
    }
}
