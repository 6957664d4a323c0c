//! The conformance suite every [`Presence`] implementation must pass
//! (`RedisPresence` on a server and on a Redis Cluster), so
//! they cannot drift apart.
//!
//! Each property is a `pub async fn` that panics with the reason when the
//! presence breaks the contract of `switchboard_core::presence`. They take
//! the presence and the name of the node it records devices for (a clustered
//! presence records its own node's devices), use users of their own (a
//! unique tag per call), and leave nothing behind, so they can share one
//! backend and run in any order. [`run_all`] runs the single-node ones;
//! [`dead_node_entries_expire`] and [`restarted_node_does_not_revive_old_entries`]
//! are for presences whose entries expire with their node's heartbeat.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use switchboard_core::{DeviceSession, Presence, UserKey, now_ms};

use crate::store_conformance::fresh_user;

/// A session of `user`'s `device` on `node`, connection `conn_id`.
pub fn session(user: &UserKey, device: &str, node: &str, conn_id: u64) -> DeviceSession {
    DeviceSession {
        user: user.clone(),
        device_id: device.into(),
        platform: "test".into(),
        node: node.into(),
        conn_id,
        since_ms: now_ms(),
    }
}

async fn device_ids(p: &dyn Presence, user: &UserKey) -> BTreeSet<String> {
    p.devices(user)
        .await
        .expect("devices")
        .into_iter()
        .map(|d| d.device_id)
        .collect()
}

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

/// Online devices are listed with everything recorded; offline removes them.
pub async fn online_devices_offline(p: &dyn Presence, node: &str) {
    let u = fresh_user("odo");
    assert!(
        p.devices(&u).await.expect("devices").is_empty(),
        "a new user has no devices"
    );
    let phone = session(&u, "phone", node, 11);
    let laptop = DeviceSession {
        platform: "desktop | with | bars".into(),
        ..session(&u, "laptop", node, 12)
    };
    p.online(&phone).await.expect("online");
    p.online(&laptop).await.expect("online");
    let mut got = p.devices(&u).await.expect("devices");
    got.sort_by(|a, b| a.device_id.cmp(&b.device_id));
    assert_eq!(
        got,
        vec![laptop.clone(), phone.clone()],
        "every field round-trips"
    );
    p.offline(&u, "phone", 11).await.expect("offline");
    assert_eq!(device_ids(p, &u).await, set(&["laptop"]));
    p.offline(&u, "laptop", 12).await.expect("offline");
    assert!(p.devices(&u).await.expect("devices").is_empty());
    // Offline of something not online is not an error.
    p.offline(&u, "laptop", 12).await.expect("offline again");
}

/// A second login of the same device id replaces the first entry.
pub async fn same_device_replaces(p: &dyn Presence, node: &str) {
    let u = fresh_user("replace");
    p.online(&session(&u, "phone", node, 1))
        .await
        .expect("online");
    p.online(&session(&u, "phone", node, 2))
        .await
        .expect("online");
    let got = p.devices(&u).await.expect("devices");
    assert_eq!(got.len(), 1, "one entry per device id: {got:?}");
    assert_eq!(got[0].conn_id, 2, "the newer login wins");
    p.offline(&u, "phone", 2).await.expect("offline");
}

/// The old connection's offline does not remove the device's newer login.
pub async fn offline_only_removes_its_own_connection(p: &dyn Presence, node: &str) {
    let u = fresh_user("guard");
    p.online(&session(&u, "phone", node, 1))
        .await
        .expect("online");
    p.online(&session(&u, "phone", node, 2))
        .await
        .expect("online");
    p.offline(&u, "phone", 1).await.expect("stale offline");
    let got = p.devices(&u).await.expect("devices");
    assert_eq!(got.len(), 1, "the newer login survives the old one's exit");
    assert_eq!(got[0].conn_id, 2);
    p.offline(&u, "phone", 2).await.expect("offline");
    assert!(p.devices(&u).await.expect("devices").is_empty());
}

