//! The object-store port: where images, manifests and reports are written.

use std::future::Future;

use bytes::Bytes;

use crate::domain::image_format::ImageFormat;

/// The `Cache-Control` every image is written with: images never change once written.
pub const IMAGE_CACHE_CONTROL: &str = "public, max-age=31536000";

/// An object to write.
#[derive(Debug, Clone)]
pub struct NewObject {
    pub body: Bytes,
    pub content_type: String,
    pub cache_control: Option<String>,
    /// User metadata; keys and values must be ASCII (S3 `x-amz-meta-*`).
    pub metadata: Vec<(String, String)>,
}

/// An object that exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    pub key: String,
    pub size: u64,
    pub content_type: String,
}

/// Result of a create-if-absent write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    Created,
    AlreadyExists,
}

/// A store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Throttled, timed out, or a 5xx: worth retrying.
    #[error("object store unavailable: {0}")]
    Unavailable(String),
    /// Anything retrying will not fix (access denied, bad key).
    #[error("object store error: {0}")]
    Failed(String),
}

impl StoreError {
    /// Whether the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// An object written in parts (an S3 multipart upload), so that it is never held whole: every part
/// but the last must be at least 5 MiB. Nothing is visible at the key before `finish`.
pub trait Upload: Send {
    /// Sends the next part.
    fn part(&mut self, body: Bytes) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Sends the last part (possibly empty) and makes the object visible.
    fn finish(self, last: Bytes) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// The object-store port (S3 in AWS, a directory locally).
pub trait ObjectStore: Send + Sync {
    /// What [`ObjectStore::upload`] returns.
    type Upload: Upload;

    /// Starts writing `key` in parts, replacing what is there once finished.
    fn upload(&self, key: &str, content_type: &str) -> impl Future<Output = Result<Self::Upload, StoreError>> + Send;

    /// Writes `object` at `key` only if nothing is there yet (S3 `If-None-Match: *`).
    fn put_if_absent(
        &self,
        key: &str,
        object: NewObject,
    ) -> impl Future<Output = Result<PutOutcome, StoreError>> + Send;

    /// Writes `object` at `key`, replacing what is there.
    fn put(&self, key: &str, object: NewObject) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Removes the object at `key`; nothing there is not an error.
    fn delete(&self, key: &str) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Reads the object at `key`, `None` when absent.
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Bytes>, StoreError>> + Send;

    /// Keys starting with `prefix`, in lexicographic order.
    fn list(&self, prefix: &str) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;

    /// Finds an image stored at `stem.<png|jpg|webp>`.
    fn find_image(&self, stem: &str) -> impl Future<Output = Result<Option<StoredObject>, StoreError>> + Send;
}

/// The key of an image for job key `key` in `format`.
pub fn image_key(key: &str, format: ImageFormat) -> String {
    format!("{}.{}", image_stem(key), format.extension())
}

/// The key of an image without its extension.
pub fn image_stem(key: &str) -> String {
    format!("images/{key}")
}
