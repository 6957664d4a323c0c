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

/// Receives `group`'s entries until `n` arrived (other events are skipped),
/// panicking after `within` or on an entry of another group.
pub async fn group_messages(
    events: &mut Events,
    group: &str,
    n: usize,
    within: Duration,
) -> Vec<(u64, Message)> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while got.len() < n {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(Event::GroupMessage {
                group: g,
                seq,
                message,
            })) => {
                assert_eq!(g, group, "an entry of another group");
                got.push((seq, message));
            }
            Ok(Some(Event::Closed)) | Ok(None) => {
                panic!("client closed after {} of {n} group entries", got.len())
            }
            Ok(Some(_)) => {}
            Err(_) => panic!(
                "only {} of {n} group entries within {within:?}: {:?}",
                got.len(),
                bodies(&got)
            ),
        }
    }
    got
}

/// Asserts that no timeline message and no group entry arrives within `wait`.
pub async fn no_more_entries(events: &mut Events, wait: Duration) {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(Event::Message { seq, message })) => {
                panic!("unexpected message {seq}: {message:?}")
            }
            Ok(Some(Event::GroupMessage {
                group,
                seq,
                message,
            })) => panic!("unexpected entry {seq} of {group}: {message:?}"),
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

/// Spawns demo user `from` (device `device`) sending the bodies "0", "1", …
/// up to `n - 1` to `to`, with client_msg_ids "m0", "m1", …, pausing `pause`
/// between sends. The SDK resends each until it is acknowledged (across
/// crashes and reconnects), so the task returns every receipt, in order.
pub fn spawn_numbered_sender(
    url: String,
    from: &str,
    device: &str,
    to: &str,
    n: usize,
    pause: Duration,
) -> tokio::task::JoinHandle<Vec<switchboard_sdk::SendReceipt>> {
    let (from, device, to) = (from.to_owned(), device.to_owned(), demo(to));
    tokio::spawn(async move {
        let (client, _events) = connect(&url, &from, &device).await;
        let mut acked = Vec::with_capacity(n);
        for i in 0..n {
            let r = client
                .send_with_id(format!("m{i}"), to.clone(), "text", format!("{i}"))
                .await;
            acked.push(r.expect("every message is eventually acknowledged"));
            tokio::time::sleep(pause).await;
        }
        client.close().await;
        acked
    })
}

/// Asserts what [`spawn_numbered_sender`] promises: the receiver `got` the
/// bodies "0".."n-1" once each, in order, at timeline seqs 1..=n, and the
/// sender's `acked` receipts name `n` distinct stored messages.
pub fn assert_numbered(
    got: &[(u64, Message)],
    acked: &[switchboard_sdk::SendReceipt],
    n: usize,
    who: &str,
) {
    let want: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    assert_eq!(bodies(got), want, "{who}: every message once, in order");
    let seqs: Vec<u64> = got.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        seqs,
        (1..=n as u64).collect::<Vec<_>>(),
        "{who}: no gap, no duplicate"
    );
    let ids: std::collections::HashSet<u64> = acked.iter().map(|r| r.msg_id).collect();
    assert_eq!(ids.len(), n, "one stored message per client_msg_id");
}
