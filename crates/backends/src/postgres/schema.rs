//! The schema of [`PgStore`](super::PgStore) and its migrations.
//!
//! Migrations are SQL files under `migrations/`, compiled into the binary with
//! `include_str!` and listed in [`MIGRATIONS`]. [`migrate`] applies the
//! missing ones at start, all in ONE transaction that first takes
//! `pg_advisory_xact_lock`, so several nodes starting at once apply each file
//! exactly once (the others wait, then find nothing to do). Applied versions
//! are recorded in `schema_migrations`; a database already migrated by a newer
//! build is refused with `StoreError::Corrupt` rather than guessed at.
//!
//! Version 1 (`migrations/0001_init.sql`; `docs/deployment.md`, section
//! "PostgreSQL schema", describes it for operators):
//!
//! ```sql
//! CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,
//!                                 applied_at TIMESTAMPTZ NOT NULL DEFAULT now());
//! -- msg_id and every other id: the u64 stored as its i64 bit pattern.
//! CREATE TABLE message (msg_id BIGINT PRIMARY KEY, app TEXT, from_uid TEXT,
//!     to_app TEXT, to_uid TEXT, kind TEXT, body BYTEA, client_msg_id TEXT,
//!     server_time_ms BIGINT);                                -- all NOT NULL
//! -- Conversation history: each direction of a pair is one range, by id.
//! CREATE INDEX message_conversation ON message (app, from_uid, to_app, to_uid, msg_id);
//! -- The last seq given per user: bumped in the append's transaction, its row
//! -- lock serializes the writers of one user across all nodes.
//! CREATE TABLE timeline_heads (app TEXT, uid TEXT, head BIGINT, PRIMARY KEY (app, uid));
//! -- Gap-free timelines from seq 1.
//! CREATE TABLE timeline (app TEXT, uid TEXT, seq BIGINT, msg_id BIGINT,
//!                        PRIMARY KEY (app, uid, seq));
//! -- De-dup of (sender, client_msg_id) -> first msg_id and its seqs; purged
//! -- after the window.
//! CREATE TABLE dedupe (app TEXT, uid TEXT, client_msg_id TEXT, msg_id BIGINT,
//!                      seqs BIGINT[], created_ms BIGINT,
//!                      PRIMARY KEY (app, uid, client_msg_id));
//! CREATE INDEX dedupe_created ON dedupe (created_ms);
//! -- Device cursors, flushed lazily with GREATEST (never back on disk).
//! CREATE TABLE cursor (app TEXT, uid TEXT, device_id TEXT, seq BIGINT,
//!                      PRIMARY KEY (app, uid, device_id));
//! -- Bus events for the webhook dispatcher.
//! CREATE TABLE outbox (id BIGINT PRIMARY KEY, topic TEXT, app TEXT, uid TEXT,
//!     kind TEXT, body BYTEA, time_ms BIGINT, dedupe_id TEXT, created_ms BIGINT,
//!     delivered_ms BIGINT NULL);
//! CREATE UNIQUE INDEX outbox_dedupe ON outbox (app, uid, dedupe_id) WHERE dedupe_id <> '';
//! CREATE INDEX outbox_pending ON outbox (id) WHERE delivered_ms IS NULL;
//! ```
//!
//! Version 2 (`migrations/0002_token_revocation.sql`):
//!
//! ```sql
//! -- Login tokens issued (iat) before issued_before are refused; GREATEST only.
//! CREATE TABLE token_revocation (app TEXT, uid TEXT, issued_before BIGINT,
//!                                PRIMARY KEY (app, uid));
//! ```
//!
//! Version 3 (`migrations/0003_groups.sql`): groups, stored once.
//!
//! ```sql
//! ALTER TABLE message ADD COLUMN group_gid TEXT NOT NULL DEFAULT '';
//! -- id: the generation (never reused); head and members: O(1) reads;
//! -- an append locks the row to take the next seq.
//! CREATE TABLE grp (id BIGSERIAL PRIMARY KEY, app TEXT, gid TEXT COLLATE "C",
//!     name TEXT, meta BYTEA, post_policy TEXT, history_visible BOOLEAN,
//!     created_ms BIGINT, head BIGINT, members BIGINT, UNIQUE (app, gid));
//! CREATE TABLE group_member (group_id BIGINT, uid TEXT COLLATE "C", role TEXT,
//!     joined_seq BIGINT, joined_ms BIGINT, PRIMARY KEY (group_id, uid));
//! CREATE TABLE user_group (app TEXT, uid TEXT, gid TEXT COLLATE "C",
//!     group_id BIGINT, PRIMARY KEY (app, uid, gid));
//! CREATE TABLE group_timeline (group_id BIGINT, seq BIGINT, msg_id BIGINT,
//!     PRIMARY KEY (group_id, seq));                -- one row per message
//! CREATE TABLE group_cursor (app TEXT, uid TEXT, device_id TEXT,
//!     group_id BIGINT, seq BIGINT, PRIMARY KEY (app, uid, device_id, group_id));
//! CREATE TABLE group_dedupe (group_id BIGINT, app TEXT, uid TEXT,
//!     client_msg_id TEXT, msg_id BIGINT, seq BIGINT, created_ms BIGINT,
//!     PRIMARY KEY (group_id, app, uid, client_msg_id));
//! CREATE INDEX group_dedupe_created ON group_dedupe (created_ms);
//! ```

