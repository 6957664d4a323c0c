//! PostgreSQL goes down under a `PgStore` and comes back: the store answers
//! `Unavailable` (never an ack without durability, never a hang or a panic),
//! `ping` says so, and once the server is back the SAME store serves again
//! with every acknowledged message intact. The test starts a private
//! PostgreSQL of its own (`switchboard_testkit::pg`) so it can stop it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use switchboard_backends::{PgOptions, PgStore};
use switchboard_core::{Appended, Store, StoreError, UserKey};
use switchboard_testkit::pg::PrivatePostgres;
use switchboard_testkit::store_conformance::{c2c, fresh_user};

/// An `Unavailable` that came from PostgreSQL being gone, not from our own
/// operation timer running out (that would mean the call hung).
fn assert_down(r: Result<impl std::fmt::Debug, StoreError>, what: &str) {
    match r {
        Err(StoreError::Unavailable(e)) => assert!(
            !e.contains("did not answer") && !e.contains("did not commit"),
            "{what}: failed only after the whole operation timeout: {e}"
        ),
        other => panic!("{what} while PostgreSQL is down: expected Unavailable, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_fails_fast_while_postgres_is_down_and_resumes_after() {
    let mut pg = tokio::task::spawn_blocking(PrivatePostgres::start)
        .await
        .expect("start a private PostgreSQL");
    let options = PgOptions {
        connect_timeout: Duration::from_secs(2),
        statement_timeout: Duration::from_secs(5),
        // Generous: a call that needs it has hung, which assert_down catches.
        op_timeout: Duration::from_secs(30),
        ..PgOptions::default()
    };
    let store = PgStore::connect(&pg.url(), options)
        .await
        .unwrap_or_else(|e| panic!("private PostgreSQL at {}: {e}", pg.url()));
    let bob = fresh_user("bob");

    // Traffic from 4 senders, running across the stop and the restart.
    let running = Arc::new(AtomicBool::new(true));
    let mut senders = tokio::task::JoinSet::new();
    for t in 0..4 {
        let (store, bob, running) = (store.clone(), bob.clone(), running.clone());
        senders.spawn(async move {
            let me = fresh_user(&format!("sender{t}"));
            let mut acked: Vec<Appended> = Vec::new();
            let mut failed = 0u64;
            let mut i = 0u64;
            while running.load(Ordering::Relaxed) {
                match store.append(c2c(&me, &bob, &format!("m{i}"), "x")).await {
                    Ok(a) => acked.push(a),
                    Err(StoreError::Unavailable(_)) => {
                        failed += 1;
                        // A client resends the same client_msg_id later.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    Err(e) => panic!("append failed with {e:?}, not Unavailable"),
                }
                i += 1;
            }
            (me, acked, failed)
        });
    }
    let a = store
        .append(c2c(&fresh_user("first"), &bob, "first", "x"))
        .await
        .expect("append while PostgreSQL is up");
    assert!(!a.duplicate);
    store.ping().await.expect("ping while up");

    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::task::block_in_place(|| pg.stop());

    // Down: every call answers Unavailable, promptly, and nothing is acked.
    let carol = fresh_user("carol");
    for i in 0..5 {
        let started = Instant::now();
        assert_down(
            store
                .append(c2c(&carol, &bob, &format!("down{i}"), "x"))
                .await,
            "append",
        );
        eprintln!("append while down failed after {:?}", started.elapsed());
    }
    assert_down(store.ping().await, "ping");
    assert_down(store.timeline_head(&bob).await, "timeline_head");
    assert_down(store.entries_after(&bob, 0, 10).await, "entries_after");
    assert_down(store.cursor(&bob, "phone").await, "cursor");
    store
        .advance_cursor(&bob, "phone", 1)
        .await
        .expect("a cursor advance is lazy: it waits in memory");

    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::task::block_in_place(|| pg.start_again());

    // Back: the same store serves again once the pool has reconnected.
    let deadline = Instant::now() + Duration::from_secs(30);
    let resumed = loop {
        match store.append(c2c(&carol, &bob, "after", "x")).await {
            Ok(a) => break a,
            Err(StoreError::Unavailable(e)) => {
                assert!(Instant::now() < deadline, "the store never recovered: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("append after the restart: {e:?}"),
        }
    };
    assert!(!resumed.duplicate);
    store.ping().await.expect("ping after the restart");
    tokio::time::sleep(Duration::from_millis(300)).await;
    running.store(false, Ordering::Relaxed);

    let mut all_acked = vec![a, resumed];
    let mut failures = 0;
    while let Some(r) = senders.join_next().await {
        let (sender, acked, failed) = r.expect("sender task");
        failures += failed;
        // Each sender's timeline is exactly what it was acknowledged, gap-free
        // (a resend of an append whose outcome was unknown is de-duplicated).
        let page = store
            .entries_after(&sender, 0, 1_000_000)
            .await
            .expect("page");
        let got: Vec<(u64, u64)> = page.entries.iter().map(|e| (e.seq, e.message.id)).collect();
        let want: Vec<(u64, u64)> = acked.iter().map(|a| (a.seqs[1], a.message.id)).collect();
        assert_eq!(
            got, want,
            "{sender}: timeline differs from the acknowledgements"
        );
        all_acked.extend(acked);
    }
    assert!(failures > 0, "no append failed while PostgreSQL was down");
    let page = store.entries_after(&bob, 0, 1_000_000).await.expect("page");
    for (i, e) in page.entries.iter().enumerate() {
        assert_eq!(e.seq, i as u64 + 1, "the receiver's timeline has a gap");
    }
    let stored: std::collections::HashMap<u64, u64> =
        page.entries.iter().map(|e| (e.seq, e.message.id)).collect();
    for a in &all_acked {
        assert_eq!(
            stored.get(&a.seqs[0]),
            Some(&a.message.id),
            "acknowledged message {} lost",
            a.message.id
        );
    }
    eprintln!(
        "{} acknowledged, {failures} refused while down, receiver head {}",
        all_acked.len(),
        page.head
    );
    store.close().await.expect("close");
    assert_eq!(
        reopen_cursor(&pg, &bob).await,
        1,
        "the cursor advanced while down reached PostgreSQL at close"
    );
}

async fn reopen_cursor(pg: &PrivatePostgres, user: &UserKey) -> u64 {
    let store = PgStore::connect(&pg.url(), PgOptions::default())
        .await
        .expect("reconnect");
    let c = store.cursor(user, "phone").await.expect("cursor");
    store.close().await.expect("close");
    c
}
