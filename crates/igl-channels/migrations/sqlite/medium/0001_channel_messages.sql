-- The shared-db channel medium: one row per message posted by either endpoint.
-- Timestamps are microseconds since the Unix epoch. AUTOINCREMENT: ids are never reused,
-- so the observers' cursors (by id) stay valid.
CREATE TABLE IF NOT EXISTS channel_messages (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    sender     TEXT    NOT NULL,
    receiver   TEXT    NOT NULL,
    subject    TEXT    NOT NULL,
    obj        TEXT    NOT NULL,
    predicate  TEXT    NOT NULL,
    status     TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS channel_messages_by_receiver ON channel_messages (receiver, id);
CREATE INDEX IF NOT EXISTS channel_messages_by_update ON channel_messages (updated_at, id);

-- Every status change after posting (PUT /messages/{id}/status), in commit order, so that
-- both endpoints can announce it to by_id subscribers.
CREATE TABLE IF NOT EXISTS channel_status_changes (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id INTEGER NOT NULL REFERENCES channel_messages (id),
    status     TEXT    NOT NULL,
    changed_at INTEGER NOT NULL
);