use deadpool_postgres::Object;
use switchboard_core::StoreError;

use super::unavailable;

/// One embedded migration.
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, in order. Never edit an applied one: add the next.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_init",
        sql: include_str!("migrations/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "0002_token_revocation",
        sql: include_str!("migrations/0002_token_revocation.sql"),
    },
    Migration {
        version: 3,
        name: "0003_groups",
        sql: include_str!("migrations/0003_groups.sql"),
    },
    Migration {
        version: 4,
        name: "0004_conversation_view",
        sql: include_str!("migrations/0004_conversation_view.sql"),
    },
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i32 = 4;

/// First key of the advisory lock; the second is the hash of the schema name,
/// so stores in different schemas of one database migrate independently.
const LOCK_KEY: i32 = 0x5357_4244; // "SWBD"

/// Checks a schema name: lowercase ASCII identifier, so it needs no quoting
/// in `CREATE SCHEMA` nor in `search_path`.
pub fn check_schema_name(name: &str) -> Result<(), StoreError> {
    let mut chars = name.chars();
    let ok = name.len() <= 63
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "postgresql schema name {name:?}: use [a-z_][a-z0-9_]*, at most 63 characters"
        )))
    }
}

/// Creates the schema (when one is configured) and applies every missing
/// migration, under the advisory lock, in one transaction.
pub async fn migrate(client: &mut Object, schema: Option<&str>) -> Result<(), StoreError> {
    let tx = client.transaction().await.map_err(unavailable)?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, hashtext(COALESCE($2::text, current_schema(), '')))",
        &[&LOCK_KEY, &schema],
    )
    .await
    .map_err(unavailable)?;
    if let Some(schema) = schema {
        // Validated by check_schema_name: safe to splice unquoted.
        tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
            .await
            .map_err(unavailable)?;
    }
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    INTEGER     PRIMARY KEY,
             name       TEXT        NOT NULL,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
         )",
    )
    .await
    .map_err(unavailable)?;
    let row = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0)::INTEGER FROM schema_migrations",
            &[],
        )
        .await
        .map_err(unavailable)?;
    let current: i32 = row
        .try_get(0)
        .map_err(|e| StoreError::Corrupt(format!("schema_migrations: {e}")))?;
    if current > SCHEMA_VERSION {
        return Err(StoreError::Corrupt(format!(
            "database schema version {current} is newer than this build's {SCHEMA_VERSION}"
        )));
    }
    for m in MIGRATIONS.iter().filter(|m| m.version > current) {
        tx.batch_execute(m.sql).await.map_err(|e| {
            StoreError::Unavailable(format!(
                "applying migration {}: {}",
                m.name,
                super::describe(&e)
            ))
        })?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[&m.version, &m.name],
        )
        .await
        .map_err(unavailable)?;
        tracing::info!(migration = m.name, "applied postgresql migration");
    }
    tx.commit().await.map_err(unavailable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i32 + 1, "{}", m.name);
            assert!(m.name.starts_with(&format!("{:04}_", m.version)));
        }
        assert_eq!(MIGRATIONS.last().map(|m| m.version), Some(SCHEMA_VERSION));
    }

    #[test]
    fn schema_names_are_checked() {
        assert!(check_schema_name("t_abc123").is_ok());
        assert!(check_schema_name("_x").is_ok());
        for bad in ["", "1abc", "Abc", "a-b", "a b", "a;drop", &"x".repeat(64)] {
            assert!(check_schema_name(bad).is_err(), "{bad:?}");
        }
    }
}
