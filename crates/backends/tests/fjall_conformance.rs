//! `FjallStore` against the store conformance suite, plus what an embedded
//! store must also survive: a `kill -9` in the middle of a write stream,
//! drop without close, cursors that never move back, the purge of expired
//! de-dup and outbox entries, and data on disk that is not what we wrote.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use switchboard_backends::{FjallOptions, FjallStore};
use switchboard_core::{BusEvent, Store, StoreError, now_ms};
use switchboard_testkit::store_conformance::{self as conf, c2c, fresh_user, s2c};
use switchboard_testkit::store_crash;

fn dir_of(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("nested/fjall")
}

fn open_with(path: &Path, options: FjallOptions) -> Arc<FjallStore> {
    FjallStore::open(path, options).expect("open fjall store")
}

fn open(path: &Path) -> Arc<dyn Store> {
    open_with(path, FjallOptions::default())
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let dir = tempfile::tempdir().expect("tempdir");
            let store = open(&dir_of(&dir));
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
    login_state_is_head_and_cursor,
    outbox_dedupe,
    conversation_pages_newest_first,
    outbox_drains_in_id_order,
    a_bad_append_fails_alone,
    submitted_appends_keep_submit_order,
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
    conf::a_closed_store_refuses_work(open(&dir_of(&dir))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedupe_rows_expire_after_the_window() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = FjallOptions {
        dedupe_window: Duration::from_millis(1),
        ..FjallOptions::default()
    };
    let store = open_with(&dir_of(&dir), options);
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
    let path = dir_of(&dir);
    conf::survives_close_and_reopen(&|| {
        let path = path.clone();
        async move { open(&path) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_survive_close_and_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir_of(&dir);
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
    let store = open(&dir_of(&dir));
    let (added, appended) = conf::a_group_of_100_000_members(store.clone()).await;
    eprintln!("fjall: 100,000 members added in {added:?}; one append took {appended:?}");
    store.close().await.expect("close");
}

/// Small batches, to exercise many group commits and batch boundaries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_with_tiny_batches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir_of(&dir);
    let options = FjallOptions {
        max_batch: 3,
        queue_capacity: 4,
        ..FjallOptions::default()
    };
    conf::run_all(|| {
        let (path, options) = (path.clone(), options.clone());
        async move { open_with(&path, options) as Arc<dyn Store> }
    })
    .await;
}

/// The writer side of `kill_9_keeps_every_acknowledged_message`.
#[test]
#[ignore = "child process of kill_9_keeps_every_acknowledged_message"]
fn crash_child() {
    let Some(path) = store_crash::child_path() else {
        return;
    };
    store_crash::child_appends(|| async move { open(&path) });
}

/// SIGKILL a process that is appending: every message it acknowledged is on
/// both timelines after reopening (fjall replays its journal), and the
/// timelines have no gaps.
#[test]
fn kill_9_keeps_every_acknowledged_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir_of(&dir);
    store_crash::kill_9_and_check("crash_child", &path, || async { open(&path) });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir_of(&dir);
    let store = open(&path);
    let options = FjallOptions {
        lock_wait: Duration::from_millis(100),
        ..FjallOptions::default()
    };
    let second = FjallStore::open(&path, options);
    assert!(
        matches!(&second, Err(StoreError::Unavailable(e)) if e.contains("in use")),
        "{second:?}"
    );
    store.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_without_close_keeps_messages_and_cursors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir_of(&dir);
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

/// A cursor written, then forgotten in memory, is never lowered on disk by
/// a later, lower ack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_written_cursor_never_moves_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir_of(&dir);
    let user = fresh_user("reader");
    let store = open_with(&path, FjallOptions::default());
    store
        .advance_cursor(&user, "phone", 42)
        .await
        .expect("advance");
    store.flush_cursors().await.expect("flush");
    store
        .advance_cursor(&user, "phone", 40)
        .await
        .expect("advance");
    store.flush_cursors().await.expect("flush");
    store.close().await.expect("close");
    drop(store);
    let store = open(&path);
    assert_eq!(store.cursor(&user, "phone").await.expect("cursor"), 42);
    store.close().await.expect("close");
}

/// Delivered outbox events leave with their de-dup id once the window is
/// over; pending ones stay whatever their age.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_outbox_events_are_purged_after_the_window() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = FjallOptions {
        dedupe_window: Duration::from_millis(1),
        ..FjallOptions::default()
    };
    let store = open_with(&dir_of(&dir), options);
    let user = fresh_user("courier");
    let event = |id: u64| BusEvent {
        id,
        topic: "c2s".into(),
        user: user.clone(),
        kind: "gps".into(),
        body: Bytes::from_static(b"{}"),
        time_ms: now_ms(),
    };
    let delivered = store
        .outbox_append(&event(conf::next_id()), "d1")
        .await
        .expect("outbox");
    let pending = store
        .outbox_append(&event(conf::next_id()), "d2")
        .await
        .expect("outbox");
    assert_eq!(
        store
            .outbox_mark_delivered(&[delivered.id, delivered.id])
            .await
            .expect("mark"),
        1
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(store.purge_expired().await.expect("purge") >= 1);
    let left: Vec<u64> = store
        .outbox_pending_after(0, 100)
        .await
        .expect("pending")
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(left, vec![pending.id]);
    let again = store
        .outbox_append(&event(conf::next_id()), "d1")
        .await
        .expect("outbox");
    assert!(!again.duplicate, "a purged de-dup id is new again");
    let still = store
        .outbox_append(&event(conf::next_id()), "d2")
        .await
        .expect("outbox");
    assert!(still.duplicate && still.id == pending.id, "{still:?}");
    store.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unexpected_data_on_disk_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir_of(&dir);
    let (alice, bob) = (fresh_user("alice"), fresh_user("bob"));
    let store = open(&path);
    let first = store
        .append(c2c(&alice, &bob, "m1", "x"))
        .await
        .expect("append");
    store.close().await.expect("close");
    drop(store);

    {
        // Overwrite the message with bytes this build never writes.
        let db = fjall::Database::builder(&path).open().expect("inspect");
        let messages = db
            .keyspace("messages", fjall::KeyspaceCreateOptions::default)
            .expect("keyspace");
        messages
            .insert(first.message.id.to_be_bytes(), b"\x07garbage".as_slice())
            .expect("corrupt");
        db.persist(fjall::PersistMode::SyncAll).expect("persist");
    }

    let store = open(&path);
    let r = store.entries_after(&bob, 0, 10).await;
    assert!(matches!(r, Err(StoreError::Corrupt(_))), "{r:?}");
    let r = store.append(c2c(&alice, &bob, "m1", "x")).await;
    assert!(matches!(r, Err(StoreError::Corrupt(_))), "{r:?}");
    // The store still serves everyone else, and bob's timeline goes on.
    let carol = fresh_user("carol");
    assert_eq!(
        store.append(s2c(&carol, "x")).await.expect("append").seqs,
        vec![1]
    );
    assert_eq!(
        store.append(s2c(&bob, "y")).await.expect("append").seqs,
        vec![2]
    );
    store.close().await.expect("close");
}
