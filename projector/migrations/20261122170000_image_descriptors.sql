-- What ImageProcessed carries since schema v2. Nullable: images processed from v1 events have
-- neither, and a fully transparent image has no dominant colour.
ALTER TABLE images
    ADD COLUMN dominant_color text,
    ADD COLUMN blurhash       text;
