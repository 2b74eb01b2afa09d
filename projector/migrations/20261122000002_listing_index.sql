-- GET /v1/images without a status filter: one client's images, newest first, keyset-paginated
-- by (uploaded_at, image_id).
CREATE INDEX images_by_owner_newest ON images (owner, uploaded_at DESC, image_id DESC);
