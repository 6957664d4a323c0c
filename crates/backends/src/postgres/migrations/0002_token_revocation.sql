-- Login tokens of a user issued (iat) before issued_before (seconds since
-- the epoch) are refused (POST /v1/apps/{app}/users/{uid}/revoke). Raised
-- with GREATEST, never lowered.
CREATE TABLE token_revocation (
    app           TEXT   NOT NULL,
    uid           TEXT   NOT NULL,
    issued_before BIGINT NOT NULL,
    PRIMARY KEY (app, uid)
);
