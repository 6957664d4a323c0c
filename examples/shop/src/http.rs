//! The shop server's own HTTP side: the webhook Switchboard's bus posts to,
//! and the endpoints the rest of the business (the order system, dispatch)
//! calls to notify people.
//!
//! | method | path | who calls it | what |
//! |---|---|---|---|
//! | POST | `/webhook` | Switchboard's bus | c2s reports, user events and notifications, HMAC-signed |
//! | POST | `/orders/{order}/status` | the order system | `{"customer", "status"}`: stored push to the customer |
//! | POST | `/deliveries/{order}/offer` | dispatch | `{"details": ...}`: online-only push to the couriers online now |
//! | GET | `/chats` | people | the assignment table and the waiting customers |
//! | GET | `/stats` | people | webhook counters |
//! | GET | `/notifications` | people | the last phone notifications, as they would go to the push provider |
//! | GET | `/healthz` | load balancers | `ok` |
//!
//! Only `/webhook` is authenticated (by its signature): the others are for
//! the shop's private network, which is why `shop serve` listens on
//! 127.0.0.1 by default.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::bus::SIGNATURE_HEADER;
use crate::service::{Receipt, Shop};
use crate::switchboard::ApiError;

/// Largest request: a webhook carries at most one message body (60 KiB by
/// default) twice, as base64 and as text.
const MAX_BODY: usize = 512 * 1024;

pub fn router(shop: Arc<Shop>) -> axum::Router {
    axum::Router::new()
        .route("/webhook", post(webhook))
        .route("/orders/{order}/status", post(order_status))
        .route("/deliveries/{order}/offer", post(offer))
        .route("/chats", get(chats))
        .route("/stats", get(stats))
        .route("/notifications", get(notifications))
        .route("/healthz", get(|| async { "ok" }))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(shop)
}

/// `{"error": {"code", "message"}}` with a status.
fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = json!({"error": {"code": code, "message": message.into()}});
    (status, Json(body)).into_response()
}

/// A Switchboard failure seen by a caller of the shop's API.
fn upstream(e: ApiError) -> Response {
    let status = if e.is_permanent() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::BAD_GATEWAY
    };
    let code = e.code().unwrap_or("SWITCHBOARD_UNREACHABLE").to_string();
    error(status, &code, e.to_string())
}

async fn webhook(State(shop): State<Arc<Shop>>, headers: HeaderMap, body: Bytes) -> Response {
    let signature = headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    // Handled in a task of its own: if the bus stops waiting (its timeout)
    // and hangs up, the handling still runs to its end rather than being
    // dropped halfway (which would be safe, every step being idempotent,
    // but would leave the work to be redone by the redelivery).
    let handling = tokio::spawn(async move { shop.receive(signature.as_deref(), &body).await });
    let Ok(receipt) = handling.await else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            "the handler panicked",
        );
    };
    let outcome = |s: &str| Json(json!({"outcome": s}));
    // Any non-2xx makes the bus deliver the event again later.
    match receipt {
        Receipt::BadSignature => error(
            StatusCode::UNAUTHORIZED,
            "BAD_SIGNATURE",
            "bad or missing X-Switchboard-Signature",
        ),
        Receipt::BadEvent(why) => error(StatusCode::BAD_REQUEST, "BAD_EVENT", why),
        Receipt::Processed => outcome("processed").into_response(),
        Receipt::Duplicate => outcome("duplicate").into_response(),
        Receipt::Ignored(why) => Json(json!({"outcome": "ignored", "why": why})).into_response(),
        Receipt::Busy => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "BUSY",
            "this event is being handled; retry",
        ),
        Receipt::Failed(e) => error(StatusCode::SERVICE_UNAVAILABLE, "UPSTREAM", e.to_string()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusRequest {
    customer: String,
    status: String,
}

async fn order_status(
    State(shop): State<Arc<Shop>>,
    Path(order): Path<String>,
    body: Bytes,
) -> Response {
    let req: StatusRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, "BAD_JSON", e.to_string()),
    };
    if req.customer.is_empty() || req.status.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "customer and status are required",
        );
    }
    match shop.order_status(&order, &req.customer, &req.status).await {
        Ok(r) => Json(json!({
            "order": order,
            "customer": r.uid,
            "msg_id": r.msg_id,
            "seq": r.seq,
            "devices_reached": r.devices_reached,
            "duplicate": r.duplicate,
        }))
        .into_response(),
        Err(e) => upstream(e),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct OfferRequest {
    #[serde(default)]
    details: Value,
}

async fn offer(State(shop): State<Arc<Shop>>, Path(order): Path<String>, body: Bytes) -> Response {
    // An empty body is an offer without details.
    let req: OfferRequest = if body.is_empty() {
        OfferRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => return error(StatusCode::BAD_REQUEST, "BAD_JSON", e.to_string()),
        }
    };
    match shop.offer_delivery(&order, &req.details).await {
        Ok((offered_to, devices_reached)) => Json(json!({
            "order": order,
            "offered_to": offered_to,
            "devices_reached": devices_reached,
        }))
        .into_response(),
        Err(e) => upstream(e),
    }
}

async fn chats(State(shop): State<Arc<Shop>>) -> Response {
    Json(json!({"shops": shop.desks().await})).into_response()
}

async fn stats(State(shop): State<Arc<Shop>>) -> Response {
    Json(shop.stats()).into_response()
}

async fn notifications(State(shop): State<Arc<Shop>>) -> Response {
    Json(json!({"notifications": shop.phones.recent()})).into_response()
}
