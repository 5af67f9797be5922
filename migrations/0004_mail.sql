-- Outgoing mail queue (PostgreSQL). The id is stable per logical email.
CREATE TABLE mail_queue (
    id              TEXT PRIMARY KEY,
    to_email        TEXT        NOT NULL,
    to_name         TEXT        NOT NULL,
    subject         TEXT        NOT NULL,
    body            TEXT        NOT NULL,
    -- pending | sent | dead
    status          TEXT        NOT NULL DEFAULT 'pending',
    attempts        INTEGER     NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_error      TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    sent_at         TIMESTAMPTZ
);
CREATE INDEX mail_queue_due ON mail_queue (status, next_attempt_at);
