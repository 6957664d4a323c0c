//! `/v1`: the endpoints for business servers (push, send as a user,
//! presence, history, timeline) and operators (stats, kick), their JSON
//! shapes (which the OpenAPI document is generated from), and the body rule:
//! message bodies are bytes; a request gives `body` as any JSON value (a
//! string: its UTF-8 bytes; `null`: no bytes; anything else: its compact JSON
//! text) or `body_base64` (padded standard base64), never both keys; an
//! answer gives `body` as a string when the bytes are valid UTF-8 (else null)
//! and `body_base64` always.
//!
//! The schema says what the server accepts, limits included: optional fields
//! may be left out but are never `null` (except `body`, where null is a
//! value), ids are 1 to 128 bytes, types up to 64 bytes; the limits that come
//! from the configuration (`api.max_targets`, `logic.max_sync_page`) are
//! written into the document the node serves (see [`crate::openapi`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use switchboard_core::logic::C2cRequest;
use switchboard_core::{Entry, Message, S2cMode, UserKey};
use switchboard_proto::{code, pb};
use utoipa::{IntoParams, ToSchema};

use crate::ApiState;
use crate::error::{ApiError, ErrorBody, ErrorDetail, codes};
use crate::extract::{AdminKey, AppKey, JsonBody, QueryParams};

type ApiResult<T> = Result<Json<T>, ApiError>;

// ---------------------------------------------------------------- shapes ---

/// How a push is delivered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PushMode {
    /// Stored on each receiver's timeline, then pushed to the devices online
    /// now; offline devices get it when they sync.
    #[default]
    Stored,
    /// Pushed (seq 0) to the devices online now only; nothing is stored.
    OnlineOnly,
}

/// What a push answers per user.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PushReport {
    /// A result for every receiver.
    #[default]
    Users,
    /// Results only for receivers that failed, plus the summary (for large
    /// fan-outs, where a result per user makes a big answer).
    Summary,
}

/// `POST /v1/apps/{app}/push`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PushRequest {
    /// Receivers: uids of the app (1 to 128 bytes each), 1 to
    /// `api.max_targets` of them (duplicates are pushed once).
    #[schema(min_items = 1, example = json!(["courier-1", "courier-2"]))]
    pub to: Vec<String>,
    /// The app's message type (up to 64 bytes).
    #[serde(rename = "type")]
    #[schema(max_length = 64, example = "order.offer")]
    pub kind: String,
    /// The body, any JSON value: a string is sent as its UTF-8 bytes, null
    /// as no bytes, anything else as its compact JSON text. Give this or
    /// `body_base64`, not both.
    #[serde(default, deserialize_with = "given")]
    #[schema(value_type = Value, example = json!({"order": 42}))]
    pub body: Option<serde_json::Value>,
    /// The body as base64 (standard alphabet, padded), for binary bodies. The
    /// pattern is exactly what the decoder takes: padded, and the last
    /// symbol carries no stray bits.
    #[serde(default, deserialize_with = "given")]
    #[schema(value_type = String, pattern = "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/][AQgw]==|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=)?$")]
    pub body_base64: Option<String>,
    /// `stored` (default) or `online_only`.
    #[serde(default)]
    pub mode: PushMode,
    /// Makes a stored push idempotent: resending the request with the same
    /// id stores nothing new and answers `duplicate: true` per user
    /// (1 to 128 bytes).
    #[serde(default, deserialize_with = "given")]
    #[schema(value_type = String, min_length = 1, max_length = 128)]
    pub client_msg_id: Option<String>,
    /// `users` (default): a result per receiver; `summary`: only failures.
    #[serde(default)]
    pub report: PushReport,
}

/// One receiver's outcome.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PushResult {
    pub uid: String,
    /// The message id, a decimal string (64-bit). Online-only: the same for all.
    #[schema(example = "1234567890123456789")]
    pub msg_id: String,
    /// The entry's sequence on the receiver's timeline (stored mode).
    pub seq: Option<u64>,
    /// Devices the push was handed to now (0: the user is offline).
    pub devices_reached: usize,
    /// This `client_msg_id` was already stored for this user (`seq` and
    /// `msg_id` are the first push's).
    pub duplicate: bool,
    /// Set when this receiver's push failed (nothing stored for this user;
    /// resending with the same `client_msg_id` is safe).
    pub error: Option<ErrorDetail>,
}

