-- Each timeline row keeps its event's payload (the Avro record as JSON, as
-- `Payload::to_json` writes it), so an image's state at a past time can be folded from the read
-- model alone (`GET /v1/images/{id}?as_of=`). Null for rows projected before this column
-- existed; a rebuild (replaying the log into a fresh schema) fills them in.
ALTER TABLE image_events ADD COLUMN payload jsonb;
