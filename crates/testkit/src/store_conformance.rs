//! The conformance suite every [`Store`] implementation must pass, so the
//! embedded and clustered stores can't drift apart.
//!
//! Each property is a `pub async fn` that panics (with the reason) when the
//! store breaks the contract of `switchboard_core::store`. Most take a live
//! store; the ones about durability across restarts take an `open` function
//! that opens the SAME underlying data every time it is called. Every
//! property works in users of its own (a unique tag per call), so they can
//! share one store and run in any order. [`run_all`] runs them all.
//!
//! A backend's test file calls them, e.g. one `#[tokio::test]` per property:
//!
//! ```ignore
//! #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
//! async fn dedupe() {
//!     let dir = tempfile::tempdir().unwrap();
//!     store_conformance::dedupe_returns_first_result(open(dir.path())).await;
//! }
//! ```

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use switchboard_core::group::{
    GroupKey, GroupRefusal, GroupSpec, GroupState, NewGroupMessage, PostPolicy, Role,
};
use switchboard_core::id::IdGenerator;
use switchboard_core::model::{AMEND_KIND, Amendment, Content};
use switchboard_core::{
    Appended, BusEvent, Message, NewMessage, Store, StoreError, UserKey, now_ms,
};
use tokio::task::JoinSet;

/// The app every user of the suite belongs to.
pub const APP: &str = "conformance";

/// Ids for messages and events, unique across the whole test process.
pub fn next_id() -> u64 {
    static IDS: OnceLock<IdGenerator> = OnceLock::new();
    IDS.get_or_init(|| IdGenerator::new(1023)).next_id()
}

/// A user no other property call uses: `{name}-{unique tag}`.
pub fn fresh_user(name: &str) -> UserKey {
    UserKey::new(APP, format!("{name}-{}", next_id()))
}

/// A c2c message from `from` to `to`: an entry on the receiver's timeline,
/// then the sender's.
pub fn c2c(
    from: &UserKey,
    to: &UserKey,
    client_msg_id: &str,
    body: impl Into<Bytes>,
) -> NewMessage {
    NewMessage {
        message: Message {
            id: next_id(),
            from: from.clone(),
            to: to.clone(),
            kind: "text".into(),
            body: body.into(),
            client_msg_id: client_msg_id.into(),
            server_time_ms: now_ms(),
            group: String::new(),
        },
        // As logic does: a message to oneself takes one entry, not two.
        timelines: if from == to {
            vec![to.clone()]
        } else {
            vec![to.clone(), from.clone()]
        },
        amends: None,
    }
}

/// A stored s2c message: one entry, on the receiver's timeline only.
pub fn s2c(to: &UserKey, body: impl Into<Bytes>) -> NewMessage {
    let server = UserKey::new(APP, "server");
    NewMessage {
        message: Message {
            id: next_id(),
            from: server,
            to: to.clone(),
            kind: "notice".into(),
            body: body.into(),
            client_msg_id: String::new(),
            server_time_ms: now_ms(),
            group: String::new(),
        },
        timelines: vec![to.clone()],
        amends: None,
    }
}

fn event(user: &UserKey, body: &'static str) -> BusEvent {
    BusEvent {
        id: next_id(),
        topic: "c2s".into(),
        user: user.clone(),
        kind: "gps".into(),
        body: Bytes::from_static(body.as_bytes()),
        time_ms: now_ms(),
    }
}

/// Every property, in turn. `open` must open the same data on every call.
pub async fn run_all<F, Fut>(open: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    let store = open().await;
    store.ping().await.expect("ping a fresh store");
    timelines_gap_free_under_concurrency(store.clone()).await;
    c2c_entries_on_both_timelines(store.clone()).await;
    dedupe_returns_first_result(store.clone()).await;
    dedupe_of_concurrent_resends(store.clone()).await;
    entries_after_pages_and_limits(store.clone()).await;
    cursor_moves_forward_only(store.clone()).await;
    login_state_is_head_and_cursor(store.clone()).await;
    outbox_dedupe(store.clone()).await;
    conversation_pages_newest_first(store.clone()).await;
    submitted_appends_keep_submit_order(store.clone()).await;
    outbox_drains_in_id_order(store.clone()).await;
    a_bad_append_fails_alone(store.clone()).await;
    token_revocations_only_move_forward(store.clone()).await;
    conversation_views_are_per_user_and_replaced(store.clone()).await;
    amendments_replace_the_message_and_a_recall_is_final(store.clone()).await;
    concurrent_amendments_end_recalled(store.clone()).await;
    run_groups(store.clone()).await;
    store.close().await.expect("close");
    store.close().await.expect("close is idempotent");
    drop(store);
    survives_close_and_reopen(&open).await;
    groups_survive_close_and_reopen(&open).await;
}

/// 8 tasks × 200 c2c appends to one receiver: the receiver's timeline holds
/// exactly 1..=1600, each sender's exactly 1..=200 in its sending order, and
/// every entry points at the message that was acknowledged with that seq.
pub async fn timelines_gap_free_under_concurrency(store: Arc<dyn Store>) {
    const TASKS: usize = 8;
    const PER_TASK: usize = 200;
    let receiver = fresh_user("hot-receiver");
    let mut tasks = JoinSet::new();
    for t in 0..TASKS {
        let store = store.clone();
        let receiver = receiver.clone();
        tasks.spawn(async move {
            let sender = fresh_user(&format!("sender{t}"));
            let mut acks = Vec::with_capacity(PER_TASK);
            for i in 0..PER_TASK {
                let msg = c2c(&sender, &receiver, &format!("m{i}"), format!("{t}:{i}"));
                let a = store.append(msg).await.expect("append");
                assert!(
                    !a.duplicate,
                    "a fresh client_msg_id was reported as a duplicate"
                );
                assert_eq!(a.seqs.len(), 2, "a c2c takes one entry per timeline");
                acks.push(a);
            }
            (sender, acks)
        });
    }
    let mut by_receiver_seq: HashMap<u64, u64> = HashMap::new();
    let mut senders = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let (sender, acks) = done.expect("append task panicked");
        for (i, a) in acks.iter().enumerate() {
            assert_eq!(
                a.seqs[1],
                i as u64 + 1,
                "sender {sender}: seqs not gap-free in sending order"
            );
            let clash = by_receiver_seq.insert(a.seqs[0], a.message.id);
            assert!(
                clash.is_none(),
                "receiver seq {} given to two messages",
                a.seqs[0]
            );
        }
        senders.push((sender, acks));
    }
    let total = (TASKS * PER_TASK) as u64;
    let seqs: BTreeSet<u64> = by_receiver_seq.keys().copied().collect();
    assert_eq!(
        seqs,
        (1..=total).collect::<BTreeSet<_>>(),
        "receiver seqs are not exactly 1..={total}"
    );

    assert_eq!(store.timeline_head(&receiver).await.expect("head"), total);
    let page = store
        .entries_after(&receiver, 0, 10_000)
        .await
        .expect("entries_after");
    assert_eq!(page.head, total);
    assert_eq!(page.entries.len() as u64, total, "receiver timeline length");
    for (i, e) in page.entries.iter().enumerate() {
        assert_eq!(
            e.seq,
            i as u64 + 1,
            "receiver entries out of order or with a gap"
        );
        assert_eq!(
            Some(&e.message.id),
            by_receiver_seq.get(&e.seq),
            "entry {} points at another message",
            e.seq
        );
    }
    for (sender, acks) in senders {
        let page = store
            .entries_after(&sender, 0, 10_000)
            .await
            .expect("entries_after");
        let got: Vec<(u64, u64)> = page.entries.iter().map(|e| (e.seq, e.message.id)).collect();
        let want: Vec<(u64, u64)> = acks.iter().map(|a| (a.seqs[1], a.message.id)).collect();
        assert_eq!(
            got, want,
            "sender {sender}'s timeline differs from its acknowledgements"
        );
    }
}

/// A c2c lands on both timelines with every field intact; an s2c on one.
pub async fn c2c_entries_on_both_timelines(store: Arc<dyn Store>) {
    let alice = fresh_user("alice");
    let bob = fresh_user("bob");
    let body = Bytes::from(vec![0u8, 1, 2, 255, 254]);
    let msg = c2c(&alice, &bob, "hello-1", body.clone());
    let sent = msg.message.clone();
    let a = store.append(msg).await.expect("append");
    assert_eq!((a.seqs.clone(), a.duplicate), (vec![1, 1], false));
    assert_eq!(
        *a.message, sent,
        "the acknowledged message differs from the one sent"
    );
    let entries: Vec<u64> = a.entries().map(|e| e.seq).collect();
    assert_eq!(entries, vec![1, 1]);

    for user in [&bob, &alice] {
        let page = store
            .entries_after(user, 0, 10)
            .await
            .expect("entries_after");
        assert_eq!(page.head, 1, "{user}: head");
        assert_eq!(page.entries.len(), 1, "{user}: one entry");
        assert_eq!(page.entries[0].seq, 1);
        assert_eq!(
            *page.entries[0].message, sent,
            "{user}: stored message differs (body must be byte-exact)"
        );
    }

    let n = store.append(s2c(&bob, "notice")).await.expect("append s2c");
    assert_eq!(n.seqs, vec![2], "an s2c takes the receiver's next seq only");
    assert_eq!(store.timeline_head(&bob).await.expect("head"), 2);
    assert_eq!(
        store.timeline_head(&alice).await.expect("head"),
        1,
        "the s2c must not touch another timeline"
    );
    // Two messages with empty client_msg_id are never de-duplicated.
    let m = store.append(s2c(&bob, "notice")).await.expect("append s2c");
    assert!(!m.duplicate);
    assert_eq!(m.seqs, vec![3]);
}

