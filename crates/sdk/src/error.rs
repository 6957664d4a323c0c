//! The SDK's error kinds. Callers match on the variant (and on `code` for
//! server errors), never on the text.

use switchboard_proto::{CompressError, ProtoError, code};

/// Everything that can go wrong in the SDK.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SdkError {
    /// The URL is not `tcp://`, `tls://`, `ws://` or `wss://` with a host and port.
    #[error("invalid url: {0}")]
    InvalidUrl(String),
    /// The TLS configuration is unusable (no or bad root certificates, bad server name)
    /// or the TLS handshake failed.
    #[error("tls: {0}")]
    Tls(String),
    /// A socket error (connect refused, reset, ...).
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The WebSocket handshake or stream failed.
    #[error("websocket: {0}")]
    WebSocket(String),
    /// The server sent bytes that are not a valid frame, or an unexpected frame.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The server answered the request (or the login) with an `Error` frame.
    /// `code` is one of [`switchboard_proto::code`].
    #[error("server error {code} ({}): {message}", code::name(*code))]
    Server { code: u32, message: String },
    /// The server closed the connection with a `Kick` frame.
    #[error("kicked {code} ({}): {reason}", code::name(*code))]
    Kicked { code: u32, reason: String },
    /// No answer within the configured request timeout (or connect timeout).
    #[error("timed out")]
    Timeout,
    /// A request is larger than the server's `max_frame_bytes`.
    #[error("frame of {len} bytes is over the server's limit of {max}")]
    TooLarge { len: usize, max: usize },
    /// The token provider failed to produce a token.
    #[error("token provider: {0}")]
    Token(String),
    /// The client was closed (by `close`, `logout`, a terminal kick or an auth failure).
    #[error("client closed")]
    Closed,
}

impl SdkError {
    /// The stable server code of a `Server` or `Kicked` error.
    pub fn code(&self) -> Option<u32> {
        match self {
            SdkError::Server { code, .. } | SdkError::Kicked { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether trying again later may succeed (network trouble, a server that
    /// is busy or unavailable). The SDK already retries these itself while a
    /// request's timeout allows.
    pub fn is_retryable(&self) -> bool {
        match self {
            SdkError::Io(_) | SdkError::WebSocket(_) | SdkError::Timeout => true,
            SdkError::Server { code, .. } => is_retryable_code(*code),
            SdkError::Kicked { code, .. } => !is_terminal_kick(*code),
            _ => false,
        }
    }
}

/// Server codes that mean "nothing happened, try again later".
pub(crate) fn is_retryable_code(c: u32) -> bool {
    matches!(
        c,
        code::UNAVAILABLE | code::INTERNAL | code::RATE_LIMITED | code::SERVER_FULL
    )
}

/// Kicks after which reconnecting would only repeat the problem (or fight
/// another device for the same id).
pub(crate) fn is_terminal_kick(c: u32) -> bool {
    matches!(
        c,
        code::KICK_REPLACED
            | code::KICK_TOO_MANY_DEVICES
            | code::KICK_ADMIN
            | code::KICK_TOKEN_REVOKED
    )
}

/// Login failures that a reconnect with the same credentials cannot fix.
pub(crate) fn is_auth_failure(c: u32) -> bool {
    matches!(
        c,
        code::TOKEN_INVALID | code::TOKEN_EXPIRED | code::UNKNOWN_APP | code::FORBIDDEN
    )
}

impl From<ProtoError> for SdkError {
    fn from(e: ProtoError) -> Self {
        SdkError::Protocol(e.to_string())
    }
}

impl From<CompressError> for SdkError {
    fn from(e: CompressError) -> Self {
        SdkError::Protocol(e.to_string())
    }
}

impl From<tokio_tungstenite::tungstenite::Error> for SdkError {
    fn from(e: tokio_tungstenite::tungstenite::Error) -> Self {
        use tokio_tungstenite::tungstenite::Error as W;
        match e {
            W::Io(io) => SdkError::Io(io),
            W::Tls(t) => SdkError::Tls(t.to_string()),
            other => SdkError::WebSocket(other.to_string()),
        }
    }
}
