//! The protocol's size limits, in one place: the gate, the HTTP API, token
//! verification and the logic all check against these names, so a limit
//! cannot differ between the paths a request may take.
//!
//! The message body's limit is not here: it is a node setting
//! (`logic.max_body_bytes`), bounded by the frame limit.

/// Longest id: a uid, a `client_msg_id`, a device id, a group id (bytes).
pub const MAX_ID_LEN: usize = 128;
/// Longest message type (bytes).
pub const MAX_TYPE_LEN: usize = 64;
/// Longest app name (bytes).
pub const MAX_APP_LEN: usize = 64;
/// Longest platform label a device gives at login (bytes).
pub const MAX_PLATFORM_LEN: usize = 32;

/// Why a value is over a limit; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LimitError(pub String);

/// An id: 1 to [`MAX_ID_LEN`] bytes.
pub fn check_id(field: &str, value: &str) -> Result<(), LimitError> {
    if value.is_empty() || value.len() > MAX_ID_LEN {
        return Err(LimitError(format!(
            "{field} must be 1 to {MAX_ID_LEN} bytes"
        )));
    }
    Ok(())
}

/// Message types starting with this are the platform's own (read
/// receipts); an app may not send them.
pub const RESERVED_TYPE_PREFIX: &str = "switchboard.";

/// A message type: at most [`MAX_TYPE_LEN`] bytes (empty is allowed), not
/// starting with [`RESERVED_TYPE_PREFIX`].
pub fn check_type(value: &str) -> Result<(), LimitError> {
    if value.len() > MAX_TYPE_LEN {
        return Err(LimitError(format!("type is over {MAX_TYPE_LEN} bytes")));
    }
    if value.starts_with(RESERVED_TYPE_PREFIX) {
        return Err(LimitError(format!(
            "types starting with {RESERVED_TYPE_PREFIX:?} are reserved for the platform"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_types_are_bounded() {
        assert!(check_id("uid", "").is_err());
        assert!(check_id("uid", &"x".repeat(MAX_ID_LEN)).is_ok());
        let e = check_id("uid", &"x".repeat(MAX_ID_LEN + 1)).unwrap_err();
        assert_eq!(e.to_string(), "uid must be 1 to 128 bytes");
        assert!(check_type("").is_ok());
        assert!(check_type(&"t".repeat(MAX_TYPE_LEN)).is_ok());
        assert!(check_type(&"t".repeat(MAX_TYPE_LEN + 1)).is_err());
        assert!(check_type("switchboard.read").is_err());
        assert!(check_type("switchboard").is_ok());
    }
}
