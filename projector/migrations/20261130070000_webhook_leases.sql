-- Webhook delivery hardening (issue #16 review).
--
-- lease_id: each claim of a scheduled delivery gets a token, and the attempt's outcome is only
-- written back while the token is still the row's: an attempt whose lease ran out, or whose row
-- a redelivery reset meanwhile, cannot remove or push back the newer claim's row.
-- redelivery_request: the redelivery request that last reset the row, so the same request
-- consumed again (a redelivered record) changes nothing.
ALTER TABLE webhook_schedule ADD COLUMN lease_id uuid;
ALTER TABLE webhook_schedule ADD COLUMN redelivery_request uuid;
-- The claim picks each endpoint's earliest due delivery.
CREATE INDEX webhook_schedule_endpoint_due ON webhook_schedule (endpoint_id, due_at);

-- An owner enabling an endpoint again forgets its failures: attempts that failed at or before
-- this time (applied late, from another partition, or by a rebuild in another order) no longer
-- start its failing time.
ALTER TABLE webhook_endpoints ADD COLUMN failures_reset_at timestamptz;
