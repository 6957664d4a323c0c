-- Switchboard PostgreSQL schema, version 1. Applied once by PgStore::connect
-- (see crates/backends/src/postgres/schema.rs); never edit an applied file,
-- add the next one instead.

-- One row per stored message. msg_id is the u64 server id stored as its i64
-- bit pattern (ids stay below 2^63 until about 2093).
CREATE TABLE message (
    msg_id         BIGINT PRIMARY KEY,
    app            TEXT   NOT NULL,  -- the sender's app
    from_uid       TEXT   NOT NULL,
    to_app         TEXT   NOT NULL,
    to_uid         TEXT   NOT NULL,
    kind           TEXT   NOT NULL,
    body           BYTEA  NOT NULL,
    client_msg_id  TEXT   NOT NULL,
    server_time_ms BIGINT NOT NULL
);
-- Conversation history (Store::conversation): each direction of a pair is
-- one range of this index, by id.
CREATE INDEX message_conversation ON message (app, from_uid, to_app, to_uid, msg_id);

-- The last seq given on each user's timeline. Appends bump it with
-- INSERT .. ON CONFLICT DO UPDATE in the same transaction as the entries:
-- the row lock serializes the writers of one user (on every node) and lets
-- other users proceed in parallel.
CREATE TABLE timeline_heads (
    app  TEXT   NOT NULL,
    uid  TEXT   NOT NULL,
    head BIGINT NOT NULL,
    PRIMARY KEY (app, uid)
);

-- Every user's timeline: gap-free seq from 1.
CREATE TABLE timeline (
    app    TEXT   NOT NULL,
    uid    TEXT   NOT NULL,
    seq    BIGINT NOT NULL,
    msg_id BIGINT NOT NULL,
    PRIMARY KEY (app, uid, seq)
);

-- De-duplication of (sender, client_msg_id); rows older than the window are
-- purged. seqs: the entries' seqs in the order of NewMessage::timelines.
CREATE TABLE dedupe (
    app           TEXT     NOT NULL,
    uid           TEXT     NOT NULL,
    client_msg_id TEXT     NOT NULL,
    msg_id        BIGINT   NOT NULL,
    seqs          BIGINT[] NOT NULL,
    created_ms    BIGINT   NOT NULL,
    PRIMARY KEY (app, uid, client_msg_id)
);
CREATE INDEX dedupe_created ON dedupe (created_ms);

-- Device cursors, written lazily (a crash may move one back, never forward).
CREATE TABLE cursor (
    app       TEXT   NOT NULL,
    uid       TEXT   NOT NULL,
    device_id TEXT   NOT NULL,
    seq       BIGINT NOT NULL,
    PRIMARY KEY (app, uid, device_id)
);

-- Events for the bus (webhook dispatcher); id is the event id (u64 as i64).
CREATE TABLE outbox (
    id           BIGINT PRIMARY KEY,
    topic        TEXT   NOT NULL,
    app          TEXT   NOT NULL,
    uid          TEXT   NOT NULL,
    kind         TEXT   NOT NULL,
    body         BYTEA  NOT NULL,
    time_ms      BIGINT NOT NULL,
    dedupe_id    TEXT   NOT NULL,  -- '' = no de-duplication
    created_ms   BIGINT NOT NULL,
    delivered_ms BIGINT            -- NULL while pending
);
CREATE UNIQUE INDEX outbox_dedupe ON outbox (app, uid, dedupe_id) WHERE dedupe_id <> '';
CREATE INDEX outbox_pending ON outbox (id) WHERE delivered_ms IS NULL;
