-- WebSub hub subscriptions, unique per (topic key, callback). Timestamps in microseconds.
CREATE TABLE subscriptions (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic           TEXT    NOT NULL,
    topic_key       TEXT    NOT NULL,
    callback        TEXT    NOT NULL,
    secret          TEXT,
    expires_at      BIGINT  NOT NULL,
    created_at      BIGINT  NOT NULL,
    updated_at      BIGINT  NOT NULL,
    last_success_at BIGINT,
    last_failure_at BIGINT,
    last_error      TEXT,
    UNIQUE (topic_key, callback)
);
CREATE INDEX subscriptions_by_expiry ON subscriptions (expires_at);
