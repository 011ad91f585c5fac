//! SQS as the message queue: SendMessageBatch with per-entry retries, ChangeMessageVisibility.

use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;

use crate::adapters::s3_store::error_chain;
use crate::domain::retry::RetryPolicy;
use crate::ports::queue::{MessageQueue, QueueError};

/// SQS allows at most 12 hours of visibility timeout.
const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 60 * 60);

/// Entries SQS refuses for a transient reason are sent again quickly: the splitter waits on them.
const SEND_RETRY: RetryPolicy = RetryPolicy {
    max_attempts: 6,
    base: Duration::from_millis(100),
    cap: Duration::from_secs(5),
};

/// One SQS queue, by URL.
#[derive(Debug, Clone)]
pub struct SqsQueue {
    client: Client,
    url: String,
    retry: RetryPolicy,
}

impl SqsQueue {
    pub fn new(client: Client, url: &str) -> Self {
        Self {
            client,
            url: url.to_owned(),
            retry: SEND_RETRY,
        }
    }

    fn error(&self, error: &(dyn std::error::Error + 'static), retryable: bool) -> QueueError {
        QueueError {
            queue: self.url.clone(),
            message: error_chain(error),
            retryable,
        }
    }
}

impl MessageQueue for SqsQueue {
    /// SendMessageBatch takes at most 10 entries (and 1 MiB in all; jobs are far smaller).
    const BATCH_LIMIT: usize = 10;

    #[tracing::instrument(skip_all, fields(queue = %self.url, messages = bodies.len()))]
    async fn send_batch(&self, bodies: Vec<String>) -> Result<(), QueueError> {
        assert!(
            bodies.len() <= Self::BATCH_LIMIT,
            "at most {} messages per batch",
            Self::BATCH_LIMIT
        );
        // Entry ids index `bodies`; only the entries SQS refused are sent again.
        let mut pending: Vec<usize> = (0..bodies.len()).collect();
        let mut attempt = 0;
        while !pending.is_empty() {
            attempt += 1;
            let entries = pending
                .iter()
                .map(|&i| {
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(&bodies[i])
                        .build()
                        .map_err(|e| self.error(&e, false))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let sent = self
                .client
                .send_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await;
            let (retry, reason) = match sent {
                Ok(output) => {
                    let failed = output.failed();
                    if let Some(fatal) = failed.iter().find(|f| f.sender_fault()) {
                        return Err(QueueError {
                            queue: self.url.clone(),
                            message: format!("message refused: {}: {}", fatal.code(), fatal.message().unwrap_or("")),
                            retryable: false,
                        });
                    }
                    pending = failed.iter().filter_map(|f| f.id().parse().ok()).collect();
                    (!pending.is_empty(), format!("{} entries failed", pending.len()))
                }
                Err(e) => {
                    let retryable = e.raw_response().is_none_or(|r| r.status().as_u16() >= 500)
                        || e.as_service_error().is_some_and(|s| {
                            aws_sdk_sqs::error::ProvideErrorMetadata::code(s)
                                .is_some_and(|c| c.contains("Throttl") || c == "RequestThrottled")
                        });
                    let error = self.error(&e, retryable);
                    if !retryable {
                        return Err(error);
                    }
                    (true, error.message)
                }
            };
            if retry {
                if !self.retry.allows_another(attempt) {
                    return Err(QueueError {
                        queue: self.url.clone(),
                        message: format!("gave up after {attempt} attempts: {reason}"),
                        retryable: true,
                    });
                }
                tracing::warn!(attempt, %reason, "sending again");
                tokio::time::sleep(self.retry.delay(attempt, None)).await;
            }
        }
        Ok(())
    }

    #[tracing::instrument(skip(self, receipt_handle))]
    async fn delay(&self, receipt_handle: &str, delay: Duration) -> Result<(), QueueError> {
        self.client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(delay.min(MAX_VISIBILITY).as_secs() as i32)
            .send()
            .await
            .map_err(|e| self.error(&e, true))?;
        Ok(())
    }
}
