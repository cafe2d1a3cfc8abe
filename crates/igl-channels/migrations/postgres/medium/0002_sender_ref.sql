-- The sender's own reference, when the posting node forwards it (an extension of the
-- reference Channel API; absent for messages posted by reference clients).
ALTER TABLE channel_messages ADD COLUMN sender_ref TEXT;
