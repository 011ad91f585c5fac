//! The workers of a local run: one job each with retries, within the run's interrupt and grace period.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::{CancellationToken, INTERRUPT_GRACE, LocalRun};
use crate::adapters::fs_store::FsObjectStore;
use crate::catalog::ModelInfo;
use crate::job::Job;
use crate::provider::ImageProvider;
use crate::report::{FailureEntry, ImageEntry};
use crate::retry::MAX_WAIT_PER_ROW;
use crate::usecase::generate::{JobError, generate_image};

/// Processes jobs for one run.
pub(super) struct Worker<'a> {
    pub(super) model: &'a ModelInfo,
    pub(super) store: &'a FsObjectStore,
    pub(super) provider: &'a dyn ImageProvider,
    pub(super) run: &'a LocalRun,
    pub(super) stopped: &'a AtomicBool,
    pub(super) interrupt: &'a CancellationToken,
}

impl Worker<'_> {
    /// [`process`](Self::process), abandoned [`INTERRUPT_GRACE`] after an interrupt.
    pub(super) async fn process_within_grace(&self, job: Job) -> Result<ImageEntry, FailureEntry> {
        let abandoned = FailureEntry {
            row: job.row,
            key: job.key.to_string(),
            reason: "abandoned: the run was interrupted during the provider call".into(),
            attempts: 1,
        };
        tokio::select! {
            outcome = self.process(job) => outcome,
            () = async {
                self.interrupt.cancelled().await;
                tokio::time::sleep(INTERRUPT_GRACE).await;
            } => Err(abandoned),
        }
    }

    /// One job with retries: retryable errors wait (full jitter, Retry-After as a floor) and try again.
    async fn process(&self, job: Job) -> Result<ImageEntry, FailureEntry> {
        let (mut attempt, mut waited) = (0, Duration::ZERO);
        loop {
            if self.interrupt.is_cancelled() {
                return Err(failure(&job, attempt, "not attempted: the run was interrupted".into()));
            }
            if self.stopped.load(Ordering::Relaxed) {
                return Err(failure(
                    &job,
                    attempt,
                    "not attempted: the run stopped after the provider refused its credentials".into(),
                ));
            }
            attempt += 1;
            match generate_image(
                &job,
                self.model,
                self.store,
                self.provider,
                self.run.signer.as_deref(),
                self.run.timeout,
            )
            .await
            {
                Ok(generated) => {
                    let path = self
                        .store
                        .path_of(&generated.object_key)
                        .map_or(generated.object_key.clone(), |p| p.display().to_string());
                    return Ok(generated.into_entry(&job, path));
                }
                Err(error) => {
                    // Retry-After is a floor, but the row waits at most MAX_WAIT_PER_ROW in all.
                    let wait = self.run.retry.delay(attempt, error.retry_after());
                    if error.is_retryable()
                        && self.run.retry.allows_another(attempt)
                        && waited + wait <= MAX_WAIT_PER_ROW
                    {
                        tracing::warn!(row = job.row, attempt, ?wait, %error, "retrying");
                        tokio::select! {
                            () = tokio::time::sleep(wait) => {}
                            () = self.interrupt.cancelled() => {
                                let reason = format!("{} (interrupted before a retry)", reason(&error, attempt));
                                return Err(failure(&job, attempt, reason));
                            }
                        }
                        waited += wait;
                        continue;
                    }
                    if error.stops_run() {
                        self.stopped.store(true, Ordering::Relaxed);
                    }
                    tracing::warn!(row = job.row, attempt, %error, "row failed");
                    return Err(failure(&job, attempt, reason(&error, attempt)));
                }
            }
        }
    }
}

/// Why a row failed, with every known secret redacted.
fn reason(error: &JobError, attempts: u32) -> String {
    let reason = if error.is_retryable() {
        format!("{error} (gave up after {attempts} attempts)")
    } else {
        error.to_string()
    };
    crate::redact::redact(&reason, &[])
}

fn failure(job: &Job, attempts: u32, reason: String) -> FailureEntry {
    FailureEntry {
        row: job.row,
        key: job.key.to_string(),
        reason,
        attempts,
    }
}
