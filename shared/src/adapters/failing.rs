//! Fakes that fail on purpose: an object store and a queue that fail a chosen call (counting from 1),
//! so tests can stop a use case between any two steps and check that trying again finishes the work
//! without doing any of it twice. The ledger's is [`crate::adapters::memory_ledger::FailingLedger`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;

use crate::ports::queue::{MessageQueue, QueueError};
use crate::ports::store::{NewObject, ObjectStore, PutOutcome, StoreError, StoredObject};

/// Counts calls and says which one fails.
#[derive(Debug, Default)]
struct Countdown {
    fail_at: AtomicUsize,
    calls: AtomicUsize,
}

impl Countdown {
    fn new(fail_at: usize) -> Self {
        Self {
            fail_at: AtomicUsize::new(fail_at),
            calls: AtomicUsize::new(0),
        }
    }

    /// Whether this call is the one to fail.
    fn fails(&self) -> bool {
        self.calls.fetch_add(1, Ordering::SeqCst) + 1 == self.fail_at.load(Ordering::SeqCst)
    }
}

/// An object store whose `fail_at`-th write or read (put, put-if-absent, delete, get) fails as unavailable.
#[derive(Debug)]
pub struct FailingStore<S> {
    pub inner: S,
    countdown: Countdown,
}

impl<S> FailingStore<S> {
    pub fn new(inner: S, fail_at: usize) -> Self {
        Self {
            inner,
            countdown: Countdown::new(fail_at),
        }
    }

    /// Fails the `fail_at`-th call from now on (0: none).
    pub fn fail_at(&self, fail_at: usize) {
        self.countdown.calls.store(0, Ordering::SeqCst);
        self.countdown.fail_at.store(fail_at, Ordering::SeqCst);
    }

    fn check(&self) -> Result<(), StoreError> {
        match self.countdown.fails() {
            true => Err(StoreError::Unavailable("injected failure".into())),
            false => Ok(()),
        }
    }
}

impl<S: ObjectStore> ObjectStore for FailingStore<S> {
    type Upload = S::Upload;

    async fn upload(&self, key: &str, content_type: &str) -> Result<Self::Upload, StoreError> {
        self.inner.upload(key, content_type).await
    }

    async fn put_if_absent(&self, key: &str, object: NewObject) -> Result<PutOutcome, StoreError> {
        self.check()?;
        self.inner.put_if_absent(key, object).await
    }

    async fn put(&self, key: &str, object: NewObject) -> Result<(), StoreError> {
        self.check()?;
        self.inner.put(key, object).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.check()?;
        self.inner.delete(key).await
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        self.check()?;
        self.inner.get(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.inner.list(prefix).await
    }

    async fn find_image(&self, stem: &str) -> Result<Option<StoredObject>, StoreError> {
        self.inner.find_image(stem).await
    }
}

/// A queue whose `fail_at`-th send fails as retryable.
#[derive(Debug)]
pub struct FailingQueue<Q> {
    pub inner: Q,
    countdown: Countdown,
}

impl<Q> FailingQueue<Q> {
    pub fn new(inner: Q, fail_at: usize) -> Self {
        Self {
            inner,
            countdown: Countdown::new(fail_at),
        }
    }
}

impl<Q: MessageQueue> MessageQueue for FailingQueue<Q> {
    const BATCH_LIMIT: usize = Q::BATCH_LIMIT;

    async fn send_batch(&self, bodies: Vec<String>) -> Result<(), QueueError> {
        if self.countdown.fails() {
            return Err(QueueError {
                queue: "failing".into(),
                message: "injected failure".into(),
                retryable: true,
            });
        }
        self.inner.send_batch(bodies).await
    }

    async fn delay(&self, receipt_handle: &str, delay: Duration) -> Result<(), QueueError> {
        self.inner.delay(receipt_handle, delay).await
    }
}
