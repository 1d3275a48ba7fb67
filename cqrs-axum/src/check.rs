//! Checks of what a request carries, each a `422` naming the field: ids that are safe in a
//! path, a log line and any store's key, and text of a bounded length without control
//! characters. The limits of text are the caller's; the domain still checks its own rules.
//!
//! ```
//! use cqrs_axum::{check, ApiError};
//!
//! fn rename(product_id: &str, name: &str) -> Result<(), ApiError> {
//!     check::id("product_id", product_id)?;
//!     check::text("name", name, 200)
//! }
//! assert!(rename("p-1", "Mug").is_ok());
//! assert_eq!(rename("p 1", "Mug").unwrap_err().code, "invalid_id");
//! ```

use crate::ApiError;

/// The longest id [`id`] accepts.
pub const MAX_ID_LEN: usize = 64;

/// Checks an id: 1 to 64 characters out of letters, digits, `-`, `_` and `.`, not only dots
/// (`.` and `..` mean something else in a path).
///
/// # Errors
/// `422 invalid_id` naming the field.
pub fn id(field: &str, id: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !id.bytes().all(|b| b == b'.');
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "invalid_id",
            format!(
                "`{field}` must be 1 to {MAX_ID_LEN} letters, digits, `-`, `_` or `.`, not only dots"
            ),
        ))
    }
}

/// The id a request gave, checked with [`id`], or a new one (a UUIDv7, which sorts by creation
/// time) when it gave none.
///
/// # Errors
/// `422 invalid_id` naming the field.
pub fn id_or_new(field: &str, given: Option<String>) -> Result<String, ApiError> {
    match given {
        Some(given) => id(field, &given).map(|()| given),
        None => Ok(uuid::Uuid::now_v7().to_string()),
    }
}

/// Checks a text field: at most `max` characters, and no control characters other than line
/// breaks and tabs (a NUL, say, which some stores refuse).
///
/// # Errors
/// `422 too_long` or `422 invalid_text` naming the field.
pub fn text(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    if value
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err(ApiError::invalid(
            "invalid_text",
            format!("`{field}` must not contain control characters"),
        ));
    }
    if value.chars().count() > max {
        Err(ApiError::invalid(
            "too_long",
            format!("`{field}` must be at most {max} characters"),
        ))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[test]
    fn ids_are_short_and_plain() {
        assert!(id("id", "p-1_a.b").is_ok());
        for bad in [
            "",
            "a b",
            "x'; DROP TABLE events; --",
            "é",
            &"a".repeat(65),
            ".",
            "..",
        ] {
            let e = id("product_id", bad).expect_err(bad);
            assert_eq!(
                (e.status, e.code),
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid_id")
            );
            assert!(e.message.contains("product_id"));
        }
    }

    #[test]
    fn an_id_is_checked_when_given_and_made_when_not() {
        assert_eq!(
            id_or_new("id", Some("p-1".into())).map_err(|e| e.code),
            Ok("p-1".into())
        );
        let bad = id_or_new("comment_id", Some("a b".into())).expect_err("a space");
        assert!(bad.message.contains("comment_id"));
        let (a, b) = (
            id_or_new("id", None).expect("new"),
            id_or_new("id", None).expect("new"),
        );
        assert!(id("id", &a).is_ok() && a != b, "{a} {b}");
    }

    #[test]
    fn lengths_count_characters() {
        assert!(text("text", "ééé", 3).is_ok());
        assert_eq!(text("text", "éééé", 3).map_err(|e| e.code), Err("too_long"));
    }
}
