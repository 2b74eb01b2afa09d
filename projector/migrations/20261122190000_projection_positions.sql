-- Where the projection stands in each partition of the log: the offset of the next record to
-- apply. Written in the same transaction as the read-model changes of a batch, so the tables
-- and their position never disagree; on assignment the projector seeks here, not to Kafka's
-- committed offsets. A rebuild fills its own copy from offset 0.
CREATE TABLE projection_positions (
    topic        text        NOT NULL,
    partition    integer     NOT NULL,
    next_offset  bigint      NOT NULL CHECK (next_offset >= 0),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition)
);