/// `conversation(a, b)` holds exactly the messages between a and b, both
/// ways, newest first, pages with `before_msg_id` without gaps or repeats,
/// is the same seen from either side, and leaves out everything else (other
/// pairs, s2c, a user's messages to themself unless asked for that pair).
pub async fn conversation_pages_newest_first(store: Arc<dyn Store>) {
    let alice = fresh_user("alice");
    let bob = fresh_user("bob");
    let carol = fresh_user("carol");
    let mut between = Vec::new();
    for i in 0..7 {
        let (from, to) = if i % 3 == 0 {
            (&bob, &alice)
        } else {
            (&alice, &bob)
        };
        let a = store
            .append(c2c(from, to, &format!("conv-{i}"), format!("m{i}")))
            .await
            .expect("append");
        between.push(a.message.id);
        // Noise the pair's history must not show.
        store
            .append(c2c(&alice, &carol, &format!("noise-{i}"), "to carol"))
            .await
            .expect("append");
        store.append(s2c(&alice, "notice")).await.expect("append");
    }
    let resend = store
        .append(c2c(&alice, &bob, "conv-1", "m1"))
        .await
        .expect("resend");
    assert!(resend.duplicate);
    let to_self = store
        .append(c2c(&alice, &alice, "self-1", "note to self"))
        .await
        .expect("append");
    between.reverse(); // newest first

    for (a, b) in [(&alice, &bob), (&bob, &alice)] {
        let all = store
            .conversation(a, b, None, 100)
            .await
            .expect("conversation");
        let ids: Vec<u64> = all.iter().map(|m| m.id).collect();
        assert_eq!(
            ids, between,
            "{a} <-> {b}: every message once, newest first"
        );
        assert_eq!(
            &*all[all.len() - 1].body,
            b"m0",
            "bodies come back byte-exact"
        );
    }
    let mut paged = Vec::new();
    let mut before = None;
    for _ in 0..10 {
        let page = store
            .conversation(&alice, &bob, before, 3)
            .await
            .expect("page");
        assert!(page.len() <= 3, "a page holds at most `limit`");
        let Some(last) = page.last() else { break };
        before = Some(last.id);
        paged.extend(page.iter().map(|m| m.id));
    }
    assert_eq!(paged, between, "pages by before_msg_id: no gap, no repeat");
    assert!(
        store
            .conversation(&alice, &bob, Some(between[6]), 10)
            .await
            .expect("oldest")
            .is_empty(),
        "nothing is older than the first message"
    );
    assert!(
        store
            .conversation(&alice, &bob, None, 0)
            .await
            .expect("limit 0")
            .is_empty()
    );
    let mine = store
        .conversation(&alice, &alice, None, 10)
        .await
        .expect("self");
    assert_eq!(
        mine.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![to_self.message.id],
        "a user's conversation with themself"
    );
    let strangers = store
        .conversation(&bob, &carol, None, 10)
        .await
        .expect("no messages");
    assert!(strangers.is_empty());
}

/// A resend of `(from, client_msg_id)` stores nothing and returns the first
/// result; another sender's equal client_msg_id is its own message.
pub async fn dedupe_returns_first_result(store: Arc<dyn Store>) {
    let alice = fresh_user("alice");
    let bob = fresh_user("bob");
    let carol = fresh_user("carol");
    let first = store
        .append(c2c(&alice, &bob, "cmid-1", "first"))
        .await
        .expect("append");
    assert!(!first.duplicate);
    let resend = store
        .append(c2c(&alice, &bob, "cmid-1", "second body"))
        .await
        .expect("append");
    assert!(resend.duplicate, "a resend was stored again");
    assert_eq!(
        resend.message.id, first.message.id,
        "a duplicate must return the first msg_id"
    );
    assert_eq!(
        resend.seqs, first.seqs,
        "a duplicate must return the first seqs"
    );
    assert_eq!(
        resend.message.body, first.message.body,
        "a duplicate must return the first body"
    );
    assert_eq!(
        store.timeline_head(&bob).await.expect("head"),
        1,
        "a duplicate took a timeline entry"
    );
    assert_eq!(store.timeline_head(&alice).await.expect("head"), 1);

    let other = store
        .append(c2c(&carol, &bob, "cmid-1", "carol"))
        .await
        .expect("append");
    assert!(!other.duplicate, "de-dup is per sender");
    assert_eq!(other.seqs, vec![2, 1]);
    let next = store
        .append(c2c(&alice, &bob, "cmid-2", "next"))
        .await
        .expect("append");
    assert!(!next.duplicate);
    assert_eq!(next.seqs, vec![3, 2]);
}

/// 16 concurrent sends of one `(from, client_msg_id)`: exactly one is stored,
/// and all 16 answers are that one.
pub async fn dedupe_of_concurrent_resends(store: Arc<dyn Store>) {
    let alice = fresh_user("alice");
    let bob = fresh_user("bob");
    let mut tasks = JoinSet::new();
    for i in 0..16 {
        let (store, alice, bob) = (store.clone(), alice.clone(), bob.clone());
        tasks.spawn(async move {
            store
                .append(c2c(&alice, &bob, "same", format!("copy {i}")))
                .await
                .expect("append")
        });
    }
    let mut results: Vec<Appended> = Vec::new();
    while let Some(r) = tasks.join_next().await {
        results.push(r.expect("task"));
    }
    let originals: Vec<&Appended> = results.iter().filter(|a| !a.duplicate).collect();
    assert_eq!(
        originals.len(),
        1,
        "exactly one of the concurrent resends is stored"
    );
    let first = originals[0];
    for a in &results {
        assert_eq!(
            (a.message.id, &a.seqs, &a.message.body),
            (first.message.id, &first.seqs, &first.message.body)
        );
    }
    assert_eq!(first.seqs, vec![1, 1]);
    assert_eq!(store.timeline_head(&bob).await.expect("head"), 1);
    assert_eq!(
        store
            .entries_after(&alice, 0, 100)
            .await
            .expect("page")
            .entries
            .len(),
        1
    );
}

/// `entries_after` pages: `seq > since`, in order, at most `limit`, and the
/// head of the timeline alongside.
pub async fn entries_after_pages_and_limits(store: Arc<dyn Store>) {
    let user = fresh_user("pager");
    let mut ids = Vec::new();
    for i in 0..25 {
        let a = store
            .append(s2c(&user, format!("n{i}")))
            .await
            .expect("append");
        ids.push(a.message.id);
    }
    let mut since = 0;
    let mut seen = Vec::new();
    for want_len in [10, 10, 5, 0] {
        let page = store.entries_after(&user, since, 10).await.expect("page");
        assert_eq!(page.head, 25);
        assert_eq!(page.entries.len(), want_len, "page after {since}");
        for e in &page.entries {
            assert_eq!(
                e.seq,
                since + 1,
                "page after {since} skipped or repeated a seq"
            );
            since = e.seq;
            seen.push(e.message.id);
        }
    }
    assert_eq!(
        seen, ids,
        "paging returned other messages than were appended"
    );

    let mid = store.entries_after(&user, 7, 3).await.expect("page");
    assert_eq!(
        mid.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![8, 9, 10]
    );
    let zero = store.entries_after(&user, 0, 0).await.expect("page");
    assert!(zero.entries.is_empty(), "limit 0 returns nothing");
    let past = store.entries_after(&user, 1_000, 10).await.expect("page");
    assert!(past.entries.is_empty());
    assert_eq!(past.head, 25);

    let nobody = fresh_user("nobody");
    let empty = store.entries_after(&nobody, 0, 10).await.expect("page");
    assert!(empty.entries.is_empty());
    assert_eq!(empty.head, 0);
    assert_eq!(store.timeline_head(&nobody).await.expect("head"), 0);
}

