-- State of one channel endpoint, keyed by the jurisdiction it serves (`endpoint`), so the
-- endpoints of a channel can keep it in the shared medium database or each in its own.

-- WebSub subscriptions. `topic` is stored as subscribed (`jurisdiction.SG`, `42`);
-- `topic_key` is its normalised form for matching (upper case, no trailing `.` or `*`).
CREATE TABLE IF NOT EXISTS channel_subscriptions (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint      TEXT    NOT NULL,
    kind          TEXT    NOT NULL,
    topic         TEXT    NOT NULL,
    topic_key     TEXT    NOT NULL,
    callback      TEXT    NOT NULL,
    secret        TEXT,
    lease_seconds INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    UNIQUE (endpoint, topic_key, callback)
);

-- How far each observer stream has announced (`messages`: medium row id; `status`:
-- status change seq).
CREATE TABLE IF NOT EXISTS channel_cursors (
    endpoint   TEXT    NOT NULL,
    stream     TEXT    NOT NULL,
    position   INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (endpoint, stream)
);
