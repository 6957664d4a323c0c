//! `GET /v1/apps/{app}/users/{uid}/conversations`: a user's conversation
//! list (what the protocol's `list_conversations` answers), for business
//! servers and operators. The rules live in core (`logic_conv`).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};
use switchboard_core::{ConversationItem, ReadTarget, UserKey};
use utoipa::{IntoParams, ToSchema};

use crate::ApiState;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{AppKey, QueryParams};
use crate::v1::{EntryView, UserView, check_uid, entry_view};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConversationsQuery {
    /// The previous page's `next` (absent or empty: the first page).
    /// Opaque; text not of its shape is `INVALID_ARGUMENT`.
    #[param(
        pattern = "^([0-9]{1,18}\\.[0-9]{1,19}\\.[ug]\\.([0-9a-f]{2}){0,128}\\.([0-9a-f]{2}){0,128})?$"
    )]
    pub after: Option<String>,
    /// Page size: 0 (the default) is 50; at most 200.
    // int64 in the schema: its int32 would stop at 2^31-1, and u32 takes more.
    #[param(value_type = Option<i64>, minimum = 0, maximum = 4294967295_u64)]
    pub limit: Option<u32>,
}

/// One conversation of the user.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ConversationView {
    /// The other user of a 1:1 conversation (absent for a group).
    pub peer: Option<UserView>,
    /// The group's id (absent for a 1:1 conversation).
    pub group: Option<String>,
    /// The last entry: its `seq` is on the user's timeline (1:1) or the
    /// group's (group). Absent when there is none the user may see yet.
    pub last: Option<EntryView>,
    pub last_time_ms: i64,
    /// Entries from others after the user's read position.
    pub unread: u64,
    /// The user's read position (same scale as `last.seq`).
    pub read_seq: u64,
    /// 1:1: the peer read up to this message (decimal; absent: nothing known).
    pub peer_read_msg_id: Option<String>,
}

/// A page of the user's conversations, most recent first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ConversationsResponse {
    pub conversations: Vec<ConversationView>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next: Option<String>,
    /// Unread entries over every conversation of the user (the badge).
    pub total_unread: u64,
}

fn conversation_view(c: &ConversationItem) -> ConversationView {
    let (peer, group) = match &c.target {
        ReadTarget::Peer(u) => (
            Some(UserView {
                app: u.app.clone(),
                uid: u.uid.clone(),
            }),
            None,
        ),
        ReadTarget::Group(g) => (None, Some(g.clone())),
    };
    ConversationView {
        peer,
        group,
        last: c.last.as_ref().map(entry_view),
        last_time_ms: c.last_time_ms,
        unread: c.unread,
        read_seq: c.read_seq,
        peer_read_msg_id: (c.peer_read_msg_id > 0).then(|| c.peer_read_msg_id.to_string()),
    }
}

/// A user's conversations (1:1 pairs and groups), most recent first, each
/// with its last entry and the user's unread count.
#[utoipa::path(
    get,
    path = "/v1/apps/{app}/users/{uid}/conversations",
    tag = "history",
    params(
        ("app" = String, Path, description = "The app"),
        ("uid" = String, Path, description = "The user"),
        ConversationsQuery,
    ),
    responses(
        (status = 200, description = "A page of conversations", body = ConversationsResponse),
        (status = 400, description = "BAD_QUERY, INVALID_ARGUMENT", body = ErrorBody),
        (status = 401, description = "UNAUTHORIZED, INVALID_API_KEY", body = ErrorBody),
        (status = 404, description = "UNKNOWN_APP", body = ErrorBody),
        (status = 503, description = "UNAVAILABLE", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn list(
    State(state): State<Arc<ApiState>>,
    Path((app, uid)): Path<(String, String)>,
    _key: AppKey,
    QueryParams(q): QueryParams<ConversationsQuery>,
) -> Result<Json<ConversationsResponse>, ApiError> {
    check_uid(&uid)?;
    let user = UserKey::new(app.as_str(), uid);
    let list = state
        .gate
        .logic
        .conversations(&user, q.after.as_deref(), q.limit.unwrap_or(0))
        .await?;
    Ok(Json(ConversationsResponse {
        conversations: list.conversations.iter().map(conversation_view).collect(),
        next: list.next,
        total_unread: list.total_unread,
    }))
}
