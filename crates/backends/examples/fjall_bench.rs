//! The workload of `store_bench.rs` on fjall (an LSM key-value store), with a
//! minimal write path shaped like `SqliteStore`'s: one writer thread behind a
//! bounded queue, a cache of timeline heads, de-dup of `(from,
//! client_msg_id)` (also within a group), and ONE write batch per group
//! committed with `PersistMode::SyncAll` before any waiter is answered.
//!
//! Keyspaces: `messages` (msg_id → message), `timelines` (app\0uid\0seq →
//! msg_id), `dedupe` (app\0uid\0client_msg_id → msg_id, seqs).
//!
//! ```text
//! cargo run --release -p switchboard-backends --example fjall_bench -- [N] [C] [DIR]
//! ```
//!
//! fjall is only a dev-dependency: this is a measurement, not a backend.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, sync_channel};
use std::time::Instant;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

// fjall has no `Store`: it shares the users and the report, not `run`.
#[allow(dead_code)]
mod common;
use common::{USERS, pacer, report};

const MAX_BATCH: usize = 512;
const QUEUE: usize = 1024;

struct Msg {
    id: u64,
    from: (String, String),
    to: (String, String),
    kind: String,
    body: Vec<u8>,
    client_msg_id: String,
    time_ms: i64,
}

/// (msg_id, seqs, duplicate)
type Acked = (u64, Vec<u64>, bool);

struct Cmd {
    msg: Msg,
    reply: oneshot::Sender<Result<Acked, String>>,
    _permit: OwnedSemaphorePermit,
}

struct Store {
    db: Database,
    messages: Keyspace,
    timelines: Keyspace,
    dedupe: Keyspace,
}

fn user_key(app: &str, uid: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(app.len() + uid.len() + 2);
    k.extend_from_slice(app.as_bytes());
    k.push(0);
    k.extend_from_slice(uid.as_bytes());
    k.push(0);
    k
}

fn encode(m: &Msg) -> Vec<u8> {
    let mut v = Vec::with_capacity(64 + m.body.len());
    for s in [
        &m.from.0,
        &m.from.1,
        &m.to.0,
        &m.to.1,
        &m.kind,
        &m.client_msg_id,
    ] {
        v.extend_from_slice(&(s.len() as u32).to_be_bytes());
        v.extend_from_slice(s.as_bytes());
    }
    v.extend_from_slice(&m.time_ms.to_be_bytes());
    v.extend_from_slice(&m.body);
    v
}

