-- The orphan sweep walks the bucket in key order and merges it with the read model's object
-- keys in the same order. S3 sorts keys by their bytes, which is the "C" collation; these
-- indexes let the sweep page through the keys in that order (keyset pagination) instead of
-- sorting every key on each page.
CREATE INDEX images_by_original_key ON images (original_key COLLATE "C");
CREATE INDEX variants_by_object_key ON variants (object_key COLLATE "C");

-- Objects the read model names that are not in storage, as the last sweep found them. Not a
-- projection of the log: state of the sweep, which never deletes these rows' images. A row
-- goes away when a sweep finds the object back or its image deleted.
CREATE TABLE missing_objects (
    object_key  text        PRIMARY KEY,
    image_id    uuid        NOT NULL,
    -- original or variant
    kind        text        NOT NULL,
    first_seen  timestamptz NOT NULL,
    last_seen   timestamptz NOT NULL
);

CREATE INDEX missing_objects_by_image ON missing_objects (image_id);
