//! The SDK's failures as [`InfraError::Storage`], with whether the object is simply not there.

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

use crate::{BoxError, InfraError};

/// A failed S3 request. 404, `NoSuchKey`, `NotFound` and `NoSuchBucket` count as not found.
pub(super) fn storage_error<E>(
    operation: &'static str,
    key: &str,
    error: SdkError<E, HttpResponse>,
) -> InfraError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = error
        .raw_response()
        .map(|response| response.status().as_u16());
    let not_found = status == Some(404)
        || matches!(
            error.code(),
            Some("NoSuchKey" | "NotFound" | "NoSuchBucket")
        );
    InfraError::Storage {
        operation,
        key: key.to_string(),
        source: Box::new(error),
        not_found,
    }
}

/// A failure on our side of a request (reading a body, building a presigned URL).
pub(super) fn local_error(
    operation: &'static str,
    key: &str,
    error: impl Into<BoxError>,
) -> InfraError {
    InfraError::Storage {
        operation,
        key: key.to_string(),
        source: error.into(),
        not_found: false,
    }
}
