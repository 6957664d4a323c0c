//! The before-send hook of an app: a synchronous POST of every c2c to the
//! business before it is stored, answered with allow, reject or replace.
//!
//! Anything but a clear answer within `timeout_ms` (connection refused, a
//! timeout, a non-2xx status, JSON that is not one of the three actions) is
//! an error, and the app's `on_error` decides: `allow` stores the message as
//! sent (fail open), `reject` answers the sender `HOOK_UNAVAILABLE` (fail closed).

use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use switchboard_core::Message;
use switchboard_core::events::UserRef;
use switchboard_core::hooks::{BeforeSendConfig, OnError, ScreenError, Verdict};

use crate::sign::{SIGNATURE_HEADER, TIMESTAMP_HEADER, sign};
use crate::{HookError, body_fields, http_client, parse_url};

/// What the hook receives.
#[derive(Debug, Serialize)]
struct HookRequest<'a> {
    /// The id the message will have if it is stored.
    msg_id: String,
    from: UserRef,
    to: UserRef,
    #[serde(rename = "type")]
    kind: &'a str,
    client_msg_id: &'a str,
    body_base64: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    body_text: Option<&'a str>,
}

/// What the hook answers.
#[derive(Debug, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase")]
enum HookAnswer {
    Allow,
    Reject {
        #[serde(default)]
        reason: String,
    },
    Replace {
        /// The new body as text.
        body: Option<String>,
        /// The new body as base64 (for binary bodies).
        body_base64: Option<String>,
    },
}

/// The before-send hook of one app.
pub struct BeforeSendHook {
    client: reqwest::Client,
    url: reqwest::Url,
    on_error: OnError,
    secret: Option<String>,
}

impl BeforeSendHook {
    pub fn new(app: &str, config: &BeforeSendConfig) -> Result<BeforeSendHook, HookError> {
        let url = parse_url(app, &config.url)?;
        let timeout = Duration::from_millis(config.timeout_ms.max(1));
        Ok(BeforeSendHook {
            client: http_client(timeout)?,
            url,
            on_error: config.on_error,
            secret: config.secret.clone(),
        })
    }

    /// Asks the hook about `message`; applies `on_error` when it cannot answer.
    pub async fn check(&self, message: &Message) -> Result<Verdict, ScreenError> {
        match self.ask(message).await {
            Ok(v) => Ok(v),
            Err(reason) => match self.on_error {
                OnError::Allow => {
                    tracing::warn!(url = %self.url, %reason, "before-send hook failed; allowing (on_error = allow)");
                    Ok(Verdict::Allow)
                }
                OnError::Reject => {
                    tracing::warn!(url = %self.url, %reason, "before-send hook failed; refusing (on_error = reject)");
                    Err(ScreenError::Unavailable(reason))
                }
            },
        }
    }

    async fn ask(&self, m: &Message) -> Result<Verdict, String> {
        let (body_base64, body_text) = body_fields(&m.body);
        let request = HookRequest {
            msg_id: m.id.to_string(),
            from: (&m.from).into(),
            to: (&m.to).into(),
            kind: &m.kind,
            client_msg_id: &m.client_msg_id,
            body_base64,
            body_text,
        };
        let body = serde_json::to_vec(&request).map_err(|e| e.to_string())?;
        let mut req = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(TIMESTAMP_HEADER, switchboard_core::now_ms().to_string());
        if let Some(secret) = &self.secret {
            req = req.header(SIGNATURE_HEADER, sign(secret.as_bytes(), &body));
        }
        let resp = req.body(body).send().await.map_err(|e| {
            if e.is_timeout() {
                "timed out".to_string()
            } else {
                e.to_string()
            }
        })?;
        let status = resp.status();
        if !status.is_success() {
            return Err(format!("answered HTTP {status}"));
        }
        let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
        let answer: HookAnswer =
            serde_json::from_slice(&bytes).map_err(|e| format!("bad answer: {e}"))?;
        Ok(match answer {
            HookAnswer::Allow => Verdict::Allow,
            HookAnswer::Reject { reason } => Verdict::Reject(if reason.is_empty() {
                "rejected by the app's before-send hook".into()
            } else {
                reason
            }),
            HookAnswer::Replace {
                body: Some(text), ..
            } => Verdict::Replace(Bytes::from(text)),
            HookAnswer::Replace {
                body: None,
                body_base64: Some(b64),
            } => Verdict::Replace(Bytes::from(
                base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|e| format!("bad answer: body_base64: {e}"))?,
            )),
            HookAnswer::Replace { .. } => {
                return Err("bad answer: replace without body or body_base64".into());
            }
        })
    }
}
