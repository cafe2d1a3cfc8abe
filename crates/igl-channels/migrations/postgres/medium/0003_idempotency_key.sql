-- The poster's idempotency key (the `Idempotency-Key` header of `POST /messages`, or
-- `{sender}:{sender_ref}` when the sender's reference was forwarded without one): a post
-- repeated with the same key returns the message already stored instead of a second one.
-- NULL for posts without a key (NULLs never conflict in a unique index).
ALTER TABLE channel_messages ADD COLUMN idempotency_key TEXT;
CREATE UNIQUE INDEX IF NOT EXISTS channel_messages_by_idempotency_key
    ON channel_messages (sender, idempotency_key);