/// A cursor starts at 0, only moves forward, and is per device.
pub async fn cursor_moves_forward_only(store: Arc<dyn Store>) {
    let user = fresh_user("reader");
    let other = fresh_user("other");
    assert_eq!(store.cursor(&user, "phone").await.expect("cursor"), 0);
    store
        .advance_cursor(&user, "phone", 5)
        .await
        .expect("advance");
    assert_eq!(store.cursor(&user, "phone").await.expect("cursor"), 5);
    store
        .advance_cursor(&user, "phone", 3)
        .await
        .expect("advance back");
    assert_eq!(
        store.cursor(&user, "phone").await.expect("cursor"),
        5,
        "a cursor moved back"
    );
    store
        .advance_cursor(&user, "phone", 9)
        .await
        .expect("advance");
    assert_eq!(store.cursor(&user, "phone").await.expect("cursor"), 9);
    assert_eq!(
        store.cursor(&user, "laptop").await.expect("cursor"),
        0,
        "cursors are per device"
    );
    assert_eq!(
        store.cursor(&other, "phone").await.expect("cursor"),
        0,
        "cursors are per user"
    );

    // Many concurrent acks: the cursor ends at the highest one.
    let mut tasks = JoinSet::new();
    for seq in (10..=60).rev() {
        let (store, user) = (store.clone(), user.clone());
        tasks.spawn(async move {
            store
                .advance_cursor(&user, "phone", seq)
                .await
                .expect("advance")
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("task");
    }
    assert_eq!(store.cursor(&user, "phone").await.expect("cursor"), 60);
}

/// `login_state` answers what `timeline_head` and `cursor` answer, and
/// under concurrent appends and acks never less than what was acknowledged
/// (appended, or advanced) before it was asked.
pub async fn login_state_is_head_and_cursor(store: Arc<dyn Store>) {
    use switchboard_core::store::LoginState;
    let alice = fresh_user("alice");
    let bob = fresh_user("bob");
    let fresh = store.login_state(&bob, "phone").await.expect("login state");
    assert_eq!(
        fresh,
        LoginState {
            timeline_head: 0,
            cursor: 0
        }
    );
    const N: u64 = 200;
    let writer = {
        let (store, alice, bob) = (store.clone(), alice.clone(), bob.clone());
        tokio::spawn(async move {
            for i in 0..N {
                let a = store
                    .append(c2c(&alice, &bob, &format!("ls{i}"), "x"))
                    .await
                    .expect("append");
                store
                    .advance_cursor(&bob, "phone", a.seqs[0])
                    .await
                    .expect("advance");
            }
        })
    };
    let mut last = fresh;
    while !writer.is_finished() {
        // What was acknowledged before asking...
        let head = store.timeline_head(&bob).await.expect("head");
        let cursor = store.cursor(&bob, "phone").await.expect("cursor");
        let got = store.login_state(&bob, "phone").await.expect("login state");
        // ...is seen, and nothing goes back.
        assert!(
            got.timeline_head >= head && got.cursor >= cursor,
            "{got:?} < ({head}, {cursor})"
        );
        assert!(
            got.timeline_head >= last.timeline_head && got.cursor >= last.cursor,
            "{got:?} went back from {last:?}"
        );
        last = got;
        tokio::task::yield_now().await;
    }
    writer.await.expect("writer");
    let end = store.login_state(&bob, "phone").await.expect("login state");
    assert_eq!(
        end,
        LoginState {
            timeline_head: N,
            cursor: N
        }
    );
    assert_eq!(
        store
            .login_state(&bob, "laptop")
            .await
            .expect("login state"),
        LoginState {
            timeline_head: N,
            cursor: 0
        },
        "cursors are per device"
    );
}

/// The outbox de-duplicates on `(user, dedupe_id)` when it is not empty.
pub async fn outbox_dedupe(store: Arc<dyn Store>) {
    let courier = fresh_user("courier");
    let other = fresh_user("courier2");
    let e1 = event(&courier, "{\"lat\":1}");
    let r1 = store.outbox_append(&e1, "gps-1").await.expect("outbox");
    assert_eq!((r1.id, r1.duplicate), (e1.id, false));
    let r2 = store
        .outbox_append(&event(&courier, "{\"lat\":2}"), "gps-1")
        .await
        .expect("outbox");
    assert_eq!(
        (r2.id, r2.duplicate),
        (e1.id, true),
        "a resend must return the first event id"
    );
    let e3 = event(&other, "{\"lat\":3}");
    let r3 = store.outbox_append(&e3, "gps-1").await.expect("outbox");
    assert_eq!(
        (r3.id, r3.duplicate),
        (e3.id, false),
        "outbox de-dup is per user"
    );
    for _ in 0..2 {
        let e = event(&courier, "{}");
        let r = store.outbox_append(&e, "").await.expect("outbox");
        assert_eq!(
            (r.id, r.duplicate),
            (e.id, false),
            "an empty dedupe_id never de-duplicates"
        );
    }
}

/// Everything acknowledged is there after `close` and a reopen: timelines,
/// heads (new appends continue gap-free), de-dup, cursors (close flushes).
pub async fn survives_close_and_reopen<F, Fut>(open: &F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    let alice = fresh_user("alice");
    let bob = fresh_user("bob");
    let store = open().await;
    let mut acks = Vec::new();
    for i in 0..50 {
        acks.push(
            store
                .append(c2c(&alice, &bob, &format!("r{i}"), format!("body {i}")))
                .await
                .expect("append"),
        );
    }
    store
        .advance_cursor(&bob, "phone", 42)
        .await
        .expect("advance");
    let ev = event(&alice, "{}");
    store.outbox_append(&ev, "ev-1").await.expect("outbox");
    store
        .revoke_tokens(&alice, 1_700_000_000)
        .await
        .expect("revoke");
    let before = store.entries_after(&bob, 0, 100).await.expect("page");
    store.close().await.expect("close");
    drop(store);

    let store = open().await;
    let after = store
        .entries_after(&bob, 0, 100)
        .await
        .expect("page after reopen");
    assert_eq!(after.head, 50, "head after reopen");
    assert_eq!(
        after.entries, before.entries,
        "timeline differs after reopen"
    );
    assert_eq!(store.timeline_head(&alice).await.expect("head"), 50);
    assert_eq!(
        store
            .tokens_revoked_before(&alice)
            .await
            .expect("revocation"),
        Some(1_700_000_000),
        "a token revocation survives a reopen"
    );
    assert_eq!(
        store.cursor(&bob, "phone").await.expect("cursor"),
        42,
        "close must flush cursors"
    );
    assert_eq!(
        store.login_state(&bob, "phone").await.expect("login state"),
        switchboard_core::store::LoginState {
            timeline_head: 50,
            cursor: 42
        },
        "login state after reopen"
    );

    let dup = store
        .append(c2c(&alice, &bob, "r7", "again"))
        .await
        .expect("append");
    assert!(dup.duplicate, "de-dup forgot a message across reopen");
    assert_eq!(
        (dup.message.id, &dup.seqs),
        (acks[7].message.id, &acks[7].seqs)
    );
    let r = store
        .outbox_append(&event(&alice, "{}"), "ev-1")
        .await
        .expect("outbox");
    assert_eq!(
        (r.id, r.duplicate),
        (ev.id, true),
        "outbox de-dup forgot an event across reopen"
    );

    let next = store
        .append(c2c(&alice, &bob, "r50", "after"))
        .await
        .expect("append");
    assert_eq!(
        next.seqs,
        vec![51, 51],
        "appends after reopen must continue from the stored heads"
    );
    store.close().await.expect("close");
}

/// The outbox hands out pending events in id order, `limit` at a time;
/// marking is idempotent; an event id used twice without a de-dup key is
/// refused (it is the caller's bug, not a resend).
pub async fn outbox_drains_in_id_order(store: Arc<dyn Store>) {
    let user = fresh_user("courier");
    let mut events = Vec::new();
    for i in 0..3 {
        let e = BusEvent {
            id: next_id(),
            topic: "c2s".into(),
            user: user.clone(),
            kind: "gps".into(),
            body: format!("{{\"n\":{i}}}").into(),
            time_ms: now_ms(),
        };
        store
            .outbox_append(&e, &format!("e{i}-{}", e.id))
            .await
            .expect("outbox");
        events.push(e);
    }
    let mine = |pending: Vec<BusEvent>| -> Vec<BusEvent> {
        pending.into_iter().filter(|e| e.user == user).collect()
    };
    assert_eq!(
        mine(store.outbox_pending_after(0, 1000).await.expect("pending"),),
        events
    );
    let marked = store
        .outbox_mark_delivered(&[events[0].id, events[2].id])
        .await
        .expect("mark");
    assert_eq!(marked, 2);
    assert_eq!(
        mine(store.outbox_pending_after(0, 1000).await.expect("pending"),),
        events[1..2]
    );
    let again = store
        .outbox_mark_delivered(&[events[0].id])
        .await
        .expect("mark");
    assert_eq!(again, 0, "already delivered");
    let r = store.outbox_append(&events[1], "").await;
    assert!(
        matches!(r, Err(StoreError::Invalid(_))),
        "a reused event id was accepted: {r:?}"
    );
}

/// An invalid append (a timeline named twice, a message id reused among
/// concurrent appends) fails alone: the others in its group commit, the
/// timelines stay gap-free, and the refused `client_msg_id` stays free for
/// a correct resend.
pub async fn a_bad_append_fails_alone(store: Arc<dyn Store>) {
    let (alice, bob) = (fresh_user("alice"), fresh_user("bob"));

    let mut twice = c2c(&alice, &bob, "", "x");
    twice.timelines = vec![bob.clone(), bob.clone()];
    let r = store.append(twice).await;
    assert!(matches!(r, Err(StoreError::Invalid(_))), "{r:?}");

    let first = store
        .append(c2c(&alice, &bob, "a", "x"))
        .await
        .expect("append");
    let mut tasks = JoinSet::new();
    for i in 0..20 {
        let (store, alice, bob) = (store.clone(), alice.clone(), bob.clone());
        let mut msg = c2c(&alice, &bob, &format!("b{i}"), "x");
        if i == 10 {
            msg.message.id = first.message.id;
        }
        tasks.spawn(async move { (i, store.append(msg).await) });
    }
    let mut ok = 0;
    while let Some(r) = tasks.join_next().await {
        match r.expect("task") {
            (10, r) => assert!(
                matches!(r, Err(StoreError::Invalid(_))),
                "a reused msg id was accepted: {r:?}"
            ),
            (_, r) => {
                r.expect("the other appends succeed");
                ok += 1;
            }
        }
    }
    assert_eq!(ok, 19);
    let page = store.entries_after(&bob, 0, 100).await.expect("page");
    assert_eq!(
        page.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=20).collect::<Vec<_>>()
    );
    let resend = store
        .append(c2c(&alice, &bob, "b10", "x"))
        .await
        .expect("append");
    assert!(!resend.duplicate, "the refused append left a de-dup row");
    assert_eq!(resend.seqs, vec![21, 21]);
}

/// After `close`, work is refused as `Unavailable` (never a panic, never a
/// silent success) and `ping` fails. Takes ownership of the store's life:
/// the caller must not close it again.
pub async fn a_closed_store_refuses_work(store: Arc<dyn Store>) {
    store.ping().await.expect("ping");
    store.close().await.expect("close");
    let user = fresh_user("late");
    let r = store.append(s2c(&user, "x")).await;
    assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
    let r = store.advance_cursor(&user, "d", 1).await;
    assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
    assert!(store.ping().await.is_err());
}

/// De-dup rows are kept for the store's window only. The store must have
/// been opened with a de-dup window of a few milliseconds at most; `purge`
/// runs the backend's purge of expired rows now and says how many went.
pub async fn dedupe_rows_expire_after_the_window<F, Fut>(store: Arc<dyn Store>, purge: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<usize, StoreError>>,
{
    let (alice, bob) = (fresh_user("alice"), fresh_user("bob"));
    let first = store
        .append(c2c(&alice, &bob, "old", "x"))
        .await
        .expect("append");
    let again = store
        .append(c2c(&alice, &bob, "old", "x"))
        .await
        .expect("append");
    assert!(again.duplicate, "a resend inside the window is a duplicate");
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    assert!(purge().await.expect("purge") >= 1, "nothing was purged");
    let later = store
        .append(c2c(&alice, &bob, "old", "x"))
        .await
        .expect("append");
    assert!(
        !later.duplicate,
        "an expired client_msg_id is a new message"
    );
    assert_eq!(later.seqs, vec![first.seqs[0] + 1, first.seqs[1] + 1]);
}

/// `submit_append` in a row without awaiting durability (as the gate's
/// pipeline does): sequences follow submit order on both timelines, a
/// resend submitted while its first is still pending answers the first's
/// result, and every pending append resolves to what `append` would return.
pub async fn submitted_appends_keep_submit_order(store: Arc<dyn Store>) {
    let alice = fresh_user("pipelined-alice");
    let bob = fresh_user("pipelined-bob");
    let mut pending = Vec::new();
    let mut msg_ids = Vec::new();
    for i in 0..50 {
        let m = c2c(&alice, &bob, &format!("p{i}"), format!("#{i}"));
        msg_ids.push(m.message.id);
        pending.push(store.submit_append(m).await.expect("submit"));
        if i % 10 == 9 {
            // A resend of an append that may still be in flight.
            let resend = c2c(&alice, &bob, &format!("p{}", i - 1), "again");
            pending.push(store.submit_append(resend).await.expect("submit resend"));
        }
    }
    let mut results = Vec::new();
    for p in pending {
        results.push(p.await.expect("durable"));
    }
    let (firsts, resends): (Vec<_>, Vec<_>) = results.iter().partition(|a| !a.duplicate);
    assert_eq!(firsts.len(), 50);
    for (i, a) in firsts.iter().enumerate() {
        let n = i as u64 + 1;
        assert_eq!(
            a.seqs,
            vec![n, n],
            "append {i} in submit order on both timelines"
        );
        assert_eq!(a.message.id, msg_ids[i]);
    }
    for r in resends {
        let first = firsts
            .iter()
            .find(|a| a.message.client_msg_id == r.message.client_msg_id)
            .expect("a resend answers its first");
        assert_eq!((r.message.id, &r.seqs), (first.message.id, &first.seqs));
    }
    let page = store.entries_after(&bob, 0, 100).await.expect("read");
    let stored: Vec<u64> = page.entries.iter().map(|e| e.message.id).collect();
    assert_eq!(stored, msg_ids, "stored once each, in submit order");
}

/// A user's token revocation: none at first; a revocation is in force at
/// once (read back by the next call); a later time raises it, an earlier
/// one changes nothing (also when they race); other users are untouched.
/// A conversation view is stored per user and replaced whole; a user with
/// none reads `None`; bytes come back as they went in (any bytes).
pub async fn conversation_views_are_per_user_and_replaced(store: Arc<dyn Store>) {
    let alice = fresh_user("alice");
    let bob = fresh_user("bob");
    assert_eq!(store.conversation_view(&alice).await.expect("read"), None);
    let first = Bytes::from_static(b"\x00view one\xff");
    store
        .put_conversation_view(&alice, first.clone())
        .await
        .expect("put");
    assert_eq!(
        store.conversation_view(&alice).await.expect("read"),
        Some(first)
    );
    let big = Bytes::from(vec![7u8; 200_000]);
    store
        .put_conversation_view(&alice, big.clone())
        .await
        .expect("replace");
    assert_eq!(
        store.conversation_view(&alice).await.expect("read"),
        Some(big)
    );
    assert_eq!(store.conversation_view(&bob).await.expect("read"), None);
    store
        .put_conversation_view(&bob, Bytes::new())
        .await
        .expect("put empty");
    assert_eq!(
        store.conversation_view(&bob).await.expect("read"),
        Some(Bytes::new())
    );
}

/// An amend notice of `original` by its sender, replacing it by `content`
/// (as core stores a recall or an edit).
pub fn amend_notice(original: &Message, content: Content, client_msg_id: &str) -> NewMessage {
    let replacement = original.with_content(content);
    NewMessage {
        message: Message {
            id: next_id(),
            kind: AMEND_KIND.into(),
            body: Bytes::new(),
            client_msg_id: client_msg_id.into(),
            server_time_ms: now_ms(),
            ..original.clone()
        },
        timelines: vec![original.to.clone(), original.from.clone()],
        amends: Some(Box::new(Amendment {
            message: replacement,
        })),
    }
}

fn edited(body: &'static str) -> Content {
    Content {
        kind: "text".into(),
        body: Bytes::from_static(body.as_bytes()),
        recalled: false,
        edited_at_ms: now_ms(),
    }
}

fn recalled() -> Content {
    Content {
        kind: "text".into(),
        recalled: true,
        ..Content::default()
    }
}

/// A c2c from a fresh alice to a fresh bob (entry 1 on both timelines).
async fn a_first_message(store: &Arc<dyn Store>) -> (UserKey, UserKey, Message) {
    let alice = fresh_user("alice");
    let bob = fresh_user("bob");
    let sent = store
        .append(c2c(&alice, &bob, "m1", "first"))
        .await
        .expect("append");
    (alice, bob, sent.message.as_ref().clone())
}

/// An edit replaces the stored message (same id) and appends its notice to
/// both timelines, in one step; a recall removes the body; a resend of a
/// notice answers the first result; an amendment of a recalled message is
/// refused with `Recalled`, storing nothing; so is one of a message that
/// was never stored. The same on a group's timeline.
pub async fn amendments_replace_the_message_and_a_recall_is_final(store: Arc<dyn Store>) {
    let (alice, bob, original) = a_first_message(&store).await;
    let edit = store
        .append(amend_notice(&original, edited("second"), "e1"))
        .await
        .expect("edit");
    assert_eq!(edit.seqs, vec![2, 2]);
    let now = store
        .message(original.id)
        .await
        .expect("read")
        .expect("stored");
    assert_eq!(now.id, original.id);
    assert_eq!(now.content().body, Bytes::from_static(b"second"));
    assert!(now.content().edited_at_ms > 0 && !now.is_recalled());
    let page = store.entries_after(&bob, 0, 10).await.expect("entries");
    assert_eq!(page.entries.len(), 2);
    assert_eq!(
        page.entries[0].message.content().body,
        Bytes::from_static(b"second")
    );
    assert_eq!(page.entries[1].message.kind, AMEND_KIND);

    let recall = store
        .append(amend_notice(&now, recalled(), "r1"))
        .await
        .expect("recall");
    assert_eq!(recall.seqs, vec![3, 3]);
    let now = store
        .message(original.id)
        .await
        .expect("read")
        .expect("stored");
    assert!(now.is_recalled());
    assert!(now.content().body.is_empty(), "the body is gone");
    let again = store
        .append(amend_notice(&original, recalled(), "r1"))
        .await
        .expect("resend");
    assert!(again.duplicate);
    assert_eq!(
        (again.message.id, again.seqs.clone()),
        (recall.message.id, vec![3, 3])
    );
    let late = store
        .append(amend_notice(&original, edited("third"), "e2"))
        .await;
    assert!(matches!(late, Err(StoreError::Recalled)), "{late:?}");
    let late = store
        .append(amend_notice(&original, recalled(), "r2"))
        .await;
    assert!(matches!(late, Err(StoreError::Recalled)), "{late:?}");
    assert_eq!(store.timeline_head(&bob).await.expect("head"), 3);
    assert_eq!(store.timeline_head(&alice).await.expect("head"), 3);
    let now = store
        .message(original.id)
        .await
        .expect("read")
        .expect("stored");
    assert!(now.is_recalled(), "a recall is final");
    // The client_msg_id of a refused notice stays free.
    let fresh = store
        .append(c2c(&alice, &bob, "e2", "new"))
        .await
        .expect("append");
    assert!(!fresh.duplicate);

    let ghost = Message {
        id: next_id(),
        ..original.clone()
    };
    assert!(
        store
            .append(amend_notice(&ghost, edited("x"), ""))
            .await
            .is_err()
    );
    assert_eq!(store.message(ghost.id).await.expect("read"), None);
    assert_eq!(store.timeline_head(&bob).await.expect("head"), 4);

    // On a group's timeline.
    let spec = fresh_group("amend");
    store.put_group(&spec).await.expect("create");
    store
        .add_members(&spec.key, &members_of(&[&alice], Role::Member), MAX)
        .await
        .expect("add");
    let posted = store
        .group_append(group_msg(&alice, &spec.key, "g1", "post"))
        .await
        .expect("post");
    let post = posted.message.as_ref().clone();
    let group_notice = |content: Content, cmid: &str| NewGroupMessage {
        message: Message {
            id: next_id(),
            kind: AMEND_KIND.into(),
            body: Bytes::new(),
            client_msg_id: cmid.into(),
            ..post.clone()
        },
        group: spec.key.clone(),
        check_sender: false,
        amends: Some(Box::new(Amendment {
            message: post.with_content(content),
        })),
    };
    let done = store
        .group_append(group_notice(recalled(), "gr1"))
        .await
        .expect("group recall");
    assert_eq!(done.seqs, vec![2]);
    assert!(
        store
            .message(post.id)
            .await
            .expect("read")
            .expect("stored")
            .is_recalled()
    );
    let late = store.group_append(group_notice(edited("x"), "ge1")).await;
    assert!(matches!(late, Err(StoreError::Recalled)), "{late:?}");
    let page = store
        .group_entries_after(&spec.key, 0, 10)
        .await
        .expect("entries");
    assert_eq!(page.head, 2);
    assert!(page.entries[0].message.is_recalled());
}

/// A recall and edits of one message submitted at once: exactly one
/// recall is stored, the message ends recalled, and every edit stored
/// before it (none after) got its notice.
pub async fn concurrent_amendments_end_recalled(store: Arc<dyn Store>) {
    let (_, bob, original) = a_first_message(&store).await;
    let mut tasks = JoinSet::new();
    for i in 0..12 {
        let (store, original) = (store.clone(), original.clone());
        tasks.spawn(async move {
            let content = if i % 4 == 0 {
                recalled()
            } else {
                edited("edit")
            };
            let recall = content.recalled;
            let r = store
                .append(amend_notice(&original, content, &format!("a{i}")))
                .await;
            (recall, r.map(|a| a.seqs[0]))
        });
    }
    let mut recalls = Vec::new();
    let mut edits = Vec::new();
    while let Some(done) = tasks.join_next().await {
        match done.expect("task") {
            (true, Ok(seq)) => recalls.push(seq),
            (false, Ok(seq)) => edits.push(seq),
            (_, Err(StoreError::Recalled)) => {}
            (_, Err(e)) => panic!("unexpected error: {e:?}"),
        }
    }
    assert_eq!(recalls.len(), 1, "exactly one recall is stored");
    assert!(
        edits.iter().all(|&s| s < recalls[0]),
        "no edit after the recall: {edits:?} vs {recalls:?}"
    );
    let now = store
        .message(original.id)
        .await
        .expect("read")
        .expect("stored");
    assert!(now.is_recalled() && now.content().body.is_empty());
    let head = store.timeline_head(&bob).await.expect("head");
    assert_eq!(head, 1 + 1 + edits.len() as u64);
}

pub async fn token_revocations_only_move_forward(store: Arc<dyn Store>) {
    let alice = fresh_user("alice");
    let bob = fresh_user("bob");
    assert_eq!(
        store.tokens_revoked_before(&alice).await.expect("read"),
        None
    );
    assert_eq!(
        store.revoke_tokens(&alice, 1_000).await.expect("revoke"),
        1_000
    );
    assert_eq!(
        store.tokens_revoked_before(&alice).await.expect("read"),
        Some(1_000)
    );
    assert_eq!(
        store.revoke_tokens(&alice, 500).await.expect("revoke"),
        1_000,
        "an earlier time does not lower a revocation"
    );
    assert_eq!(
        store.revoke_tokens(&alice, 2_000).await.expect("revoke"),
        2_000
    );
    assert_eq!(
        store.tokens_revoked_before(&alice).await.expect("read"),
        Some(2_000)
    );
    assert_eq!(store.tokens_revoked_before(&bob).await.expect("read"), None);
    // Racing revocations: the highest wins. Each answer is the time in force
    // when it landed: at least its own (which of them landed first is up to
    // the store: one writer's group, or PostgreSQL's row lock).
    let mut tasks = JoinSet::new();
    for t in [3_500u64, 3_000, 4_000, 3_900, 100] {
        let (store, bob) = (store.clone(), bob.clone());
        tasks.spawn(async move { (t, store.revoke_tokens(&bob, t).await) });
    }
    while let Some(r) = tasks.join_next().await {
        let (t, in_force) = r.expect("task");
        let in_force = in_force.expect("revoke");
        assert!(in_force >= t, "revoking at {t}: in force {in_force}");
    }
    assert_eq!(
        store.tokens_revoked_before(&bob).await.expect("read"),
        Some(4_000)
    );
    assert_eq!(
        store.tokens_revoked_before(&alice).await.expect("read"),
        Some(2_000)
    );
}

// ---- Groups (`switchboard_core::group`): stored once, read by every member.

/// A group no other property call uses, with default settings.
pub fn fresh_group(name: &str) -> GroupSpec {
    GroupSpec {
        key: GroupKey::new(APP, format!("{name}-{}", next_id())),
        name: format!("the {name} group"),
        meta: Bytes::from_static(b"{\"order\":42}"),
        post_policy: PostPolicy::Members,
        history_visible: false,
    }
}

/// A message from `from` to the group (checked against its membership).
pub fn group_msg(
    from: &UserKey,
    group: &GroupKey,
    client_msg_id: &str,
    body: impl Into<Bytes>,
) -> NewGroupMessage {
    NewGroupMessage {
        message: Message {
            id: next_id(),
            from: from.clone(),
            to: UserKey::new(group.app.clone(), ""),
            kind: "text".into(),
            body: body.into(),
            client_msg_id: client_msg_id.into(),
            server_time_ms: now_ms(),
            group: group.gid.clone(),
        },
        group: group.clone(),
        check_sender: true,
        amends: None,
    }
}

/// The most members the suite's groups may have unless a property says.
const MAX: u64 = 1_000_000;

fn members_of(uids: &[&UserKey], role: Role) -> Vec<(String, Role)> {
    uids.iter().map(|u| (u.uid.clone(), role)).collect()
}

fn refusal<T: std::fmt::Debug>(r: Result<T, StoreError>) -> GroupRefusal {
    match r {
        Err(StoreError::Group(g)) => g,
        other => panic!("expected a group refusal, got {other:?}"),
    }
}

/// Every group property, on one store.
pub async fn run_groups(store: Arc<dyn Store>) {
    groups_create_update_get_delete(store.clone()).await;
    group_created_again_starts_empty(store.clone()).await;
    group_members_add_remove_idempotent(store.clone()).await;
    group_full_is_refused_whole(store.clone()).await;
    group_members_page_in_uid_order(store.clone()).await;
    user_groups_page_in_gid_order(store.clone()).await;
    group_states_at_login(store.clone()).await;
    group_appends_gap_free_under_concurrency(store.clone()).await;
    group_append_refusals(store.clone()).await;
    group_dedupe_returns_first_result_even_after_removal(store.clone()).await;
    group_entries_after_pages(store.clone()).await;
    group_cursor_moves_forward_only_per_device(store.clone()).await;
}

/// Create, read back, update in place (created = false, members and
/// head kept), delete (then absent, a second delete is false).
pub async fn groups_create_update_get_delete(store: Arc<dyn Store>) {
    let spec = fresh_group("orders");
    assert_eq!(store.group(&spec.key).await.expect("group"), None);
    let (g, created) = store.put_group(&spec).await.expect("create");
    assert!(created, "a new group must say created");
    assert_eq!((g.spec.clone(), g.head, g.members), (spec.clone(), 0, 0));
    assert!(g.created_ms > 0);
    assert_eq!(
        store.group(&spec.key).await.expect("group"),
        Some(g.clone())
    );

    let alice = fresh_user("alice");
    store
        .add_members(&spec.key, &members_of(&[&alice], Role::Member), MAX)
        .await
        .expect("add");
    store
        .group_append(group_msg(&alice, &spec.key, "m1", "hi"))
        .await
        .expect("append");
    let updated = GroupSpec {
        name: "renamed".into(),
        meta: Bytes::new(),
        post_policy: PostPolicy::Admins,
        history_visible: true,
        ..spec.clone()
    };
    let (g2, created) = store.put_group(&updated).await.expect("update");
    assert!(!created, "an update must not say created");
    assert_eq!(g2.spec, updated);
    assert_eq!(
        (g2.created_ms, g2.head, g2.members),
        (g.created_ms, 1, 1),
        "an update keeps creation time, timeline and members"
    );
    assert_eq!(store.group(&spec.key).await.expect("group"), Some(g2));

    assert!(store.delete_group(&spec.key).await.expect("delete"));
    assert_eq!(store.group(&spec.key).await.expect("group"), None);
    assert!(!store.delete_group(&spec.key).await.expect("delete again"));
    assert_eq!(
        store.member(&spec.key, &alice.uid).await.expect("member"),
        None
    );
    assert!(
        store
            .members(&spec.key, None, 10)
            .await
            .expect("members")
            .is_empty()
    );
    assert!(
        store
            .user_groups(&alice, None, 10)
            .await
            .expect("groups")
            .is_empty(),
        "a deleted group stays in a member's index"
    );
    assert!(
        store
            .group_states(&alice, "phone")
            .await
            .expect("states")
            .is_empty()
    );
    let page = store
        .group_entries_after(&spec.key, 0, 10)
        .await
        .expect("entries of a deleted group");
    assert!(page.entries.is_empty() && page.head == 0);
    // Another app's group of the same id is another group.
    let other_app = GroupKey::new("another-app", spec.key.gid.clone());
    assert_eq!(store.group(&other_app).await.expect("group"), None);
}

/// A group deleted and created again with the same id starts at head 0,
/// with no members, no entries, no cursors and no de-dup of the old one.
pub async fn group_created_again_starts_empty(store: Arc<dyn Store>) {
    let spec = fresh_group("again");
    let alice = fresh_user("alice");
    store.put_group(&spec).await.expect("create");
    store
        .add_members(&spec.key, &members_of(&[&alice], Role::Member), MAX)
        .await
        .expect("add");
    for i in 0..5 {
        store
            .group_append(group_msg(&alice, &spec.key, &format!("m{i}"), "old"))
            .await
            .expect("append");
    }
    store
        .advance_group_cursor(&alice, "phone", &spec.key, 5)
        .await
        .expect("advance");
    assert!(store.delete_group(&spec.key).await.expect("delete"));

    let (g, created) = store.put_group(&spec).await.expect("create again");
    assert!(created);
    assert_eq!(
        (g.head, g.members),
        (0, 0),
        "a re-created group starts empty"
    );
    let page = store
        .group_entries_after(&spec.key, 0, 10)
        .await
        .expect("entries");
    assert!(page.entries.is_empty(), "old entries came back");
    assert_eq!(
        store.member(&spec.key, &alice.uid).await.expect("member"),
        None
    );
    store
        .add_members(&spec.key, &members_of(&[&alice], Role::Member), MAX)
        .await
        .expect("add");
    let again = store
        .group_append(group_msg(&alice, &spec.key, "m0", "new"))
        .await
        .expect("append");
    assert!(!again.duplicate, "de-dup of the deleted group matched");
    assert_eq!(again.seqs, vec![1]);
    let states = store.group_states(&alice, "phone").await.expect("states");
    assert_eq!(states.len(), 1);
    assert_eq!(
        (states[0].head, states[0].cursor),
        (1, 0),
        "the deleted group's cursor leaked into the new one"
    );
}

/// add/remove are idempotent: `changed` holds only what changed, counts
/// follow, a role change keeps `joined_seq`, the user index follows.
pub async fn group_members_add_remove_idempotent(store: Arc<dyn Store>) {
    let spec = fresh_group("team");
    let (a, b, c) = (fresh_user("a"), fresh_user("b"), fresh_user("c"));
    let nobody = GroupKey::new(APP, format!("missing-{}", next_id()));
    assert_eq!(
        refusal(
            store
                .add_members(&nobody, &members_of(&[&a], Role::Member), MAX)
                .await
        ),
        GroupRefusal::NotFound
    );
    assert_eq!(
        refusal(
            store
                .remove_members(&nobody, std::slice::from_ref(&a.uid))
                .await
        ),
        GroupRefusal::NotFound
    );
    store.put_group(&spec).await.expect("create");
    let r = store
        .add_members(&spec.key, &members_of(&[&a, &b], Role::Member), MAX)
        .await
        .expect("add");
    assert_eq!(r.changed, vec![a.uid.clone(), b.uid.clone()]);
    assert_eq!(r.members, 2);
    store
        .group_append(group_msg(&a, &spec.key, "1", "x"))
        .await
        .expect("append");

    // Again, plus c: only c changes; c joins at head 1.
    let r = store
        .add_members(&spec.key, &members_of(&[&a, &b, &c], Role::Member), MAX)
        .await
        .expect("add again");
    assert_eq!(
        r.changed,
        vec![c.uid.clone()],
        "an unchanged member was reported"
    );
    assert_eq!(r.members, 3);
    let mc = store
        .member(&spec.key, &c.uid)
        .await
        .expect("member")
        .expect("c");
    assert_eq!((mc.role, mc.joined_seq), (Role::Member, 1));
    let ma = store
        .member(&spec.key, &a.uid)
        .await
        .expect("member")
        .expect("a");
    assert_eq!(ma.joined_seq, 0);

    // A role change is a change; joined_seq stays.
    let r = store
        .add_members(&spec.key, &[(a.uid.clone(), Role::Admin)], MAX)
        .await
        .expect("promote");
    assert_eq!((r.changed, r.members), (vec![a.uid.clone()], 3));
    let ma2 = store
        .member(&spec.key, &a.uid)
        .await
        .expect("member")
        .expect("a");
    assert_eq!(
        (ma2.role, ma2.joined_seq, ma2.joined_ms),
        (Role::Admin, 0, ma.joined_ms)
    );
    assert_eq!(
        store.group(&spec.key).await.expect("g").expect("g").members,
        3
    );

    // Remove b and a stranger: only b; again: nothing.
    let stranger = fresh_user("stranger");
    let r = store
        .remove_members(&spec.key, &[b.uid.clone(), stranger.uid.clone()])
        .await
        .expect("remove");
    assert_eq!((r.changed, r.members), (vec![b.uid.clone()], 2));
    let r = store
        .remove_members(&spec.key, std::slice::from_ref(&b.uid))
        .await
        .expect("remove again");
    assert_eq!((r.changed, r.members), (Vec::<String>::new(), 2));
    assert_eq!(store.member(&spec.key, &b.uid).await.expect("member"), None);
    assert!(
        store
            .user_groups(&b, None, 10)
            .await
            .expect("groups")
            .is_empty()
    );
    assert_eq!(
        store.user_groups(&a, None, 10).await.expect("groups"),
        vec![spec.key.gid.clone()]
    );
    assert_eq!(
        store.group(&spec.key).await.expect("g").expect("g").members,
        2
    );

    // Added back later: joins at the head now.
    store
        .group_append(group_msg(&a, &spec.key, "2", "y"))
        .await
        .expect("append");
    store
        .add_members(&spec.key, &members_of(&[&b], Role::Member), MAX)
        .await
        .expect("add back");
    let mb = store
        .member(&spec.key, &b.uid)
        .await
        .expect("member")
        .expect("b");
    assert_eq!(mb.joined_seq, 2);
}

/// Over `max_members` nothing is added, not even the members that fit.
pub async fn group_full_is_refused_whole(store: Arc<dyn Store>) {
    let spec = fresh_group("small");
    store.put_group(&spec).await.expect("create");
    let users: Vec<UserKey> = (0..4).map(|i| fresh_user(&format!("u{i}"))).collect();
    let refs: Vec<&UserKey> = users.iter().collect();
    let r = store
        .add_members(&spec.key, &members_of(&refs[..2], Role::Member), 3)
        .await
        .expect("add 2 of 3");
    assert_eq!(r.members, 2);
    assert_eq!(
        refusal(
            store
                .add_members(&spec.key, &members_of(&refs[1..4], Role::Member), 3)
                .await
        ),
        GroupRefusal::Full
    );
    assert_eq!(
        store.group(&spec.key).await.expect("g").expect("g").members,
        2
    );
    assert_eq!(
        store
            .member(&spec.key, &users[2].uid)
            .await
            .expect("member"),
        None
    );
    assert_eq!(
        store
            .members(&spec.key, None, 10)
            .await
            .expect("members")
            .len(),
        2
    );
    // Re-adding existing members (or a role change) at the limit is fine.
    let r = store
        .add_members(&spec.key, &[(users[0].uid.clone(), Role::Admin)], 2)
        .await
        .expect("role change at the limit");
    assert_eq!(r.members, 2);
    let r = store
        .add_members(&spec.key, &members_of(&refs[2..3], Role::Member), 3)
        .await
        .expect("the third fits");
    assert_eq!(r.members, 3);
}

/// Members come in ascending uid (byte) order, paged by the last uid.
pub async fn group_members_page_in_uid_order(store: Arc<dyn Store>) {
    let spec = fresh_group("paged");
    store.put_group(&spec).await.expect("create");
    // Different lengths and cases: byte order, not length order.
    let mut uids: Vec<String> = (0..250).map(|i| format!("m{}", i * 7 % 1000)).collect();
    uids.extend([
        "B".to_string(),
        "a".into(),
        "aa".into(),
        "b".into(),
        "Z-9".into(),
    ]);
    let members: Vec<(String, Role)> = uids.iter().map(|u| (u.clone(), Role::Member)).collect();
    store
        .add_members(&spec.key, &members, MAX)
        .await
        .expect("add");
    let mut want = uids.clone();
    want.sort();
    let mut got = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .members(&spec.key, after.as_deref(), 100)
            .await
            .expect("members");
        assert!(page.len() <= 100);
        if page.is_empty() {
            break;
        }
        after = page.last().map(|m| m.uid.clone());
        got.extend(page.into_iter().map(|m| m.uid));
    }
    assert_eq!(got, want, "members not in uid order or not all there");
    assert!(
        store
            .members(&spec.key, None, 0)
            .await
            .expect("limit 0")
            .is_empty()
    );
}

/// A user's groups come in ascending gid order, paged by the last gid.
pub async fn user_groups_page_in_gid_order(store: Arc<dyn Store>) {
    let user = fresh_user("joiner");
    let mut gids = Vec::new();
    for i in 0..25 {
        let mut spec = fresh_group("g");
        spec.key.gid = format!("{}-{}", ["b", "aa", "a", "Z"][i % 4], spec.key.gid);
        store.put_group(&spec).await.expect("create");
        store
            .add_members(&spec.key, &members_of(&[&user], Role::Member), MAX)
            .await
            .expect("add");
        gids.push(spec.key.gid);
    }
    gids.sort();
    let mut got = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .user_groups(&user, after.as_deref(), 10)
            .await
            .expect("groups");
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 10);
        after = page.last().cloned();
        got.extend(page);
    }
    assert_eq!(got, gids);
}

