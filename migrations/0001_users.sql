-- Users and idempotency keys (PostgreSQL).
CREATE TABLE users (
    id               UUID PRIMARY KEY,
    email            TEXT        NOT NULL,
    -- email with ASCII letters lower-cased: uniqueness is case-insensitive
    email_normalized TEXT        NOT NULL UNIQUE,
    name             TEXT        NOT NULL,
    password_hash    TEXT        NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL
);

CREATE TABLE idempotency_keys (
    scope        TEXT        NOT NULL,
    key          TEXT        NOT NULL,
    request_hash TEXT        NOT NULL,
    -- NULL while the first request is still running
    status       SMALLINT,
    body         BYTEA,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
