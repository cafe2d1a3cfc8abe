-- Messages, keyed by (sender, sender_ref). Timestamps are microseconds since the Unix epoch.
CREATE TABLE messages (
    seq            INTEGER PRIMARY KEY,
    sender         TEXT    NOT NULL,
    sender_ref     TEXT    NOT NULL,
    receiver       TEXT    NOT NULL,
    subject        TEXT    NOT NULL,
    obj            TEXT    NOT NULL,
    predicate      TEXT    NOT NULL,
    status         TEXT    NOT NULL,
    channel_id     TEXT,
    channel_txn_id TEXT,
    channel_status TEXT,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    UNIQUE (sender, sender_ref)
);
CREATE INDEX messages_by_update ON messages (updated_at, seq);
CREATE INDEX messages_by_status ON messages (status, updated_at, seq);

-- Job queues. A job is claimable when run_at <= now; a claim sets lease_token and moves
-- run_at to the lease expiry, so an expired lease makes the job claimable again.
CREATE TABLE jobs (
    id          INTEGER PRIMARY KEY,
    queue       TEXT    NOT NULL,
    payload     TEXT    NOT NULL,
    run_at      INTEGER NOT NULL,
    lease_token INTEGER,
    attempts    INTEGER NOT NULL DEFAULT 0,
    dedup_key   TEXT,
    last_error  TEXT,
    created_at  INTEGER NOT NULL
);
CREATE INDEX jobs_due ON jobs (queue, run_at, id);
CREATE UNIQUE INDEX jobs_dedup ON jobs (queue, dedup_key) WHERE dedup_key IS NOT NULL;

CREATE TABLE dead_jobs (
    id         INTEGER PRIMARY KEY,
    queue      TEXT    NOT NULL,
    payload    TEXT    NOT NULL,
    attempts   INTEGER NOT NULL,
    dedup_key  TEXT,
    last_error TEXT,
    created_at INTEGER NOT NULL,
    failed_at  INTEGER NOT NULL
);
CREATE INDEX dead_jobs_by_queue ON dead_jobs (queue, id);

-- Append-only event log.
CREATE TABLE events (
    seq        INTEGER PRIMARY KEY,
    id         TEXT    NOT NULL UNIQUE,
    kind       TEXT    NOT NULL,
    topic      TEXT    NOT NULL,
    payload    TEXT    NOT NULL,
    created_at INTEGER NOT NULL
);

-- Which jurisdictions may read which documents.
CREATE TABLE object_acl (
    object     TEXT    NOT NULL,
    reader     TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (object, reader)
) WITHOUT ROWID;
