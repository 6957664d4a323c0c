//! `/v1/apps/{app}/groups/...` and `/v1/apps/{app}/users/{uid}/groups`:
//! business servers own group membership (create or update, read, delete a
//! group; add and remove members in batches; list members and a user's
//! groups, paged) and post to a group as a member or as the system. The
//! rules live in core (`logic_groups_api`); this maps HTTP to them. A group
//! of another app is not there: the key in the path picks the app.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use switchboard_core::logic_groups_api::{GroupPost, MAX_MEMBER_BATCH};
use switchboard_core::{Group, GroupKey, GroupSpec, Member, PostPolicy, Role, UserKey};
use utoipa::{IntoParams, ToSchema};

use crate::ApiState;
use crate::error::{ApiError, ErrorBody, codes};
use crate::extract::{AppKey, JsonBody, QueryParams};
use crate::v1::{body_bytes, check_uid, given};

// ---------------------------------------------------------------- shapes ---

/// Who may post to a group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GroupPostPolicy {
    /// Every member.
    #[default]
    Members,
    /// Only members with the role `admin` (a broadcast channel).
    Admins,
}

impl From<GroupPostPolicy> for PostPolicy {
    fn from(p: GroupPostPolicy) -> PostPolicy {
        match p {
            GroupPostPolicy::Members => PostPolicy::Members,
            GroupPostPolicy::Admins => PostPolicy::Admins,
        }
    }
}

impl From<PostPolicy> for GroupPostPolicy {
    fn from(p: PostPolicy) -> GroupPostPolicy {
        match p {
            PostPolicy::Members => GroupPostPolicy::Members,
            PostPolicy::Admins => GroupPostPolicy::Admins,
        }
    }
}

/// A member's role.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MemberRole {
    #[default]
    Member,
    /// May post to a group whose `post_policy` is `admins`.
    Admin,
}

impl From<MemberRole> for Role {
    fn from(r: MemberRole) -> Role {
        match r {
            MemberRole::Member => Role::Member,
            MemberRole::Admin => Role::Admin,
        }
    }
}

impl From<Role> for MemberRole {
    fn from(r: Role) -> MemberRole {
        match r {
            Role::Member => MemberRole::Member,
            Role::Admin => MemberRole::Admin,
        }
    }
}

/// `PUT /v1/apps/{app}/groups/{gid}`: the group's settings, all of them
/// (a field left out takes its default).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutGroupRequest {
    /// Display name, up to 256 bytes (default empty).
    #[serde(default)]
    #[schema(max_length = 256, example = "Order 42")]
    pub name: String,
    /// The business's own metadata: any JSON value, kept as its compact
    /// JSON text, up to 4 KiB (default null).
    #[serde(default)]
    #[schema(value_type = Value, example = json!({"order": 42}))]
    pub meta: serde_json::Value,
    /// `members` (default): every member may post; `admins`: only admins.
    #[serde(default)]
    pub post_policy: GroupPostPolicy,
    /// Members added later also see the messages from before they joined
    /// (default false: a member sees the group from joining on).
    #[serde(default)]
    pub history_visible: bool,
}

/// A group.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct GroupView {
    pub gid: String,
    pub name: String,
    /// The metadata as given (null when none).
    #[schema(value_type = Value)]
    pub meta: serde_json::Value,
    pub post_policy: GroupPostPolicy,
    pub history_visible: bool,
    /// When it was created, ms since the Unix epoch.
    pub created_ms: i64,
    /// The highest sequence on the group's timeline (0: no message yet).
    pub head: u64,
    /// How many members it has.
    pub members: u64,
}

/// One member to add.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewMember {
    /// The user (1 to 128 bytes).
    #[schema(min_length = 1, max_length = 128, example = "agent-3")]
    pub uid: String,
    /// `member` (default) or `admin`; a member already there with another
    /// role gets this one.
    #[serde(default)]
    pub role: MemberRole,
}

/// `POST /v1/apps/{app}/groups/{gid}/members`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddMembersRequest {
    /// 1 to 1,000 members (a uid named twice counts once, with its first role).
    #[schema(min_items = 1, max_items = 1000)]
    pub members: Vec<NewMember>,
}

