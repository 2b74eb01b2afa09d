-- Whether the original is an animation whose variants show only its first frame (schema v3's
-- ImageProcessed.animated; false for results written before v3).
ALTER TABLE images ADD COLUMN animated boolean NOT NULL DEFAULT false;
