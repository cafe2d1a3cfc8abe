-- WebSub hub subscriptions, unique per (topic key, callback). Timestamps in microseconds.
CREATE TABLE subscriptions (
    id              INTEGER PRIMARY KEY,
    topic           TEXT    NOT NULL,
    topic_key       TEXT    NOT NULL,
    callback        TEXT    NOT NULL,
    secret          TEXT,
    expires_at      INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    last_success_at INTEGER,
    last_failure_at INTEGER,
    last_error      TEXT,
    UNIQUE (topic_key, callback)
);
CREATE INDEX subscriptions_by_expiry ON subscriptions (expires_at);