fn writer(store: Store, rx: Receiver<Cmd>) {
    let mut heads: HashMap<Vec<u8>, u64> = HashMap::new();
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        let mut wb = store.db.batch().durability(Some(PersistMode::SyncAll));
        let mut in_batch: HashMap<Vec<u8>, Acked> = HashMap::new();
        let mut touched = Vec::new();
        let mut answers = Vec::with_capacity(batch.len());
        let mut failed = None;
        for Cmd {
            msg,
            reply,
            _permit,
        } in batch
        {
            drop(_permit);
            let mut dkey = user_key(&msg.from.0, &msg.from.1);
            dkey.extend_from_slice(msg.client_msg_id.as_bytes());
            if let Some(a) = in_batch.get(&dkey) {
                answers.push((reply, (a.0, a.1.clone(), true)));
                continue;
            }
            match store.dedupe.get(&dkey) {
                Ok(Some(v)) if v.len() >= 8 => {
                    let id = u64::from_be_bytes(v[..8].try_into().unwrap_or_default());
                    let seqs = v[8..]
                        .chunks_exact(8)
                        .map(|c| u64::from_be_bytes(c.try_into().unwrap_or_default()))
                        .collect();
                    answers.push((reply, (id, seqs, true)));
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    failed = Some(e.to_string());
                    answers.push((reply, (0, vec![], false)));
                    break;
                }
            }
            wb.insert(&store.messages, msg.id.to_be_bytes(), encode(&msg));
            let mut seqs = Vec::with_capacity(2);
            for (app, uid) in [&msg.to, &msg.from] {
                let prefix = user_key(app, uid);
                let head = match heads.get(&prefix) {
                    Some(&h) => h,
                    None => match store
                        .timelines
                        .prefix(&prefix)
                        .next_back()
                        .map(|g| g.into_inner())
                    {
                        None => 0,
                        Some(Ok((k, _))) if k.len() >= 8 => {
                            u64::from_be_bytes(k[k.len() - 8..].try_into().unwrap_or_default())
                        }
                        Some(Ok(_)) => 0,
                        Some(Err(e)) => {
                            failed = Some(e.to_string());
                            0
                        }
                    },
                };
                let seq = head + 1;
                let mut tkey = prefix.clone();
                tkey.extend_from_slice(&seq.to_be_bytes());
                wb.insert(&store.timelines, tkey, msg.id.to_be_bytes());
                heads.insert(prefix.clone(), seq);
                touched.push(prefix);
                seqs.push(seq);
            }
            let mut dval = msg.id.to_be_bytes().to_vec();
            for s in &seqs {
                dval.extend_from_slice(&s.to_be_bytes());
            }
            dval.extend_from_slice(&crate_now_ms().to_be_bytes());
            wb.insert(&store.dedupe, dkey.clone(), dval);
            in_batch.insert(dkey, (msg.id, seqs.clone(), false));
            answers.push((reply, (msg.id, seqs, false)));
        }
        let result = match failed {
            Some(e) => Err(e),
            None => wb.commit().map_err(|e| e.to_string()),
        };
        match result {
            Ok(()) => {
                for (reply, a) in answers {
                    let _ = reply.send(Ok(a));
                }
            }
            Err(e) => {
                for p in &touched {
                    heads.remove(p);
                }
                for (reply, _) in answers {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

fn crate_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(50_000);
    let c: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(16)
        .max(1);
    let dir = args.next().map(PathBuf::from);
    let tmp =
        tempfile::tempdir_in(dir.unwrap_or_else(|| PathBuf::from("target"))).expect("bench dir");

    let db = Database::builder(tmp.path().join("fjall"))
        .open()
        .expect("open fjall");
    let ks = |name: &str| {
        db.keyspace(name, KeyspaceCreateOptions::default)
            .expect("keyspace")
    };
    let store = Store {
        messages: ks("messages"),
        timelines: ks("timelines"),
        dedupe: ks("dedupe"),
        db: db.clone(),
    };
    let (tx, rx) = sync_channel::<Cmd>(QUEUE);
    let handle = std::thread::spawn(move || writer(store, rx));
    let admission = Arc::new(Semaphore::new(QUEUE));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (elapsed, mut lat) = rt.block_on(async move {
        let ids = Arc::new(AtomicU64::new(1));
        let body = vec![b'x'; 200];
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for t in 0..c {
            let count = n / c + u64::from(t < n % c);
            let (tx, ids, body, admission) =
                (tx.clone(), ids.clone(), body.clone(), admission.clone());
            tasks.spawn(async move {
                let mut lat = Vec::with_capacity(count as usize);
                let mut pace = pacer(t, c);
                for i in 0..count {
                    if let Some(p) = pace.as_mut() {
                        p.tick().await;
                    }
                    let from = ("bench".to_owned(), format!("u{}", (t * 7 + i) % USERS));
                    let to = (
                        "bench".to_owned(),
                        format!("u{}", (t * 7 + i + 1 + t % 13) % USERS),
                    );
                    let msg = Msg {
                        id: ids.fetch_add(1, Ordering::Relaxed),
                        from,
                        to,
                        kind: "text".into(),
                        body: body.clone(),
                        client_msg_id: format!("t{t}-{i}"),
                        time_ms: crate_now_ms(),
                    };
                    let t0 = Instant::now();
                    let permit = admission.clone().acquire_owned().await.expect("permit");
                    let (reply, rx) = oneshot::channel();
                    tx.try_send(Cmd {
                        msg,
                        reply,
                        _permit: permit,
                    })
                    .expect("queue");
                    let a = rx.await.expect("writer").expect("append");
                    lat.push(t0.elapsed());
                    assert!(!a.2);
                }
                lat
            });
        }
        drop(tx);
        let mut all = Vec::with_capacity(n as usize);
        while let Some(r) = tasks.join_next().await {
            all.extend(r.expect("task"));
        }
        (start.elapsed(), all)
    });
    handle.join().expect("writer thread");
    report("fjall", n, c, elapsed, &mut lat);
}