/// Users do not see each other's devices; many users at once all land.
pub async fn users_are_independent_under_concurrency(p: Arc<dyn Presence>, node: &str) {
    const USERS: usize = 40;
    let users: Vec<UserKey> = (0..USERS).map(|_| fresh_user("many")).collect();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, u) in users.iter().enumerate() {
        let (p, u, node) = (p.clone(), u.clone(), node.to_string());
        tasks.spawn(async move {
            for d in 0..=(i % 3) {
                let s = session(&u, &format!("d{d}"), &node, (i * 10 + d) as u64);
                p.online(&s).await.expect("online");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("online task");
    }
    for (i, u) in users.iter().enumerate() {
        let got = device_ids(p.as_ref(), u).await;
        let want: BTreeSet<String> = (0..=(i % 3)).map(|d| format!("d{d}")).collect();
        assert_eq!(got, want, "user {u}");
    }
    for (i, u) in users.iter().enumerate() {
        for d in 0..=(i % 3) {
            p.offline(u, &format!("d{d}"), (i * 10 + d) as u64)
                .await
                .expect("offline");
        }
        assert!(p.devices(u).await.expect("devices").is_empty());
    }
}

/// A fan-out's lookups: `devices_many` and `placement` of many users at
/// once (online with one or two devices, offline, never seen) answer user by
/// user in the order asked, the same as `devices` one at a time.
pub async fn many_users_at_once(p: &dyn Presence, node: &str) {
    const USERS: usize = 300;
    let users: Vec<UserKey> = (0..USERS).map(|_| fresh_user("fan")).collect();
    // Every third user offline; the others with one or two devices.
    let devices_of = |i: usize| if i.is_multiple_of(3) { 0 } else { 1 + i % 2 };
    for (i, u) in users.iter().enumerate() {
        for d in 0..devices_of(i) {
            p.online(&session(u, &format!("d{d}"), node, (i * 10 + d) as u64))
                .await
                .expect("online");
        }
    }
    let many = p.devices_many(&users).await.expect("devices_many");
    assert_eq!(many.len(), USERS, "one answer per user");
    for (i, (u, got)) in users.iter().zip(&many).enumerate() {
        assert_eq!(got.len(), devices_of(i), "user {i} ({u}): {got:?}");
        assert!(
            got.iter().all(|d| &d.user == u && d.node == node),
            "{got:?}"
        );
        let mut one = p.devices(u).await.expect("devices");
        let mut got = got.clone();
        one.sort_by(|a, b| a.device_id.cmp(&b.device_id));
        got.sort_by(|a, b| a.device_id.cmp(&b.device_id));
        assert_eq!(got, one, "devices_many agrees with devices for user {i}");
    }
    let placement = p.placement(&users).await.expect("placement");
    assert_eq!(placement.nodes, vec![node.to_string()]);
    let want: Vec<(usize, usize, usize)> = (0..USERS)
        .filter(|&i| devices_of(i) > 0)
        .map(|i| (i, 0, devices_of(i)))
        .collect();
    assert_eq!(placement.entries, want, "placement of {USERS} users");
    for (i, u) in users.iter().enumerate() {
        for d in 0..devices_of(i) {
            p.offline(u, &format!("d{d}"), (i * 10 + d) as u64)
                .await
                .expect("offline");
        }
    }
    let gone = p.devices_many(&users).await.expect("devices_many");
    assert!(gone.iter().all(Vec::is_empty), "all offline again");
}

/// Every single-node property.
pub async fn run_all(p: Arc<dyn Presence>, node: &str) {
    online_devices_offline(p.as_ref(), node).await;
    many_users_at_once(p.as_ref(), node).await;
    same_device_replaces(p.as_ref(), node).await;
    offline_only_removes_its_own_connection(p.as_ref(), node).await;
    users_are_independent_under_concurrency(p.clone(), node).await;
    p.ping().await.expect("ping");
}

/// Polls until `user` has exactly `want` devices in `p`'s view, for at most
/// `within`; returns how long it took.
pub async fn wait_devices(
    p: &dyn Presence,
    user: &UserKey,
    want: &[&str],
    within: Duration,
) -> Duration {
    let start = tokio::time::Instant::now();
    let want = set(want);
    loop {
        let got = device_ids(p, user).await;
        if got == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{user}: devices {got:?}, want {want:?} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Two nodes share a backend; `dying` (node `dying_node`, heartbeat TTL
/// `ttl`) records a device, then stops without cleaning up (dropped, as a
/// `kill -9` would). The observer sees the device, then stops seeing it
/// within the TTL (plus slack for the liveness cache), while the observer's
/// own devices stay.
pub async fn dead_node_entries_expire(
    observer: &dyn Presence,
    observer_node: &str,
    dying: Box<dyn Presence>,
    dying_node: &str,
    ttl: Duration,
) -> Duration {
    let u = fresh_user("expire");
    observer
        .online(&session(&u, "stays", observer_node, 1))
        .await
        .expect("online");
    dying
        .online(&session(&u, "dies", dying_node, 1))
        .await
        .expect("online");
    wait_devices(observer, &u, &["dies", "stays"], Duration::from_secs(5)).await;
    drop(dying);
    let took = wait_devices(observer, &u, &["stays"], ttl + Duration::from_secs(5)).await;
    observer.offline(&u, "stays", 1).await.expect("offline");
    took
}

/// A node that crashed and started again under the same name before its TTL
/// ran out: its earlier life's entries are not live, its new ones are.
pub async fn restarted_node_does_not_revive_old_entries(
    observer: &dyn Presence,
    old: Box<dyn Presence>,
    new: impl std::future::Future<Output = Box<dyn Presence>>,
    node: &str,
) {
    let u = fresh_user("reboot");
    old.online(&session(&u, "old", node, 7))
        .await
        .expect("online");
    wait_devices(observer, &u, &["old"], Duration::from_secs(5)).await;
    drop(old);
    let new = new.await;
    new.online(&session(&u, "new", node, 7))
        .await
        .expect("online");
    wait_devices(observer, &u, &["new"], Duration::from_secs(5)).await;
    new.offline(&u, "new", 7).await.expect("offline");
}

/// A node that died without logging its devices out: once its TTL ran out,
/// [`Presence::departed`] on the surviving nodes hands each of its devices
/// out exactly once (across both survivors), and not a device it logged out
/// before dying; the devices are out of presence then. Returns how long
/// after the death the departure was found.
pub async fn dead_nodes_devices_depart_once(
    survivors: [&dyn Presence; 2],
    dying: Box<dyn Presence>,
    dying_node: &str,
    ttl: Duration,
) -> Duration {
    let u = fresh_user("departs");
    for (device, conn) in [("dies", 1), ("left", 2)] {
        dying
            .online(&session(&u, device, dying_node, conn))
            .await
            .expect("online");
    }
    dying.offline(&u, "left", 2).await.expect("offline");
    wait_devices(survivors[0], &u, &["dies"], Duration::from_secs(5)).await;
    drop(dying);
    let died = tokio::time::Instant::now();
    let deadline = died + ttl + Duration::from_secs(10);
    let mut departed: Vec<DeviceSession> = Vec::new();
    // Other tests' dead nodes may be handed out too: wait for this one's.
    while !departed.iter().any(|d| d.user == u) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dead node's device was not handed out within its ttl + 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Both survivors look at once, as two nodes of a cluster would.
        let (a, b) = tokio::join!(survivors[0].departed(), survivors[1].departed());
        departed.extend(a.expect("departed"));
        departed.extend(b.expect("departed"));
    }
    let took = died.elapsed();
    // Later looks find nothing more.
    for p in survivors {
        departed.extend(p.departed().await.expect("departed"));
    }
    let ours: Vec<&DeviceSession> = departed.iter().filter(|d| d.user == u).collect();
    assert_eq!(ours.len(), 1, "each departed device once: {departed:?}");
    assert_eq!(ours[0].device_id, "dies");
    assert_eq!(ours[0].node, dying_node);
    assert_eq!(ours[0].conn_id, 1);
    assert!(
        device_ids(survivors[1], &u).await.is_empty(),
        "the departed device is out of presence"
    );
    took
}
