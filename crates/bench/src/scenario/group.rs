//! `group`: one group of M members, O of them online (raw-frame receivers,
//! as in `fanout`, acking each entry with the group like the SDK), messages
//! posted to the group over the HTTP API at a steady rate. Deliveries per
//! second, the time until the last online member device has each message
//! (per message: the slowest of its deliveries), the node's CPU per
//! delivery, and the loss check: every online device got every message once,
//! in the group's order, and an offline member that logs in afterwards
//! learns from its `login_ack` that the group has them and syncs them all.
//! With `--mqtt`, the peer is `fanout`'s: one topic, O subscribers, QoS 1.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use switchboard_proto::{Packet, pb};
use tokio::sync::watch;
use tokio::time::Instant;

use super::fanout::settle;
use super::{check_stream, parse_body, run_id, text_body};
use crate::raw::RawClient;
use crate::stats::{self, LossCheck, RunResult, Timeline};
use crate::target::{Mqtt, Target};
use crate::{BenchError, Common, bar};

/// Members added per API request (the API's limit).
const MEMBER_BATCH: usize = 1_000;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Members of the group.
    #[arg(long, default_value_t = 10_000)]
    pub members: usize,
    /// How many of them are online (one connection each; at most
    /// `members`; the open-file limit bounds it).
    #[arg(long)]
    pub online: Option<usize>,
    /// Messages posted to the group.
    #[arg(long, default_value_t = 100)]
    pub messages: u64,
    /// Posts per second.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Connects in flight while the members log in.
    #[arg(long, default_value_t = 200)]
    pub concurrency: usize,
    /// Seconds to wait for the last deliveries.
    #[arg(long, default_value_t = 30.0)]
    pub drain: f64,
    /// Also measure a login of a user who is in this many groups (0: not).
    #[arg(long, default_value_t = 0)]
    pub login_groups: usize,
    /// How many of those groups hold an entry the user has not read.
    #[arg(long, default_value_t = 100)]
    pub login_unread: usize,
}

pub async fn run(a: &Args) -> Result<Vec<RunResult>, BenchError> {
    let online = a.online.unwrap_or(a.members);
    if online > a.members || a.members == 0 {
        return Err(BenchError::Usage(
            "--online must be at most --members, and --members at least 1".into(),
        ));
    }
    let target = Target::start(&a.common).await?;
    let r = switchboard(a, online, &target).await;
    target.stop().await;
    let mut results = vec![r?];
    if let Some(m) = Mqtt::from(&a.common) {
        let peer = super::fanout::Args {
            common: a.common.clone(),
            users: online,
            messages: a.messages,
            mode: "stored".into(),
            batch: MEMBER_BATCH,
            concurrency: a.concurrency,
            drain: a.drain,
        };
        let mut r = super::fanout::mqtt(&peer, &m, 1).await?;
        r.scenario = "group".into();
        r.param("members", a.members);
        r.param("online", online);
        r.notes.push(
            "the group's peer: one MQTT topic with the online members as QoS 1 subscribers, published back to back"
                .into(),
        );
        results.push(r);
    }
    Ok(results)
}

async fn api(
    target: &Target,
    method: &str,
    path: &str,
    body: serde_json::Value,
) -> Result<serde_json::Value, BenchError> {
    let (status, resp) = crate::http::request_json(
        target.http,
        method,
        path,
        &target.api_key,
        &serde_json::to_vec(&body)?,
    )
    .await?;
    if !(200..300).contains(&status) {
        return Err(BenchError::Http(format!(
            "{method} {path}: HTTP {status}: {}",
            String::from_utf8_lossy(&resp)
                .chars()
                .take(300)
                .collect::<String>()
        )));
    }
    Ok(serde_json::from_slice(&resp).unwrap_or(serde_json::Value::Null))
}

