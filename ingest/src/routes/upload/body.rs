//! An upload's body on its way into object storage: sniffed, limited, hashed and stored as it
//! streams, or drained after a refusal so the client still hears why.

use std::pin::Pin;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::BoxError;
use tokio::time::Instant;

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::IngestError;
use crate::sniff::{self, Sniffed, Sniffer};
use crate::state::AppState;

/// A refused body is read to its end (so the client gets the answer, see `drain`) up to this
/// many times the size limit; a client sending more is cut off.
pub(super) const DRAIN_LIMIT_FACTOR: u64 = 2;
/// An original stored under its staging image id, with what was learnt while it streamed.
pub(super) struct Received {
    pub image_id: Uuid,
    pub key: String,
    pub sniffed: Sniffed,
    pub bytes: u64,
    pub sha256: String,
}

/// Streams one image body into object storage: the format from its first bytes (refused
/// before anything is stored), then the bytes hashed, counted against the size limit and
/// stored as they arrive while the header is sniffed for the dimensions. An image over the
/// pixel or side limit is refused the moment its header is read, and what was stored of it
/// is aborted.
pub(super) async fn receive<S>(
    state: &AppState,
    mut body: Pin<&mut S>,
) -> Result<Received, IngestError>
where
    S: Stream<Item = Result<Bytes, IngestError>>,
{
    let limit = state.settings.max_upload_bytes;
    let mut first = BytesMut::new();
    let format = loop {
        let chunk = body.next().await.transpose()?;
        let complete = chunk.is_none();
        if let Some(chunk) = chunk {
            first.extend_from_slice(&chunk);
        }
        if let Some(format) = sniff::format_of(&first, complete)? {
            break format;
        }
    };

    let image_id = Uuid::now_v7();
    let key = state.store.original_key(image_id);
    let mut writer = state.store.writer(&key, &format!("image/{format}"));
    let mut sniffer = Sniffer::default();
    let mut sniffed = None;
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    let streamed: Result<Sniffed, IngestError> = async {
        let mut next = Some(first.freeze());
        while let Some(chunk) = next {
            bytes += chunk.len() as u64;
            if bytes > limit {
                return Err(IngestError::PayloadTooLarge { limit });
            }
            if sniffed.is_none() {
                sniffed = sniffer.feed(&chunk)?;
                if let Some(found) = sniffed {
                    check_limits(state, found)?;
                }
            }
            hasher.update(&chunk);
            writer.write(&chunk).await.map_err(storage_unavailable)?;
            next = body.next().await.transpose()?;
        }
        match sniffed {
            Some(found) => Ok(found),
            None => {
                let found = sniffer.finish()?;
                check_limits(state, found)?;
                Ok(found)
            }
        }
    }
    .await;
    let sniffed = match streamed {
        Ok(sniffed) => {
            writer.finish().await.map_err(storage_unavailable)?;
            sniffed
        }
        Err(error) => {
            writer.abort().await;
            return Err(error);
        }
    };
    Ok(Received {
        image_id,
        key,
        sniffed,
        bytes,
        sha256: hex::encode(hasher.finalize()),
    })
}

/// Reads and drops what is left of a refused body, up to the size limit, so that a client
/// still sending gets the error answer instead of a reset connection. The body timeout
/// bounds how long a slow client can make this take.
pub(super) async fn drain<S>(mut body: Pin<&mut S>, limit: u64)
where
    S: Stream<Item = Result<Bytes, IngestError>>,
{
    let mut drained = 0u64;
    while let Some(Ok(chunk)) = body.next().await {
        drained += chunk.len() as u64;
        if drained > DRAIN_LIMIT_FACTOR * limit {
            break;
        }
    }
}

pub(super) fn body_error(error: axum::Error) -> IngestError {
    let mut source = error.into_inner();
    loop {
        // Refused on the way in, by `with_deadline`: the error, however wrapped.
        source = match source.downcast::<IngestError>() {
            Ok(error) => return *error,
            Err(other) => match other.downcast::<axum::Error>() {
                Ok(wrapped) => wrapped.into_inner(),
                Err(other) => return IngestError::BodyRead(other.to_string()),
            },
        };
    }
}

/// The request with a body that fails with 408 `upload-timed-out` once `secs` have passed,
/// however steadily it still arrives: a total deadline, where the body timeout is an idle one.
pub(super) fn with_deadline(request: Request, secs: u64) -> Request {
    let deadline = Instant::now() + Duration::from_secs(secs);
    request.map(|body| {
        let chunks = body.into_data_stream();
        // Fused: the body may be polled again after its end, which an unfold does not allow.
        let chunks = futures::stream::unfold(Some(chunks), move |chunks| async move {
            let mut chunks = chunks?;
            match tokio::time::timeout_at(deadline, chunks.next()).await {
                Ok(chunk) => chunk.map(|chunk| (chunk.map_err(BoxError::from), Some(chunks))),
                Err(_) => {
                    let expired: BoxError = Box::new(IngestError::UploadTimedOut { secs });
                    Some((Err(expired), None))
                }
            }
        });
        Body::from_stream(chunks.fuse())
    })
}

pub(super) fn storage_unavailable(error: imgpipe_infra::InfraError) -> IngestError {
    IngestError::StorageUnavailable(error)
}

fn check_limits(state: &AppState, sniffed: Sniffed) -> Result<(), IngestError> {
    let settings = &state.settings;
    if sniffed.width > settings.max_side
        || sniffed.height > settings.max_side
        || sniffed.width * sniffed.height > settings.max_pixels
    {
        return Err(IngestError::ImageTooLarge {
            width: sniffed.width,
            height: sniffed.height,
            max_pixels: settings.max_pixels,
            max_side: settings.max_side,
        });
    }
    Ok(())
}

/// Removes an original that will not be announced. Best effort: one left behind is an orphan
/// that the sweeper removes.
pub(super) async fn discard(state: &AppState, key: &str) {
    if let Err(error) = state.store.delete(key).await {
        tracing::warn!(error = %error, key, "could not remove an unannounced original");
    }
}
