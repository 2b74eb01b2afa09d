//! A client sees only its own images: what every route about one image starts with.

use uuid::Uuid;

use crate::db::{self, ImageRow};
use crate::error::{database_unavailable, IngestError};
use crate::state::AppState;

/// The image must exist and belong to the client; another client's image is the same 404 as a
/// missing one.
pub(super) async fn owned_image(
    state: &AppState,
    client: &str,
    id: String,
) -> Result<(Uuid, ImageRow), IngestError> {
    let image_id = Uuid::parse_str(&id).map_err(|_| IngestError::InvalidImageId(id))?;
    let image = db::image(&state.pool, image_id)
        .await
        .map_err(database_unavailable)?
        .filter(|image| image.owner == client)
        .ok_or(IngestError::ImageNotFound)?;
    Ok((image_id, image))
}
