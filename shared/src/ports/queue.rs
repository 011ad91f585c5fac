//! The message-queue port: jobs to the generators, events to the finalizer.

use std::future::Future;
use std::time::Duration;

/// A queue operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("queue {queue}: {message}")]
pub struct QueueError {
    pub queue: String,
    pub message: String,
    /// Throttled, 5xx or unreachable: worth retrying.
    pub retryable: bool,
}

/// A queue (SQS in AWS).
pub trait MessageQueue: Send + Sync {
    /// The most bodies one `send_batch` call takes.
    const BATCH_LIMIT: usize;

    /// Sends up to [`Self::BATCH_LIMIT`] bodies; returns once every one is accepted (entries the queue
    /// refused for a transient reason are sent again).
    fn send_batch(&self, bodies: Vec<String>) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Keeps a received message hidden for `delay` from now (its retry back-off).
    fn delay(&self, receipt_handle: &str, delay: Duration) -> impl Future<Output = Result<(), QueueError>> + Send;
}
