//! [`JetStreamBus`]: `c2s` reports and platform events on a NATS JetStream
//! stream, read by business servers with durable consumers.
//!
//! # Subjects
//!
//! One stream (default `SWITCHBOARD`) takes `<prefix>.events.>` (prefix
//! default `sb`). Each event goes to
//!
//! ```text
//! <prefix>.events.<app>.<topic>.<type>
//! ```
//!
//! where `topic` is `c2s`, `user_online`, `user_offline`, `message_stored`,
//! `group_created`, `group_deleted`, `group_members_added`,
//! `group_members_removed` (dots of the event topic become `_`, so the
//! subject always has five tokens; every platform event comes here, whatever
//! webhooks the app has) and `type` is the app's message type for a c2s (`_` when empty).
//! Characters that cannot be in a subject token (space, `.`, `*`, `>`,
//! anything outside `[A-Za-z0-9_-]`) become `_`; the exact values are in the
//! headers. A business server filters with e.g. `sb.events.shop.c2s.*` or
//! `sb.events.*.c2s.order`.
//!
//! # Message
//!
//! The payload is the event body, unchanged. Headers (values with `%`, CR,
//! LF and other control characters percent-escaped):
//! `Sb-Event-Id` (decimal, unique, time-ordered: receivers de-duplicate on
//! it), `Sb-Topic`, `Sb-App`, `Sb-Uid`, `Sb-Type`, `Sb-Time-Ms`, and
//! `Nats-Msg-Id` = `<app>/<uid>/<client_msg_id>` when the client gave one.
//!
//! # Durability and de-duplication
//!
//! `publish` returns once JetStream acknowledged the message (stored per the
//! stream's storage and replicas), which is when the client gets `c2s_ack`.
//! A resend with the same `client_msg_id` within the stream's duplicate
//! window (default 2 minutes) is not stored again: JetStream flags the ack as
//! a duplicate, and the receipt carries the first event's id.

use std::time::Duration;

use async_nats::Client;
use async_nats::connection::State;
use async_nats::jetstream::{self, Context, message::PublishMessage, stream};
use async_trait::async_trait;
use switchboard_core::{Bus, BusError, BusEvent, BusReceipt};
use tokio::sync::OnceCell;

use crate::nats_route::{NatsError, check_subject_prefix};

/// The stream and subjects of a [`JetStreamBus`].
#[derive(Debug, Clone)]
pub struct JetStreamConfig {
    /// The stream's name.
    pub stream: String,
    /// Subject prefix (events go to `<prefix>.events.…`).
    pub prefix: String,
    /// How long a `Nats-Msg-Id` is remembered for de-duplication.
    pub duplicate_window: Duration,
    /// How long events are kept (0: forever).
    pub max_age: Duration,
    /// Stream replicas (1 for a single NATS server; 3 in a NATS cluster).
    pub replicas: usize,
    /// How long a publish waits for JetStream's ack.
    pub ack_timeout: Duration,
}

impl Default for JetStreamConfig {
    fn default() -> Self {
        JetStreamConfig {
            stream: "SWITCHBOARD".into(),
            prefix: "sb".into(),
            duplicate_window: Duration::from_secs(120),
            max_age: Duration::from_secs(7 * 24 * 3600),
            replicas: 1,
            ack_timeout: Duration::from_secs(3),
        }
    }
}

/// The bus of a clustered node.
pub struct JetStreamBus {
    client: Client,
    js: Context,
    config: JetStreamConfig,
    /// Set once the stream is known to exist: made on first use rather than
    /// at start, so a node starts while NATS is down.
    stream: OnceCell<stream::Stream>,
}