/// Totals of a push.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PushSummary {
    /// Distinct receivers.
    pub users: usize,
    /// Receivers with at least one device reached.
    pub users_reached: usize,
    /// Devices reached, all receivers together.
    pub devices_reached: usize,
    /// Receivers whose push failed (see their `error`).
    pub failed: usize,
}

/// The answer to a push: one result per distinct receiver, in request order
/// (with `report: summary`, only the failed ones).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PushResponse {
    pub mode: PushMode,
    pub results: Vec<PushResult>,
    pub summary: PushSummary,
}

/// `POST /v1/apps/{app}/users/{uid}/messages`: a c2c sent as `uid`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    /// The receiver's uid (1 to 128 bytes).
    #[schema(min_length = 1, max_length = 128, example = "bob")]
    pub to: String,
    /// The receiver's app when it is not `{app}` (cross-app chat, where
    /// allowed; an app that is not configured is `INVALID_ARGUMENT`).
    #[serde(default, deserialize_with = "given")]
    #[schema(value_type = String, min_length = 1, max_length = 64)]
    pub to_app: Option<String>,
    /// The app's message type (up to 64 bytes).
    #[serde(rename = "type")]
    #[schema(max_length = 64, example = "text")]
    pub kind: String,
    /// As in a push: any JSON value; a string as its bytes, null as no
    /// bytes, other JSON as its JSON text.
    #[serde(default, deserialize_with = "given")]
    #[schema(value_type = Value, example = json!({"text": "hi"}))]
    pub body: Option<serde_json::Value>,
    /// The body as base64 (standard alphabet, padded); not with `body`.
    #[serde(default, deserialize_with = "given")]
    #[schema(value_type = String, pattern = "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/][AQgw]==|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=)?$")]
    pub body_base64: Option<String>,
    /// Required: the sender's id for this message (1 to 128 bytes). A resend
    /// with the same id stores nothing and answers the first result.
    #[schema(
        min_length = 1,
        max_length = 128,
        example = "7f9c2ba4-e88f-11ee-a1b2-0242ac120002"
    )]
    pub client_msg_id: String,
}

/// The stored message.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SendResponse {
    pub msg_id: String,
    /// The entry's sequence on the sender's own timeline.
    pub seq: u64,
    pub server_time_ms: i64,
    /// The message was already stored under this `client_msg_id`.
    pub duplicate: bool,
}

/// `POST /v1/apps/{app}/presence`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PresenceRequest {
    /// Uids of the app (1 to 128 bytes each), 1 to `api.max_targets`.
    #[schema(min_items = 1, example = json!(["agent-1", "agent-2"]))]
    pub users: Vec<String>,
}

/// One online device.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeviceView {
    pub device_id: String,
    pub platform: String,
    /// When it logged in, ms since the Unix epoch.
    pub since_ms: i64,
    /// The node holding its connection.
    pub node: String,
}

/// One user's presence. A user never seen is offline with no devices.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UserPresence {
    pub uid: String,
    pub online: bool,
    pub devices: Vec<DeviceView>,
    /// Distinct platforms online, sorted.
    pub platforms: Vec<String>,
    /// Online since: the earliest login of the devices online now.
    pub since_ms: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PresenceResponse {
    /// In request order (duplicates answered once).
    pub users: Vec<UserPresence>,
}

/// A user.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UserView {
    pub app: String,
    /// Empty for the app's system sender (s2c pushes).
    pub uid: String,
}

/// A message.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MessageView {
    pub msg_id: String,
    pub from: UserView,
    pub to: UserView,
    #[serde(rename = "type")]
    pub kind: String,
    /// The body as text when it is valid UTF-8, else null.
    pub body: Option<String>,
    /// The body's bytes, base64 (always).
    pub body_base64: String,
    pub client_msg_id: String,
    pub server_time_ms: i64,
    /// Set when the entry is a read receipt (then `type` and the body are
    /// empty): `from` read the conversation up to a point.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read: Option<ReadReceiptView>,
    /// Set when the entry says an earlier message was recalled or edited
    /// (then `type` and the body are empty): that message as it is now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(no_recursion)]
    pub amended: Option<Box<MessageView>>,
    /// The message was recalled: its body is gone (the type stays).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recalled: bool,
    /// When the message was edited (absent: never); the body is the edited
    /// one. Milliseconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited_at_ms: Option<i64>,
}