/// `POST /v1/apps/{app}/groups/{gid}/members/remove`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RemoveMembersRequest {
    /// 1 to 1,000 uids (1 to 128 bytes each); uids that are not members
    /// are skipped.
    #[schema(min_items = 1, max_items = 1000, example = json!(["courier-7"]))]
    pub uids: Vec<String>,
}

/// What an add or remove changed.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MembersChangedResponse {
    /// The uids this call changed, in request order; members already in the
    /// wanted state are left out (a resend answers an empty list).
    pub changed: Vec<String>,
    /// The group's member count now.
    pub members: u64,
}

/// A member.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MemberView {
    pub uid: String,
    pub role: MemberRole,
    /// The group's head when the member joined: it sees the messages after
    /// it (all of them when the group's history is visible).
    pub joined_seq: u64,
    /// When it joined, ms since the Unix epoch.
    pub joined_ms: i64,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Only items after this id (the previous page's `next_after`); empty
    /// or absent: from the start.
    #[param(max_length = 128)]
    pub after: Option<String>,
    /// Page size: 0 or absent is 100, above 1,000 is 1,000.
    // int64 in the schema: its int32 would stop at 2^31-1, and u32 takes more.
    #[param(value_type = Option<i64>, minimum = 0, maximum = 4294967295_u64)]
    pub limit: Option<u32>,
}

/// A page of a group's members, in uid order.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MembersResponse {
    pub members: Vec<MemberView>,
    /// Pass as `after` for the next page; null on the last page.
    pub next_after: Option<String>,
}

/// A page of a user's groups, in gid order.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UserGroupsResponse {
    pub gids: Vec<String>,
    /// Pass as `after` for the next page; null on the last page.
    pub next_after: Option<String>,
}

/// `POST /v1/apps/{app}/groups/{gid}/messages`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupPostRequest {
    /// The posting member (1 to 128 bytes), who must be allowed to post;
    /// absent: the app's system sender, which needs no membership.
    #[serde(default, deserialize_with = "given")]
    #[schema(value_type = String, min_length = 1, max_length = 128, example = "agent-3")]
    pub from: Option<String>,
    /// Required: the poster's id for this message (1 to 128 bytes). A resend
    /// with the same id stores nothing and answers the first result.
    #[schema(min_length = 1, max_length = 128, example = "b7e1c0de-0001")]
    pub client_msg_id: String,
    /// The app's message type (up to 64 bytes).
    #[serde(rename = "type")]
    #[schema(max_length = 64, example = "text")]
    pub kind: String,
    /// As in a push: any JSON value; a string as its bytes, null as no
    /// bytes, other JSON as its JSON text.
    #[serde(default, deserialize_with = "given")]
    #[schema(value_type = Value, example = json!({"text": "hi all"}))]
    pub body: Option<serde_json::Value>,
    /// The body as base64 (standard alphabet, padded); not with `body`.
    #[serde(default, deserialize_with = "given")]
    #[schema(value_type = String, pattern = "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/][AQgw]==|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=)?$")]
    pub body_base64: Option<String>,
}

/// The stored group message.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct GroupPostResponse {
    pub msg_id: String,
    /// Its sequence on the group's timeline.
    pub seq: u64,
    /// The message was already stored under this `client_msg_id`.
    pub duplicate: bool,
    pub server_time_ms: i64,
}

// --------------------------------------------------------------- helpers ---

fn group_view(g: Group) -> GroupView {
    // Stored as the JSON text the API was given; anything else (written by
    // another path) is answered as a string rather than lost.
    let meta = if g.spec.meta.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&g.spec.meta).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&g.spec.meta).into_owned())
        })
    };
    GroupView {
        gid: g.spec.key.gid,
        name: g.spec.name,
        meta,
        post_policy: g.spec.post_policy.into(),
        history_visible: g.spec.history_visible,
        created_ms: g.created_ms,
        head: g.head,
        members: g.members,
    }
}

fn member_view(m: Member) -> MemberView {
    MemberView {
        uid: m.uid,
        role: m.role.into(),
        joined_seq: m.joined_seq,
        joined_ms: m.joined_ms,
    }
}