async fn switchboard(a: &Args, online: usize, target: &Target) -> Result<RunResult, BenchError> {
    let run = run_id();
    let gid = format!("{run}-group");
    let uids: Vec<String> = (0..a.members).map(|i| format!("{run}-m{i}")).collect();
    let group_path = format!("/v1/apps/{}/groups/{gid}", target.app);
    api(
        target,
        "PUT",
        &group_path,
        serde_json::json!({"name": "bench"}),
    )
    .await?;
    let setup = bar(a.common.quiet, a.members as u64, "adding members");
    let members_path = format!("{group_path}/members");
    for chunk in uids.chunks(MEMBER_BATCH) {
        let members: Vec<_> = chunk
            .iter()
            .map(|uid| serde_json::json!({ "uid": uid }))
            .collect();
        api(
            target,
            "POST",
            &members_path,
            serde_json::json!({ "members": members }),
        )
        .await?;
        setup.inc(chunk.len() as u64);
    }
    setup.finish_and_clear();

    let clients =
        super::fanout::login_receivers(target, &uids[..online], a.concurrency, a.common.quiet)
            .await?;
    let meter = target.cpu_meter();
    let start_ns = stats::now_ns();
    let received = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let tasks = super::fanout::spawn_receivers(clients, true, &received, &stop_rx);

    let post_path = format!("{group_path}/messages");
    let expected = a.messages * online as u64;
    let progress = bar(a.common.quiet, expected, "deliveries");
    let gap = Duration::from_secs_f64(1.0 / a.rate.max(0.001));
    let t0 = Instant::now();
    for m in 0..a.messages {
        tokio::time::sleep_until(t0 + gap * m as u32).await;
        let req = serde_json::json!({
            "client_msg_id": format!("{run}-{m}"),
            "type": "bench",
            "body": text_body(0, m),
        });
        if let Err(e) = api(target, "POST", &post_path, req).await {
            let _ = stop_tx.send(true);
            progress.finish_and_clear();
            return Err(e);
        }
        progress.set_position(received.load(Ordering::Relaxed));
    }
    let send_elapsed = t0.elapsed();
    let cost = settle(&received, expected, a.drain, &progress, &stop_tx, meter).await;

    let mut r = RunResult::new("group", "switchboard", target.transport());
    r.param("members", a.members);
    r.param("online", online);
    r.param("messages", a.messages);
    r.param("rate", a.rate);
    if target.nodes() > 1 {
        r.param("nodes", target.nodes());
    }
    let mut hist = stats::histogram();
    let mut timeline = Timeline::new(start_ns);
    let mut loss = LossCheck {
        rule: "every message reached every online member device exactly once, in order; \
               an offline member syncs them all"
            .into(),
        expected,
        ..LossCheck::default()
    };
    // Per message: when its last online device had it.
    let mut slowest = vec![0u64; a.messages as usize];
    let (mut delivered, mut last_ns) = (0u64, 0u64);
    for t in tasks {
        let Ok(rec) = t.await else { continue };
        rec.merge_into(&mut hist, &mut timeline);
        for (n, lat) in rec.latencies() {
            if let Some(s) = slowest.get_mut(n as usize) {
                *s = (*s).max(lat);
            }
        }
        delivered += rec.ns.len() as u64;
        last_ns = last_ns.max(rec.last_ns());
        let (got, lost, dup, ooo) = check_stream(&rec.ns, 0..a.messages);
        loss.received += got;
        loss.lost += lost;
        loss.duplicates += dup;
        loss.out_of_order += ooo;
    }
    let span_s = (last_ns.saturating_sub(start_ns) as f64 / 1e9).max(1e-9);
    r.metric("delivered", delivered as f64);
    r.metric("deliveries_per_sec", (delivered as f64 / span_s).round());
    r.metric("send_s", send_elapsed.as_secs_f64());
    r.set_latency(&hist);
    let mut last_device = stats::histogram();
    for s in &slowest {
        stats::record_us(&mut last_device, s / 1000);
    }
    for (name, q) in [("p50", 0.5), ("p99", 0.99)] {
        r.metric(
            &format!("last_device_{name}_ms"),
            last_device.value_at_quantile(q) as f64 / 1000.0,
        );
    }
    r.metric("last_device_max_ms", last_device.max() as f64 / 1000.0);
    r.timeline = timeline.rates();
    r.metrics.extend(cost.metrics);

    // An offline member (when there is one) catches up after the run.
    if online < a.members {
        let synced = offline_member_syncs(target, &uids[online], &gid, a.messages).await?;
        if synced.lost + synced.duplicates + synced.out_of_order > 0 {
            r.notes.push(format!(
                "offline member's sync: {} lost, {} duplicated, {} out of order",
                synced.lost, synced.duplicates, synced.out_of_order
            ));
        }
        loss.lost += synced.lost;
        loss.duplicates += synced.duplicates;
        loss.out_of_order += synced.out_of_order;
        r.metric("offline_login_to_current_ms", synced.took_ms);
    }
    if a.login_groups > 0 {
        let (took_ms, missing) =
            login_in_many_groups(target, &run, a.login_groups, a.login_unread).await?;
        r.param("login_groups", a.login_groups);
        r.param("login_unread", a.login_unread.min(a.login_groups));
        r.metric("login_groups_current_ms", took_ms);
        if missing > 0 {
            r.notes.push(format!(
                "login in many groups: {missing} unread entries not synced"
            ));
            loss.lost += missing;
        }
    }
    loss.ok = loss.lost == 0 && loss.duplicates == 0 && loss.out_of_order == 0;
    r.loss = loss;
    r.notes.push(
        "receivers are raw-frame clients acking each group entry; posts over the HTTP API as the \
         app's system sender; latency: post sent → push read; last_device: per message, its \
         slowest delivery"
            .into(),
    );
    Ok(r)
}

