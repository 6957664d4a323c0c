//! The HTTP side of a node: `/ws` (handed to the gate), `/healthz`,
//! `/readyz`, and the API for business servers and operators.

mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::{Json, Router};
use serde_json::json;
use switchboard_gate::Gate;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

pub use tls::TlsListener;

/// The node's HTTP routes.
pub fn router(gate: Arc<Gate>) -> Router {
    Router::new()
        .route("/ws", get(switchboard_gate::ws_handler))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(gate)
}

/// Liveness: the process serves HTTP.
async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: every backend answers.
async fn readyz(State(gate): State<Arc<Gate>>) -> impl IntoResponse {
    let logic = &gate.logic;
    let store = logic.store().ping().await.err().map(|e| e.to_string());
    let presence = logic.presence().ping().await.err().map(|e| e.to_string());
    let ready = store.is_none() && presence.is_none();
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
        },
        "connections": gate.open_connections(),
    });
    (status, Json(body))
}

/// Serves `router` on `listener` (with TLS when given) until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<TlsAcceptor>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = router.into_make_service_with_connect_info::<SocketAddr>();
    match tls {
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await
        }
        Some(acceptor) => {
            // tap_io gives the TLS listener axum's ConnectInfo<SocketAddr> support.
            let listener = TlsListener::new(listener, acceptor, shutdown.clone()).tap_io(|_| {});
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await
        }
    }
}