impl JetStreamBus {
    pub fn new(client: Client, config: JetStreamConfig) -> Result<JetStreamBus, NatsError> {
        check_subject_prefix(&config.prefix)?;
        if config.stream.is_empty()
            || config
                .stream
                .chars()
                .any(|c| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\'))
        {
            return Err(NatsError::Config(format!(
                "stream name {:?} must be non-empty without spaces, '.', '*', '>', '/'",
                config.stream
            )));
        }
        let mut js = jetstream::new(client.clone());
        js.set_timeout(config.ack_timeout);
        Ok(JetStreamBus {
            client,
            js,
            config,
            stream: OnceCell::new(),
        })
    }

    /// The subject an event is published on.
    pub fn subject(&self, event: &BusEvent) -> String {
        format!(
            "{}.events.{}.{}.{}",
            self.config.prefix,
            token(&event.user.app),
            token(&event.topic),
            token(&event.kind)
        )
    }

    /// Creates the stream if it does not exist (idempotent).
    pub async fn ensure_stream(&self) -> Result<&stream::Stream, BusError> {
        self.stream
            .get_or_try_init(|| async {
                let c = &self.config;
                self.js
                    .get_or_create_stream(stream::Config {
                        name: c.stream.clone(),
                        subjects: vec![format!("{}.events.>", c.prefix)],
                        storage: stream::StorageType::File,
                        duplicate_window: c.duplicate_window,
                        max_age: c.max_age,
                        num_replicas: c.replicas.max(1),
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| {
                        BusError::Unavailable(format!("JetStream stream {}: {e}", c.stream))
                    })
            })
            .await
    }

    /// Deletes the stream (for tests and operators tearing a deployment down).
    pub async fn delete_stream(&self) -> Result<(), BusError> {
        self.js
            .delete_stream(&self.config.stream)
            .await
            .map(|_| ())
            .map_err(|e| BusError::Unavailable(format!("delete stream: {e}")))
    }

    /// The id of the event stored at `sequence` (for a duplicate's receipt).
    async fn event_id_at(&self, stream: &stream::Stream, sequence: u64) -> Option<u64> {
        let m = stream.get_raw_message(sequence).await.ok()?;
        m.headers.get("Sb-Event-Id")?.as_str().parse().ok()
    }
}

/// One subject token: `[A-Za-z0-9_-]` kept, anything else `_`; `_` when empty.
fn token(s: &str) -> String {
    if s.is_empty() {
        return "_".into();
    }
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A header value: `%`, CR, LF and other control characters percent-escaped.
fn header_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c == '%' || c.is_control() {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[async_trait]
impl Bus for JetStreamBus {
    async fn publish(&self, event: BusEvent, dedupe_id: &str) -> Result<BusReceipt, BusError> {
        if self.client.connection_state() != State::Connected {
            return Err(BusError::Unavailable("NATS is not connected".into()));
        }
        let stream = self.ensure_stream().await?;
        let mut msg = PublishMessage::build()
            .payload(event.body.clone())
            .header("Sb-Event-Id", event.id.to_string().as_str())
            .header("Sb-Topic", header_value(&event.topic).as_str())
            .header("Sb-App", header_value(&event.user.app).as_str())
            .header("Sb-Uid", header_value(&event.user.uid).as_str())
            .header("Sb-Type", header_value(&event.kind).as_str())
            .header("Sb-Time-Ms", event.time_ms.to_string().as_str());
        if !dedupe_id.is_empty() {
            msg = msg.message_id(header_value(&format!(
                "{}/{}/{dedupe_id}",
                event.user.app, event.user.uid
            )));
        }
        let ack = self
            .js
            .send_publish(self.subject(&event), msg)
            .await
            .map_err(|e| BusError::Unavailable(format!("JetStream publish: {e}")))?
            .await
            .map_err(|e| BusError::Unavailable(format!("JetStream ack: {e}")))?;
        if !ack.duplicate {
            return Ok(BusReceipt {
                id: event.id,
                duplicate: false,
            });
        }
        let id = match self.event_id_at(stream, ack.sequence).await {
            Some(id) => id,
            None => {
                // Stored once all the same; only the echoed id differs.
                tracing::warn!(
                    sequence = ack.sequence,
                    "could not read the first copy of a duplicate event"
                );
                event.id
            }
        };
        Ok(BusReceipt {
            id,
            duplicate: true,
        })
    }

    async fn ping(&self) -> Result<(), BusError> {
        crate::nats_route::ping(&self.client)
            .await
            .map_err(BusError::Unavailable)?;
        self.ensure_stream().await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_headers_are_safe() {
        assert_eq!(token("user.online"), "user_online");
        assert_eq!(token(""), "_");
        assert_eq!(token("a b*>c"), "a_b__c");
        assert_eq!(header_value("a\r\nb%"), "a%0D%0Ab%25");
    }
}