/// `group_states`: every group of the user with its head, this device's
/// cursor, and where the member's view starts (its join, or 0 when the
/// history is visible).
pub async fn group_states_at_login(store: Arc<dyn Store>) {
    let (early, late) = (fresh_user("early"), fresh_user("late"));
    let mut closed = fresh_group("closed");
    closed.key.gid = format!("a-{}", closed.key.gid);
    let mut open = fresh_group("open");
    open.key.gid = format!("b-{}", open.key.gid);
    open.history_visible = true;
    for spec in [&closed, &open] {
        store.put_group(spec).await.expect("create");
        store
            .add_members(&spec.key, &members_of(&[&early], Role::Member), MAX)
            .await
            .expect("add");
        for i in 0..3 {
            store
                .group_append(group_msg(&early, &spec.key, &format!("m{i}"), "x"))
                .await
                .expect("append");
        }
        store
            .add_members(&spec.key, &members_of(&[&late], Role::Member), MAX)
            .await
            .expect("add late");
        store
            .group_append(group_msg(&late, &spec.key, "late", "x"))
            .await
            .expect("append");
    }
    store
        .advance_group_cursor(&early, "phone", &closed.key, 2)
        .await
        .expect("advance");
    let early_phone = store.group_states(&early, "phone").await.expect("states");
    assert_eq!(
        early_phone,
        vec![
            GroupState {
                gid: closed.key.gid.clone(),
                head: 4,
                cursor: 2,
                visible_after: 0
            },
            GroupState {
                gid: open.key.gid.clone(),
                head: 4,
                cursor: 0,
                visible_after: 0
            },
        ]
    );
    assert!(early_phone.iter().all(GroupState::has_unread));
    let late_laptop = store.group_states(&late, "laptop").await.expect("states");
    assert_eq!(
        late_laptop,
        vec![
            GroupState {
                gid: closed.key.gid.clone(),
                head: 4,
                cursor: 0,
                visible_after: 3
            },
            GroupState {
                gid: open.key.gid.clone(),
                head: 4,
                cursor: 0,
                visible_after: 0
            },
        ]
    );
    assert_eq!(late_laptop[0].read_from(), 3);
    // Caught up: nothing unread.
    for spec in [&closed, &open] {
        store
            .advance_group_cursor(&late, "laptop", &spec.key, 4)
            .await
            .expect("advance");
    }
    let caught_up = store.group_states(&late, "laptop").await.expect("states");
    assert!(caught_up.iter().all(|s| s.cursor == 4 && !s.has_unread()));
    assert!(
        store
            .group_states(&fresh_user("none"), "x")
            .await
            .expect("states")
            .is_empty()
    );
}

