//! The shop's rules for what its HTTP services accept: ids and text fields. Errors, extractors
//! and the ops routes come from `cqrs-axum`.

use cqrs_axum::ApiError;

/// The longest id the services accept.
pub const MAX_ID_LEN: usize = 64;

/// Checks an id: 1 to 64 characters out of letters, digits, `-`, `_` and `.`.
///
/// # Errors
/// `422 invalid_id` naming the field.
pub fn check_id(field: &str, id: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "invalid_id",
            format!("`{field}` must be 1 to {MAX_ID_LEN} letters, digits, `-`, `_` or `.`"),
        ))
    }
}

/// Checks a text field: at most `max` characters, and no control characters other than line
/// breaks and tabs (a NUL, say, which some stores refuse).
///
/// # Errors
/// `422 too_long` or `422 invalid_text` naming the field.
pub fn check_len(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
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
        assert!(check_id("id", "p-1_a.b").is_ok());
        for bad in ["", "a b", "x'; DROP TABLE events; --", "é", &"a".repeat(65)] {
            let e = check_id("product_id", bad).expect_err(bad);
            assert_eq!(
                (e.status, e.code),
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid_id")
            );
            assert!(e.message.contains("product_id"));
        }
    }

    #[test]
    fn lengths_count_characters() {
        assert!(check_len("text", "ééé", 3).is_ok());
        assert_eq!(
            check_len("text", "éééé", 3).map_err(|e| e.code),
            Err("too_long")
        );
    }
}
