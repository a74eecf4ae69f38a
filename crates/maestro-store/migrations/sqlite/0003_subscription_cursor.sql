-- Webhook delivery cursor: the seq of the last event a subscription's worker
-- handled, so delivery resumes after a restart (at least once).
ALTER TABLE subscriptions ADD COLUMN delivered_seq INTEGER NOT NULL DEFAULT 0;
