//! `conversations`: the conversation list of a user with many
//! conversations. C peers each send the reader one message (HTTP send as a
//! user), then the reader's first page (`GET .../conversations?limit=L`,
//! what the protocol's `list_conversations` answers) is asked R times, one
//! at a time, while a new message from one of the peers arrives every N
//! requests (so the figures include folding what is new, not only reading
//! a view at rest). Latency of each list request, the first request (which
//! folds the whole timeline into a view that did not exist) apart, and the
//! node's CPU per request. The loss check: every answer is a full page,
//! most recent first, whose `total_unread` counts every message sent.

use std::time::Instant;

use futures::StreamExt;

use super::run_id;
use crate::stats::{self, LossCheck, RunResult};
use crate::target::Target;
use crate::{BenchError, Common, bar};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Conversations of the reader (one peer each).
    #[arg(long, default_value_t = 1_000)]
    pub conversations: usize,
    /// List requests measured.
    #[arg(long, default_value_t = 500)]
    pub requests: u64,
    /// Page size asked.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// A new message reaches the reader before every Nth request (0: never).
    #[arg(long, default_value_t = 10)]
    pub new_every: u64,
    /// Setup requests in flight at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
}

pub async fn run(a: &Args) -> Result<Vec<RunResult>, BenchError> {
    if a.conversations == 0 || a.limit == 0 || a.requests == 0 {
        return Err(BenchError::Usage(
            "--conversations, --limit and --requests must be above 0".into(),
        ));
    }
    let target = Target::start(&a.common).await?;
    let r = measure(a, &target).await;
    target.stop().await;
    Ok(vec![r?])
}

async fn send(target: &Target, from: &str, to: &str, id: &str) -> Result<(), BenchError> {
    let path = format!("/v1/apps/{}/users/{from}/messages", target.app);
    let body = serde_json::json!({"to": to, "type": "text", "body": "hello", "client_msg_id": id});
    let (status, resp) = crate::http::post_json(
        target.http,
        &path,
        &target.api_key,
        &serde_json::to_vec(&body)?,
    )
    .await?;
    if status != 200 {
        return Err(BenchError::Http(format!(
            "send as {from}: HTTP {status}: {}",
            String::from_utf8_lossy(&resp)
        )));
    }
    Ok(())
}

/// One list request: its latency and the answer.
async fn list(target: &Target, path: &str) -> Result<(u64, serde_json::Value), BenchError> {
    let t = Instant::now();
    let (status, resp) =
        crate::http::request_json(target.http, "GET", path, &target.api_key, b"").await?;
    let us = t.elapsed().as_micros() as u64;
    if status != 200 {
        return Err(BenchError::Http(format!(
            "GET {path}: HTTP {status}: {}",
            String::from_utf8_lossy(&resp)
        )));
    }
    Ok((us, serde_json::from_slice(&resp)?))
}

async fn measure(a: &Args, target: &Target) -> Result<RunResult, BenchError> {
    let run = run_id();
    let reader = format!("{run}-reader");
    let peers: Vec<String> = (0..a.conversations)
        .map(|i| format!("{run}-p{i}"))
        .collect();
    let setup = bar(a.common.quiet, peers.len() as u64, "conversations");
    let mut sends = futures::stream::iter(peers.iter().enumerate().map(|(i, p)| {
        let (reader, id) = (reader.clone(), format!("{run}-s{i}"));
        async move { send(target, p, &reader, &id).await }
    }))
    .buffer_unordered(a.concurrency.max(1));
    while let Some(r) = sends.next().await {
        r?;
        setup.inc(1);
    }
    drop(sends);
    setup.finish_and_clear();

    let path = format!(
        "/v1/apps/{}/users/{reader}/conversations?limit={}",
        target.app, a.limit
    );
    let (first_us, _) = list(target, &path).await?;
    let mut sent = a.conversations as u64;
    let mut hist = stats::histogram();
    let mut bad = 0u64;
    let meter = target.cpu_meter();
    let progress = bar(a.common.quiet, a.requests, "list requests");
    for i in 0..a.requests {
        if a.new_every > 0 && i % a.new_every == 0 {
            let from = &peers[(i as usize * 7919) % peers.len()];
            send(target, from, &reader, &format!("{run}-n{i}")).await?;
            sent += 1;
        }
        let (us, answer) = list(target, &path).await?;
        stats::record_us(&mut hist, us);
        let page = answer["conversations"].as_array().map_or(0, Vec::len);
        let unread = answer["total_unread"].as_u64().unwrap_or(0);
        if page != a.limit.min(a.conversations) || unread != sent {
            bad += 1;
        }
        progress.inc(1);
    }
    progress.finish_and_clear();

    let mut r = RunResult::new("conversations", "switchboard", "http");
    r.param("conversations", a.conversations);
    r.param("limit", a.limit);
    r.param("requests", a.requests);
    r.param("new_every", a.new_every);
    meter.finish(&mut r, a.requests, "request");
    r.metric("first_list_ms", first_us as f64 / 1000.0);
    r.set_latency(&hist);
    r.loss = LossCheck {
        rule: "every answer a full page whose total_unread counts every message sent".into(),
        expected: a.requests,
        received: a.requests - bad,
        ok: bad == 0,
        ..LossCheck::default()
    };
    r.notes.push(
        "latency: one GET of the first page over a fresh HTTP/1.1 connection (connect included); \
         first_list_ms: the first request, which builds the view from the whole timeline"
            .into(),
    );
    Ok(r)
}
