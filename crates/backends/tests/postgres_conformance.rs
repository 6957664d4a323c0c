//! `PgStore` against the store conformance suite, on the shared PostgreSQL
//! (`SWITCHBOARD_TEST_POSTGRES`, default `postgres://postgres@127.0.0.1:5432/test`),
//! plus what only a shared database has: two stores (two nodes) writing the
//! same timelines and racing on the same de-dup keys, cursors flushed by one
//! node and read by another, concurrent migrations.
//!
//! Every test works in a schema of its own (`t_<pid>_<n>`), dropped at the
//! end, so tests run in parallel and leave nothing behind.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use switchboard_backends::{PgOptions, PgStore};
use switchboard_core::group::{
    Group, GroupKey, GroupSpec, GroupState, Member, MembersChanged, NewGroupMessage, Role,
};
use switchboard_core::store::OutboxReceipt;
use switchboard_core::{Appended, BusEvent, Message, NewMessage, Page, Store, StoreError, UserKey};
use switchboard_testkit::pg::shared_url;
use switchboard_testkit::store_conformance::{self as conf, c2c, fresh_user, s2c};
use tokio_postgres::NoTls;

/// A schema of one test; dropped (with everything in it) on drop.
struct Schema {
    url: String,
    name: String,
}

impl Schema {
    fn new() -> Schema {
        Schema {
            url: shared_url(),
            name: format!("t_{}_{}", std::process::id(), conf::next_id()),
        }
    }

    fn options(&self) -> PgOptions {
        PgOptions {
            schema: Some(self.name.clone()),
            ..PgOptions::default()
        }
    }

    async fn open_with(&self, options: PgOptions) -> Arc<PgStore> {
        match PgStore::connect(&self.url, options).await {
            Ok(store) => store,
            Err(e) => panic!(
                "PostgreSQL at {} is needed by this test (set SWITCHBOARD_TEST_POSTGRES): {e}",
                self.url
            ),
        }
    }

    async fn open(&self) -> Arc<PgStore> {
        self.open_with(self.options()).await
    }

    /// A plain client on the test's schema, to look at or damage the tables.
    async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url, NoTls)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {} unreachable: {e}", self.url));
        tokio::spawn(conn);
        client
            .batch_execute(&format!("SET search_path = {}", self.name))
            .await
            .expect("set search_path");
        client
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let (url, name) = (self.url.clone(), self.name.clone());
        // Drop may run inside the test's runtime: clean up on a thread of
        // our own with its own small runtime.
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let (client, conn) = tokio_postgres::connect(&url, NoTls).await.ok()?;
                tokio::spawn(conn);
                client
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                    .await
                    .ok()
            })
        });
        let _ = cleanup.join();
    }
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let schema = Schema::new();
            let store = schema.open().await;
            conf::$name(store.clone()).await;
            store.close().await.expect("close");
        }
    )*};
}

conformance!(
    timelines_gap_free_under_concurrency,
    c2c_entries_on_both_timelines,
    conversation_pages_newest_first,
    dedupe_returns_first_result,
    dedupe_of_concurrent_resends,
    entries_after_pages_and_limits,
    cursor_moves_forward_only,
    outbox_dedupe,
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
async fn groups_survive_close_and_reopen() {
    let schema = Schema::new();
    conf::groups_survive_close_and_reopen(&|| async { schema.open().await as Arc<dyn Store> })
        .await;
}

/// 100,000 members in batches of 1,000; a message is one entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_100_000_members() {
    let schema = Schema::new();
    let store = schema.open().await;
    let (added, appended) = conf::a_group_of_100_000_members(store.clone()).await;
    eprintln!("postgres: 100,000 members added in {added:?}; one append took {appended:?}");
    store.close().await.expect("close");
}

/// Group appends and membership changes racing on two nodes: one gap-free
/// group timeline, one de-dup answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_groups() {
    let schema = Schema::new();
    let nodes = TwoNodes {
        nodes: [schema.open().await, schema.open().await],
        next: AtomicUsize::new(0),
    };
    let store: Arc<dyn Store> = Arc::new(nodes);
    conf::group_appends_gap_free_under_concurrency(store.clone()).await;
    conf::group_dedupe_returns_first_result_even_after_removal(store.clone()).await;
    conf::group_members_add_remove_idempotent(store.clone()).await;
    conf::group_append_refusals(store.clone()).await;
    store.close().await.expect("close");
}

