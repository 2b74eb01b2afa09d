//! The S3-compatible object store, and the layout of imgpipe's keys in it.
//!
//! `client` connects and makes the single-request calls (get, put, list, head, delete one key
//! or up to 1000 with `delete_many`, presign, bucket setup), `keys` says where originals and
//! variants live, `writer` streams one object in (a plain put, or a multipart upload once it
//! outgrows a part), and `error` turns the SDK's failures into [`crate::InfraError::Storage`].

mod client;
mod error;
mod keys;
mod writer;

pub use client::{KeyNotDeleted, ObjectInfo, ObjectPage, ObjectStore, DELETE_MANY_MAX_KEYS};
pub use writer::{ObjectWriter, MULTIPART_PART_BYTES};
