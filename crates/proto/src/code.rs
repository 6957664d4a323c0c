//! Stable error and kick codes carried by `Error.code` and `Kick.code`.
//!
//! Clients match on these numbers, never on the message text. Ranges:
//! 1xxx framing, 2xxx login, 3xxx request, 4xxx connection closed by the
//! server, 5xxx server side.

/// The bytes were not a valid frame (bad header, bad length). Fatal.
pub const BAD_FRAME: u32 = 1000;
/// The frame's length is over the server's maximum. Fatal.
pub const FRAME_TOO_LARGE: u32 = 1001;
/// The command number is not known. The connection stays.
pub const UNKNOWN_COMMAND: u32 = 1002;
/// The body did not decode as the command's protobuf (or JSON) message.
pub const BAD_BODY: u32 = 1003;
/// The header's version is not supported. Fatal.
pub const UNSUPPORTED_VERSION: u32 = 1004;
/// A compressed body could not be inflated, or compression was not negotiated.
pub const BAD_COMPRESSION: u32 = 1005;

/// A command other than login or ping arrived before login.
pub const NOT_LOGGED_IN: u32 = 2000;
/// The token is malformed or its signature does not verify.
pub const TOKEN_INVALID: u32 = 2001;
/// The token's `exp` is in the past.
pub const TOKEN_EXPIRED: u32 = 2002;
/// The token names an app this server does not know.
pub const UNKNOWN_APP: u32 = 2003;
/// A second login on a connection that is already logged in.
pub const ALREADY_LOGGED_IN: u32 = 2004;
/// No login within the login deadline. Fatal.
pub const LOGIN_TIMEOUT: u32 = 2005;

/// The receiver is in another app and that pair of apps may not talk.
pub const CROSS_APP_FORBIDDEN: u32 = 3000;
/// A field is missing, empty or too long (the message says which).
pub const INVALID_ARGUMENT: u32 = 3001;
/// The connection sends faster than its message rate allows.
pub const RATE_LIMITED: u32 = 3002;
/// The request is not allowed for this user.
pub const FORBIDDEN: u32 = 3003;
/// The app's before-send hook or word filter refused the message; the
/// message says why. Nothing was stored: do not resend it unchanged.
pub const REJECTED: u32 = 3004;
/// No such group in the app (never created, or deleted).
pub const GROUP_NOT_FOUND: u32 = 3005;
/// The user is not a member of the group (or no longer: removed).
pub const NOT_GROUP_MEMBER: u32 = 3006;
/// The group lets only its admins post (a broadcast channel).
pub const GROUP_ADMINS_ONLY: u32 = 3007;
/// Adding the members would take the group over its maximum size.
pub const GROUP_FULL: u32 = 3008;
/// No message with this id that the user (or the app, over HTTP) may
/// amend: none was stored, it belongs to another app, or it is not an app
/// message (a read receipt, a recall notice).
pub const MESSAGE_NOT_FOUND: u32 = 3009;
/// Only a message's sender may recall or edit it (the business may recall
/// any message of its app over HTTP).
pub const NOT_MESSAGE_SENDER: u32 = 3010;
/// The recall or edit window of the message has passed (see the app's
/// `recall_window_secs` and `edit_window_secs`).
pub const AMEND_WINDOW_CLOSED: u32 = 3011;
/// The message was recalled: it cannot be edited any more.
pub const MESSAGE_RECALLED: u32 = 3012;
/// The request's `client_msg_id` already names a different request of this
/// user (another message, or a recall or edit of another message): use a
/// fresh id.
pub const CLIENT_MSG_ID_REUSED: u32 = 3013;

/// Kick: the same device id logged in on another connection.
pub const KICK_REPLACED: u32 = 4000;
/// Kick: the user went over the maximum number of devices; the oldest goes.
pub const KICK_TOO_MANY_DEVICES: u32 = 4001;
/// Kick: the connection's outbound queue was full (a slow consumer). Sync after reconnecting.
pub const KICK_SLOW_CONSUMER: u32 = 4002;
/// Kick: pushes stayed unacknowledged after every resend. Sync after reconnecting.
pub const KICK_ACK_TIMEOUT: u32 = 4003;
/// Kick: nothing was received for longer than the idle timeout.
pub const KICK_IDLE_TIMEOUT: u32 = 4004;
/// Kick: the server is shutting down. Reconnect (to another node).
pub const KICK_SHUTDOWN: u32 = 4005;
/// Kick: an operator or the business server closed this user's connections.
pub const KICK_ADMIN: u32 = 4006;
/// Kick: the business server revoked this user's tokens (`POST
/// /v1/apps/{app}/users/{uid}/revoke`). Do not reconnect with the same
/// token: get a new one.
pub const KICK_TOKEN_REVOKED: u32 = 4007;

