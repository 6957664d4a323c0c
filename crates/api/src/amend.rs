//! `POST /v1/apps/{app}/messages/{msg_id}/recall`: the business takes back
//! any message of its app (a user's own recall and edit are protocol
//! commands). The rules live in core (`logic_amend`).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};
use switchboard_core::logic_amend::{AmendAction, AmendRequest, Amender};
use utoipa::ToSchema;

use crate::ApiState;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{AppKey, JsonBody};
use crate::v1::{MessageView, message_view, parse_msg_id};

/// A recall by the business.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecallRequest {
    /// Idempotency: a retry with the same id answers the first result
    /// (`duplicate: true`) instead of `MESSAGE_RECALLED` (1 to 128 bytes).
    #[serde(default, deserialize_with = "crate::v1::given")]
    #[schema(value_type = String, min_length = 1, max_length = 128)]
    pub client_msg_id: Option<String>,
}

/// The recall is stored and pushed.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RecallResponse {
    /// The notice entry's message id (decimal): the entry every party's
    /// devices get, with `amended` set.
    pub msg_id: String,
    /// The notice's sequence on the receiver's timeline (1:1) or the
    /// group's timeline (group).
    pub seq: u64,
    pub duplicate: bool,
    /// The recalled message as it is now (`recalled: true`, no body).
    pub message: MessageView,
}

/// Recall a message of the app: its body is removed from storage (the
/// message keeps its id, place and type), and every device of every
/// party learns it (a notice entry, pushed and in sync). Any message sent
/// by or to a user of the app, at any time.
#[utoipa::path(
    post,
    path = "/v1/apps/{app}/messages/{msg_id}/recall",
    tag = "messages",
    params(
        ("app" = String, Path, description = "The app"),
        ("msg_id" = String, Path, description = "The message (decimal)", pattern = "^[0-9]{1,19}$"),
    ),
    request_body = RecallRequest,
    responses(
        (status = 200, description = "Recalled", body = RecallResponse),
        (status = 400, description = "BAD_QUERY, INVALID_ARGUMENT, BAD_JSON", body = ErrorBody),
        (status = 401, description = "UNAUTHORIZED, INVALID_API_KEY", body = ErrorBody),
        (status = 404, description = "UNKNOWN_APP, MESSAGE_NOT_FOUND", body = ErrorBody),
        (status = 409, description = "MESSAGE_RECALLED: already recalled; CLIENT_MSG_ID_REUSED: the id named another recall", body = ErrorBody),
        (status = 503, description = "UNAVAILABLE", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn recall(
    State(state): State<Arc<ApiState>>,
    Path((app, msg_id)): Path<(String, String)>,
    _key: AppKey,
    JsonBody(req): JsonBody<RecallRequest>,
) -> Result<Json<RecallResponse>, ApiError> {
    let msg_id = parse_msg_id(&msg_id, "msg_id")?;
    if req.client_msg_id.as_deref() == Some("") {
        return Err(ApiError::invalid("client_msg_id must be 1 to 128 bytes"));
    }
    let done = state
        .gate
        .logic
        .amend(
            &Amender::App(app),
            None,
            AmendRequest {
                client_msg_id: req.client_msg_id.unwrap_or_default(),
                msg_id,
                action: AmendAction::Recall,
            },
        )
        .await?;
    Ok(Json(RecallResponse {
        msg_id: done.msg_id.to_string(),
        seq: done.seq,
        duplicate: done.duplicate,
        message: message_view(&done.message),
    }))
}
