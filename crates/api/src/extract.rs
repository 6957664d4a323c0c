//! Request extractors whose rejections are API errors: a JSON body read
//! within the size limit whatever its content type (`BAD_JSON`,
//! `PAYLOAD_TOO_LARGE`), query strings (`BAD_QUERY`), and the API key checks
//! (`Authorization: Bearer`).

use axum::extract::rejection::BytesRejection;
use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, RawPathParams, Request};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use subtle::ConstantTimeEq;

use crate::ApiState;
use crate::error::{ApiError, codes};

/// A JSON object body. The content type is not checked (so `curl -d` works
/// without a header); the size limit is `api.max_body_bytes`.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(body_rejection)?;
        // Every request body of the API is a JSON object. serde would also
        // build a struct from an array (`[]` for one whose fields are all
        // optional, `["bob", ...]` by position), which the schema does not
        // allow (schemathesis found it): refused here, for every endpoint.
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ApiError::bad_request(
                codes::BAD_JSON,
                "request body: expected a JSON object",
            ));
        }
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::bad_request(codes::BAD_JSON, format!("request body: {e}")))
    }
}

fn body_rejection(r: BytesRejection) -> ApiError {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            codes::PAYLOAD_TOO_LARGE,
            "request body is over the limit (api.max_body_bytes)",
        )
    } else {
        ApiError::bad_request(codes::BAD_JSON, r.body_text())
    }
}

/// A query string.
pub struct QueryParams<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| QueryParams(q.0))
            .map_err(|e| ApiError::bad_request(codes::BAD_QUERY, e.body_text()))
    }
}

/// The bearer token of a request.
fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let missing = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            codes::UNAUTHORIZED,
            "missing \"Authorization: Bearer <api key>\" header",
        )
    };
    let value = headers.get(AUTHORIZATION).ok_or_else(missing)?;
    let value = value.to_str().map_err(|_| missing())?;
    let key = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .ok_or_else(missing)?;
    Ok(key)
}

/// Compares keys in time that does not depend on where they differ
/// (`subtle`); only the length may show, and keys are long random strings.
fn same_key(a: &str, b: &str) -> bool {
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Checks that the request may act for `app`: its own API key or the
/// operator's admin key. A wrong key is answered the same whether or not
/// the app exists and whether or not it has an API key (401
/// `INVALID_API_KEY`), so the answer tells nobody which apps exist; only the
/// admin key learns that an app is unknown (`UNKNOWN_APP`, 404).
fn authorize_app(state: &ApiState, headers: &HeaderMap, app: &str) -> Result<(), ApiError> {
    let key = bearer(headers)?;
    let config = state.gate.logic.apps().get(app);
    // Both comparisons always run, whichever matches, so their time says
    // nothing about which key was close.
    let is_admin = state
        .config
        .admin_key
        .as_deref()
        .is_some_and(|k| same_key(k, key));
    let is_app = config
        .and_then(|c| c.api_key.as_deref())
        .is_some_and(|k| same_key(k, key));
    match (is_admin || is_app, config) {
        (true, Some(_)) => Ok(()),
        (true, None) => Err(ApiError::unknown_app(app)),
        (false, _) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            codes::INVALID_API_KEY,
            "not the API key of this app nor the admin key",
        )),
    }
}

/// Checks the operator's admin key.
fn authorize_admin(state: &ApiState, headers: &HeaderMap) -> Result<(), ApiError> {
    let key = bearer(headers)?;
    let Some(admin) = state.config.admin_key.as_deref() else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            codes::ADMIN_DISABLED,
            "operator endpoints need api.admin_key in the configuration",
        ));
    };
    if same_key(admin, key) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            codes::INVALID_API_KEY,
            "not the admin key",
        ))
    }
}

/// Proof that the request may act for the app in its path (`{app}`): the
/// key is checked before the body is read, so a request without a valid
/// key gets 401, never a body error (404 only for the admin key).
pub struct AppKey;

impl FromRequestParts<Arc<ApiState>> for AppKey {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<ApiState>,
    ) -> Result<Self, Self::Rejection> {
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::invalid(e.body_text()))?;
        let app = params
            .iter()
            .find(|(k, _)| *k == "app")
            .map(|(_, v)| v.to_owned())
            .unwrap_or_default();
        authorize_app(state, &parts.headers, &app)?;
        Ok(AppKey)
    }
}

/// Proof that the request carries the operator's admin key.
pub struct AdminKey;

impl FromRequestParts<Arc<ApiState>> for AdminKey {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<ApiState>,
    ) -> Result<Self, Self::Rejection> {
        authorize_admin(state, &parts.headers)?;
        Ok(AdminKey)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_compare_exactly() {
        assert!(same_key("abc", "abc"));
        assert!(!same_key("abc", "abd"));
        assert!(!same_key("abc", "abcd"));
        assert!(!same_key("", "a"));
    }
}
