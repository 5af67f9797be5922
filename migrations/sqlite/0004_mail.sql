-- Outgoing mail queue. The id is stable per logical email (e.g. welcome-{user}).
CREATE TABLE mail_queue (
    id              TEXT PRIMARY KEY,
    to_email        TEXT    NOT NULL,
    to_name         TEXT    NOT NULL,
    subject         TEXT    NOT NULL,
    body            TEXT    NOT NULL,
    -- pending | sent | dead
    status          TEXT    NOT NULL DEFAULT 'pending',
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER NOT NULL,
    last_error      TEXT,
    created_at_ms   INTEGER NOT NULL,
    sent_at_ms      INTEGER
);
CREATE INDEX mail_queue_due ON mail_queue (status, next_attempt_ms);
