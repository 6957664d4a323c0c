//! Switchboard's outgoing HTTP to business servers.
//!
//! - [`webhook`]: the [`Dispatcher`] of the embedded bus: drains the store's
//!   outbox and POSTs each event, signed, to the app's configured webhooks, in
//!   order per user, retrying with backoff until a 2xx.
//! - [`before_send`]: the per-app synchronous hook that may allow, reject or
//!   replace a c2c before it is stored.
//! - [`filter`]: the per-app sensitive-word filter (aho-corasick; mask or
//!   reject), reloaded when its word file changes.
//! - [`screen`]: [`AppScreens`], the core `Screen` combining the two for each app.
//! - [`sign`]: the `X-Switchboard-Signature` HMAC, for senders and receivers.
//!
//! The only TLS crypto provider is rustls' ring: [`install_crypto_provider`]
//! makes it the process default before any client is built.

pub mod before_send;
pub mod filter;
pub mod screen;
pub mod sign;
pub mod webhook;

pub use before_send::BeforeSendHook;
pub use filter::WordFilter;
pub use screen::AppScreens;
pub use webhook::{Dispatcher, DispatcherConfig, DispatcherStats};

use std::time::Duration;

/// Why a hook, filter or dispatcher could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// A setting of an app is invalid (bad URL, unreadable word file, ...).
    #[error("app {app}: {reason}")]
    Config { app: String, reason: String },
    /// The HTTP client could not be built.
    #[error("http client: {0}")]
    Client(String),
}

/// Makes rustls' ring provider the process default (the build has no other);
/// harmless when a provider is already installed.
pub fn install_crypto_provider() {
    // Err only means some provider is already the default: ring, since the
    // build has no other.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// An HTTP client for hooks and webhooks: rustls (ring), no redirects (a
/// redirect would resend a signed body somewhere else), `timeout` per request.
pub(crate) fn http_client(timeout: Duration) -> Result<reqwest::Client, HookError> {
    install_crypto_provider();
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("switchboard/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| HookError::Client(e.to_string()))
}

/// Checks a hook or webhook URL: absolute `http` or `https`.
pub(crate) fn parse_url(app: &str, url: &str) -> Result<reqwest::Url, HookError> {
    let parsed = reqwest::Url::parse(url).map_err(|e| HookError::Config {
        app: app.into(),
        reason: format!("invalid URL {url:?}: {e}"),
    })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(HookError::Config {
            app: app.into(),
            reason: format!("URL {url:?} is not http or https"),
        });
    }
    Ok(parsed)
}

/// The body as the JSON fields `body_base64` and, when it is UTF-8, `body_text`.
pub(crate) fn body_fields(body: &[u8]) -> (String, Option<&str>) {
    use base64::Engine;
    (
        base64::engine::general_purpose::STANDARD.encode(body),
        std::str::from_utf8(body).ok(),
    )
}
