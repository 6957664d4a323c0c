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
        description = "For business servers (push, send as a user, presence, history) and \
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
        v1::kick,
        crate::revoke::revoke,
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
