//! The API's errors: one JSON shape, `{"error": {"code", "status", "message"}}`,
//! and the ONE place where logic errors and request problems become an HTTP
//! status and a stable code. Clients match on `code`, never on `message`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use switchboard_core::LogicError;
use switchboard_proto::code;
use utoipa::ToSchema;

/// Stable string codes of the HTTP API (besides those of the protocol's
/// codes, which keep their protocol names, e.g. `CROSS_APP_FORBIDDEN`).
pub mod codes {
    /// No `Authorization: Bearer <key>` header.
    pub const UNAUTHORIZED: &str = "UNAUTHORIZED";
    /// The key is not the app's API key nor the admin key.
    pub const INVALID_API_KEY: &str = "INVALID_API_KEY";
    /// An operator endpoint, and no `api.admin_key` is configured.
    pub const ADMIN_DISABLED: &str = "ADMIN_DISABLED";
    /// The app in the path is not configured.
    pub const UNKNOWN_APP: &str = "UNKNOWN_APP";
    /// The body is not JSON, or not the JSON this endpoint takes.
    pub const BAD_JSON: &str = "BAD_JSON";
    /// A query parameter is missing or malformed.
    pub const BAD_QUERY: &str = "BAD_QUERY";
    /// The body is over `api.max_body_bytes`.
    pub const PAYLOAD_TOO_LARGE: &str = "PAYLOAD_TOO_LARGE";
    /// A push or presence request names more users than `api.max_targets`.
    pub const TOO_MANY_TARGETS: &str = "TOO_MANY_TARGETS";
    /// A group membership call names more than 1,000 members.
    pub const BATCH_TOO_LARGE: &str = "BATCH_TOO_LARGE";
    /// A field is missing, empty, too long or inconsistent.
    pub const INVALID_ARGUMENT: &str = "INVALID_ARGUMENT";
    /// No such endpoint.
    pub const NOT_FOUND: &str = "NOT_FOUND";
    /// The endpoint exists, not with this method.
    pub const METHOD_NOT_ALLOWED: &str = "METHOD_NOT_ALLOWED";
    /// Metrics are not available (another metrics recorder owns the process).
    pub const METRICS_UNAVAILABLE: &str = "METRICS_UNAVAILABLE";
    /// The node is at `gate.max_connections` (status 503).
    pub const SERVER_FULL: &str = "SERVER_FULL";
    /// A browser page of an origin not in `gate.ws_allowed_origins` asked
    /// for a WebSocket (status 403).
    pub const ORIGIN_NOT_ALLOWED: &str = "ORIGIN_NOT_ALLOWED";
}

/// An API error, rendered as [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::bad_request(codes::INVALID_ARGUMENT, message)
    }

    pub fn unknown_app(app: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            codes::UNKNOWN_APP,
            format!("unknown app {app:?}"),
        )
    }

    /// The JSON detail (also used inside per-user push outcomes).
    pub fn detail(&self) -> ErrorDetail {
        ErrorDetail {
            code: self.code.to_string(),
            status: self.status.as_u16(),
            message: self.message.clone(),
        }
    }
}

impl From<&LogicError> for ApiError {
    /// Logic errors by their stable protocol code, so a code added to the
    /// logic later still gets a sensible status.
    fn from(e: &LogicError) -> ApiError {
        let c = e.code();
        let status = match c {
            code::UNKNOWN_APP | code::GROUP_NOT_FOUND | code::MESSAGE_NOT_FOUND => {
                StatusCode::NOT_FOUND
            }
            code::NOT_GROUP_MEMBER | code::GROUP_ADMINS_ONLY | code::NOT_MESSAGE_SENDER => {
                StatusCode::FORBIDDEN
            }
            code::GROUP_FULL
            | code::AMEND_WINDOW_CLOSED
            | code::MESSAGE_RECALLED
            | code::CLIENT_MSG_ID_REUSED => StatusCode::CONFLICT,
            code::INVALID_ARGUMENT => StatusCode::BAD_REQUEST,
            code::CROSS_APP_FORBIDDEN | code::FORBIDDEN => StatusCode::FORBIDDEN,
            code::RATE_LIMITED => StatusCode::TOO_MANY_REQUESTS,
            code::TOKEN_INVALID | code::TOKEN_EXPIRED => StatusCode::UNAUTHORIZED,
            // Other request-level refusals (REJECTED by the before-send hook
            // or word filter, ...): understood, not acceptable as sent.
            3000..=3999 => StatusCode::UNPROCESSABLE_ENTITY,
            // Backends (UNAVAILABLE, HOOK_UNAVAILABLE, ...): retry later.
            5001..=5999 => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            tracing::warn!(error = %e, "API request failed");
        }
        ApiError::new(status, code::name(c), e.to_string())
    }
}

impl From<LogicError> for ApiError {
    fn from(e: LogicError) -> ApiError {
        ApiError::from(&e)
    }
}

/// The body of every error answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Clone, Serialize, serde::Deserialize, ToSchema, PartialEq, Eq)]
pub struct ErrorDetail {
    /// Stable code, e.g. `UNKNOWN_APP`, `BAD_JSON`, `TOO_MANY_TARGETS`.
    #[schema(example = "UNKNOWN_APP")]
    pub code: String,
    /// The HTTP status, repeated.
    #[schema(example = 404)]
    pub status: u16,
    /// For people; may change between versions.
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        metrics::counter!(crate::metrics::HTTP_ERRORS, "code" => self.code).increment(1);
        let body = ErrorBody {
            error: self.detail(),
        };
        (self.status, Json(body)).into_response()
    }
}
