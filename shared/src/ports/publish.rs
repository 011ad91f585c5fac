//! The CMS and notifier ports: point a row's item at its image, and post a run message to people.

use std::future::Future;

/// A CMS or notifier call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PublishError {
    /// Throttled, 5xx or unreachable: worth retrying.
    pub retryable: bool,
    pub message: String,
}

/// The CMS port: point a product at its new image.
pub trait Cms: Send + Sync {
    fn update_image(&self, sku: &str, image_url: &str) -> impl Future<Output = Result<(), PublishError>> + Send;
}

/// The notifier port: post a run message to people.
pub trait Notifier: Send + Sync {
    fn post(&self, text: &str) -> impl Future<Output = Result<(), PublishError>> + Send;
}

impl<T: Cms> Cms for std::sync::Arc<T> {
    fn update_image(&self, sku: &str, image_url: &str) -> impl Future<Output = Result<(), PublishError>> + Send {
        (**self).update_image(sku, image_url)
    }
}

impl<T: Notifier> Notifier for std::sync::Arc<T> {
    fn post(&self, text: &str) -> impl Future<Output = Result<(), PublishError>> + Send {
        (**self).post(text)
    }
}
