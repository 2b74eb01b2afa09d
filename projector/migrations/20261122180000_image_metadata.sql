-- The uploader's labels, from ImageUploaded since schema v2 (empty for v1 uploads).
ALTER TABLE images
    ADD COLUMN metadata jsonb NOT NULL DEFAULT '{}'::jsonb;
