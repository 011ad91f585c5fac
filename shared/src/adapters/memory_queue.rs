//! An in-memory queue for tests: keeps every body sent, in order.

use std::sync::Mutex;
use std::time::Duration;

use crate::ports::queue::{MessageQueue, QueueError};

/// Bodies sent, in order.
#[derive(Debug, Default)]
pub struct MemoryQueue {
    sent: Mutex<Vec<String>>,
}

impl MemoryQueue {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every body sent so far.
    pub fn sent(&self) -> Vec<String> {
        self.sent.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Takes the bodies sent so far.
    pub fn take(&self) -> Vec<String> {
        self.sent
            .lock()
            .map(|mut s| std::mem::take(&mut *s))
            .unwrap_or_default()
    }
}

impl MessageQueue for MemoryQueue {
    const BATCH_LIMIT: usize = 10;

    async fn send_batch(&self, bodies: Vec<String>) -> Result<(), QueueError> {
        let mut sent = self.sent.lock().map_err(|_| QueueError {
            queue: "memory".into(),
            message: "poisoned".into(),
            retryable: false,
        })?;
        sent.extend(bodies);
        Ok(())
    }

    async fn delay(&self, _receipt_handle: &str, _delay: Duration) -> Result<(), QueueError> {
        Ok(())
    }
}