fn check_batch(n: usize) -> Result<(), ApiError> {
    if n > MAX_MEMBER_BATCH {
        return Err(ApiError::bad_request(
            codes::BATCH_TOO_LARGE,
            format!("{n} members; at most {MAX_MEMBER_BATCH} per call"),
        ));
    }
    Ok(())
}

/// The `after` of a page query: empty is absent; longer than an id is
/// INVALID_ARGUMENT (no id can be there to page from).
fn after(q: &PageQuery) -> Result<Option<&str>, ApiError> {
    match q.after.as_deref().filter(|a| !a.is_empty()) {
        Some(a) => switchboard_proto::limits::check_id("after", a)
            .map(|()| Some(a))
            .map_err(|e| ApiError::invalid(e.0)),
        None => Ok(None),
    }
}

// -------------------------------------------------------------- handlers ---

/// Create a group, or update its settings (every setting: a field left out
/// takes its default). Members and messages are kept on update.
#[utoipa::path(
    put,
    path = "/v1/apps/{app}/groups/{gid}",
    tag = "groups",
    params(
        ("app" = String, Path, description = "The app"),
        ("gid" = String, Path, description = "The app's own id for the group"),
    ),
    request_body = PutGroupRequest,
    responses(
        (status = 200, description = "Updated", body = GroupView),
        (status = 201, description = "Created", body = GroupView),
        (status = 400, description = "BAD_JSON, INVALID_ARGUMENT", body = ErrorBody),
        (status = 401, description = "UNAUTHORIZED, INVALID_API_KEY", body = ErrorBody),
        (status = 404, description = "UNKNOWN_APP", body = ErrorBody),
        (status = 413, description = "PAYLOAD_TOO_LARGE", body = ErrorBody),
        (status = 503, description = "UNAVAILABLE", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn put_group(
    State(state): State<Arc<ApiState>>,
    Path((app, gid)): Path<(String, String)>,
    _key: AppKey,
    JsonBody(req): JsonBody<PutGroupRequest>,
) -> Result<Response, ApiError> {
    let meta = match req.meta {
        serde_json::Value::Null => bytes::Bytes::new(),
        v => bytes::Bytes::from(v.to_string()),
    };
    let spec = GroupSpec {
        key: GroupKey::new(app, gid),
        name: req.name,
        meta,
        post_policy: req.post_policy.into(),
        history_visible: req.history_visible,
    };
    let (group, created) = state.gate.logic.put_group(spec).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(group_view(group))).into_response())
}