/// An unexpected server error. Retry later.
pub const INTERNAL: u32 = 5000;
/// A backend (store, presence, bus) is unavailable; nothing was acknowledged. Retry.
pub const UNAVAILABLE: u32 = 5001;
/// The server is at its connection limit. Fatal; retry with backoff.
pub const SERVER_FULL: u32 = 5002;
/// The app's before-send hook did not answer (down, timeout, bad answer) and
/// the app is configured fail-closed; nothing was stored. Retry later with
/// the same `client_msg_id`.
pub const HOOK_UNAVAILABLE: u32 = 5003;

/// The symbolic name of a code, for logs and the CLI.
pub fn name(code: u32) -> &'static str {
    match code {
        BAD_FRAME => "BAD_FRAME",
        FRAME_TOO_LARGE => "FRAME_TOO_LARGE",
        UNKNOWN_COMMAND => "UNKNOWN_COMMAND",
        BAD_BODY => "BAD_BODY",
        UNSUPPORTED_VERSION => "UNSUPPORTED_VERSION",
        BAD_COMPRESSION => "BAD_COMPRESSION",
        NOT_LOGGED_IN => "NOT_LOGGED_IN",
        TOKEN_INVALID => "TOKEN_INVALID",
        TOKEN_EXPIRED => "TOKEN_EXPIRED",
        UNKNOWN_APP => "UNKNOWN_APP",
        ALREADY_LOGGED_IN => "ALREADY_LOGGED_IN",
        LOGIN_TIMEOUT => "LOGIN_TIMEOUT",
        CROSS_APP_FORBIDDEN => "CROSS_APP_FORBIDDEN",
        INVALID_ARGUMENT => "INVALID_ARGUMENT",
        RATE_LIMITED => "RATE_LIMITED",
        FORBIDDEN => "FORBIDDEN",
        REJECTED => "REJECTED",
        GROUP_NOT_FOUND => "GROUP_NOT_FOUND",
        NOT_GROUP_MEMBER => "NOT_GROUP_MEMBER",
        GROUP_ADMINS_ONLY => "GROUP_ADMINS_ONLY",
        GROUP_FULL => "GROUP_FULL",
        MESSAGE_NOT_FOUND => "MESSAGE_NOT_FOUND",
        NOT_MESSAGE_SENDER => "NOT_MESSAGE_SENDER",
        AMEND_WINDOW_CLOSED => "AMEND_WINDOW_CLOSED",
        MESSAGE_RECALLED => "MESSAGE_RECALLED",
        CLIENT_MSG_ID_REUSED => "CLIENT_MSG_ID_REUSED",
        KICK_REPLACED => "KICK_REPLACED",
        KICK_TOO_MANY_DEVICES => "KICK_TOO_MANY_DEVICES",
        KICK_SLOW_CONSUMER => "KICK_SLOW_CONSUMER",
        KICK_ACK_TIMEOUT => "KICK_ACK_TIMEOUT",
        KICK_IDLE_TIMEOUT => "KICK_IDLE_TIMEOUT",
        KICK_SHUTDOWN => "KICK_SHUTDOWN",
        KICK_ADMIN => "KICK_ADMIN",
        KICK_TOKEN_REVOKED => "KICK_TOKEN_REVOKED",
        INTERNAL => "INTERNAL",
        UNAVAILABLE => "UNAVAILABLE",
        SERVER_FULL => "SERVER_FULL",
        HOOK_UNAVAILABLE => "HOOK_UNAVAILABLE",
        _ => "UNKNOWN",
    }
}

/// The WebSocket close code that carries a protocol code when the server
/// closes a WebSocket after a fatal error or a kick (the close reason is
/// [`name`]), so a browser that only sees the close event still learns why.
/// Close codes 4000-4999 are for applications (RFC 6455 §7.4.2): a kick
/// (40xx) closes with its own code; any other code `c` closes with
/// 4000 + 100 × (c / 1000) + c % 1000 (1001 → 4101, 2001 → 4201,
/// 5002 → 4502); a code that fits no slot closes with 4999.
pub fn ws_close_code(code: u32) -> u16 {
    let (class, number) = (code / 1000, code % 1000);
    let close = match class {
        4 if number < 100 => code,
        1..=3 | 5..=9 if number < 100 => 4000 + 100 * class + number,
        _ => 4999,
    };
    close as u16
}

#[cfg(test)]
mod close_code_tests {
    use super::*;

    #[test]
    fn close_codes_stay_in_the_application_range_and_do_not_collide() {
        assert_eq!(ws_close_code(KICK_ADMIN), 4006);
        assert_eq!(ws_close_code(FRAME_TOO_LARGE), 4101);
        assert_eq!(ws_close_code(TOKEN_INVALID), 4201);
        assert_eq!(ws_close_code(INVALID_ARGUMENT), 4301);
        assert_eq!(ws_close_code(SERVER_FULL), 4502);
        assert_eq!(ws_close_code(0), 4999);
        let mut seen = std::collections::HashSet::new();
        for c in (1000..6000).filter(|c| name(*c) != "UNKNOWN") {
            let close = ws_close_code(c);
            assert!((4000..=4999).contains(&close), "{c} -> {close}");
            assert!(seen.insert(close), "{c} shares close code {close}");
        }
    }
}