/// What an offline member's catch-up found.
struct Synced {
    lost: u64,
    duplicates: u64,
    out_of_order: u64,
    took_ms: f64,
}

/// Logs `uid` in on a fresh device: its `login_ack` must list the group with
/// `messages` entries to read, and paging the group's timeline must give
/// every message once, in order.
async fn offline_member_syncs(
    target: &Target,
    uid: &str,
    gid: &str,
    messages: u64,
) -> Result<Synced, BenchError> {
    let t0 = Instant::now();
    let (mut c, ack) = RawClient::login(
        None,
        target.receiver_tcp(0),
        target.token(uid)?,
        format!("{uid}-late"),
    )
    .await?;
    let Some(state) = ack.groups.iter().find(|g| g.group == gid) else {
        return Ok(Synced {
            lost: messages,
            duplicates: 0,
            out_of_order: 0,
            took_ms: 0.0,
        });
    };
    let mut since = state.cursor;
    let mut got = Vec::with_capacity(messages as usize);
    loop {
        c.send(&Packet::Sync(pb::Sync {
            since,
            limit: 0,
            group: gid.into(),
        }))
        .await?;
        let reply = loop {
            match c.next_packet().await? {
                Some(Packet::SyncReply(r)) => break r,
                Some(Packet::Error(e)) => {
                    return Err(BenchError::Refused(format!(
                        "sync: {} {}",
                        e.code, e.message
                    )));
                }
                Some(_) => continue,
                None => return Err(BenchError::Refused("closed during sync".into())),
            }
        };
        since = since.max(reply.since);
        for e in &reply.entries {
            if let Some((_, n, _)) = e.message.as_ref().and_then(|m| parse_body(&m.body)) {
                got.push(n);
            }
            since = since.max(e.seq);
        }
        if !reply.has_more || reply.entries.is_empty() {
            break;
        }
    }
    let took_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let (_, lost, duplicates, out_of_order) = check_stream(&got, 0..messages);
    Ok(Synced {
        lost,
        duplicates,
        out_of_order,
        took_ms,
    })
}

/// A user in `groups` groups, `unread` of them with one entry posted since
/// its device last read: the time from connecting to holding every unread
/// entry (login, `login_ack.groups`, one sync per listed group, all in
/// flight at once as an SDK sends them), and how many entries it missed.
async fn login_in_many_groups(
    target: &Target,
    run: &str,
    groups: usize,
    unread: usize,
) -> Result<(f64, u64), BenchError> {
    let uid = format!("{run}-many");
    let gids: Vec<String> = (0..groups).map(|i| format!("{run}-lg{i}")).collect();
    let base = format!("/v1/apps/{}/groups", target.app);
    let setup = bar(false, groups as u64, "groups of the login user");
    for gid in &gids {
        api(
            target,
            "PUT",
            &format!("{base}/{gid}"),
            serde_json::json!({}),
        )
        .await?;
        api(
            target,
            "POST",
            &format!("{base}/{gid}/members"),
            serde_json::json!({"members": [{"uid": uid}]}),
        )
        .await?;
        setup.inc(1);
    }
    setup.finish_and_clear();
    let unread = unread.min(groups);
    for (i, gid) in gids.iter().take(unread).enumerate() {
        api(
            target,
            "POST",
            &format!("{base}/{gid}/messages"),
            serde_json::json!({"client_msg_id": format!("{run}-u{i}"), "type": "bench", "body": "x"}),
        )
        .await?;
    }
    let t0 = Instant::now();
    let (mut c, ack) = RawClient::login(
        None,
        target.receiver_tcp(0),
        target.token(&uid)?,
        format!("{uid}-dev"),
    )
    .await?;
    for g in &ack.groups {
        c.send(&Packet::Sync(pb::Sync {
            since: g.cursor,
            limit: 0,
            group: g.group.clone(),
        }))
        .await?;
    }
    // Each listed group holds one unread entry: one page each.
    let (mut replies, mut got) = (0, 0u64);
    while replies < ack.groups.len() {
        match c.next_packet().await? {
            Some(Packet::SyncReply(reply)) => {
                replies += 1;
                got += reply.entries.len() as u64;
            }
            Some(Packet::Error(e)) => {
                return Err(BenchError::Refused(format!(
                    "sync: {} {}",
                    e.code, e.message
                )));
            }
            Some(_) => {}
            None => return Err(BenchError::Refused("closed during sync".into())),
        }
    }
    let took_ms = t0.elapsed().as_secs_f64() * 1000.0;
    Ok((took_ms, (unread as u64).saturating_sub(got)))
}
