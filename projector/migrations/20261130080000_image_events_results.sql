-- The console's result latency (ingest's db/operator.rs) reads the results of the last day:
-- a partial index on them keeps that from reading the whole timeline, and costs the projector
-- a write only for results.
CREATE INDEX image_events_results ON image_events (occurred_at)
    WHERE event_type IN ('ImageProcessed', 'ImageFailed');
