-- Switchboard PostgreSQL schema, version 3: groups, stored once ("read
-- diffusion"): a group message is one message row and ONE group_timeline
-- row, whatever the member count; each member device keeps a cursor per
-- group.

-- A message to a group carries the group's id ('' for any other). A
-- constant default: no table rewrite.
ALTER TABLE message ADD COLUMN group_gid TEXT NOT NULL DEFAULT '';

-- Groups. id is the group's generation (a sequence never hands it out
-- twice): rows keyed by it (cursors, de-dup) of a deleted group never match
-- the group created again with the same gid. An append locks the row and
-- bumps head (gap-free seqs on every node); members is the member count.
-- gid and uid are COLLATE "C": pages go in byte order, as on every store.
CREATE TABLE grp (
    id              BIGSERIAL PRIMARY KEY,
    app             TEXT    NOT NULL,
    gid             TEXT    COLLATE "C" NOT NULL,
    name            TEXT    NOT NULL,
    meta            BYTEA   NOT NULL,
    post_policy     TEXT    NOT NULL,  -- 'members' | 'admins'
    history_visible BOOLEAN NOT NULL,
    created_ms      BIGINT  NOT NULL,
    head            BIGINT  NOT NULL DEFAULT 0,
    members         BIGINT  NOT NULL DEFAULT 0,
    UNIQUE (app, gid)
);

CREATE TABLE group_member (
    group_id   BIGINT NOT NULL,
    uid        TEXT   COLLATE "C" NOT NULL,
    role       TEXT   NOT NULL,        -- 'member' | 'admin'
    joined_seq BIGINT NOT NULL,
    joined_ms  BIGINT NOT NULL,
    PRIMARY KEY (group_id, uid)
);

-- A user's groups (members are users of the group's app): login reads a
-- user's range of it joined to grp, group_member and group_cursor.
CREATE TABLE user_group (
    app      TEXT   NOT NULL,
    uid      TEXT   NOT NULL,
    gid      TEXT   COLLATE "C" NOT NULL,
    group_id BIGINT NOT NULL,
    PRIMARY KEY (app, uid, gid)
);

-- A group's timeline: gap-free seq from 1.
CREATE TABLE group_timeline (
    group_id BIGINT NOT NULL,
    seq      BIGINT NOT NULL,
    msg_id   BIGINT NOT NULL,
    PRIMARY KEY (group_id, seq)
);

-- Device cursors on group timelines, flushed lazily with GREATEST.
CREATE TABLE group_cursor (
    app       TEXT   NOT NULL,
    uid       TEXT   NOT NULL,
    device_id TEXT   NOT NULL,
    group_id  BIGINT NOT NULL,
    seq       BIGINT NOT NULL,
    PRIMARY KEY (app, uid, device_id, group_id)
);

-- De-duplication of (sender, client_msg_id) per group; purged with dedupe.
CREATE TABLE group_dedupe (
    group_id      BIGINT NOT NULL,
    app           TEXT   NOT NULL,
    uid           TEXT   NOT NULL,
    client_msg_id TEXT   NOT NULL,
    msg_id        BIGINT NOT NULL,
    seq           BIGINT NOT NULL,
    created_ms    BIGINT NOT NULL,
    PRIMARY KEY (group_id, app, uid, client_msg_id)
);
CREATE INDEX group_dedupe_created ON group_dedupe (created_ms);
