//! The HTTP side of a node: `/ws` (handed to the gate), `/healthz`,
//! `/readyz`, `/metrics`, `/openapi.json`, and the `/v1` API for business
//! servers and operators ([`v1`], groups in [`groups`]; errors in
//! [`error`], docs/http-api.md).

pub mod amend;
pub mod console;
pub mod conversations;
pub mod error;
mod extract;
pub mod groups;
mod listener;
pub mod metrics;
pub mod openapi;
pub mod revoke;
mod state;
pub mod v1;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use serde_json::json;
use switchboard_gate::Gate;

pub use listener::{Admission, serve};
pub use state::{ApiConfig, ApiState, RateWindow};

/// The node's HTTP routes with the default [`ApiConfig`] (no admin key).
pub fn router(gate: Arc<Gate>) -> Router {
    router_with(gate, ApiConfig::default())
}

/// The node's HTTP routes.
pub fn router_with(gate: Arc<Gate>, config: ApiConfig) -> Router {
    let max_body = config.max_body_bytes;
    // Made once: the document states this node's limits.
    let doc = Arc::new(openapi::document(openapi::Limits {
        max_targets: config.max_targets,
        max_body_bytes: config.max_body_bytes,
    }));
    let console_secret = config.console_token_secret.clone();
    let api = Arc::new(ApiState {
        rates: RateWindow::new(gate.logic.stats().messages_stored(), gate.hub.push_count()),
        gate: gate.clone(),
        config,
        started: std::time::Instant::now(),
    });
    // Installs the process's recorder before the first request records.
    let _ = metrics::handle();
    let v1 = Router::new()
        .route("/v1/apps/{app}/push", post(v1::push))
        .route(
            "/v1/apps/{app}/users/{uid}/messages",
            post(v1::send_as_user),
        )
        .route("/v1/apps/{app}/presence", post(v1::presence))
        .route(
            "/v1/apps/{app}/conversations/{a}/{b}/messages",
            get(v1::history),
        )
        .route("/v1/apps/{app}/users/{uid}/timeline", get(v1::timeline))
        .route(
            "/v1/apps/{app}/messages/{msg_id}/recall",
            post(amend::recall),
        )
        .route(
            "/v1/apps/{app}/users/{uid}/conversations",
            get(conversations::list),
        )
        .route("/v1/apps/{app}/users/{uid}/kick", post(v1::kick))
        .route("/v1/apps/{app}/users/{uid}/revoke", post(revoke::revoke))
        .route(
            "/v1/apps/{app}/groups/{gid}",
            put(groups::put_group)
                .get(groups::get_group)
                .delete(groups::delete_group),
        )
        .route(
            "/v1/apps/{app}/groups/{gid}/members",
            post(groups::add_members).get(groups::list_members),
        )
        .route(
            "/v1/apps/{app}/groups/{gid}/members/remove",
            post(groups::remove_members),
        )
        .route(
            "/v1/apps/{app}/groups/{gid}/messages",
            post(groups::post_message),
        )
        .route(
            "/v1/apps/{app}/users/{uid}/groups",
            get(groups::user_groups),
        )
        .route("/v1/admin/stats", get(v1::stats))
        .with_state(api);
    let console = Router::new()
        .route("/console", get(console::index))
        .route("/console/", get(console::index))
        .route("/console/{*path}", get(console::asset))
        // Routed in every mode (else POST would meet the GET wildcard and
        // get a 405), answering 404 unless the node runs the demo app.
        .route("/console/token", post(console::token))
        .with_state(Arc::new(console::DemoSecret(console_secret)));
    Router::new()
        .route("/ws", get(ws))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_handler))
        .route("/openapi.json", get(move || openapi_json(doc.clone())))
        .with_state(gate)
        .merge(v1)
        .merge(console)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn(metrics::track))
}

async fn not_found() -> error::ApiError {
    error::ApiError::new(
        StatusCode::NOT_FOUND,
        error::codes::NOT_FOUND,
        "no such endpoint (see /openapi.json)",
    )
}

async fn method_not_allowed() -> error::ApiError {
    error::ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        error::codes::METHOD_NOT_ALLOWED,
        "this endpoint does not take this method (see /openapi.json)",
    )
}

