//! The OpenAPI document served at `/openapi.json`, generated from the
//! handlers' `#[utoipa::path]` annotations and the request/answer types, so
//! it can't drift from the code.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::v1;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Switchboard HTTP API",
        description = "For business servers (push, send as a user, presence, history, groups) and \
operators (stats, kick). Authenticate with `Authorization: Bearer <key>`: the app's \
`api_key` or the operator's `admin_key`. Errors are `{\"error\": {\"code\", \"status\", \
\"message\"}}` with stable codes. Message ids are decimal strings (64-bit). See docs/http-api.md."
    ),
    paths(
        v1::push,
        v1::send_as_user,
        v1::presence,
        v1::history,
        v1::timeline,
        crate::conversations::list,
        crate::amend::recall,
        v1::kick,
        crate::revoke::revoke,
        crate::groups::put_group,
        crate::groups::get_group,
        crate::groups::delete_group,
        crate::groups::add_members,
        crate::groups::remove_members,
        crate::groups::list_members,
        crate::groups::user_groups,
        crate::groups::post_message,
        v1::stats,
        crate::healthz,
        crate::readyz,
        crate::metrics_handler,
    ),
    components(schemas(crate::error::ErrorBody, crate::error::ErrorDetail)),
    modifiers(&Security),
    tags(
        (name = "messages", description = "Push to users, send as a user"),
        (name = "presence", description = "Who is online, on which devices"),
        (name = "history", description = "Conversations and timelines"),
        (name = "groups", description = "Groups: settings, members, posting"),
        (name = "operators", description = "Stats, kick, health, metrics"),
    )
)]
pub struct ApiDoc;

/// Declares the two bearer keys the paths refer to.
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for (name, what) in [
            ("api_key", "The app's api_key (or the admin key)"),
            ("admin_key", "The operator's admin_key"),
        ] {
            components.add_security_scheme(
                name,
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some(what))
                        .build(),
                ),
            );
        }
    }
}

/// The limits of one node that the schema states: they come from its
/// configuration, so the document a node serves is made for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `api.max_targets`: most users in one push or presence request.
    pub max_targets: usize,
    /// `api.max_body_bytes`: the largest request body.
    pub max_body_bytes: usize,
}

/// Longest uid, `client_msg_id` and app name the core takes, in bytes.
const MAX_ID_BYTES: u64 = 128;
const MAX_APP_BYTES: u64 = 64;

/// The document with the node's limits written in: the receivers' item
/// shape and count (which utoipa cannot say of a `Vec<String>`'s items),
/// and the path parameters' lengths. JSON Schema counts lengths in
/// characters while the server counts UTF-8 bytes; the descriptions say so.
pub fn document(limits: Limits) -> serde_json::Value {
    let mut doc = match serde_json::to_value(ApiDoc::openapi()) {
        Ok(v) => v,
        // A generated document always serializes; an empty one would still
        // be answered rather than a panic.
        Err(e) => {
            tracing::error!(error = %e, "the OpenAPI document does not serialize");
            return serde_json::Value::Null;
        }
    };
    let uid = serde_json::json!({
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_ID_BYTES,
        "description": "A uid of the app: 1 to 128 bytes of UTF-8",
    });
    let batch = switchboard_core::logic_groups_api::MAX_MEMBER_BATCH;
    for (schema, field, max) in [
        ("PushRequest", "to", limits.max_targets),
        ("PresenceRequest", "users", limits.max_targets),
        ("RemoveMembersRequest", "uids", batch),
    ] {
        if let Some(list) = doc
            .pointer_mut(&format!("/components/schemas/{schema}/properties/{field}"))
            .and_then(|v| v.as_object_mut())
        {
            list.insert("items".into(), uid.clone());
            list.insert("maxItems".into(), max.into());
        }
    }
    // `body` and `body_base64` are one or the other (even a null `body`
    // with a `body_base64` is refused): utoipa has no attribute for it.
    for schema in ["PushRequest", "SendRequest", "GroupPostRequest"] {
        if let Some(s) = doc
            .pointer_mut(&format!("/components/schemas/{schema}"))
            .and_then(|v| v.as_object_mut())
        {
            s.insert(
                "not".into(),
                serde_json::json!({"required": ["body", "body_base64"]}),
            );
        }
    }
    if let Some(paths) = doc.get_mut("paths").and_then(|p| p.as_object_mut()) {
        for op in paths.values_mut().filter_map(|p| p.as_object_mut()) {
            for op in op.values_mut() {
                let Some(params) = op.get_mut("parameters").and_then(|p| p.as_array_mut()) else {
                    continue;
                };
                for p in params {
                    if p["in"] != "path" {
                        continue;
                    }
                    let max = if p["name"] == "app" {
                        MAX_APP_BYTES
                    } else {
                        MAX_ID_BYTES
                    };
                    if let Some(s) = p.get_mut("schema").and_then(|s| s.as_object_mut()) {
                        s.insert("minLength".into(), 1.into());
                        s.insert("maxLength".into(), max.into());
                    }
                }
            }
        }
    }
    if let Some(info) = doc
        .pointer_mut("/info/description")
        .and_then(|d| d.as_str().map(str::to_owned))
    {
        doc["info"]["description"] = format!(
            "{info} This node: at most {} users per push or presence request, request \
bodies up to {} bytes.",
            limits.max_targets, limits.max_body_bytes
        )
        .into();
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The edits land where they are meant to (a renamed schema or field
    /// would otherwise leave the limit out silently).
    #[test]
    fn limits_are_written_in() {
        let doc = document(Limits {
            max_targets: 7,
            max_body_bytes: 1000,
        });
        for p in [
            "/components/schemas/PushRequest/properties/to",
            "/components/schemas/PresenceRequest/properties/users",
        ] {
            let list = doc.pointer(p).expect(p);
            assert_eq!(list["maxItems"], 7, "{p}");
            assert_eq!(list["minItems"], 1, "{p}");
            assert_eq!(list["items"]["maxLength"], 128, "{p}");
        }
        let uids = &doc["components"]["schemas"]["RemoveMembersRequest"]["properties"]["uids"];
        assert_eq!(uids["maxItems"], 1000);
        assert_eq!(uids["items"]["minLength"], 1);
        for s in ["PushRequest", "SendRequest", "GroupPostRequest"] {
            assert_eq!(
                doc["components"]["schemas"][s]["not"]["required"][1], "body_base64",
                "{s}"
            );
        }
        let params = &doc["paths"]["/v1/apps/{app}/users/{uid}/timeline"]["get"]["parameters"];
        let uid = params
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == "uid"))
            .expect("uid");
        assert_eq!(uid["schema"]["maxLength"], 128);
        assert!(
            doc["info"]["description"]
                .as_str()
                .is_some_and(|d| d.contains("at most 7 users")),
        );
    }
}