/// What a read receipt says.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReadReceiptView {
    /// The 1:1 conversation's other user (absent for a group).
    pub peer: Option<UserView>,
    /// The group's id (absent for a 1:1 conversation).
    pub group: Option<String>,
    /// The read position: on the reader's timeline (1:1) or the group's.
    pub seq: u64,
    /// The message at that position (decimal).
    pub msg_id: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Only messages older than this msg_id (the previous page's
    /// `next_before`): a decimal 64-bit id; empty or absent: from the newest.
    #[param(pattern = "^[0-9]{0,19}$")]
    pub before: Option<String>,
    /// Page size: 0 (the default) or above `logic.max_sync_page` is the maximum.
    // int64 in the schema: its int32 would stop at 2^31-1, and u32 takes more.
    #[param(value_type = Option<i64>, minimum = 0, maximum = 4294967295_u64)]
    pub limit: Option<u32>,
}

/// A page of a conversation, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HistoryResponse {
    pub messages: Vec<MessageView>,
    /// Pass as `before` for the next (older) page; null at the beginning.
    pub next_before: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TimelineQuery {
    /// Entries after this sequence (default 0: from the start); sequences
    /// are 0 to 2^63-1 (int64), larger is `BAD_QUERY`.
    #[param(minimum = 0, maximum = 9223372036854775807_u64)]
    pub since: Option<u64>,
    /// Page size: 0 (the default) or above `logic.max_sync_page` is the maximum.
    // int64 in the schema: its int32 would stop at 2^31-1, and u32 takes more.
    #[param(value_type = Option<i64>, minimum = 0, maximum = 4294967295_u64)]
    pub limit: Option<u32>,
}

/// One timeline entry.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EntryView {
    pub seq: u64,
    pub message: MessageView,
}

/// A page of a user's timeline, oldest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TimelineResponse {
    pub entries: Vec<EntryView>,
    /// The highest sequence on the timeline.
    pub timeline_head: u64,
    /// More entries follow: ask again with `since` = the last `seq`.
    pub has_more: bool,
}

/// Connections on this node.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ConnectionStats {
    /// Logged-in connections.
    pub total: u64,
    pub by_platform: BTreeMap<String, u64>,
    pub by_app: BTreeMap<String, u64>,
    /// Open sockets, logged in or not.
    pub open: usize,
}

/// `GET /v1/admin/stats`: this node.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StatsResponse {
    pub node: String,
    pub uptime_secs: u64,
    pub connections: ConnectionStats,
    /// Messages stored (c2c and stored s2c), since start.
    pub messages_stored_total: u64,
    /// Online-only messages pushed (one per push request), since start.
    pub online_messages_total: u64,
    /// Push frames handed to connections, since start.
    pub pushes_total: u64,
    /// Connections kicked for a full outbound queue, since start.
    pub slow_consumers_total: u64,
    /// Messages stored per second over the last `rate_window_secs`.
    pub messages_per_sec: f64,
    /// Push frames per second over the last `rate_window_secs`.
    pub pushes_per_sec: f64,
    /// The window of the rates: about a minute, or the time since start or
    /// since the previous stats call when longer ago.
    pub rate_window_secs: f64,
}

/// `POST /v1/apps/{app}/users/{uid}/kick`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KickResponse {
    /// Devices told to close (each gets `Kick{KICK_ADMIN}`).
    pub kicked: usize,
}

// --------------------------------------------------------------- helpers ---

/// The largest sequence the API takes: the schema says int64.
pub(crate) const MAX_SEQ: u64 = i64::MAX as u64;

/// Optional fields may be absent, but an explicit `null` is not a value for
/// them (the schema says so): this makes a present key `Some`, so
/// `Option<String>` refuses `null` and `Option<Value>` keeps it as
/// `Some(Null)`.
pub(crate) fn given<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// The body rule (see the module docs).
pub(crate) fn body_bytes(
    body: Option<serde_json::Value>,
    body_base64: Option<String>,
) -> Result<Bytes, ApiError> {
    match (body, body_base64) {
        (Some(_), Some(_)) => Err(ApiError::invalid("give body or body_base64, not both")),
        (Some(serde_json::Value::String(s)), None) => Ok(Bytes::from(s)),
        (Some(serde_json::Value::Null), None) => Ok(Bytes::new()),
        (Some(v), None) => Ok(Bytes::from(v.to_string())),
        (None, Some(b)) => BASE64
            .decode(b.as_bytes())
            .map(Bytes::from)
            .map_err(|e| ApiError::invalid(format!("body_base64: {e}"))),
        (None, None) => Ok(Bytes::new()),
    }
}

