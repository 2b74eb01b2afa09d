-- Webhooks (issue #16). The first three tables are projections of the webhook events on the
-- events topic; webhook_schedule is the delivering service's own schedule (kept across rebuilds).

-- Each endpoint as its events (WebhookEndpoint*, WebhookSecretRotated) and its delivery
-- attempts leave it. last_event_id orders the endpoint's own events: ingest applies the event it
-- appended at once (read-your-writes) and the projector again later, so an older event applied
-- after a newer one must not undo it.
CREATE TABLE webhook_endpoints (
    endpoint_id            uuid        PRIMARY KEY,
    owner                  text        NOT NULL,
    url                    text        NOT NULL,
    event_types            text[]      NOT NULL,
    sealed_secret          text        NOT NULL,
    previous_sealed_secret text,
    previous_valid_until   timestamptz,
    enabled                boolean     NOT NULL DEFAULT true,
    -- Why the delivering service disabled it ('failing'); NULL when its owner did, or enabled.
    disabled_reason        text,
    deleted                boolean     NOT NULL DEFAULT false,
    -- The first failed attempt since the last delivered one; NULL while it is healthy.
    failing_since          timestamptz,
    last_delivered_at      timestamptz,
    last_event_id          uuid        NOT NULL,
    created_at             timestamptz NOT NULL,
    updated_at             timestamptz NOT NULL
);
CREATE INDEX webhook_endpoints_owner ON webhook_endpoints (owner, created_at DESC, endpoint_id DESC);

-- An endpoint's own events by id (audit, and applying one twice changes nothing).
CREATE TABLE webhook_events (
    event_id    uuid        PRIMARY KEY,
    endpoint_id uuid        NOT NULL,
    event_type  text        NOT NULL,
    occurred_at timestamptz NOT NULL,
    payload     jsonb       NOT NULL
);
CREATE INDEX webhook_events_endpoint ON webhook_events (endpoint_id, occurred_at);

-- Every delivery attempt (WebhookDeliveryAttempted), by the attempt event's id.
CREATE TABLE webhook_attempts (
    event_id        uuid        PRIMARY KEY,
    endpoint_id     uuid        NOT NULL,
    message_id      uuid        NOT NULL,
    message_type    text        NOT NULL,
    image_id        uuid        NOT NULL,
    attempt         integer     NOT NULL,
    redelivery      boolean     NOT NULL,
    url             text        NOT NULL,
    status_code     integer,
    duration_ms     bigint      NOT NULL,
    error_class     text,
    next_attempt_at timestamptz,
    attempted_at    timestamptz NOT NULL
);
CREATE INDEX webhook_attempts_endpoint ON webhook_attempts (endpoint_id, attempted_at DESC, event_id DESC);

-- Deliveries waiting for an attempt: one row per endpoint and message, due at due_at. Written by
-- the delivering service when it consumes an image's event or a redelivery request, claimed by
-- setting leased_until (so several instances never attempt the same row at once, and a crashed
-- instance's claims expire), and removed once delivered or given up. Not derived from events:
-- a rebuild keeps it.
CREATE TABLE webhook_schedule (
    endpoint_id  uuid        NOT NULL,
    message_id   uuid        NOT NULL,
    image_id     uuid        NOT NULL,
    message_type text        NOT NULL,
    -- The causing event's correlation id, carried on to the attempts' events.
    correlation_id text      NOT NULL,
    -- The message's stable part (webhooks::message::Message); URLs are presigned per attempt.
    message      jsonb       NOT NULL,
    -- The number of the next attempt (1 = first).
    attempt      integer     NOT NULL,
    redelivery   boolean     NOT NULL,
    due_at       timestamptz NOT NULL,
    leased_until timestamptz NOT NULL DEFAULT '-infinity',
    PRIMARY KEY (endpoint_id, message_id)
);
CREATE INDEX webhook_schedule_due ON webhook_schedule (due_at);
