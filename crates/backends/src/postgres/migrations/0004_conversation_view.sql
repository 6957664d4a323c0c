-- A user's conversation view (switchboard_core::conversation): derived
-- state, folded from the timelines and replaced whole; losing it only
-- means folding again.
CREATE TABLE conversation_view (
    app  TEXT  NOT NULL,
    uid  TEXT  NOT NULL,
    view BYTEA NOT NULL,
    PRIMARY KEY (app, uid)
);
