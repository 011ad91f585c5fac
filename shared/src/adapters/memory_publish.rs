//! In-memory CMS and notifier for tests: they keep what they were sent, and can be told to fail
//! or to hang for their first calls (a Slack outage, a CMS that never answers).

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::ports::publish::{Cms, Notifier, PublishError};

/// How the first calls of a fake go wrong.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Trouble {
    /// Every call is accepted.
    #[default]
    None,
    /// The first `n` calls fail with a retryable error (a 503).
    Fail(usize),
    /// The first `n` calls never answer.
    Hang(usize),
}

#[derive(Debug, Default)]
struct Calls {
    trouble: Trouble,
    made: AtomicUsize,
    accepted: Mutex<Vec<String>>,
}

impl Calls {
    async fn call(&self, what: String) -> Result<(), PublishError> {
        let n = self.made.fetch_add(1, Ordering::SeqCst);
        match self.trouble {
            Trouble::Fail(first) if n < first => Err(PublishError {
                retryable: true,
                message: "HTTP 503: unavailable".into(),
            }),
            Trouble::Hang(first) if n < first => std::future::pending().await,
            _ => {
                self.accepted
                    .lock()
                    .map_err(|_| PublishError {
                        retryable: false,
                        message: "poisoned".into(),
                    })?
                    .push(what);
                Ok(())
            }
        }
    }

    fn accepted(&self) -> Vec<String> {
        self.accepted.lock().map(|a| a.clone()).unwrap_or_default()
    }
}

/// A notifier that keeps the texts it accepted.
#[derive(Debug, Default)]
pub struct MemoryNotifier(Calls);

impl MemoryNotifier {
    pub fn new(trouble: Trouble) -> Self {
        Self(Calls {
            trouble,
            ..Calls::default()
        })
    }

    /// The texts accepted, in order.
    pub fn texts(&self) -> Vec<String> {
        self.0.accepted()
    }
}

impl Notifier for MemoryNotifier {
    async fn post(&self, text: &str) -> Result<(), PublishError> {
        self.0.call(text.to_owned()).await
    }
}

/// A CMS that keeps the `sku image_url` updates it accepted.
#[derive(Debug, Default)]
pub struct MemoryCms(Calls);

impl MemoryCms {
    pub fn new(trouble: Trouble) -> Self {
        Self(Calls {
            trouble,
            ..Calls::default()
        })
    }

    /// The updates accepted, as `sku image_url`.
    pub fn updates(&self) -> Vec<String> {
        self.0.accepted()
    }
}

impl Cms for MemoryCms {
    async fn update_image(&self, sku: &str, image_url: &str) -> Result<(), PublishError> {
        self.0.call(format!("{sku} {image_url}")).await
    }
}
