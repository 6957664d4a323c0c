//! The on-disk schema of [`SqliteStore`](super::SqliteStore): creation,
//! migration and the pragmas every connection sets.
//!
//! The version lives in `PRAGMA user_version`; [`migrate`] brings a file from
//! any older version to [`SCHEMA_VERSION`] inside one transaction and refuses a
//! file written by a newer build (`StoreError::Corrupt`) rather than guess.
//!
//! Version 1:
//!
//! ```sql
//! -- One row per stored message. msg_id is the u64 server id stored as its
//! -- i64 bit pattern (ids stay below 2^63 until about 2093).
//! CREATE TABLE message (
//!     msg_id         INTEGER PRIMARY KEY,
//!     app            TEXT    NOT NULL,   -- the sender's app
//!     from_uid       TEXT    NOT NULL,
//!     to_app         TEXT    NOT NULL,
//!     to_uid         TEXT    NOT NULL,
//!     kind           TEXT    NOT NULL,
//!     body           BLOB    NOT NULL,
//!     client_msg_id  TEXT    NOT NULL,
//!     server_time_ms INTEGER NOT NULL
//! );
//! -- Every user's timeline: gap-free seq from 1.
//! CREATE TABLE timeline (
//!     app    TEXT    NOT NULL,
//!     uid    TEXT    NOT NULL,
//!     seq    INTEGER NOT NULL,
//!     msg_id INTEGER NOT NULL,
//!     PRIMARY KEY (app, uid, seq)
//! ) WITHOUT ROWID;
//! -- De-duplication of (sender, client_msg_id); rows older than the window
//! -- are purged. seqs: the entries' seqs, 8 bytes big-endian each, in the
//! -- order of NewMessage::timelines.
//! CREATE TABLE dedupe (
//!     app           TEXT    NOT NULL,
//!     uid           TEXT    NOT NULL,
//!     client_msg_id TEXT    NOT NULL,
//!     msg_id        INTEGER NOT NULL,
//!     seqs          BLOB    NOT NULL,
//!     created_ms    INTEGER NOT NULL,
//!     PRIMARY KEY (app, uid, client_msg_id)
//! ) WITHOUT ROWID;
//! CREATE INDEX dedupe_created ON dedupe (created_ms);
//! -- Device cursors, written lazily (a crash may move one back, never forward).
//! CREATE TABLE cursor (
//!     app       TEXT    NOT NULL,
//!     uid       TEXT    NOT NULL,
//!     device_id TEXT    NOT NULL,
//!     seq       INTEGER NOT NULL,
//!     PRIMARY KEY (app, uid, device_id)
//! ) WITHOUT ROWID;
//! -- Events for the bus (webhook dispatcher); id is the event id (u64 as i64).
//! CREATE TABLE outbox (
//!     id           INTEGER PRIMARY KEY,
//!     topic        TEXT    NOT NULL,
//!     app          TEXT    NOT NULL,
//!     uid          TEXT    NOT NULL,
//!     kind         TEXT    NOT NULL,
//!     body         BLOB    NOT NULL,
//!     time_ms      INTEGER NOT NULL,
//!     dedupe_id    TEXT    NOT NULL,    -- '' = no de-duplication
//!     created_ms   INTEGER NOT NULL,
//!     delivered_ms INTEGER              -- NULL while pending
//! );
//! CREATE UNIQUE INDEX outbox_dedupe  ON outbox (app, uid, dedupe_id) WHERE dedupe_id <> '';
//! CREATE INDEX        outbox_pending ON outbox (id) WHERE delivered_ms IS NULL;
//! ```
//!
//! Version 2 adds:
//!
//! ```sql
//! -- Conversation history: each direction of a pair is one range, by id.
//! CREATE INDEX message_conversation ON message (app, from_uid, to_app, to_uid, msg_id);
//! ```
//!
//! Version 3 adds:
//!
//! ```sql
//! -- Login tokens issued (iat) before issued_before are refused; only raised.
//! CREATE TABLE token_revocation (
//!     app           TEXT    NOT NULL,
//!     uid           TEXT    NOT NULL,
//!     issued_before INTEGER NOT NULL,
//!     PRIMARY KEY (app, uid)
//! ) WITHOUT ROWID;
//! ```
//!
//! Version 4 adds groups (read diffusion: a group message is one
//! `group_timeline` row):
//!
//! ```sql
//! -- A message to a group carries the group's id ('' for any other).
//! ALTER TABLE message ADD COLUMN group_gid TEXT NOT NULL DEFAULT '';
//! -- Groups. id is the group's generation: AUTOINCREMENT never hands an id
//! -- out twice, so rows keyed by it (cursors, de-dup) of a deleted group
//! -- never match the group created again with the same gid. head is the
//! -- last seq of its timeline, members its member count (both O(1) reads).
//! CREATE TABLE grp (
//!     id              INTEGER PRIMARY KEY AUTOINCREMENT,
//!     app             TEXT    NOT NULL,
//!     gid             TEXT    NOT NULL,
//!     name            TEXT    NOT NULL,
//!     meta            BLOB    NOT NULL,
//!     post_policy     TEXT    NOT NULL,   -- 'members' | 'admins'
//!     history_visible INTEGER NOT NULL,
//!     created_ms      INTEGER NOT NULL,
//!     head            INTEGER NOT NULL,
//!     members         INTEGER NOT NULL,
//!     UNIQUE (app, gid)
//! );
//! CREATE TABLE group_member (
//!     group_id   INTEGER NOT NULL,
//!     uid        TEXT    NOT NULL,
//!     role       TEXT    NOT NULL,        -- 'member' | 'admin'
//!     joined_seq INTEGER NOT NULL,
//!     joined_ms  INTEGER NOT NULL,
//!     PRIMARY KEY (group_id, uid)
//! ) WITHOUT ROWID;
//! -- A user's groups (members are of the group's app).
//! CREATE TABLE user_group (
//!     app      TEXT    NOT NULL,
//!     uid      TEXT    NOT NULL,
//!     gid      TEXT    NOT NULL,
//!     group_id INTEGER NOT NULL,
//!     PRIMARY KEY (app, uid, gid)
//! ) WITHOUT ROWID;
//! -- A group's timeline: ONE row per message, whatever the member count.
//! CREATE TABLE group_timeline (
//!     group_id INTEGER NOT NULL,
//!     seq      INTEGER NOT NULL,
//!     msg_id   INTEGER NOT NULL,
//!     PRIMARY KEY (group_id, seq)
//! ) WITHOUT ROWID;
//! -- Device cursors on group timelines, written lazily like `cursor`.
//! CREATE TABLE group_cursor (
//!     app       TEXT    NOT NULL,
//!     uid       TEXT    NOT NULL,
//!     device_id TEXT    NOT NULL,
//!     group_id  INTEGER NOT NULL,
//!     seq       INTEGER NOT NULL,
//!     PRIMARY KEY (app, uid, device_id, group_id)
//! ) WITHOUT ROWID;
//! -- De-duplication of (sender, client_msg_id) per group, purged with `dedupe`.
//! CREATE TABLE group_dedupe (
//!     group_id      INTEGER NOT NULL,
//!     app           TEXT    NOT NULL,
//!     uid           TEXT    NOT NULL,
//!     client_msg_id TEXT    NOT NULL,
//!     msg_id        INTEGER NOT NULL,
//!     seq           INTEGER NOT NULL,
//!     created_ms    INTEGER NOT NULL,
//!     PRIMARY KEY (group_id, app, uid, client_msg_id)
//! ) WITHOUT ROWID;
//! CREATE INDEX group_dedupe_created ON group_dedupe (created_ms);
//! ```
//!
//! Delivered outbox rows older than the de-dup window are purged with the
//! de-dup rows, so neither table grows forever.