/// PostgreSQL text can't hold NUL: such a client_msg_id is refused alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_in_an_id_is_refused_alone() {
    let schema = Schema::new();
    let store = schema.open().await;
    let (alice, bob) = (fresh_user("alice"), fresh_user("bob"));
    let r = store.append(c2c(&alice, &bob, "bad\0id", "x")).await;
    assert!(matches!(r, Err(StoreError::Invalid(_))), "{r:?}");
    let ok = store
        .append(c2c(&alice, &bob, "good", "x"))
        .await
        .expect("append");
    assert_eq!(ok.seqs, vec![1, 1]);
    store.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_store_refuses_work() {
    let schema = Schema::new();
    conf::a_closed_store_refuses_work(schema.open().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedupe_rows_expire_after_the_window() {
    let schema = Schema::new();
    let store = schema
        .open_with(PgOptions {
            dedupe_window: Duration::from_millis(1),
            ..schema.options()
        })
        .await;
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
    let schema = Schema::new();
    conf::survives_close_and_reopen(&|| async { schema.open().await as Arc<dyn Store> }).await;
}

/// Small batches, few writers and connections: many transactions and batch
/// boundaries, and the pool's wait path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_with_tiny_batches() {
    let schema = Schema::new();
    let options = PgOptions {
        max_batch: 3,
        writers: 2,
        pool_size: 3,
        queue_capacity: 4,
        ..schema.options()
    };
    conf::run_all(|| {
        let options = options.clone();
        let schema = &schema;
        async move { schema.open_with(options).await as Arc<dyn Store> }
    })
    .await;
}

/// Two nodes: every call goes to the next store in turn.
struct TwoNodes {
    nodes: [Arc<PgStore>; 2],
    next: AtomicUsize,
}

impl TwoNodes {
    fn pick(&self) -> &PgStore {
        &self.nodes[self.next.fetch_add(1, Ordering::Relaxed) % 2]
    }
}

#[async_trait]
impl Store for TwoNodes {
    async fn append(&self, msg: NewMessage) -> Result<Appended, StoreError> {
        self.pick().append(msg).await
    }
    async fn entries_after(
        &self,
        u: &UserKey,
        since: u64,
        limit: usize,
    ) -> Result<Page, StoreError> {
        self.pick().entries_after(u, since, limit).await
    }
    async fn conversation(
        &self,
        a: &UserKey,
        b: &UserKey,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Arc<Message>>, StoreError> {
        self.pick().conversation(a, b, before, limit).await
    }
    async fn timeline_head(&self, u: &UserKey) -> Result<u64, StoreError> {
        self.pick().timeline_head(u).await
    }
    async fn cursor(&self, u: &UserKey, device_id: &str) -> Result<u64, StoreError> {
        self.pick().cursor(u, device_id).await
    }
    async fn advance_cursor(
        &self,
        u: &UserKey,
        device_id: &str,
        seq: u64,
    ) -> Result<(), StoreError> {
        self.pick().advance_cursor(u, device_id, seq).await
    }
    async fn outbox_append(
        &self,
        e: &BusEvent,
        dedupe_id: &str,
    ) -> Result<OutboxReceipt, StoreError> {
        self.pick().outbox_append(e, dedupe_id).await
    }
    async fn revoke_tokens(&self, u: &UserKey, issued_before: u64) -> Result<u64, StoreError> {
        self.pick().revoke_tokens(u, issued_before).await
    }
    async fn tokens_revoked_before(&self, u: &UserKey) -> Result<Option<u64>, StoreError> {
        self.pick().tokens_revoked_before(u).await
    }
    async fn message(&self, id: u64) -> Result<Option<Message>, StoreError> {
        self.pick().message(id).await
    }
    async fn conversation_view(&self, u: &UserKey) -> Result<Option<bytes::Bytes>, StoreError> {
        self.pick().conversation_view(u).await
    }
    async fn put_conversation_view(
        &self,
        u: &UserKey,
        view: bytes::Bytes,
    ) -> Result<(), StoreError> {
        self.pick().put_conversation_view(u, view).await
    }
    async fn put_group(&self, spec: &GroupSpec) -> Result<(Group, bool), StoreError> {
        self.pick().put_group(spec).await
    }
    async fn group(&self, key: &GroupKey) -> Result<Option<Group>, StoreError> {
        self.pick().group(key).await
    }
    async fn delete_group(&self, key: &GroupKey) -> Result<bool, StoreError> {
        self.pick().delete_group(key).await
    }
    async fn add_members(
        &self,
        key: &GroupKey,
        members: &[(String, Role)],
        max_members: u64,
    ) -> Result<MembersChanged, StoreError> {
        self.pick().add_members(key, members, max_members).await
    }
    async fn remove_members(
        &self,
        key: &GroupKey,
        uids: &[String],
    ) -> Result<MembersChanged, StoreError> {
        self.pick().remove_members(key, uids).await
    }
    async fn member(&self, key: &GroupKey, uid: &str) -> Result<Option<Member>, StoreError> {
        self.pick().member(key, uid).await
    }
    async fn members(
        &self,
        key: &GroupKey,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Member>, StoreError> {
        self.pick().members(key, after, limit).await
    }
    async fn user_groups(
        &self,
        u: &UserKey,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        self.pick().user_groups(u, after, limit).await
    }
    async fn group_states(
        &self,
        u: &UserKey,
        device_id: &str,
    ) -> Result<Vec<GroupState>, StoreError> {
        self.pick().group_states(u, device_id).await
    }
    async fn group_append(&self, msg: NewGroupMessage) -> Result<Appended, StoreError> {
        self.pick().group_append(msg).await
    }
    async fn group_entries_after(
        &self,
        key: &GroupKey,
        since: u64,
        limit: usize,
    ) -> Result<Page, StoreError> {
        self.pick().group_entries_after(key, since, limit).await
    }
    async fn advance_group_cursor(
        &self,
        u: &UserKey,
        device_id: &str,
        key: &GroupKey,
        seq: u64,
    ) -> Result<(), StoreError> {
        self.pick()
            .advance_group_cursor(u, device_id, key, seq)
            .await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.pick().ping().await
    }
    async fn close(&self) -> Result<(), StoreError> {
        for n in &self.nodes {
            n.close().await?;
        }
        Ok(())
    }
}

/// The properties about timelines, de-dup and the outbox hold when two
/// nodes share the database and alternate on every call (cursors are per
/// node in memory until flushed: see `cursors_flushed_by_one_node_...`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_timelines_and_dedupe() {
    let schema = Schema::new();
    let nodes = TwoNodes {
        nodes: [schema.open().await, schema.open().await],
        next: AtomicUsize::new(0),
    };
    let store: Arc<dyn Store> = Arc::new(nodes);
    conf::timelines_gap_free_under_concurrency(store.clone()).await;
    conf::c2c_entries_on_both_timelines(store.clone()).await;
    conf::conversation_pages_newest_first(store.clone()).await;
    conf::dedupe_returns_first_result(store.clone()).await;
    conf::entries_after_pages_and_limits(store.clone()).await;
    conf::outbox_dedupe(store.clone()).await;
    // The race of a resend on two nodes, many times over.
    for _ in 0..10 {
        conf::dedupe_of_concurrent_resends(store.clone()).await;
    }
    store.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_flushed_by_one_node_are_read_by_another() {
    let schema = Schema::new();
    let options = PgOptions {
        cursor_flush_interval: Duration::from_millis(50),
        ..schema.options()
    };
    let a = schema.open_with(options.clone()).await;
    let b = schema.open_with(options).await;
    let user = fresh_user("reader");
    a.advance_cursor(&user, "phone", 42).await.expect("advance");
    // Flushed by a's maintenance task within its interval.
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.cursor(&user, "phone").await.expect("cursor") != 42 {
        assert!(
            Instant::now() < deadline,
            "the cursor never reached PostgreSQL"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A lower ack flushed by another node never moves it back.
    b.advance_cursor(&user, "phone", 40).await.expect("advance");
    b.flush_cursors().await.expect("flush");
    assert_eq!(a.cursor(&user, "phone").await.expect("cursor"), 42);
    assert_eq!(b.cursor(&user, "phone").await.expect("cursor"), 42);
    b.advance_cursor(&user, "phone", 50).await.expect("advance");
    b.close().await.expect("close flushes");
    assert_eq!(a.cursor(&user, "phone").await.expect("cursor"), 50);
    a.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_starting_together_migrate_once() {
    let schema = Schema::new();
    let mut starting = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (url, options) = (schema.url.clone(), schema.options());
        starting.spawn(async move { PgStore::connect(&url, options).await });
    }
    while let Some(r) = starting.join_next().await {
        let store = r.expect("task").expect("connect while others migrate");
        store.close().await.expect("close");
    }
    let client = schema.client().await;
    let rows = client
        .query(
            "SELECT version FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .expect("schema_migrations");
    let versions: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        versions,
        (1..=switchboard_backends::postgres::SCHEMA_VERSION).collect::<Vec<_>>()
    );

    // A database migrated by a newer build is refused, not guessed at.
    client
        .execute(
            "INSERT INTO schema_migrations (version, name) VALUES (999, 'future')",
            &[],
        )
        .await
        .expect("insert");
    let r = PgStore::connect(&schema.url, schema.options()).await;
    assert!(matches!(r, Err(StoreError::Corrupt(_))), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unexpected_data_is_an_error_not_a_panic() {
    let schema = Schema::new();
    let store = schema.open().await;
    let (alice, bob) = (fresh_user("alice"), fresh_user("bob"));
    store
        .append(c2c(&alice, &bob, "m1", "x"))
        .await
        .expect("append");

    let client = schema.client().await;
    client
        .execute(
            "UPDATE timeline_heads SET head = -5 WHERE uid = $1",
            &[&bob.uid],
        )
        .await
        .expect("corrupt head");
    client
        .execute(
            "UPDATE dedupe SET seqs = '{-1}' WHERE uid = $1",
            &[&alice.uid],
        )
        .await
        .expect("corrupt seqs");
    let r = store.timeline_head(&bob).await;
    assert!(matches!(r, Err(StoreError::Corrupt(_))), "{r:?}");
    let r = store.entries_after(&bob, 0, 10).await;
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
}

/// Nothing listens: connect fails `Unavailable`, within the timeouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_unavailable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/test");
    let r = PgStore::connect(&url, PgOptions::default()).await;
    assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
    let r = PgStore::connect("not a url", PgOptions::default()).await;
    assert!(matches!(r, Err(StoreError::Invalid(_))), "{r:?}");
    let bad_schema = PgOptions {
        schema: Some("Robert'); DROP".into()),
        ..PgOptions::default()
    };
    let r = PgStore::connect(&shared_url(), bad_schema).await;
    assert!(matches!(r, Err(StoreError::Invalid(_))), "{r:?}");
}