/// A group's settings, head and member count.
#[utoipa::path(
    get,
    path = "/v1/apps/{app}/groups/{gid}",
    tag = "groups",
    params(
        ("app" = String, Path, description = "The app"),
        ("gid" = String, Path, description = "The group"),
    ),
    responses(
        (status = 200, description = "The group", body = GroupView),
        (status = 400, description = "INVALID_ARGUMENT", body = ErrorBody),
        (status = 401, description = "UNAUTHORIZED, INVALID_API_KEY", body = ErrorBody),
        (status = 404, description = "UNKNOWN_APP, GROUP_NOT_FOUND", body = ErrorBody),
        (status = 503, description = "UNAVAILABLE", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn get_group(
    State(state): State<Arc<ApiState>>,
    Path((app, gid)): Path<(String, String)>,
    _key: AppKey,
) -> Result<Json<GroupView>, ApiError> {
    let group = state.gate.logic.get_group(&GroupKey::new(app, gid)).await?;
    Ok(Json(group_view(group)))
}

/// Delete a group: its settings, members and messages. Created again with
/// the same id, it starts empty.
#[utoipa::path(
    delete,
    path = "/v1/apps/{app}/groups/{gid}",
    tag = "groups",
    params(
        ("app" = String, Path, description = "The app"),
        ("gid" = String, Path, description = "The group"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "INVALID_ARGUMENT", body = ErrorBody),
        (status = 401, description = "UNAUTHORIZED, INVALID_API_KEY", body = ErrorBody),
        (status = 404, description = "UNKNOWN_APP, GROUP_NOT_FOUND", body = ErrorBody),
        (status = 503, description = "UNAVAILABLE", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn delete_group(
    State(state): State<Arc<ApiState>>,
    Path((app, gid)): Path<(String, String)>,
    _key: AppKey,
) -> Result<StatusCode, ApiError> {
    state
        .gate
        .logic
        .delete_group(&GroupKey::new(app, gid))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Add members (or change their role), atomically; idempotent.
#[utoipa::path(
    post,
    path = "/v1/apps/{app}/groups/{gid}/members",
    tag = "groups",
    params(
        ("app" = String, Path, description = "The app"),
        ("gid" = String, Path, description = "The group"),
    ),
    request_body = AddMembersRequest,
    responses(
        (status = 200, description = "The members this call changed", body = MembersChangedResponse),
        (status = 400, description = "BAD_JSON, INVALID_ARGUMENT, BATCH_TOO_LARGE", body = ErrorBody),
        (status = 401, description = "UNAUTHORIZED, INVALID_API_KEY", body = ErrorBody),
        (status = 404, description = "UNKNOWN_APP, GROUP_NOT_FOUND", body = ErrorBody),
        (status = 409, description = "GROUP_FULL: nothing added", body = ErrorBody),
        (status = 413, description = "PAYLOAD_TOO_LARGE", body = ErrorBody),
        (status = 503, description = "UNAVAILABLE", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn add_members(
    State(state): State<Arc<ApiState>>,
    Path((app, gid)): Path<(String, String)>,
    _key: AppKey,
    JsonBody(req): JsonBody<AddMembersRequest>,
) -> Result<Json<MembersChangedResponse>, ApiError> {
    check_batch(req.members.len())?;
    let members: Vec<(String, Role)> = req
        .members
        .into_iter()
        .map(|m| (m.uid, m.role.into()))
        .collect();
    let changed = state
        .gate
        .logic
        .add_group_members(&GroupKey::new(app, gid), &members)
        .await?;
    Ok(Json(MembersChangedResponse {
        changed: changed.changed,
        members: changed.members,
    }))
}

/// Remove members, atomically; idempotent.
#[utoipa::path(
    post,
    path = "/v1/apps/{app}/groups/{gid}/members/remove",
    tag = "groups",
    params(
        ("app" = String, Path, description = "The app"),
        ("gid" = String, Path, description = "The group"),
    ),
    request_body = RemoveMembersRequest,
    responses(
        (status = 200, description = "The members this call removed", body = MembersChangedResponse),
        (status = 400, description = "BAD_JSON, INVALID_ARGUMENT, BATCH_TOO_LARGE", body = ErrorBody),
        (status = 401, description = "UNAUTHORIZED, INVALID_API_KEY", body = ErrorBody),
        (status = 404, description = "UNKNOWN_APP, GROUP_NOT_FOUND", body = ErrorBody),
        (status = 413, description = "PAYLOAD_TOO_LARGE", body = ErrorBody),
        (status = 503, description = "UNAVAILABLE", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn remove_members(
    State(state): State<Arc<ApiState>>,
    Path((app, gid)): Path<(String, String)>,
    _key: AppKey,
    JsonBody(req): JsonBody<RemoveMembersRequest>,
) -> Result<Json<MembersChangedResponse>, ApiError> {
    check_batch(req.uids.len())?;
    let changed = state
        .gate
        .logic
        .remove_group_members(&GroupKey::new(app, gid), &req.uids)
        .await?;
    Ok(Json(MembersChangedResponse {
        changed: changed.changed,
        members: changed.members,
    }))
}

/// A page of a group's members, in uid order.
#[utoipa::path(
    get,
    path = "/v1/apps/{app}/groups/{gid}/members",
    tag = "groups",
    params(
        ("app" = String, Path, description = "The app"),
        ("gid" = String, Path, description = "The group"),
        PageQuery,
    ),
    responses(
        (status = 200, description = "A page of members", body = MembersResponse),
        (status = 400, description = "BAD_QUERY, INVALID_ARGUMENT", body = ErrorBody),
        (status = 401, description = "UNAUTHORIZED, INVALID_API_KEY", body = ErrorBody),
        (status = 404, description = "UNKNOWN_APP, GROUP_NOT_FOUND", body = ErrorBody),
        (status = 503, description = "UNAVAILABLE", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn list_members(
    State(state): State<Arc<ApiState>>,
    Path((app, gid)): Path<(String, String)>,
    _key: AppKey,
    QueryParams(q): QueryParams<PageQuery>,
) -> Result<Json<MembersResponse>, ApiError> {
    let page = state
        .gate
        .logic
        .group_members(
            &GroupKey::new(app, gid),
            after(&q)?,
            q.limit.unwrap_or(0) as usize,
        )
        .await?;
    Ok(Json(MembersResponse {
        members: page.members.into_iter().map(member_view).collect(),
        next_after: page.next_after,
    }))
}

/// A page of the groups a user is a member of, in gid order.
#[utoipa::path(
    get,
    path = "/v1/apps/{app}/users/{uid}/groups",
    tag = "groups",
    params(
        ("app" = String, Path, description = "The app"),
        ("uid" = String, Path, description = "The user"),
        PageQuery,
    ),
    responses(
        (status = 200, description = "A page of group ids", body = UserGroupsResponse),
        (status = 400, description = "BAD_QUERY, INVALID_ARGUMENT", body = ErrorBody),
        (status = 401, description = "UNAUTHORIZED, INVALID_API_KEY", body = ErrorBody),
        (status = 404, description = "UNKNOWN_APP", body = ErrorBody),
        (status = 503, description = "UNAVAILABLE", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn user_groups(
    State(state): State<Arc<ApiState>>,
    Path((app, uid)): Path<(String, String)>,
    _key: AppKey,
    QueryParams(q): QueryParams<PageQuery>,
) -> Result<Json<UserGroupsResponse>, ApiError> {
    check_uid(&uid)?;
    let page = state
        .gate
        .logic
        .user_groups(
            &UserKey::new(app, uid),
            after(&q)?,
            q.limit.unwrap_or(0) as usize,
        )
        .await?;
    Ok(Json(UserGroupsResponse {
        gids: page.gids,
        next_after: page.next_after,
    }))
}

/// Post to a group as a member (`from`) or as the system (no `from`).
///
/// Stored durably on the group's timeline before the answer, de-duplicated
/// by the poster's `client_msg_id`, then pushed to the members' online
/// devices; offline members get it when they sync.
#[utoipa::path(
    post,
    path = "/v1/apps/{app}/groups/{gid}/messages",
    tag = "groups",
    params(
        ("app" = String, Path, description = "The app"),
        ("gid" = String, Path, description = "The group"),
    ),
    request_body = GroupPostRequest,
    responses(
        (status = 200, description = "Stored (or already stored: duplicate)", body = GroupPostResponse),
        (status = 400, description = "BAD_JSON, INVALID_ARGUMENT", body = ErrorBody),
        (status = 401, description = "UNAUTHORIZED, INVALID_API_KEY", body = ErrorBody),
        (status = 403, description = "NOT_GROUP_MEMBER, GROUP_ADMINS_ONLY", body = ErrorBody),
        (status = 404, description = "UNKNOWN_APP, GROUP_NOT_FOUND", body = ErrorBody),
        (status = 413, description = "PAYLOAD_TOO_LARGE", body = ErrorBody),
        (status = 503, description = "UNAVAILABLE", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn post_message(
    State(state): State<Arc<ApiState>>,
    Path((app, gid)): Path<(String, String)>,
    _key: AppKey,
    JsonBody(req): JsonBody<GroupPostRequest>,
) -> Result<Json<GroupPostResponse>, ApiError> {
    let body = body_bytes(req.body, req.body_base64)?;
    let posted = state
        .gate
        .logic
        .post_to_group(
            &GroupKey::new(app, gid),
            GroupPost {
                from: req.from,
                client_msg_id: req.client_msg_id,
                kind: req.kind,
                body,
            },
        )
        .await?;
    Ok(Json(GroupPostResponse {
        msg_id: posted.msg_id.to_string(),
        seq: posted.seq,
        duplicate: posted.duplicate,
        server_time_ms: posted.server_time_ms,
    }))
}
