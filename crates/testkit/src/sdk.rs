//! Helpers for tests that use real SDK clients.

use std::time::Duration;

use switchboard_sdk::{Client, ClientConfig, Event, Events, Message, User};

/// A client config for tests: fast reconnects, a device id.
pub fn config(url: &str, token: &str, device: &str) -> ClientConfig {
    ClientConfig::new(url, token)
        .with_device_id(device)
        .with_platform("test")
        .with_reconnect_backoff(Duration::from_millis(20), Duration::from_millis(300))
        .with_request_timeout(Duration::from_secs(20))
}

/// Connects a client for `uid` of app demo.
pub async fn connect(url: &str, uid: &str, device: &str) -> (Client, Events) {
    let token = crate::server::token("demo", uid);
    Client::connect(config(url, &token, device))
        .await
        .expect("client connects")
}

/// A user of app demo.
pub fn demo(uid: &str) -> User {
    User {
        app: "demo".into(),
        uid: uid.into(),
    }
}

/// Receives timeline messages until `n` arrived (other events are skipped),
/// panicking after `within`.
pub async fn messages(events: &mut Events, n: usize, within: Duration) -> Vec<(u64, Message)> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while got.len() < n {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(Event::Message { seq, message })) => got.push((seq, message)),
            Ok(Some(Event::Closed)) | Ok(None) => {
                panic!("client closed after {} of {n} messages", got.len())
            }
            Ok(Some(_)) => {}
            Err(_) => panic!(
                "only {} of {n} messages within {within:?}: {got:?}",
                got.len()
            ),
        }
    }
    got
}

/// Asserts that no timeline message arrives within `wait`.
pub async fn no_more_messages(events: &mut Events, wait: Duration) {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(Event::Message { seq, message })) => {
                panic!("unexpected message {seq}: {message:?}")
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return,
        }
    }
}

/// The bodies of messages, as strings.
pub fn bodies(msgs: &[(u64, Message)]) -> Vec<String> {
    msgs.iter()
        .map(|(_, m)| String::from_utf8_lossy(&m.body).into_owned())
        .collect()
}