pub(crate) fn message_view(m: &Message) -> MessageView {
    pb_message_view(m.to_pb())
}

fn pb_message_view(m: pb::Message) -> MessageView {
    let user = |u: Option<pb::User>| {
        let u = u.unwrap_or_default();
        UserView {
            app: u.app,
            uid: u.uid,
        }
    };
    let read = m.read.map(|r| ReadReceiptView {
        peer: r.peer.map(|p| UserView {
            app: p.app,
            uid: p.uid,
        }),
        group: (!r.group.is_empty()).then_some(r.group),
        seq: r.seq,
        msg_id: r.msg_id.to_string(),
    });
    MessageView {
        msg_id: m.msg_id.to_string(),
        from: user(m.from),
        to: user(m.to),
        kind: m.r#type,
        body: std::str::from_utf8(&m.body).ok().map(str::to_owned),
        body_base64: BASE64.encode(&m.body),
        client_msg_id: m.client_msg_id,
        server_time_ms: m.server_time_ms,
        read,
        amended: m.amended.map(|a| Box::new(pb_message_view(*a))),
        recalled: m.recalled,
        edited_at_ms: (m.edited_at_ms != 0).then_some(m.edited_at_ms),
    }
}

pub(crate) fn entry_view(e: &Entry) -> EntryView {
    EntryView {
        seq: e.seq,
        message: message_view(&e.message),
    }
}

/// A list of uids within the target limit, as users of `app`.
fn targets(state: &ApiState, app: &str, uids: &[String]) -> Result<Vec<UserKey>, ApiError> {
    let max = state.config.max_targets;
    if uids.len() > max {
        return Err(ApiError::bad_request(
            codes::TOO_MANY_TARGETS,
            format!("{} users; at most {max} per request", uids.len()),
        ));
    }
    if uids.is_empty() {
        return Err(ApiError::invalid("name at least one user"));
    }
    Ok(uids.iter().map(|u| UserKey::new(app, u.as_str())).collect())
}

/// A msg_id given in a query: up to 19 decimal digits (every such number
/// is a u64; ids are below 2^63), as the schema's pattern says.
pub(crate) fn parse_msg_id(s: &str, what: &str) -> Result<u64, ApiError> {
    let bad = || {
        ApiError::bad_request(
            codes::BAD_QUERY,
            format!("{what} must be a msg_id (up to 19 decimal digits)"),
        )
    };
    if s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    s.parse().map_err(|_| bad())
}

/// A uid in a path: 1 to `limits::MAX_ID_LEN` bytes.
pub(crate) fn check_uid(uid: &str) -> Result<(), ApiError> {
    switchboard_proto::limits::check_id("uid", uid).map_err(|e| ApiError::invalid(e.0))
}

// -------------------------------------------------------------- handlers ---

