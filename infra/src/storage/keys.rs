//! Where imgpipe keeps its objects: `{prefix}originals/{image_id}` for an upload's bytes and
//! `{prefix}variants/{image_id}/v{spec}/{name}.{ext}` for what the processor makes of them.

use uuid::Uuid;

use super::client::ObjectStore;

impl ObjectStore {
    /// Put in front of every key this deployment writes.
    pub fn key_prefix(&self) -> &str {
        &self.key_prefix
    }

    /// Where an upload's original bytes live.
    pub fn original_key(&self, image_id: Uuid) -> String {
        format!("{}{image_id}", self.originals_prefix())
    }

    /// Where a variant lives. Deterministic, so processing an event twice overwrites the same
    /// object instead of leaving a second one; the spec version keeps variants of different
    /// specs apart.
    pub fn variant_key(&self, image_id: Uuid, spec_version: i32, name: &str, ext: &str) -> String {
        format!(
            "{}v{spec_version}/{name}.{ext}",
            self.variants_prefix(image_id)
        )
    }

    /// The prefix of every original (`originals/{image_id}`).
    pub fn originals_prefix(&self) -> String {
        format!("{}originals/", self.key_prefix)
    }

    /// The prefix of every variant (`variants/{image_id}/v{spec}/{name}.{ext}`).
    pub fn all_variants_prefix(&self) -> String {
        format!("{}variants/", self.key_prefix)
    }

    /// The prefix under which all of an image's variants live, whatever the spec version.
    pub fn variants_prefix(&self, image_id: Uuid) -> String {
        format!("{}{image_id}/", self.all_variants_prefix())
    }
}

#[cfg(test)]
mod tests {
    use crate::storage::client::tests::config;
    use crate::storage::ObjectStore;

    #[tokio::test]
    async fn every_key_lies_under_the_deployments_prefix() {
        let store = ObjectStore::connect(&config("http://minio:9000", None)).await;
        let id = uuid::Uuid::nil();
        assert_eq!(store.key_prefix(), "ns/");
        assert_eq!(
            store.original_key(id),
            "ns/originals/00000000-0000-0000-0000-000000000000"
        );
        assert_eq!(
            store.variant_key(id, 2, "thumb", "webp"),
            "ns/variants/00000000-0000-0000-0000-000000000000/v2/thumb.webp"
        );
        assert!(store
            .variant_key(id, 2, "thumb", "webp")
            .starts_with(&store.variants_prefix(id)));
        assert!(store
            .variants_prefix(id)
            .starts_with(&store.all_variants_prefix()));
        assert!(store
            .original_key(id)
            .starts_with(&store.originals_prefix()));
    }
}