/// 8 tasks × 50 appends to one group: the group's timeline is exactly
/// 1..=400, each entry the message acknowledged with that seq, and each
/// sender's messages in its sending order.
pub async fn group_appends_gap_free_under_concurrency(store: Arc<dyn Store>) {
    const TASKS: usize = 8;
    const PER_TASK: usize = 50;
    let spec = fresh_group("busy");
    store.put_group(&spec).await.expect("create");
    let senders: Vec<UserKey> = (0..TASKS).map(|i| fresh_user(&format!("s{i}"))).collect();
    let refs: Vec<&UserKey> = senders.iter().collect();
    store
        .add_members(&spec.key, &members_of(&refs, Role::Member), MAX)
        .await
        .expect("add");
    let mut tasks = JoinSet::new();
    for sender in senders.clone() {
        let (store, key) = (store.clone(), spec.key.clone());
        tasks.spawn(async move {
            let mut acks = Vec::new();
            for i in 0..PER_TASK {
                let a = store
                    .group_append(group_msg(&sender, &key, &format!("c{i}"), format!("{i}")))
                    .await
                    .expect("append");
                assert!(!a.duplicate);
                assert_eq!(a.seqs.len(), 1, "a group append has ONE entry");
                acks.push((a.seqs[0], a.message.id));
            }
            acks
        });
    }
    let mut acked = HashMap::new();
    while let Some(r) = tasks.join_next().await {
        let acks = r.expect("task");
        assert!(
            acks.windows(2).all(|w| w[0].0 < w[1].0),
            "a sender's order broke"
        );
        acked.extend(acks);
    }
    let mut entries = Vec::new();
    loop {
        let page = store
            .group_entries_after(&spec.key, entries.len() as u64, 64)
            .await
            .expect("page");
        if page.entries.is_empty() {
            assert_eq!(page.head, (TASKS * PER_TASK) as u64);
            break;
        }
        entries.extend(page.entries);
    }
    assert_eq!(entries.len(), TASKS * PER_TASK);
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(
            e.seq,
            i as u64 + 1,
            "gap or duplicate on the group timeline"
        );
        assert_eq!(
            acked.get(&e.seq),
            Some(&e.message.id),
            "entry {} is not what was acked",
            e.seq
        );
        assert_eq!(e.message.group, spec.key.gid, "message.group not kept");
    }
    assert_eq!(
        store.group(&spec.key).await.expect("g").expect("g").head,
        400
    );
}

