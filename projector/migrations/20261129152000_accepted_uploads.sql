-- Ingest's own state, not a read model (a rebuild must keep it): the uploads ingest answered
-- 202 for, as the 202 described them, so that a client can read and delete an image before the
-- projector has applied its ImageUploaded (read-your-writes). Ingest answers from a row only
-- while `images` has no row for the image, and prunes rows once `images` has them, or a day
-- after the upload.
CREATE TABLE accepted_uploads (
    image_id     uuid        PRIMARY KEY,
    owner        text        NOT NULL,
    original_key text        NOT NULL,
    format       text        NOT NULL,
    bytes        bigint      NOT NULL,
    sha256       text        NOT NULL,
    width        integer     NOT NULL,
    height       integer     NOT NULL,
    metadata     jsonb       NOT NULL,
    accepted_at  timestamptz NOT NULL
);
CREATE INDEX accepted_uploads_accepted_at ON accepted_uploads (accepted_at);
