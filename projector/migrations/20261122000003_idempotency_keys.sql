-- Ingest's own state, not a read model (a rebuild must keep it): one row per client and
-- Idempotency-Key. A row without a response is an upload in flight, or one that failed after
-- reserving its image id; a retry with the same key and body reuses that id, so a retry after
-- an unacknowledged append never makes a second image.
CREATE TABLE idempotency_keys (
    owner        text        NOT NULL,
    key          text        NOT NULL,
    body_sha256  text        NOT NULL,
    image_id     uuid        NOT NULL,
    response     jsonb,
    reserved_at  timestamptz NOT NULL,
    PRIMARY KEY (owner, key)
);
