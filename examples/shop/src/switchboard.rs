//! The shop's client of Switchboard's HTTP API (docs/http-api.md): the four
//! calls a business server needs here — presence, push (stored or
//! online-only), send as a user, and a conversation's history.
//!
//! Plain reqwest and serde: a business server in any language does the same
//! with its own HTTP client; nothing here links Switchboard's crates.

use std::time::Duration;

use reqwest::Url;
use serde::Deserialize;
use serde_json::{Value, json};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No answer: connection refused, timeout, reset.
    #[error("switchboard unreachable: {0}")]
    Transport(#[from] reqwest::Error),
    /// An error answer, with its stable code (`UNAVAILABLE`, `REJECTED`, ...).
    #[error("switchboard answered {status} {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// A 2xx answer this client could not read (a version mismatch).
    #[error("unexpected answer from switchboard: {0}")]
    Answer(String),
}

impl ApiError {
    /// The request itself is wrong — a bad argument, too large, refused by
    /// the app's word filter or before-send hook — so repeating it won't
    /// help. Anything else (Switchboard down or busy, a key or app not
    /// configured yet) may heal, and the caller retries.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            ApiError::Api {
                status: 400 | 413 | 422,
                ..
            } | ApiError::Answer(_)
        )
    }

    /// The error code, for an error answer.
    pub fn code(&self) -> Option<&str> {
        match self {
            ApiError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// How a push is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// On the receiver's timeline: an offline device gets it when it syncs.
    Stored,
    /// To the devices online now, nothing stored.
    OnlineOnly,
}

/// One receiver's outcome of a push.
#[derive(Debug, Clone, Deserialize)]
pub struct PushResult {
    pub uid: String,
    pub msg_id: String,
    pub seq: Option<u64>,
    pub devices_reached: usize,
    pub duplicate: bool,
    pub error: Option<ErrorDetail>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub status: u16,
    pub message: String,
}

#[derive(Debug, Deserialize)]
struct PushResponse {
    results: Vec<PushResult>,
}

/// The stored message of a send-as-user.
#[derive(Debug, Clone, Deserialize)]
pub struct Sent {
    pub msg_id: String,
    pub seq: u64,
    pub duplicate: bool,
}

#[derive(Debug, Deserialize)]
struct PresenceResponse {
    users: Vec<UserPresence>,
}

#[derive(Debug, Deserialize)]
struct UserPresence {
    uid: String,
    online: bool,
}

/// A message of a conversation, as history answers it.
#[derive(Debug, Clone, Deserialize)]
pub struct HistoryMessage {
    pub from: UserRef,
    #[serde(rename = "type")]
    pub kind: String,
    /// The body as text (null when it is not UTF-8).
    pub body: Option<String>,
    pub server_time_ms: i64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct UserRef {
    pub uid: String,
}

#[derive(Debug, Deserialize)]
struct HistoryResponse {
    messages: Vec<HistoryMessage>,
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

/// The HTTP API of one Switchboard app.
#[derive(Debug, Clone)]
pub struct Switchboard {
    http: reqwest::Client,
    base: Url,
    app: String,
    key: String,
}

impl Switchboard {
    /// `base` is the API's base URL (`http://127.0.0.1:8080`).
    pub fn new(base: &str, app: &str, key: &str) -> Result<Switchboard, String> {
        let base = Url::parse(base).map_err(|e| format!("switchboard URL {base:?}: {e}"))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(format!("switchboard URL {base}: not an http(s) base URL"));
        }
        // reqwest is built with rustls and no default provider (the
        // workspace's one crypto provider is ring); https needs it installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            // Bounded: a hung Switchboard fails the webhook, which is retried.
            .timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Switchboard {
            http,
            base,
            app: app.into(),
            key: key.into(),
        })
    }

    /// `{base}/v1/apps/{app}/{segments...}`, each segment escaped.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(["v1", "apps", &self.app]);
            path.extend(segments);
        }
        url
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<T, ApiError> {
        let resp = req.bearer_auth(&self.key).send().await?;
        let status = resp.status();
        let bytes = resp.bytes().await?;
        if !status.is_success() {
            return Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(b) => ApiError::Api {
                    status: status.as_u16(),
                    code: b.error.code,
                    message: b.error.message,
                },
                Err(_) => ApiError::Api {
                    status: status.as_u16(),
                    code: String::new(),
                    message: String::from_utf8_lossy(&bytes).into_owned(),
                },
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| ApiError::Answer(e.to_string()))
    }

    /// Which of `uids` are online now (in `uids`' order).
    pub async fn online(&self, uids: &[String]) -> Result<Vec<String>, ApiError> {
        if uids.is_empty() {
            return Ok(Vec::new());
        }
        let req = self
            .http
            .post(self.url(&["presence"]))
            .json(&json!({ "users": uids }));
        let answer: PresenceResponse = self.call(req).await?;
        Ok(answer
            .users
            .into_iter()
            .filter(|u| u.online)
            .map(|u| u.uid)
            .collect())
    }

    /// Pushes `body` (JSON) to `to` from the app's system sender. A stored
    /// push with `client_msg_id` is idempotent: a retry stores nothing new.
    pub async fn push(
        &self,
        to: &[String],
        kind: &str,
        body: &Value,
        mode: Mode,
        client_msg_id: Option<&str>,
    ) -> Result<Vec<PushResult>, ApiError> {
        let mut req = json!({
            "to": to,
            "type": kind,
            "body": body,
            "mode": match mode { Mode::Stored => "stored", Mode::OnlineOnly => "online_only" },
        });
        if let Some(id) = client_msg_id {
            req["client_msg_id"] = json!(id);
        }
        let answer: PushResponse = self
            .call(self.http.post(self.url(&["push"])).json(&req))
            .await?;
        Ok(answer.results)
    }

    /// A stored push to one user; that user's failure is the call's failure.
    pub async fn push_one(
        &self,
        to: &str,
        kind: &str,
        body: &Value,
        client_msg_id: &str,
    ) -> Result<PushResult, ApiError> {
        let to = [to.to_string()];
        let mut results = self
            .push(&to, kind, body, Mode::Stored, Some(client_msg_id))
            .await?;
        let result = results
            .pop()
            .ok_or_else(|| ApiError::Answer("a push answered no result".into()))?;
        match result.error {
            Some(e) => Err(ApiError::Api {
                status: e.status,
                code: e.code,
                message: e.message,
            }),
            None => Ok(result),
        }
    }

    /// Sends `text` from `from` to `to`, exactly as if `from` had sent it
    /// from a device: stored on both timelines, pushed to both users' devices,
    /// screened by the app's word filter. Idempotent on `client_msg_id`.
    pub async fn send_as(
        &self,
        from: &str,
        to: &str,
        kind: &str,
        text: &str,
        client_msg_id: &str,
    ) -> Result<Sent, ApiError> {
        let req = json!({ "to": to, "type": kind, "body": text, "client_msg_id": client_msg_id });
        self.call(
            self.http
                .post(self.url(&["users", from, "messages"]))
                .json(&req),
        )
        .await
    }

    /// The last `limit` messages between `a` and `b`, oldest first.
    pub async fn recent(
        &self,
        a: &str,
        b: &str,
        limit: usize,
    ) -> Result<Vec<HistoryMessage>, ApiError> {
        let mut url = self.url(&["conversations", a, b, "messages"]);
        url.query_pairs_mut()
            .append_pair("limit", &limit.to_string());
        let answer: HistoryResponse = self.call(self.http.get(url)).await?;
        // History answers newest first.
        Ok(answer.messages.into_iter().rev().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_escape_their_segments() {
        let sb = Switchboard::new("http://127.0.0.1:8080/", "shop", "k").unwrap();
        assert_eq!(
            sb.url(&["users", "a/b c", "messages"]).as_str(),
            "http://127.0.0.1:8080/v1/apps/shop/users/a%2Fb%20c/messages"
        );
        let sb = Switchboard::new("http://h:1/prefix", "shop", "k").unwrap();
        assert_eq!(
            sb.url(&["push"]).as_str(),
            "http://h:1/prefix/v1/apps/shop/push"
        );
        assert!(Switchboard::new("ftp://h", "shop", "k").is_err());
    }
}
