-- Notification history (PostgreSQL). Inserts for one user hold a per-user advisory
-- lock until commit, so per user ids grow in commit order even across nodes.
-- The payload is kept as text, byte for byte as published (JSONB would reorder keys).
CREATE TABLE notifications (
    id         BIGSERIAL PRIMARY KEY,
    -- NULL for broadcasts
    user_id    UUID,
    event      TEXT        NOT NULL,
    payload    TEXT        NOT NULL,
    dedupe_key TEXT UNIQUE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX notifications_user ON notifications (user_id, id);
CREATE INDEX notifications_created ON notifications (created_at);