use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::{Connection, TransactionBehavior};
use switchboard_core::StoreError;

use super::unavailable;

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = 5;

const V1: &str = "
CREATE TABLE IF NOT EXISTS message (
    msg_id         INTEGER PRIMARY KEY,
    app            TEXT    NOT NULL,
    from_uid       TEXT    NOT NULL,
    to_app         TEXT    NOT NULL,
    to_uid         TEXT    NOT NULL,
    kind           TEXT    NOT NULL,
    body           BLOB    NOT NULL,
    client_msg_id  TEXT    NOT NULL,
    server_time_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS timeline (
    app    TEXT    NOT NULL,
    uid    TEXT    NOT NULL,
    seq    INTEGER NOT NULL,
    msg_id INTEGER NOT NULL,
    PRIMARY KEY (app, uid, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dedupe (
    app           TEXT    NOT NULL,
    uid           TEXT    NOT NULL,
    client_msg_id TEXT    NOT NULL,
    msg_id        INTEGER NOT NULL,
    seqs          BLOB    NOT NULL,
    created_ms    INTEGER NOT NULL,
    PRIMARY KEY (app, uid, client_msg_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dedupe_created ON dedupe (created_ms);
CREATE TABLE IF NOT EXISTS cursor (
    app       TEXT    NOT NULL,
    uid       TEXT    NOT NULL,
    device_id TEXT    NOT NULL,
    seq       INTEGER NOT NULL,
    PRIMARY KEY (app, uid, device_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox (
    id           INTEGER PRIMARY KEY,
    topic        TEXT    NOT NULL,
    app          TEXT    NOT NULL,
    uid          TEXT    NOT NULL,
    kind         TEXT    NOT NULL,
    body         BLOB    NOT NULL,
    time_ms      INTEGER NOT NULL,
    dedupe_id    TEXT    NOT NULL,
    created_ms   INTEGER NOT NULL,
    delivered_ms INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS outbox_dedupe ON outbox (app, uid, dedupe_id) WHERE dedupe_id <> '';
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (id) WHERE delivered_ms IS NULL;
";

/// Version 2: conversation history (`Store::conversation`) reads each
/// direction of a pair as one index range, newest first.
const V2: &str = "
CREATE INDEX IF NOT EXISTS message_conversation ON message (app, from_uid, to_app, to_uid, msg_id);
";

/// Version 3: token revocations (`Store::revoke_tokens`).
const V3: &str = "
CREATE TABLE IF NOT EXISTS token_revocation (
    app           TEXT    NOT NULL,
    uid           TEXT    NOT NULL,
    issued_before INTEGER NOT NULL,
    PRIMARY KEY (app, uid)
) WITHOUT ROWID;
";

/// Version 5: conversation views (`Store::put_conversation_view`).
const V5: &str = "
CREATE TABLE IF NOT EXISTS conversation_view (
    app  TEXT NOT NULL,
    uid  TEXT NOT NULL,
    view BLOB NOT NULL,
    PRIMARY KEY (app, uid)
) WITHOUT ROWID;
";

/// Version 4: groups (`Store::put_group` and the rest).
const V4: &str = "
-- A message to a group carries the group's id ('' for any other).
ALTER TABLE message ADD COLUMN group_gid TEXT NOT NULL DEFAULT '';
-- Groups. id is the group's generation: AUTOINCREMENT never hands an id
-- out twice, so rows keyed by it (cursors, de-dup) of a deleted group
-- never match the group created again with the same gid. head is the
-- last seq of its timeline, members its member count (both O(1) reads).
CREATE TABLE IF NOT EXISTS grp (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    app             TEXT    NOT NULL,
    gid             TEXT    NOT NULL,
    name            TEXT    NOT NULL,
    meta            BLOB    NOT NULL,
    post_policy     TEXT    NOT NULL,   -- 'members' | 'admins'
    history_visible INTEGER NOT NULL,
    created_ms      INTEGER NOT NULL,
    head            INTEGER NOT NULL,
    members         INTEGER NOT NULL,
    UNIQUE (app, gid)
);
CREATE TABLE IF NOT EXISTS group_member (
    group_id   INTEGER NOT NULL,
    uid        TEXT    NOT NULL,
    role       TEXT    NOT NULL,        -- 'member' | 'admin'
    joined_seq INTEGER NOT NULL,
    joined_ms  INTEGER NOT NULL,
    PRIMARY KEY (group_id, uid)
) WITHOUT ROWID;
-- A user's groups (members are of the group's app).
CREATE TABLE IF NOT EXISTS user_group (
    app      TEXT    NOT NULL,
    uid      TEXT    NOT NULL,
    gid      TEXT    NOT NULL,
    group_id INTEGER NOT NULL,
    PRIMARY KEY (app, uid, gid)
) WITHOUT ROWID;
-- A group's timeline: ONE row per message, whatever the member count.
CREATE TABLE IF NOT EXISTS group_timeline (
    group_id INTEGER NOT NULL,
    seq      INTEGER NOT NULL,
    msg_id   INTEGER NOT NULL,
    PRIMARY KEY (group_id, seq)
) WITHOUT ROWID;
-- Device cursors on group timelines, written lazily like `cursor`.
CREATE TABLE IF NOT EXISTS group_cursor (
    app       TEXT    NOT NULL,
    uid       TEXT    NOT NULL,
    device_id TEXT    NOT NULL,
    group_id  INTEGER NOT NULL,
    seq       INTEGER NOT NULL,
    PRIMARY KEY (app, uid, device_id, group_id)
) WITHOUT ROWID;
-- De-duplication of (sender, client_msg_id) per group, purged with `dedupe`.
CREATE TABLE IF NOT EXISTS group_dedupe (
    group_id      INTEGER NOT NULL,
    app           TEXT    NOT NULL,
    uid           TEXT    NOT NULL,
    client_msg_id TEXT    NOT NULL,
    msg_id        INTEGER NOT NULL,
    seq           INTEGER NOT NULL,
    created_ms    INTEGER NOT NULL,
    PRIMARY KEY (group_id, app, uid, client_msg_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS group_dedupe_created ON group_dedupe (created_ms);
";

/// How long a connection waits on a lock (a checkpoint, the writer's commit)
/// before reporting the store unavailable.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Pragmas of the one write connection: WAL so readers never block the
/// writer, `synchronous=FULL` so a COMMIT returns only after the WAL is fsync'd.
pub fn configure_writer(conn: &Connection) -> Result<(), StoreError> {
    conn.busy_timeout(BUSY_TIMEOUT).map_err(unavailable)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(unavailable)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Unavailable(format!(
            "sqlite refused WAL mode (got {mode})"
        )));
    }
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(unavailable)?;
    // No automatic checkpoint inside a COMMIT: the checkpointer thread and
    // the writer between groups do it (`checkpoint`).
    conn.pragma_update(None, "wal_autocheckpoint", 0)
        .map_err(unavailable)?;
    // 32 MiB page cache (default 2 MiB): timeline and de-dup inserts land on
    // random pages; keeping the hot ones cached saves re-reads.
    conn.pragma_update(None, "cache_size", -32_768)
        .map_err(unavailable)?;
    // The writer prepares a handful of statements; keep them all cached.
    conn.set_prepared_statement_cache_capacity(32);
    stable_plans(conn)
}

/// The query planner stability guarantee: a cached statement keeps its
/// plan whatever is bound to it. Without it SQLite compiles a statement
/// again on the next step after a rebind of any parameter its plan looked
/// at (`LIMIT ?`, a column compared with a partial index's condition, …):
/// that was a quarter of the node's CPU in the reconnect benchmark (every
/// login's head, cursor and sync reads). Our statements are simple keyed
/// lookups whose best plan does not depend on the values.
fn stable_plans(conn: &Connection) -> Result<(), StoreError> {
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
        .map_err(unavailable)?;
    Ok(())
}

/// Pragmas of the checkpointer's connection: it only runs PASSIVE
/// checkpoints, which never wait for the writer; the busy timeout covers
/// its first read of the WAL while another connection recovers it.
pub fn configure_checkpointer(conn: &Connection) -> Result<(), StoreError> {
    conn.busy_timeout(BUSY_TIMEOUT).map_err(unavailable)
}

/// Pragmas of a read connection: it never writes.
pub fn configure_reader(conn: &Connection) -> Result<(), StoreError> {
    conn.busy_timeout(BUSY_TIMEOUT).map_err(unavailable)?;
    conn.pragma_update(None, "query_only", true)
        .map_err(unavailable)?;
    // 8 MiB page cache per reader (default 2 MiB): a reconnect storm reads
    // every user's timeline once, and a page missed here is a pread.
    conn.pragma_update(None, "cache_size", -8_192)
        .map_err(unavailable)?;
    conn.set_prepared_statement_cache_capacity(16);
    stable_plans(conn)
}

/// Creates or upgrades the schema to [`SCHEMA_VERSION`].
pub fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(unavailable)?;
    let version: i64 = tx
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(unavailable)?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Corrupt(format!(
            "database schema version {version} is newer than this build's {SCHEMA_VERSION}"
        )));
    }
    if version < 1 {
        tx.execute_batch(V1).map_err(unavailable)?;
    }
    if version < 2 {
        tx.execute_batch(V2).map_err(unavailable)?;
    }
    if version < 3 {
        tx.execute_batch(V3).map_err(unavailable)?;
    }
    if version < 4 {
        // ALTER TABLE ADD COLUMN has no IF NOT EXISTS: V4 runs once, in
        // this transaction, so it never meets its own column.
        tx.execute_batch(V4).map_err(unavailable)?;
    }
    if version < 5 {
        tx.execute_batch(V5).map_err(unavailable)?;
    }
    // Later versions: `if version < 6 { ... }`, each step idempotent.
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(unavailable)?;
    tx.commit().map_err(unavailable)
}
