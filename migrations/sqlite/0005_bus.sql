-- The embedded bus: a durable log per topic and committed offsets per consumer group,
-- the same semantics Kafka gives in production.
CREATE TABLE bus_messages (
    "offset"      INTEGER PRIMARY KEY AUTOINCREMENT,
    topic         TEXT    NOT NULL,
    key           TEXT    NOT NULL,
    payload       BLOB    NOT NULL,
    created_at_ms INTEGER NOT NULL
);
CREATE INDEX bus_messages_topic ON bus_messages (topic, "offset");

CREATE TABLE bus_offsets (
    grp       TEXT    NOT NULL,
    topic     TEXT    NOT NULL,
    -- last offset handled by the group
    committed INTEGER NOT NULL,
    PRIMARY KEY (grp, topic)
);
