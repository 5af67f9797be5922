-- Transactional outbox: events written with the data they describe.
CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    topic           TEXT    NOT NULL,
    key             TEXT    NOT NULL,
    payload         BLOB    NOT NULL,
    created_at_ms   INTEGER NOT NULL,
    published_at_ms INTEGER
);
CREATE INDEX outbox_pending ON outbox (id) WHERE published_at_ms IS NULL;
