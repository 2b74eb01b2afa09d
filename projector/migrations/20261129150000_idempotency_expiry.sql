-- Idempotency keys expire (IMGPIPE_INGEST_IDEMPOTENCY_TTL_SECS, default a day): counted from
-- when the key was first reserved, which `reserved_at` is not (a retake moves it, a failed
-- upload's release sets it to the epoch so the retry may take over at once).
ALTER TABLE idempotency_keys ADD COLUMN created_at timestamptz NOT NULL DEFAULT now();
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);
