//! Finish (AWS path): the finalizer's work on each event — CMS update, the row's outcome recorded
//! once — and, per run and batch, the tally, the start message and the one completion message.

use std::time::Duration;

use crate::events::{FinalizerInput, Outcome, PipelineEvent, RunManifest, SplitSummary, get_json, json_object, keys};
use crate::publish::{Cms, Notifier, PublishError};
use crate::report::FailureEntry;
use crate::retry::RetryPolicy;
use crate::store::{ObjectStore, StoreError};
use crate::usecase::complete::{Once, complete_run, once, record_outcome, recorded_outcome, write_tally};
use crate::usecase::finalize::{completion_message, notify, sku_of, start_message};

/// What one message contributed.
#[derive(Debug, Clone, PartialEq)]
pub enum Handled {
    /// A row's recorded outcome.
    Outcome { run_id: String, outcome: Outcome },
    /// The run is split: announce it and look for completion.
    Split { run_id: String },
}

/// A message or a run could not be finished now; its messages are delivered again after the
/// queue's visibility timeout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TryLater(pub String);

/// What the finalizer needs, built once per container.
pub struct Finisher<S, C, N> {
    pub store: S,
    pub cms: Option<C>,
    pub notifier: Option<N>,
    /// The URL the CMS gets for an object key.
    pub image_url: Box<dyn Fn(&str) -> String + Send + Sync>,
    /// Where the report of a run is, for the completion message.
    pub report_location: Box<dyn Fn(&str) -> String + Send + Sync>,
    /// Deliveries of a success event before a CMS outage is recorded as a CMS failure.
    pub cms_max_attempts: u32,
    pub claim_ttl: Duration,
    /// Retries inside one call to ride out a blip of Slack.
    pub notify_retry: RetryPolicy,
}

impl<S: ObjectStore, C: Cms, N: Notifier> Finisher<S, C, N> {
    /// Handles one message; `receive_count` counts its deliveries from 1.
    pub async fn handle(&self, input: FinalizerInput, receive_count: u32) -> Result<Handled, TryLater> {
        let later = TryLater;
        let (run_id, outcome) = match input {
            FinalizerInput::Event(PipelineEvent::RunSplit { run_id }) => return Ok(Handled::Split { run_id }),
            FinalizerInput::Event(PipelineEvent::JobFailed { run_id, failure }) => {
                (run_id, Outcome::Failed { failure })
            }
            FinalizerInput::Event(PipelineEvent::JobSucceeded { run_id, image }) => {
                if let Some(outcome) = recorded_outcome(&self.store, &run_id, image.row)
                    .await
                    .map_err(|e| later(e.to_string()))?
                {
                    return Ok(Handled::Outcome { run_id, outcome });
                }
                let cms = match &self.cms {
                    None => None,
                    Some(cms) => match cms
                        .update_image(sku_of(&image.key), &(self.image_url)(&image.object_key))
                        .await
                    {
                        Ok(()) => Some(Ok(())),
                        Err(e) if e.retryable && receive_count < self.cms_max_attempts => {
                            tracing::warn!(error = %e, receive_count, "CMS update failed; retrying later");
                            return Err(later(e.message));
                        }
                        Err(e) => Some(Err(format!("{} (after {receive_count} attempts)", e.message))),
                    },
                };
                (run_id, Outcome::Succeeded { image, cms })
            }
            FinalizerInput::DeadJob(job) => {
                let failure = FailureEntry {
                    row: job.row,
                    key: job.key.to_string(),
                    reason: "no outcome after the jobs queue's last delivery: the generator timed out or crashed \
                             on it every time (the message is in the jobs dead-letter queue)"
                        .into(),
                    attempts: receive_count,
                };
                (job.run_id, Outcome::Failed { failure })
            }
        };
        let outcome = record_outcome(&self.store, &run_id, outcome)
            .await
            .map_err(|e| later(e.to_string()))?;
        Ok(Handled::Outcome { run_id, outcome })
    }

    /// After a batch: the tally of `outcomes` of `run_id`, the start message when the run was just
    /// split, and the completion report and message when every row has an outcome.
    pub async fn settle(&self, run_id: &str, outcomes: &[Outcome], split: bool) -> Result<(), TryLater> {
        let later = TryLater;
        write_tally(&self.store, run_id, outcomes)
            .await
            .map_err(|e| later(e.to_string()))?;
        if split {
            self.announce_start(run_id).await.map_err(|e| later(e.to_string()))?;
        }
        // The completion message must not overtake the start message.
        let started = self
            .store
            .list(&keys::once(run_id, "start"))
            .await
            .map_err(|e| later(e.to_string()))?;
        if !started.iter().any(|k| k.ends_with("/done")) {
            return Ok(());
        }
        let Some(run) = complete_run(&self.store, run_id)
            .await
            .map_err(|e| later(e.to_string()))?
        else {
            return Ok(());
        };
        let done = once(
            &self.store,
            &keys::once(run_id, "completion"),
            self.claim_ttl,
            || async {
                let report = run.report();
                self.store
                    .put(&keys::report(run_id), json_object(&report))
                    .await
                    .map_err(Failure::Store)?;
                if let Some(notifier) = &self.notifier {
                    let text = completion_message(&report, &(self.report_location)(run_id));
                    notify(notifier, &text, &self.notify_retry)
                        .await
                        .map_err(Failure::Publish)?;
                }
                tracing::info!(
                    run_id,
                    succeeded = report.succeeded,
                    failed = report.failed,
                    invalid = report.invalid,
                    "run complete"
                );
                Ok::<(), Failure>(())
            },
        )
        .await
        .map_err(|e| later(e.to_string()))?;
        if done == Once::Claimed {
            tracing::info!(run_id, "another finalizer is completing the run");
        }
        Ok(())
    }

    async fn announce_start(&self, run_id: &str) -> Result<Once, Failure> {
        once(&self.store, &keys::once(run_id, "start"), self.claim_ttl, || async {
            let (Some(manifest), Some(summary)) = (
                get_json::<RunManifest, _>(&self.store, &keys::manifest(run_id)).await?,
                get_json::<SplitSummary, _>(&self.store, &keys::split(run_id)).await?,
            ) else {
                return Err(Failure::Store(StoreError::Failed(format!(
                    "run {run_id} has no manifest or split summary"
                ))));
            };
            if let (Some(notifier), None) = (&self.notifier, &summary.rejected) {
                let text = start_message(
                    run_id,
                    &manifest.source,
                    &manifest.template,
                    &manifest.model,
                    summary.valid,
                    summary.estimated_cost_usd,
                );
                notify(notifier, &text, &self.notify_retry).await?;
            }
            Ok(())
        })
        .await
    }
}

#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Publish(#[from] PublishError),
}