/// Refusals: unknown group, non-member, non-admin in an admins-only group,
/// a removed member; the system may post to an admins-only group; a
/// refusal stores nothing.
pub async fn group_append_refusals(store: Arc<dyn Store>) {
    let spec = fresh_group("broadcast");
    let (admin, member, outsider) = (fresh_user("admin"), fresh_user("member"), fresh_user("out"));
    let missing = GroupKey::new(APP, format!("missing-{}", next_id()));
    assert_eq!(
        refusal(
            store
                .group_append(group_msg(&admin, &missing, "x", "x"))
                .await
        ),
        GroupRefusal::NotFound
    );
    store.put_group(&spec).await.expect("create");
    store
        .add_members(
            &spec.key,
            &[
                (admin.uid.clone(), Role::Admin),
                (member.uid.clone(), Role::Member),
            ],
            MAX,
        )
        .await
        .expect("add");
    assert_eq!(
        refusal(
            store
                .group_append(group_msg(&outsider, &spec.key, "o", "x"))
                .await
        ),
        GroupRefusal::NotMember
    );
    // A user of another app with the same uid is not a member.
    let foreign = UserKey::new("another-app", member.uid.clone());
    assert_eq!(
        refusal(
            store
                .group_append(group_msg(&foreign, &spec.key, "f", "x"))
                .await
        ),
        GroupRefusal::NotMember
    );
    let a1 = store
        .group_append(group_msg(&member, &spec.key, "m", "x"))
        .await
        .expect("members may post");
    assert_eq!(a1.seqs, vec![1]);
    store
        .put_group(&GroupSpec {
            post_policy: PostPolicy::Admins,
            ..spec.clone()
        })
        .await
        .expect("make it a broadcast");
    assert_eq!(
        refusal(
            store
                .group_append(group_msg(&member, &spec.key, "m2", "x"))
                .await
        ),
        GroupRefusal::AdminsOnly
    );
    let a2 = store
        .group_append(group_msg(&admin, &spec.key, "a", "x"))
        .await
        .expect("an admin may post");
    assert_eq!(a2.seqs, vec![2]);
    let mut system = group_msg(&UserKey::new(APP, "system"), &spec.key, "", "notice");
    system.check_sender = false;
    let a3 = store
        .group_append(system)
        .await
        .expect("the system may post");
    assert_eq!(a3.seqs, vec![3]);
    store
        .remove_members(&spec.key, std::slice::from_ref(&admin.uid))
        .await
        .expect("remove");
    assert_eq!(
        refusal(
            store
                .group_append(group_msg(&admin, &spec.key, "a2", "x"))
                .await
        ),
        GroupRefusal::NotMember
    );
    let mut wrong = group_msg(&member, &spec.key, "w", "x");
    wrong.message.group = "another".into();
    assert!(matches!(
        store.group_append(wrong).await,
        Err(StoreError::Invalid(_))
    ));
    // The refusals stored nothing: exactly the 3 accepted entries.
    let page = store
        .group_entries_after(&spec.key, 0, 10)
        .await
        .expect("page");
    assert_eq!(
        page.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(page.head, 3);
    store.delete_group(&spec.key).await.expect("delete");
    assert_eq!(
        refusal(
            store
                .group_append(group_msg(&member, &spec.key, "d", "x"))
                .await
        ),
        GroupRefusal::NotFound
    );
}

/// A resend of `(from, client_msg_id)` to a group answers the first result
/// (also concurrently, also after the sender was removed); the same id in
/// another group, or from another sender, is another message.
pub async fn group_dedupe_returns_first_result_even_after_removal(store: Arc<dyn Store>) {
    let (g1, g2) = (fresh_group("d1"), fresh_group("d2"));
    let (alice, bob) = (fresh_user("alice"), fresh_user("bob"));
    for g in [&g1, &g2] {
        store.put_group(g).await.expect("create");
        store
            .add_members(&g.key, &members_of(&[&alice, &bob], Role::Member), MAX)
            .await
            .expect("add");
    }
    let first = store
        .group_append(group_msg(&alice, &g1.key, "same", "first"))
        .await
        .expect("append");
    let mut tasks = JoinSet::new();
    for _ in 0..8 {
        let (store, alice, key) = (store.clone(), alice.clone(), g1.key.clone());
        tasks.spawn(async move {
            store
                .group_append(group_msg(&alice, &key, "same", "again"))
                .await
                .expect("resend")
        });
    }
    while let Some(r) = tasks.join_next().await {
        let again = r.expect("task");
        assert!(again.duplicate);
        assert_eq!(
            (again.message.id, &again.seqs),
            (first.message.id, &first.seqs)
        );
        assert_eq!(again.message.body, Bytes::from_static(b"first"));
    }
    let other_group = store
        .group_append(group_msg(&alice, &g2.key, "same", "x"))
        .await
        .expect("append");
    assert!(!other_group.duplicate, "de-dup crossed groups");
    let other_sender = store
        .group_append(group_msg(&bob, &g1.key, "same", "x"))
        .await
        .expect("append");
    assert!(!other_sender.duplicate);
    assert_eq!(other_sender.seqs, vec![2]);
    store
        .remove_members(&g1.key, std::slice::from_ref(&alice.uid))
        .await
        .expect("remove");
    let after = store
        .group_append(group_msg(&alice, &g1.key, "same", "late resend"))
        .await
        .expect("a resend after removal answers the first result");
    assert!(after.duplicate);
    assert_eq!(
        (after.message.id, after.seqs.clone()),
        (first.message.id, vec![1])
    );
    assert_eq!(store.group(&g1.key).await.expect("g").expect("g").head, 2);
}

/// `group_entries_after` pages like `entries_after`: in order, at most
/// `limit`, with the head; the message comes back whole.
pub async fn group_entries_after_pages(store: Arc<dyn Store>) {
    let spec = fresh_group("pages");
    let alice = fresh_user("alice");
    store.put_group(&spec).await.expect("create");
    store
        .add_members(&spec.key, &members_of(&[&alice], Role::Member), MAX)
        .await
        .expect("add");
    let mut acks = Vec::new();
    for i in 0..10 {
        acks.push(
            store
                .group_append(group_msg(
                    &alice,
                    &spec.key,
                    &format!("p{i}"),
                    format!("body {i}"),
                ))
                .await
                .expect("append"),
        );
    }
    let page = store
        .group_entries_after(&spec.key, 3, 4)
        .await
        .expect("page");
    assert_eq!(page.head, 10);
    assert_eq!(
        page.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![4, 5, 6, 7]
    );
    for e in &page.entries {
        let acked = &acks[e.seq as usize - 1];
        assert_eq!(*e.message, *acked.message, "a stored group message differs");
    }
    let tail = store
        .group_entries_after(&spec.key, 8, 100)
        .await
        .expect("page");
    assert_eq!(
        tail.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![9, 10]
    );
    let none = store
        .group_entries_after(&spec.key, 10, 100)
        .await
        .expect("page");
    assert!(none.entries.is_empty() && none.head == 10);
    let zero = store
        .group_entries_after(&spec.key, 0, 0)
        .await
        .expect("page");
    assert!(zero.entries.is_empty() && zero.head == 10);
    let max = store
        .group_entries_after(&spec.key, u64::MAX, 10)
        .await
        .expect("page");
    assert!(max.entries.is_empty());
    // Group messages are on no user's timeline.
    assert_eq!(store.timeline_head(&alice).await.expect("head"), 0);
}

/// A group cursor starts at 0, only moves forward, and is per device and
/// per group.
pub async fn group_cursor_moves_forward_only_per_device(store: Arc<dyn Store>) {
    let (g1, g2) = (fresh_group("c1"), fresh_group("c2"));
    let user = fresh_user("reader");
    for g in [&g1, &g2] {
        store.put_group(g).await.expect("create");
        store
            .add_members(&g.key, &members_of(&[&user], Role::Member), MAX)
            .await
            .expect("add");
        for i in 0..100 {
            store
                .group_append(group_msg(&user, &g.key, &format!("{i}"), "x"))
                .await
                .expect("append");
        }
    }
    let cursor = |device: &'static str, g: GroupKey| {
        let (store, user) = (store.clone(), user.clone());
        async move {
            store
                .group_states(&user, device)
                .await
                .expect("states")
                .into_iter()
                .find(|s| s.gid == g.gid)
                .expect("the group is the user's")
                .cursor
        }
    };
    assert_eq!(cursor("phone", g1.key.clone()).await, 0);
    store
        .advance_group_cursor(&user, "phone", &g1.key, 5)
        .await
        .expect("advance");
    store
        .advance_group_cursor(&user, "phone", &g1.key, 3)
        .await
        .expect("advance back");
    assert_eq!(
        cursor("phone", g1.key.clone()).await,
        5,
        "a group cursor moved back"
    );
    assert_eq!(
        cursor("laptop", g1.key.clone()).await,
        0,
        "group cursors are per device"
    );
    assert_eq!(
        cursor("phone", g2.key.clone()).await,
        0,
        "group cursors are per group"
    );
    let mut tasks = JoinSet::new();
    for seq in (10..=60).rev() {
        let (store, user, key) = (store.clone(), user.clone(), g1.key.clone());
        tasks.spawn(async move {
            store
                .advance_group_cursor(&user, "phone", &key, seq)
                .await
                .expect("advance")
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("task");
    }
    assert_eq!(cursor("phone", g1.key.clone()).await, 60);
    // A user cursor is another cursor.
    assert_eq!(store.cursor(&user, "phone").await.expect("cursor"), 0);
}

/// Groups, members, entries, de-dup and group cursors are all there after
/// `close` and a reopen, and appends continue gap-free.
pub async fn groups_survive_close_and_reopen<F, Fut>(open: &F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    let spec = GroupSpec {
        history_visible: true,
        ..fresh_group("durable")
    };
    let (alice, bob) = (fresh_user("alice"), fresh_user("bob"));
    let store = open().await;
    let (created, _) = store.put_group(&spec).await.expect("create");
    store
        .add_members(
            &spec.key,
            &[
                (alice.uid.clone(), Role::Admin),
                (bob.uid.clone(), Role::Member),
            ],
            MAX,
        )
        .await
        .expect("add");
    let mut acks = Vec::new();
    for i in 0..20 {
        acks.push(
            store
                .group_append(group_msg(
                    &alice,
                    &spec.key,
                    &format!("r{i}"),
                    format!("b{i}"),
                ))
                .await
                .expect("append"),
        );
    }
    store
        .advance_group_cursor(&bob, "phone", &spec.key, 12)
        .await
        .expect("advance");
    let before = store
        .group_entries_after(&spec.key, 0, 100)
        .await
        .expect("page");
    let members_before = store.members(&spec.key, None, 10).await.expect("members");
    store.close().await.expect("close");
    drop(store);

    let store = open().await;
    let g = store
        .group(&spec.key)
        .await
        .expect("group")
        .expect("the group survives");
    assert_eq!(
        (g.spec.clone(), g.created_ms, g.head, g.members),
        (spec.clone(), created.created_ms, 20, 2)
    );
    assert_eq!(
        store.members(&spec.key, None, 10).await.expect("members"),
        members_before
    );
    let after = store
        .group_entries_after(&spec.key, 0, 100)
        .await
        .expect("page");
    assert_eq!(
        after.entries, before.entries,
        "group timeline differs after reopen"
    );
    assert_eq!(
        store.group_states(&bob, "phone").await.expect("states"),
        vec![GroupState {
            gid: spec.key.gid.clone(),
            head: 20,
            cursor: 12,
            visible_after: 0
        }],
        "close must flush group cursors"
    );
    assert_eq!(
        store.user_groups(&alice, None, 10).await.expect("groups"),
        vec![spec.key.gid.clone()]
    );
    let dup = store
        .group_append(group_msg(&alice, &spec.key, "r7", "again"))
        .await
        .expect("resend");
    assert!(dup.duplicate, "group de-dup forgot a message across reopen");
    assert_eq!(
        (dup.message.id, &dup.seqs),
        (acks[7].message.id, &acks[7].seqs)
    );
    let next = store
        .group_append(group_msg(&bob, &spec.key, "n", "next"))
        .await
        .expect("append");
    assert_eq!(
        next.seqs,
        vec![21],
        "appends after reopen continue from the stored head"
    );
    store.close().await.expect("close");
}

/// A group of 100,000 members, added in batches of 1,000: counts and pages
/// hold, and a message is still ONE entry (stored once, not per member).
/// Returns how long the add and one append took, for the caller to print.
pub async fn a_group_of_100_000_members(
    store: Arc<dyn Store>,
) -> (std::time::Duration, std::time::Duration) {
    const MEMBERS: usize = 100_000;
    const BATCH: usize = 1_000;
    let spec = fresh_group("huge");
    store.put_group(&spec).await.expect("create");
    let started = std::time::Instant::now();
    let tag = next_id();
    let uid = |i: usize| format!("h{tag}-{i:06}");
    for batch in 0..MEMBERS / BATCH {
        let members: Vec<(String, Role)> = (batch * BATCH..(batch + 1) * BATCH)
            .map(|i| (uid(i), Role::Member))
            .collect();
        let r = store
            .add_members(&spec.key, &members, MEMBERS as u64)
            .await
            .expect("add a batch");
        assert_eq!(r.changed.len(), BATCH);
        assert_eq!(r.members, ((batch + 1) * BATCH) as u64);
    }
    let added = started.elapsed();
    assert_eq!(
        refusal(
            store
                .add_members(
                    &spec.key,
                    &[("one-too-many".into(), Role::Member)],
                    MEMBERS as u64
                )
                .await
        ),
        GroupRefusal::Full
    );
    let g = store.group(&spec.key).await.expect("group").expect("group");
    assert_eq!(g.members, MEMBERS as u64);
    let page = store
        .members(&spec.key, Some(&uid(54_321)), 3)
        .await
        .expect("members");
    assert_eq!(
        page.iter().map(|m| m.uid.clone()).collect::<Vec<_>>(),
        vec![uid(54_322), uid(54_323), uid(54_324)]
    );
    let sender = UserKey::new(APP, uid(77_777));
    let started = std::time::Instant::now();
    let a = store
        .group_append(group_msg(&sender, &spec.key, "big", "to everyone"))
        .await
        .expect("append to a huge group");
    let appended = started.elapsed();
    assert_eq!(a.seqs, vec![1], "one entry, whatever the member count");
    let p = store
        .group_entries_after(&spec.key, 0, 10)
        .await
        .expect("page");
    assert_eq!(p.entries.len(), 1);
    assert_eq!(p.head, 1);
    let states = store
        .group_states(&UserKey::new(APP, uid(99_999)), "phone")
        .await
        .expect("states");
    assert_eq!(
        states,
        vec![GroupState {
            gid: spec.key.gid.clone(),
            head: 1,
            cursor: 0,
            visible_after: 0
        }]
    );
    // Members' own timelines got nothing.
    assert_eq!(
        store
            .timeline_head(&UserKey::new(APP, uid(0)))
            .await
            .expect("head"),
        0
    );
    assert!(
        store
            .delete_group(&spec.key)
            .await
            .expect("delete a huge group")
    );
    assert_eq!(
        store.member(&spec.key, &uid(5)).await.expect("member"),
        None
    );
    (added, appended)
}
