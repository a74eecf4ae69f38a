-- Execute Idempotency-Key claims (API.md "execute", STORAGE.md): a claim is
-- decided inside the commit that creates its execution, and lasts until
-- `expires_at` (created_at + 24 h) and, after that, until its execution
-- finished. Expired claims are re-pointed at the next execution of the key.
ALTER TABLE idempotency_keys ADD COLUMN expires_at BIGINT NOT NULL DEFAULT 0;
UPDATE idempotency_keys SET expires_at = created_at + 86400000;
-- Claim decisions and retention look claims up by their execution.
CREATE INDEX idempotency_keys_execution ON idempotency_keys (execution_id);
