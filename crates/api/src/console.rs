//! The web console at `/console`: the static files of `console/dist`
//! (built by Vite from `console/`, committed), embedded in the binary so
//! `switchboard serve` alone serves it, and — in demo mode only — a token
//! endpoint that lets the console log in as any demo user.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use include_dir::{Dir, include_dir};
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, codes};

/// `console/dist`, embedded at compile time (build.rs reruns the build when
/// it changes).
static DIST: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/../../console/dist");

/// The only app the console's token endpoint mints tokens for.
pub const DEMO_APP: &str = "demo";
/// Lifetime of a console token; the console fetches a fresh one before
/// each reconnect, so it can be short.
pub const TOKEN_TTL_SECS: u64 = 3600;
/// Longest uid the endpoint accepts (the same bound as the HTTP API's uids).
use switchboard_proto::limits::MAX_ID_LEN as MAX_UID_LEN;

/// `GET /console` and `/console/`: the console's page.
pub async fn index() -> Response {
    file("index.html")
}

/// `GET /console/{*path}`: one of the console's files, 404 for any other.
pub async fn asset(Path(path): Path<String>) -> Response {
    if path.is_empty() {
        return file("index.html");
    }
    file(&path)
}

fn file(path: &str) -> Response {
    // include_dir looks up by relative path; `..` or absolute paths match
    // nothing, so a request cannot leave the embedded directory.
    let Some(f) = DIST.get_file(path) else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            codes::NOT_FOUND,
            "no such console file",
        )
        .into_response();
    };
    // Vite names what is under assets/ by a hash of its content: cache it
    // for good. index.html names the current hashes, so it is revalidated.
    let cache = if path.starts_with("assets/") {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(content_type(path)),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static(cache)),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        f.contents(),
    )
        .into_response()
}

/// The content type by file extension, for the kinds of files Vite emits.
fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json" | "map") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("woff2") => "font/woff2",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// Body of `POST /console/token`.
#[derive(Debug, Deserialize)]
pub struct TokenRequest {
    pub uid: String,
}

/// Answer of `POST /console/token`.
#[derive(Debug, Serialize)]
pub struct TokenResponse {
    pub app: &'static str,
    pub uid: String,
    pub token: String,
    pub expires_in: u64,
}

/// The demo app's token secret, the state of the token endpoint: `Some`
/// only when the node runs the embedded demo app (no `[[apps]]`), so no
/// real app's users can be impersonated through it.
pub struct DemoSecret(pub Option<String>);

/// `POST /console/token` (demo mode only): a login token of the demo app
/// for `uid`; 404 (as if the endpoint did not exist) with real apps.
pub async fn token(
    State(secret): State<Arc<DemoSecret>>,
    body: Result<Json<TokenRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<TokenResponse>, ApiError> {
    let Some(secret) = secret.0.as_deref() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            codes::NOT_FOUND,
            "no such endpoint: console tokens exist only in demo mode (no [[apps]])",
        ));
    };
    let Json(req) = body.map_err(|e| {
        ApiError::bad_request(codes::BAD_JSON, format!("expected {{\"uid\"}}: {e}"))
    })?;
    let uid = req.uid.trim();
    if uid.is_empty() || uid.len() > MAX_UID_LEN || uid.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            codes::INVALID_ARGUMENT,
            format!("uid must be 1 to {MAX_UID_LEN} bytes without control characters"),
        ));
    }
    let token = switchboard_core::auth::issue_token(secret, DEMO_APP, uid, TOKEN_TTL_SECS)
        .map_err(ApiError::from)?;
    Ok(Json(TokenResponse {
        app: DEMO_APP,
        uid: uid.to_string(),
        token,
        expires_in: TOKEN_TTL_SECS,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_of_vite_output() {
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(
            content_type("assets/index-abc.js"),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(
            content_type("assets/index-abc.css"),
            "text/css; charset=utf-8"
        );
        assert_eq!(content_type("noext"), "application/octet-stream");
    }

    #[test]
    fn the_embedded_console_has_its_page() {
        assert!(DIST.get_file("index.html").is_some());
        assert!(DIST.get_file("../Cargo.toml").is_none());
    }
}
