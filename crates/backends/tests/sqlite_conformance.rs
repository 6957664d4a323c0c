//! `SqliteStore` against the store conformance suite, plus what only SQLite
//! has: a `kill -9` in the middle of a write stream (and of checkpoints),
//! drop without close, lazy cursor flushes, the WAL starting over under
//! load, the de-dup purge, the outbox drain, and data on disk that is not
//! what we wrote.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard_backends::{SqliteOptions, SqliteStore};
use switchboard_core::{Store, StoreError};
use switchboard_testkit::store_conformance::{self as conf, c2c, fresh_user, s2c};
use switchboard_testkit::store_crash;

fn db(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("nested/dir/switchboard.db")
}

fn open_with(path: &Path, options: SqliteOptions) -> Arc<SqliteStore> {
    SqliteStore::open(path, options).expect("open sqlite store")
}

fn open(path: &Path) -> Arc<dyn Store> {
    open_with(path, SqliteOptions::default())
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let dir = tempfile::tempdir().expect("tempdir");
            let store = open(&db(&dir));
            conf::$name(store.clone()).await;
            store.close().await.expect("close");
        }
    )*};
}

conformance!(
    timelines_gap_free_under_concurrency,
    c2c_entries_on_both_timelines,
    dedupe_returns_first_result,
    dedupe_of_concurrent_resends,
    entries_after_pages_and_limits,
    cursor_moves_forward_only,
    outbox_dedupe,
    conversation_pages_newest_first,
    outbox_drains_in_id_order,
    a_bad_append_fails_alone,
    token_revocations_only_move_forward,
    conversation_views_are_per_user_and_replaced,
    amendments_replace_the_message_and_a_recall_is_final,
    concurrent_amendments_end_recalled,
    groups_create_update_get_delete,
    group_created_again_starts_empty,
    group_members_add_remove_idempotent,
    group_full_is_refused_whole,
    group_members_page_in_uid_order,
    user_groups_page_in_gid_order,
    group_states_at_login,
    group_appends_gap_free_under_concurrency,
    group_append_refusals,
    group_dedupe_returns_first_result_even_after_removal,
    group_entries_after_pages,
    group_cursor_moves_forward_only_per_device,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_store_refuses_work() {
    let dir = tempfile::tempdir().expect("tempdir");
    conf::a_closed_store_refuses_work(open(&db(&dir))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedupe_rows_expire_after_the_window() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = SqliteOptions {
        dedupe_window: Duration::from_millis(1),
        ..SqliteOptions::default()
    };
    let store = open_with(&db(&dir), options);
    let purging = store.clone();
    conf::dedupe_rows_expire_after_the_window(store.clone(), move || {
        let store = purging.clone();
        async move { store.purge_expired().await }
    })
    .await;
    store.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_close_and_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db(&dir);
    conf::survives_close_and_reopen(&|| {
        let path = path.clone();
        async move { open(&path) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_survive_close_and_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db(&dir);
    conf::groups_survive_close_and_reopen(&|| {
        let path = path.clone();
        async move { open(&path) }
    })
    .await;
}

/// 100,000 members in batches of 1,000; a message is one entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_100_000_members() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&db(&dir));
    let (added, appended) = conf::a_group_of_100_000_members(store.clone()).await;
    eprintln!("sqlite: 100,000 members added in {added:?}; one append took {appended:?}");
    store.close().await.expect("close");
}

/// Small batches, to exercise many group commits and batch boundaries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_with_tiny_batches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db(&dir);
    let options = SqliteOptions {
        max_batch: 3,
        queue_capacity: 4,
        read_connections: 1,
        ..SqliteOptions::default()
    };
    conf::run_all(|| {
        let (path, options) = (path.clone(), options.clone());
        async move { open_with(&path, options) as Arc<dyn Store> }
    })
    .await;
}

/// The writer side of `kill_9_keeps_every_acknowledged_message`. A short
/// WAL limit and checkpoint interval, so the kill also lands among
/// checkpoints and restarts of the WAL.
#[test]
#[ignore = "child process of kill_9_keeps_every_acknowledged_message"]
fn crash_child() {
    let Some(path) = store_crash::child_path() else {
        return;
    };
    store_crash::child_appends(|| async move { open_with(&path, busy_wal()) as Arc<dyn Store> });
}

/// SIGKILL a process that is appending: every message it acknowledged is on
/// both timelines after reopening, and the timelines have no gaps.
#[test]
fn kill_9_keeps_every_acknowledged_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db(&dir);
    store_crash::kill_9_and_check("crash_child", &path, || async { open(&path) });
}

/// Options that make the store checkpoint and start its WAL over often.
fn busy_wal() -> SqliteOptions {
    SqliteOptions {
        checkpoint_interval: Duration::from_millis(5),
        max_wal_frames: 200,
        ..SqliteOptions::default()
    }
}

/// Under a steady stream of appends the WAL never has a moment with every
/// frame copied, so only the writer's own checkpoint between groups lets it
/// start over: without it the WAL file grows with everything ever written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_starts_over_under_a_steady_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db(&dir);
    let store = open_with(&path, busy_wal());
    let receiver = fresh_user("wal-receiver");
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..8 {
        let (store, receiver) = (store.clone(), receiver.clone());
        tasks.spawn(async move {
            let sender = fresh_user(&format!("wal-sender-{t}"));
            for i in 0..400 {
                store
                    .append(c2c(&sender, &receiver, &format!("w{i}"), vec![1u8; 200]))
                    .await
                    .expect("append");
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("append task");
    }
    // 3,200 messages are at least 3,200 page writes: 12.5 MiB of frames.
    // A WAL that starts over stays near the limit (200 frames, 0.8 MiB)
    // plus the retries' slack.
    let wal = std::fs::metadata(format!("{}-wal", path.display()))
        .expect("the WAL file")
        .len();
    assert!(
        wal < 8 << 20,
        "the WAL grew to {wal} bytes: it never started over"
    );
    let page = store
        .entries_after(&receiver, 0, 10_000)
        .await
        .expect("page");
    assert_eq!(page.entries.len(), 3_200);
    for (i, e) in page.entries.iter().enumerate() {
        assert_eq!(e.seq, i as u64 + 1, "gap in the receiver's timeline");
    }
    store.close().await.expect("close");
    // Everything is in the database file after the last close.
    let store = open(&path);
    assert_eq!(store.timeline_head(&receiver).await.expect("head"), 3_200);
    store.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_without_close_keeps_messages_and_cursors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db(&dir);
    let (alice, bob) = (fresh_user("alice"), fresh_user("bob"));
    let store = open(&path);
    for i in 0..20 {
        store
            .append(c2c(&alice, &bob, &format!("d{i}"), "x"))
            .await
            .expect("append");
    }
    store
        .advance_cursor(&bob, "phone", 17)
        .await
        .expect("advance");
    drop(store); // no close: Drop flushes best-effort

    let store = open(&path);
    assert_eq!(store.timeline_head(&bob).await.expect("head"), 20);
    assert_eq!(store.cursor(&bob, "phone").await.expect("cursor"), 17);
    store.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_reach_disk_within_the_flush_interval() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db(&dir);
    let options = SqliteOptions {
        cursor_flush_interval: Duration::from_millis(50),
        ..SqliteOptions::default()
    };
    let store = open_with(&path, options);
    let user = fresh_user("reader");
    store
        .advance_cursor(&user, "phone", 42)
        .await
        .expect("advance");
    let on_disk = || -> i64 {
        let conn = rusqlite::Connection::open(&path).expect("inspect");
        conn.query_row(
            "SELECT COALESCE(MAX(seq), 0) FROM cursor WHERE uid = ?1",
            [&user.uid],
            |r| r.get(0),
        )
        .expect("query")
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while on_disk() != 42 {
        assert!(
            Instant::now() < deadline,
            "the cursor never reached the disk"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A lower ack never lowers the stored value.
    store
        .advance_cursor(&user, "phone", 40)
        .await
        .expect("advance");
    store.flush_cursors().await.expect("flush");
    assert_eq!(on_disk(), 42);
    assert_eq!(store.cursor(&user, "phone").await.expect("cursor"), 42);
    store.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unexpected_data_on_disk_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db(&dir);
    let (alice, bob) = (fresh_user("alice"), fresh_user("bob"));
    let store = open(&path);
    store
        .append(c2c(&alice, &bob, "m1", "x"))
        .await
        .expect("append");
    store.close().await.expect("close");
    drop(store);

    let conn = rusqlite::Connection::open(&path).expect("inspect");
    conn.execute("UPDATE timeline SET seq = -5 WHERE uid = ?1", [&bob.uid])
        .expect("corrupt seq");
    conn.execute(
        "UPDATE dedupe SET seqs = x'01020304050607' WHERE uid = ?1",
        [&alice.uid],
    )
    .expect("corrupt seqs");
    conn.execute(
        "UPDATE message SET kind = x'ff00' WHERE from_uid = ?1",
        [&alice.uid],
    )
    .expect("corrupt kind");
    drop(conn);

    let store = open(&path);
    assert!(matches!(
        store.timeline_head(&bob).await,
        Err(StoreError::Corrupt(_))
    ));
    let r = store.entries_after(&alice, 0, 10).await;
    assert!(matches!(r, Err(StoreError::Corrupt(_))), "{r:?}");
    let r = store.append(c2c(&alice, &bob, "m1", "x")).await;
    assert!(matches!(r, Err(StoreError::Corrupt(_))), "{r:?}");
    // The store still serves everyone else.
    let carol = fresh_user("carol");
    assert_eq!(
        store.append(s2c(&carol, "x")).await.expect("append").seqs,
        vec![1]
    );
    store.close().await.expect("close");

    let conn = rusqlite::Connection::open(&path).expect("inspect");
    conn.pragma_update(None, "user_version", 99)
        .expect("bump version");
    drop(conn);
    assert!(matches!(
        SqliteStore::open(&path, SqliteOptions::default()),
        Err(StoreError::Corrupt(_))
    ));
}
