//! What an app configures to plug its business servers in without platform
//! code: webhook destinations of the bus, the before-send hook and the word
//! filter — and the [`Screen`] trait the logic calls on every c2c before it
//! is stored.
//!
//! The HTTP side of all three (the dispatcher, the hook client, the
//! aho-corasick filter) lives in `switchboard-hooks`; core only knows the
//! settings and the verdicts, so the logic stays free of HTTP.

use std::path::PathBuf;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::model::Message;

/// One webhook destination of an app: where the bus POSTs the events that
/// match `topics` and `types`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://` or `https://` URL the events are POSTed to.
    pub url: String,
    /// Topics wanted (`c2s`, `user.online`, `user.offline`, `message.stored`);
    /// empty means every topic.
    pub topics: Vec<String>,
    /// Message types wanted (the `type` of a c2s or a stored message); empty
    /// means every type. Events without a type (online, offline) match only
    /// a destination whose `types` is empty.
    pub types: Vec<String>,
    /// HMAC-SHA256 key of the `X-Switchboard-Signature` header; without it
    /// requests are not signed.
    pub secret: Option<String>,
}

impl WebhookConfig {
    /// Whether an event of `topic` with message type `kind` goes here.
    pub fn matches(&self, topic: &str, kind: &str) -> bool {
        let topic_ok = self.topics.is_empty() || self.topics.iter().any(|t| t == topic);
        let type_ok = self.types.is_empty() || self.types.iter().any(|t| t == kind);
        topic_ok && type_ok
    }
}

/// What the sender gets when the before-send hook cannot be asked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Fail open: the message is stored as sent.
    #[default]
    Allow,
    /// Fail closed: the sender gets `HOOK_UNAVAILABLE` and nothing is stored.
    Reject,
}

/// The before-send hook: a synchronous POST of each c2c before it is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BeforeSendConfig {
    pub url: String,
    /// How long the hook may take (connect + answer). Default 1000.
    pub timeout_ms: u64,
    /// `allow` (default) or `reject` when the hook is down, slow or answers nonsense.
    pub on_error: OnError,
    /// HMAC-SHA256 key for the `X-Switchboard-Signature` header, as for webhooks.
    pub secret: Option<String>,
}

impl Default for BeforeSendConfig {
    fn default() -> Self {
        BeforeSendConfig {
            url: String::new(),
            timeout_ms: 1000,
            on_error: OnError::Allow,
            secret: None,
        }
    }
}

/// What the word filter does with a message containing a listed word.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FilterAction {
    /// Each match becomes `*` repeated once per character.
    #[default]
    Mask,
    /// The sender gets `REJECTED`.
    Reject,
}

/// The built-in sensitive-word filter of an app.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WordFilterConfig {
    /// One word per line, matched case-insensitively; blank lines and lines
    /// starting with `#` are skipped. Re-read when its modification time changes.
    pub words_file: PathBuf,
    pub action: FilterAction,
    /// Seconds between checks of the file's modification time. Default 2.
    pub reload_secs: Option<u64>,
}

/// The decision on a c2c before it is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Store it as sent.
    Allow,
    /// Store this body instead.
    Replace(Bytes),
    /// Store nothing; the sender gets `REJECTED` with this reason.
    Reject(String),
}

/// The screen could not decide (the hook is down and the app fails closed).
#[derive(Debug, thiserror::Error)]
pub enum ScreenError {
    #[error("before-send hook unavailable: {0}")]
    Unavailable(String),
}

/// Looks at every c2c (including send-as-user) before it is stored.
#[async_trait]
pub trait Screen: Send + Sync + 'static {
    /// Decides on `message` (of app `message.from.app`).
    async fn screen(&self, message: &Message) -> Result<Verdict, ScreenError>;
}
