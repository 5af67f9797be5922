-- Notification history. Ids come from one writer, so per user they grow in commit order.
CREATE TABLE notifications (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    -- NULL for broadcasts
    user_id    TEXT,
    event      TEXT NOT NULL,
    payload    TEXT NOT NULL,
    dedupe_key TEXT UNIQUE,
    created_at TEXT NOT NULL
);
CREATE INDEX notifications_user ON notifications (user_id, id);