/// The OpenAPI document of this API.
async fn openapi_json(doc: Arc<serde_json::Value>) -> impl IntoResponse {
    Json(doc.as_ref().clone())
}

/// Prometheus metrics of this process.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operators",
    responses(
        (status = 200, description = "Prometheus text format", content_type = "text/plain", body = String),
        (status = 503, description = "METRICS_UNAVAILABLE", body = error::ErrorBody),
    )
)]
async fn metrics_handler(State(gate): State<Arc<Gate>>) -> axum::response::Response {
    let Some(handle) = metrics::handle() else {
        return error::ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            error::codes::METRICS_UNAVAILABLE,
            "another metrics recorder owns this process",
        )
        .into_response();
    };
    ::metrics::gauge!(switchboard_core::stats::CONNECTIONS).set(gate.hub.connection_count() as f64);
    metrics::refresh();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
        .into_response()
}

/// Liveness: the process serves HTTP.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operators",
    responses((status = 200, description = "The process serves HTTP", body = String))
)]
async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: every backend answers.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operators",
    responses(
        (status = 200, description = "Every backend answers", body = Object),
        (status = 503, description = "Some backend does not answer (see `failing`)", body = Object),
    )
)]
async fn readyz(State(gate): State<Arc<Gate>>) -> impl IntoResponse {
    let logic = &gate.logic;
    // Concurrently and each bounded: one hung backend must not hang the probe
    // or hide the state of the others.
    let (store, presence, route, bus) = tokio::join!(
        probe(logic.store().ping()),
        probe(logic.presence().ping()),
        probe(logic.route().ping()),
        probe(logic.bus().ping()),
    );
    let failing: Vec<&str> = [
        ("store", &store),
        ("presence", &presence),
        ("route", &route),
        ("bus", &bus),
    ]
    .iter()
    .filter(|(_, e)| e.is_some())
    .map(|(name, _)| *name)
    .collect();
    let ready = failing.is_empty();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "ready": ready,
        "backends": {
            "store": store.unwrap_or_else(|| "ok".into()),
            "presence": presence.unwrap_or_else(|| "ok".into()),
            "route": route.unwrap_or_else(|| "ok".into()),
            "bus": bus.unwrap_or_else(|| "ok".into()),
        },
        "failing": failing,
        "connections": gate.open_connections(),
    });
    (status, Json(body))
}

/// How long `/readyz` waits for one backend's ping.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// One backend's ping: `None` when it answered, else why not.
async fn probe<E: std::fmt::Display>(
    ping: impl std::future::Future<Output = Result<(), E>>,
) -> Option<String> {
    match tokio::time::timeout(PROBE_TIMEOUT, ping).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!("no answer within {PROBE_TIMEOUT:?}")),
    }
}

/// `GET /ws`: the WebSocket upgrade, for an allowed origin
/// (`gate.ws_allowed_origins`), handed to the gate with the connection's
/// slot and login deadline.
async fn ws(
    State(gate): State<Arc<Gate>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    admission: Option<Extension<Admission>>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> axum::response::Response {
    // A header that is not text cannot name an allowed origin.
    let origin = headers
        .get(header::ORIGIN)
        .map(|v| v.to_str().unwrap_or("(not text)"));
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    if !gate.config.ws_origins.allows(origin, host) {
        return error::ApiError::new(
            StatusCode::FORBIDDEN,
            error::codes::ORIGIN_NOT_ALLOWED,
            format!(
                "a page from origin {} may not open a WebSocket here (see gate.ws_allowed_origins)",
                origin.unwrap_or_default()
            ),
        )
        .into_response();
    }
    let admitted = admission.and_then(|Extension(a)| Some((a.take_permit()?, a.login_deadline)));
    let (permit, login_deadline) = match admitted {
        Some(a) => a,
        // Served by another listener than this crate's (`serve`), which
        // admitted nothing: admitted here, its deadline from now.
        None => match gate.admit() {
            Some(p) => (p, tokio::time::Instant::now() + gate.config.login_timeout),
            None => {
                return error::ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    error::codes::SERVER_FULL,
                    "server is at its connection limit; retry later",
                )
                .into_response();
            }
        },
    };
    switchboard_gate::ws_upgrade(gate, upgrade, peer, permit, login_deadline)
}
