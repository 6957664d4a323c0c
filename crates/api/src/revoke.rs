//! `POST /v1/apps/{app}/users/{uid}/revoke`: refuse a user's login tokens
//! issued before a time and close the user's connections on every node
//! (`Kick{KICK_TOKEN_REVOKED}`). The revocation is kept in the store, so it
//! holds across restarts and for every node of a cluster.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};
use switchboard_core::UserKey;
use utoipa::ToSchema;

use crate::ApiState;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{AppKey, JsonBody};

/// The request body (`{}` revokes every token issued until now).
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    /// Tokens whose `iat` is before this time (seconds since the epoch) are
    /// refused, and so are tokens without `iat`. Default: now, rounded up to
    /// the next second, so every token issued before the request is covered.
    /// A time earlier than the user's current revocation changes nothing.
    #[schema(minimum = 0, maximum = 9_223_372_036_854_775_807_i64)]
    #[serde(default, deserialize_with = "whole_seconds")]
    pub issued_before: Option<u64>,
}

/// A JSON integer as JSON Schema means it: `19598` and `19598.0` alike
/// (schema-driven clients and fuzzers send both), never a fraction.
fn whole_seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    use serde::de::Error;
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    if let Some(u) = n.as_u64() {
        return Ok(Some(u));
    }
    match n.as_f64() {
        // Exactly representable whole numbers only (below 2^53).
        Some(f) if f.fract() == 0.0 && (0.0..9_007_199_254_740_992.0).contains(&f) => {
            Ok(Some(f as u64))
        }
        _ => Err(D::Error::custom(format!(
            "issued_before must be a whole number of seconds from 0, not {n}"
        ))),
    }
}

/// The answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RevokeResponse {
    /// The revocation now in force: tokens issued (`iat`) before this time
    /// (seconds since the epoch) are refused. Mint new tokens with an `iat`
    /// at or after it.
    pub issued_before: u64,
    /// Devices told to close (each gets `Kick{KICK_TOKEN_REVOKED}`).
    pub kicked: usize,
}

/// Refuse the user's tokens issued before a time, from now on and after
/// restarts, on every node, and close every device of the user
/// (`Kick{KICK_TOKEN_REVOKED}`; the SDK does not reconnect after it). The
/// app's key or the admin key.
#[utoipa::path(
    post,
    path = "/v1/apps/{app}/users/{uid}/revoke",
    tag = "operators",
    params(
        ("app" = String, Path, description = "The app"),
        ("uid" = String, Path, description = "The user"),
    ),
    request_body = RevokeRequest,
    responses(
        (status = 200, description = "The revocation in force and how many devices were told", body = RevokeResponse),
        (status = 400, description = "INVALID_ARGUMENT, BAD_JSON", body = ErrorBody),
        (status = 401, description = "UNAUTHORIZED, INVALID_API_KEY", body = ErrorBody),
        (status = 404, description = "UNKNOWN_APP", body = ErrorBody),
        (status = 413, description = "PAYLOAD_TOO_LARGE", body = ErrorBody),
        (status = 503, description = "UNAVAILABLE", body = ErrorBody),
    ),
    security(("api_key" = []), ("admin_key" = []))
)]
pub async fn revoke(
    State(state): State<Arc<ApiState>>,
    Path((app, uid)): Path<(String, String)>,
    _key: AppKey,
    JsonBody(req): JsonBody<RevokeRequest>,
) -> Result<Json<RevokeResponse>, ApiError> {
    crate::v1::check_uid(&uid)?;
    let issued_before = match req.issued_before {
        Some(t) if t > i64::MAX as u64 => {
            return Err(ApiError::invalid("issued_before is at most 2^63 - 1"));
        }
        Some(t) => t,
        None => now_rounded_up(),
    };
    let user = UserKey::new(app.as_str(), uid);
    let (issued_before, kicked) = state.gate.logic.revoke_tokens(&user, issued_before).await?;
    tracing::info!(%user, issued_before, kicked, "user's tokens revoked through the API");
    Ok(Json(RevokeResponse {
        issued_before,
        kicked,
    }))
}

/// Seconds since the epoch, rounded up: a token issued earlier in the
/// current second has an `iat` below it.
fn now_rounded_up() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    now.as_secs() + u64::from(now.subsec_nanos() > 0)
}