/// Push a message to one or many users of the app.
///
/// Every argument is checked before anything is stored or pushed (a bad uid
/// fails the whole request, nothing done). Then each receiver gets its own
/// result: a backend failure marks only the receivers it hit. When every
/// receiver failed, the answer is that error (e.g. 503 `UNAVAILABLE`) and
/// nothing was stored.
#[utoipa::path(
    post,
    path = "/v1/apps/{app}/push",
    tag = "messages",
    params(("app" = String, Path, description = "The app")),
    request_body = PushRequest,
    responses(
        (status = 200, description = "Per-user outcomes", body = PushResponse),
        (status = 400, description = "BAD_JSON, INVALID_ARGUMENT, TOO_MANY_TARGETS", body = ErrorBody),
        (status = 401, description = "UNAUTHORIZED, INVALID_API_KEY", body = ErrorBody),
        (status = 404, description = "UNKNOWN_APP", body = ErrorBody),
        (status = 413, description = "PAYLOAD_TOO_LARGE", body = ErrorBody),
        (status = 503, description = "UNAVAILABLE: every receiver failed", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn push(
    State(state): State<Arc<ApiState>>,
    Path(app): Path<String>,
    _key: AppKey,
    JsonBody(req): JsonBody<PushRequest>,
) -> ApiResult<PushResponse> {
    let to = targets(&state, &app, &req.to)?;
    let body = body_bytes(req.body, req.body_base64)?;
    let mode = match req.mode {
        PushMode::Stored => S2cMode::Stored,
        PushMode::OnlineOnly => S2cMode::OnlineOnly,
    };
    let outcomes = state
        .gate
        .logic
        .s2c(&app, &to, req.kind, body, mode, req.client_msg_id)
        .await?;
    if let Some(first) = outcomes.first().and_then(|o| o.error.as_ref())
        && outcomes.iter().all(|o| o.error.is_some())
    {
        return Err(first.into());
    }
    let summary = PushSummary {
        users: outcomes.len(),
        users_reached: outcomes.iter().filter(|o| o.devices_reached > 0).count(),
        devices_reached: outcomes.iter().map(|o| o.devices_reached).sum(),
        failed: outcomes.iter().filter(|o| o.error.is_some()).count(),
    };
    let results: Vec<PushResult> = outcomes
        .into_iter()
        .filter(|o| req.report == PushReport::Users || o.error.is_some())
        .map(|o| PushResult {
            uid: o.user.uid,
            msg_id: o.msg_id.to_string(),
            seq: o.seq,
            devices_reached: o.devices_reached,
            duplicate: o.duplicate,
            error: o.error.as_ref().map(|e| ApiError::from(e).detail()),
        })
        .collect();
    Ok(Json(PushResponse {
        mode: req.mode,
        results,
        summary,
    }))
}

/// Send a message as a user (for systems that keep no connection).
///
/// The same path as a client's `c2c`: stored on both timelines, pushed to
/// the receiver's devices and all the sender's devices, de-duplicated by
/// `client_msg_id`, screened by the app's before-send hook and word filter.
#[utoipa::path(
    post,
    path = "/v1/apps/{app}/users/{uid}/messages",
    tag = "messages",
    params(
        ("app" = String, Path, description = "The sender's app"),
        ("uid" = String, Path, description = "The sender"),
    ),
    request_body = SendRequest,
    responses(
        (status = 200, description = "Stored (or already stored: duplicate)", body = SendResponse),
        (status = 400, description = "BAD_JSON, INVALID_ARGUMENT", body = ErrorBody),
        (status = 401, description = "UNAUTHORIZED, INVALID_API_KEY", body = ErrorBody),
        (status = 403, description = "CROSS_APP_FORBIDDEN", body = ErrorBody),
        (status = 404, description = "UNKNOWN_APP (the path's app or `to_app`)", body = ErrorBody),
        (status = 413, description = "PAYLOAD_TOO_LARGE", body = ErrorBody),
        (status = 422, description = "REJECTED by the before-send hook or word filter", body = ErrorBody),
        (status = 503, description = "UNAVAILABLE, HOOK_UNAVAILABLE", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn send_as_user(
    State(state): State<Arc<ApiState>>,
    Path((app, uid)): Path<(String, String)>,
    _key: AppKey,
    JsonBody(req): JsonBody<SendRequest>,
) -> ApiResult<SendResponse> {
    check_uid(&uid)?;
    let body = body_bytes(req.body, req.body_base64)?;
    // An app that is not configured is not there, as in the path (the
    // schema cannot list apps, so this is a 404 and not a bad argument).
    if let Some(to_app) = req.to_app.as_deref()
        && state.gate.logic.apps().get(to_app).is_none()
    {
        return Err(ApiError::unknown_app(to_app));
    }
    let from = UserKey::new(app.as_str(), uid);
    let to_app = req.to_app.unwrap_or_else(|| app.clone());
    let r = state
        .gate
        .logic
        .c2c(
            &from,
            None,
            C2cRequest {
                client_msg_id: req.client_msg_id,
                to: UserKey::new(to_app, req.to),
                kind: req.kind,
                body,
            },
        )
        .await?;
    Ok(Json(SendResponse {
        msg_id: r.message.id.to_string(),
        seq: r.sender_seq,
        server_time_ms: r.message.server_time_ms,
        duplicate: r.duplicate,
    }))
}

/// Presence of a batch of users: devices, platforms, online since when.
#[utoipa::path(
    post,
    path = "/v1/apps/{app}/presence",
    tag = "presence",
    params(("app" = String, Path, description = "The app")),
    request_body = PresenceRequest,
    responses(
        (status = 200, description = "One entry per distinct user", body = PresenceResponse),
        (status = 400, description = "BAD_JSON, INVALID_ARGUMENT, TOO_MANY_TARGETS", body = ErrorBody),
        (status = 401, description = "UNAUTHORIZED, INVALID_API_KEY", body = ErrorBody),
        (status = 404, description = "UNKNOWN_APP", body = ErrorBody),
        (status = 413, description = "PAYLOAD_TOO_LARGE", body = ErrorBody),
        (status = 503, description = "UNAVAILABLE", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn presence(
    State(state): State<Arc<ApiState>>,
    Path(app): Path<String>,
    _key: AppKey,
    JsonBody(req): JsonBody<PresenceRequest>,
) -> ApiResult<PresenceResponse> {
    let mut users = targets(&state, &app, &req.users)?;
    let mut seen = std::collections::HashSet::new();
    users.retain(|u| seen.insert(u.clone()));
    let devices = state.gate.logic.presence_of(&users).await?;
    let users = users
        .into_iter()
        .zip(devices)
        .map(|(user, devices)| {
            let mut platforms: Vec<String> = devices.iter().map(|d| d.platform.clone()).collect();
            platforms.sort();
            platforms.dedup();
            UserPresence {
                uid: user.uid,
                online: !devices.is_empty(),
                since_ms: devices.iter().map(|d| d.since_ms).min(),
                platforms,
                devices: devices
                    .into_iter()
                    .map(|d| DeviceView {
                        device_id: d.device_id,
                        platform: d.platform,
                        since_ms: d.since_ms,
                        node: d.node,
                    })
                    .collect(),
            }
        })
        .collect();
    Ok(Json(PresenceResponse { users }))
}

/// History of the conversation between two users of the app, newest first.
#[utoipa::path(
    get,
    path = "/v1/apps/{app}/conversations/{a}/{b}/messages",
    tag = "history",
    params(
        ("app" = String, Path, description = "The app of both users"),
        ("a" = String, Path, description = "One user"),
        ("b" = String, Path, description = "The other user (the same as `a`: notes to self)"),
        HistoryQuery,
    ),
    responses(
        (status = 200, description = "A page, newest first", body = HistoryResponse),
        (status = 400, description = "BAD_QUERY, INVALID_ARGUMENT", body = ErrorBody),
        (status = 401, description = "UNAUTHORIZED, INVALID_API_KEY", body = ErrorBody),
        (status = 404, description = "UNKNOWN_APP", body = ErrorBody),
        (status = 503, description = "UNAVAILABLE", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn history(
    State(state): State<Arc<ApiState>>,
    Path((app, a, b)): Path<(String, String, String)>,
    _key: AppKey,
    QueryParams(q): QueryParams<HistoryQuery>,
) -> ApiResult<HistoryResponse> {
    let before = q
        .before
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(|s| parse_msg_id(s, "before"))
        .transpose()?;
    let page = state
        .gate
        .logic
        .conversation(
            &UserKey::new(app.as_str(), a),
            &UserKey::new(app.as_str(), b),
            before,
            q.limit.unwrap_or(0) as usize,
        )
        .await?;
    Ok(Json(HistoryResponse {
        messages: page.messages.iter().map(|m| message_view(m)).collect(),
        next_before: page.next_before.map(|id| id.to_string()),
    }))
}

/// A user's timeline after a sequence, oldest first (what `sync` returns).
#[utoipa::path(
    get,
    path = "/v1/apps/{app}/users/{uid}/timeline",
    tag = "history",
    params(
        ("app" = String, Path, description = "The app"),
        ("uid" = String, Path, description = "The user"),
        TimelineQuery,
    ),
    responses(
        (status = 200, description = "A page of entries", body = TimelineResponse),
        (status = 400, description = "BAD_QUERY, INVALID_ARGUMENT", body = ErrorBody),
        (status = 401, description = "UNAUTHORIZED, INVALID_API_KEY", body = ErrorBody),
        (status = 404, description = "UNKNOWN_APP", body = ErrorBody),
        (status = 503, description = "UNAVAILABLE", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn timeline(
    State(state): State<Arc<ApiState>>,
    Path((app, uid)): Path<(String, String)>,
    _key: AppKey,
    QueryParams(q): QueryParams<TimelineQuery>,
) -> ApiResult<TimelineResponse> {
    check_uid(&uid)?;
    let since = q.since.unwrap_or(0);
    if since > MAX_SEQ {
        return Err(ApiError::bad_request(
            codes::BAD_QUERY,
            format!("since must be 0 to {MAX_SEQ}"),
        ));
    }
    let user = UserKey::new(app.as_str(), uid);
    let page = state
        .gate
        .logic
        .sync(&user, since, q.limit.unwrap_or(0))
        .await?;
    Ok(Json(TimelineResponse {
        entries: page.entries.iter().map(entry_view).collect(),
        timeline_head: page.timeline_head,
        has_more: page.has_more,
    }))
}

/// Close every device of a user, on any node (`Kick{KICK_ADMIN}`; the SDK
/// does not reconnect after it). The app's key or the admin key.
#[utoipa::path(
    post,
    path = "/v1/apps/{app}/users/{uid}/kick",
    tag = "operators",
    params(
        ("app" = String, Path, description = "The app"),
        ("uid" = String, Path, description = "The user"),
    ),
    responses(
        (status = 200, description = "How many devices were told", body = KickResponse),
        (status = 400, description = "INVALID_ARGUMENT", body = ErrorBody),
        (status = 401, description = "UNAUTHORIZED, INVALID_API_KEY", body = ErrorBody),
        (status = 404, description = "UNKNOWN_APP", body = ErrorBody),
        (status = 503, description = "UNAVAILABLE", body = ErrorBody),
    ),
    security(("api_key" = []), ("admin_key" = []))
)]
pub async fn kick(
    State(state): State<Arc<ApiState>>,
    Path((app, uid)): Path<(String, String)>,
    _key: AppKey,
) -> ApiResult<KickResponse> {
    let user = UserKey::new(app.as_str(), uid);
    let kicked = state.gate.logic.kick_user(&user, code::KICK_ADMIN).await?;
    tracing::info!(%user, kicked, "user kicked through the API");
    Ok(Json(KickResponse { kicked }))
}

/// This node's connections (by platform and app) and message rates.
#[utoipa::path(
    get,
    path = "/v1/admin/stats",
    tag = "operators",
    responses(
        (status = 200, description = "This node's stats", body = StatsResponse),
        (status = 401, description = "UNAUTHORIZED, INVALID_API_KEY", body = ErrorBody),
        (status = 403, description = "ADMIN_DISABLED", body = ErrorBody),
    ),
    security(("admin_key" = []))
)]
pub async fn stats(State(state): State<Arc<ApiState>>, _key: AdminKey) -> ApiResult<StatsResponse> {
    let gate = &state.gate;
    let counts = gate.hub.connection_counts();
    let stored = gate.logic.stats().messages_stored();
    let pushes = gate.hub.push_count();
    let rates = state.rates.sample(stored, pushes);
    Ok(Json(StatsResponse {
        node: gate.logic.config().node.clone(),
        uptime_secs: state.started.elapsed().as_secs(),
        connections: ConnectionStats {
            total: counts.total,
            by_platform: counts.by_platform,
            by_app: counts.by_app,
            open: gate.open_connections(),
        },
        messages_stored_total: stored,
        online_messages_total: gate.logic.stats().online_messages(),
        pushes_total: pushes,
        slow_consumers_total: gate.hub.slow_consumer_count(),
        messages_per_sec: rates.messages_per_sec,
        pushes_per_sec: rates.pushes_per_sec,
        rate_window_secs: rates.window_secs,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_rule() {
        let b =
            |v: Option<serde_json::Value>, b64: Option<&str>| body_bytes(v, b64.map(str::to_owned));
        assert_eq!(b(Some("héllo".into()), None).unwrap(), "héllo".as_bytes());
        assert_eq!(
            b(Some(serde_json::json!({"a": [1, 2]})), None).unwrap(),
            &b"{\"a\":[1,2]}"[..]
        );
        assert_eq!(b(None, Some("AP8=")).unwrap(), &[0u8, 255][..]);
        assert_eq!(b(None, None).unwrap(), Bytes::new());
        assert_eq!(
            b(None, Some("!!")).unwrap_err().code,
            codes::INVALID_ARGUMENT
        );
        assert_eq!(
            b(Some("x".into()), Some("eA==")).unwrap_err().code,
            codes::INVALID_ARGUMENT
        );
        let m = Message {
            id: 1,
            from: UserKey::new("a", "b"),
            to: UserKey::new("a", "c"),
            kind: "t".into(),
            body: Bytes::from_static(&[0xff, 0x00]),
            client_msg_id: String::new(),
            server_time_ms: 0,
            group: String::new(),
        };
        let v = message_view(&m);
        assert_eq!((v.body, v.body_base64.as_str()), (None, "/wA="));
    }
}
