-- Read models built from the events topic. Disposable: a rebuild replays the log into them.

CREATE TABLE images (
    image_id        uuid PRIMARY KEY,
    owner           text        NOT NULL,
    status          text        NOT NULL
        CHECK (status IN ('uploaded', 'processing', 'ready', 'failed', 'deleted')),
    format          text        NOT NULL,
    bytes           bigint      NOT NULL,
    sha256          text        NOT NULL,
    -- As uploaded; replaced by the EXIF-oriented size once processed.
    width           integer     NOT NULL,
    height          integer     NOT NULL,
    original_key    text        NOT NULL,
    spec_version    integer,
    failure_code    text,
    failure_reason  text,
    uploaded_at     timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL
);

-- The listing query: one client's images, optionally by status, newest first.
CREATE INDEX images_by_owner ON images (owner, status, uploaded_at DESC);

CREATE TABLE variants (
    image_id      uuid    NOT NULL REFERENCES images (image_id) ON DELETE CASCADE,
    name          text    NOT NULL,
    object_key    text    NOT NULL,
    format        text    NOT NULL,
    width         integer NOT NULL,
    height        integer NOT NULL,
    bytes         bigint  NOT NULL,
    sha256        text    NOT NULL,
    spec_version  integer NOT NULL,
    PRIMARY KEY (image_id, name)
);

-- The timeline: every event applied, with where it sits in the log. The primary key makes
-- applying an event twice a no-op.
CREATE TABLE image_events (
    event_id        uuid PRIMARY KEY,
    image_id        uuid        NOT NULL,
    event_type      text        NOT NULL,
    topic           text        NOT NULL,
    partition       integer     NOT NULL,
    "offset"        bigint      NOT NULL,
    occurred_at     timestamptz NOT NULL,
    correlation_id  text        NOT NULL,
    causation_id    uuid
);

CREATE INDEX image_events_by_image ON image_events (image_id, occurred_at, event_id);
