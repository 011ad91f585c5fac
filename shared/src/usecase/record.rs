//! Record (the finalizer's use case): each event → the CMS (once per row) → the row's outcome in
//! the run ledger, counters moved with it; per run, the start message, then — claimed by exactly one
//! finalizer once every awaited outcome is recorded — `report.json`, `results.csv` and the one
//! completion message. The reconciler finishes runs whose last events were lost.
//!
//! A claim lives until the claiming invocation's deadline (plus a margin), so a finalizer that died
//! holding one is taken over by the next try, never mistaken for done.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use futures::StreamExt;

use crate::domain::events::{FinalizerInput, Outcome, PipelineEvent, now_ms};
use crate::domain::locations::Locations;
use crate::domain::report::FailureEntry;
use crate::domain::retry::RetryPolicy;
use crate::domain::template::Mode;
use crate::ports::ledger::{Action, Claim, LedgerError, RunLedger, RunRecord, RunState};
use crate::ports::publish::{Cms, Notifier};
use crate::ports::store::ObjectStore;
use crate::usecase::messages::{completion_message, notify, start_message};
use crate::usecase::report::write_report;

/// Records handled at once (CMS calls in flight).
const CONCURRENCY: usize = 16;
/// A claim outlives its holder's deadline by this much, so it is never taken over while held.
const CLAIM_MARGIN: Duration = Duration::from_secs(10);
/// Time kept back before the deadline to give a claim back when its action did not finish.
const RELEASE_TIME: Duration = Duration::from_secs(3);
/// Rows recorded per call when the reconciler fails lost rows.
const LOST_ROWS_PER_CALL: usize = 500;

/// One delivered message.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// The queue's message id: what comes back as a batch item failure.
    pub id: String,
    pub input: FinalizerInput,
    /// Deliveries so far, from 1.
    pub receive_count: u32,
}

/// A message or a run could not be handled now; its messages come back after the visibility timeout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TryLater(pub String);

impl From<LedgerError> for TryLater {
    fn from(error: LedgerError) -> Self {
        Self(error.to_string())
    }
}

/// A batch-mode run's rows may wait this long at the provider (Gemini expires a batch still pending
/// or running after 48 hours, OpenAI after 24) before the reconciler takes them for lost.
pub const BATCH_SILENCE: Duration = Duration::from_secs(49 * 3600);

/// What the finalizer needs, built once per container.
pub struct Recorder<L, S, C, N> {
    pub ledger: L,
    pub store: S,
    pub cms: Option<C>,
    pub notifier: Option<N>,
    pub locations: Locations,
    /// Presigns the report page's links to private objects; without it they are `s3://` URIs.
    pub links: Option<std::sync::Arc<dyn crate::providers::ReferenceSigner>>,
    /// Deliveries of a success event before a CMS outage is recorded as a CMS failure.
    pub cms_max_attempts: u32,
    /// Retries inside one call to ride out a blip of Slack.
    pub notify_retry: RetryPolicy,
    /// A message still not posted after `notify_retry` is logged and the run goes on (a local run,
    /// which must end); otherwise the step is tried again later, by the next delivery or the reconciler.
    pub notify_best_effort: bool,
    /// A run that still awaits outcomes but has recorded none for this long has lost them.
    pub silence: Duration,
    /// A run whose recorded spend reaches this stops calling the provider.
    pub max_run_cost_usd: Option<f64>,
}

/// What one delivery contributes.
enum Step {
    Outcome(Box<Outcome>),
    Split,
    Nothing,
    Again,
}

impl Step {
    fn outcome(outcome: Outcome) -> Self {
        Self::Outcome(Box::new(outcome))
    }
}

/// What a reconciliation did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Open runs looked at.
    pub runs: usize,
    /// Rows recorded as failed because nothing was heard of them.
    pub lost_rows: u64,
    /// Runs whose split has made no progress for the silence period.
    pub stalled_splits: Vec<String>,
}

impl<L: RunLedger, S: ObjectStore, C: Cms, N: Notifier> Recorder<L, S, C, N> {
    /// Handles a batch; returns the ids of the messages to deliver again. `deadline_ms` is the
    /// invocation's deadline (Unix milliseconds).
    pub async fn handle_batch(&self, deliveries: Vec<Delivery>, deadline_ms: u64) -> Vec<String> {
        let mut runs: BTreeMap<String, Vec<Delivery>> = BTreeMap::new();
        for delivery in deliveries {
            runs.entry(run_of(&delivery.input).to_owned())
                .or_default()
                .push(delivery);
        }
        let mut again = Vec::new();
        for (run_id, deliveries) in runs {
            let ids: Vec<String> = deliveries.iter().map(|d| d.id.clone()).collect();
            match self.handle_run(&run_id, deliveries, deadline_ms).await {
                Ok(retry) => again.extend(retry),
                Err(e) => {
                    tracing::warn!(%run_id, error = %e, "run not recorded; its messages come back");
                    again.extend(ids);
                }
            }
        }
        again
    }

    async fn handle_run(
        &self,
        run_id: &str,
        deliveries: Vec<Delivery>,
        deadline_ms: u64,
    ) -> Result<Vec<String>, TryLater> {
        let succeeded: Vec<u64> = deliveries
            .iter()
            .filter_map(|d| match &d.input {
                FinalizerInput::Event(PipelineEvent::JobSucceeded { image, .. }) => Some(image.row),
                _ => None,
            })
            .collect();
        // One read for the batch: rows recorded before (duplicates) are not sent to the CMS again.
        let recorded: HashSet<u64> = self
            .ledger
            .recorded_rows(run_id, &succeeded)
            .await?
            .into_iter()
            .collect();
        let recorded = &recorded;
        let steps: Vec<(String, Step)> = futures::stream::iter(deliveries)
            .map(|d| async move {
                let Delivery {
                    id,
                    input,
                    receive_count,
                } = d;
                let step = self.step(input, receive_count, recorded).await;
                (id, step)
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let (mut outcomes, mut again, mut split) = (Vec::new(), Vec::new(), false);
        for (id, step) in steps {
            match step {
                Step::Outcome(outcome) => outcomes.push(*outcome),
                Step::Split => split = true,
                Step::Nothing => {}
                Step::Again => again.push(id),
            }
        }
        let recorded = self.ledger.record(run_id, &outcomes).await?;
        if let Some(cap) = self.max_run_cost_usd
            && crate::ports::ledger::Tally::of(&recorded).spend_usd > 0.0
        {
            let reason = format!("spend reached the run budget of ${cap:.2} (MAX_RUN_COST_USD)");
            if self.ledger.stop_over_budget(run_id, cap, &reason).await? {
                tracing::warn!(%run_id, %reason, "run stopped");
            }
        }
        if split {
            self.announce_start(run_id, deadline_ms).await?;
        }
        self.try_complete(run_id, deadline_ms).await?;
        Ok(again)
    }

    async fn step(&self, input: FinalizerInput, receive_count: u32, recorded: &HashSet<u64>) -> Step {
        match input {
            FinalizerInput::Event(PipelineEvent::RunSplit { .. }) => Step::Split,
            FinalizerInput::Event(PipelineEvent::JobFailed { failure, .. }) => {
                Step::outcome(Outcome::Failed { failure })
            }
            FinalizerInput::Event(PipelineEvent::JobSucceeded { image, .. }) => {
                if recorded.contains(&image.row) {
                    return Step::Nothing;
                }
                let Some(cms) = &self.cms else {
                    return Step::outcome(Outcome::Succeeded { image, cms: None });
                };
                if image.cms_id.is_empty() {
                    let cms = Some(Err("the job named no CMS id for this row".to_owned()));
                    return Step::outcome(Outcome::Succeeded { image, cms });
                }
                let url = self.locations.image_url(&image.object_key);
                let cms = match cms.update_image(&image.cms_id, &url).await {
                    Ok(()) => Ok(()),
                    Err(e) if e.retryable && receive_count < self.cms_max_attempts => {
                        tracing::warn!(error = %e, receive_count, row = image.row, "CMS update failed; retrying later");
                        return Step::Again;
                    }
                    Err(e) => Err(format!("{} (after {receive_count} attempts)", e.message)),
                };
                Step::outcome(Outcome::Succeeded { image, cms: Some(cms) })
            }
            FinalizerInput::DeadJob(job) => {
                let reason = "no outcome after the jobs queue's last delivery: the generator timed out or crashed \
                              on it every time (the message is in the jobs dead-letter queue)";
                // The generator never said which provider it called.
                crate::ports::metrics::image_failed(&job, "unknown", reason);
                Step::outcome(Outcome::Failed {
                    failure: FailureEntry {
                        row: job.row,
                        key: job.key.to_string(),
                        reason: reason.into(),
                        attempts: receive_count,
                    },
                })
            }
        }
    }

    /// Posts the start message once the run is split (skipped for a rejected run or without a notifier).
    pub async fn announce_start(&self, run_id: &str, deadline_ms: u64) -> Result<(), TryLater> {
        let until = deadline_ms + CLAIM_MARGIN.as_millis() as u64;
        let Some(run) = self.ledger.claim(run_id, Claim::until(Action::Start, until)).await? else {
            return Ok(());
        };
        let totals = run.totals.clone().unwrap_or_default();
        if let (Some(notifier), None) = (&self.notifier, &totals.rejected) {
            let text = start_message(
                run_id,
                &run.source,
                &run.template,
                &run.model,
                totals.awaited,
                run.estimates().0,
            );
            let posted = within(deadline_ms, notify(notifier, &text, &self.notify_retry)).await;
            match posted {
                Ok(Ok(())) => {}
                Ok(Err(e)) if !e.retryable || self.notify_best_effort => {
                    tracing::error!(%run_id, error = %e, "start message not sent")
                }
                Ok(Err(e)) => return self.give_back(run_id, Action::Start, e.to_string()).await,
                Err(late) => return self.give_back(run_id, Action::Start, late).await,
            }
        }
        self.mark_done(run_id, Action::Start).await
    }

    /// Completes the run if every awaited outcome is recorded and no other finalizer holds the claim.
    pub async fn try_complete(&self, run_id: &str, deadline_ms: u64) -> Result<(), TryLater> {
        let until = deadline_ms + CLAIM_MARGIN.as_millis() as u64;
        let Some(run) = self
            .ledger
            .claim(run_id, Claim::until(Action::Completion, until))
            .await?
        else {
            return Ok(());
        };
        match within(deadline_ms, self.complete(&run)).await {
            Ok(Ok(())) => self.mark_done(run_id, Action::Completion).await,
            Ok(Err(reason)) | Err(reason) => self.give_back(run_id, Action::Completion, reason).await,
        }
    }

    /// The report and results, then the completion message.
    async fn complete(&self, run: &RunRecord) -> Result<(), String> {
        let links = self.links.as_deref();
        let report = write_report(&self.ledger, &self.store, &self.locations, links, run)
            .await
            .map_err(|e| e.to_string())?;
        crate::ports::metrics::run_completed(&run.provider, &run.model, &run.template);
        if let Some(notifier) = &self.notifier {
            let page = crate::domain::locations::keys::report_html(&run.run_id);
            let location = crate::usecase::report::private_link(&self.locations, links, &page).await;
            let text = completion_message(&report, &location);
            match notify(notifier, &text, &self.notify_retry).await {
                Ok(()) => {}
                Err(e) if !e.retryable || self.notify_best_effort => {
                    tracing::error!(run_id = %run.run_id, error = %e, "completion message not sent")
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        tracing::info!(
            run_id = %run.run_id,
            succeeded = report.succeeded,
            failed = report.failed,
            invalid = report.invalid,
            "run complete"
        );
        Ok(())
    }

    /// Marks an action done; retried in place, since the action's effect (a message) is already out.
    async fn mark_done(&self, run_id: &str, action: Action) -> Result<(), TryLater> {
        let mut attempt: u64 = 0;
        loop {
            attempt += 1;
            match self.ledger.done(run_id, action, now_ms()).await {
                Ok(()) => return Ok(()),
                Err(e) if attempt < 5 && matches!(e, LedgerError::Unavailable(_)) => {
                    tracing::warn!(error = %e, attempt, "marking done failed; trying again");
                    tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn give_back(&self, run_id: &str, action: Action, reason: String) -> Result<(), TryLater> {
        if let Err(e) = self.ledger.release(run_id, action).await {
            tracing::warn!(error = %e, "claim not given back; it expires by itself");
        }
        Err(TryLater(reason))
    }

    /// Finishes what the events left unfinished: runs whose every outcome is recorded but that are
    /// not complete, and runs silent past `silence` whose missing rows are recorded as failed.
    pub async fn reconcile(&self, deadline_ms: u64) -> Result<Reconciled, TryLater> {
        let mut done = Reconciled::default();
        for run_id in self.ledger.open_runs().await? {
            let Some(run) = self.ledger.run(&run_id).await? else {
                continue;
            };
            done.runs += 1;
            let silence = self.silence_of(&run);
            let silent = now_ms().saturating_sub(run.updated_at_ms) > silence.as_millis() as u64;
            match run.state {
                RunState::Splitting if silent => done.stalled_splits.push(run_id),
                RunState::Splitting | RunState::Complete => {}
                RunState::Running => {
                    if silent && run.outstanding().is_some_and(|n| n > 0) {
                        done.lost_rows += self.fail_lost_rows(&run, silence).await?;
                    }
                    self.announce_start(&run_id, deadline_ms).await?;
                    self.try_complete(&run_id, deadline_ms).await?;
                }
            }
        }
        Ok(done)
    }

    /// How long `run` may go without recording anything before its missing rows are taken for
    /// lost: a batch-mode run's rows may wait at the provider until its batches expire.
    fn silence_of(&self, run: &RunRecord) -> Duration {
        match (run.mode, run.state) {
            (Mode::Batch, RunState::Running) => self.silence.max(BATCH_SILENCE),
            _ => self.silence,
        }
    }

    /// Records every valid row without an outcome as failed.
    async fn fail_lost_rows(&self, run: &RunRecord, silence: Duration) -> Result<u64, TryLater> {
        let rows = run.totals.as_ref().map_or(0, |t| t.rows);
        let reason = format!(
            "no outcome: nothing was heard of this row for {} s after the run's last progress (its job or event \
             was lost); submit the CSV again to retry it",
            silence.as_secs()
        );
        let mut known = crate::usecase::report::RowWalk::new(&self.ledger, &run.run_id);
        let (mut lost, mut batch) = (0, Vec::new());
        for row in 1..=rows {
            if known.has(row).await? {
                continue;
            }
            batch.push(Outcome::Failed {
                failure: FailureEntry {
                    row,
                    key: String::new(),
                    reason: reason.clone(),
                    attempts: 0,
                },
            });
            if batch.len() == LOST_ROWS_PER_CALL {
                lost += self
                    .ledger
                    .record(&run.run_id, &std::mem::take(&mut batch))
                    .await?
                    .len() as u64;
            }
        }
        lost += self.ledger.record(&run.run_id, &batch).await?.len() as u64;
        tracing::warn!(run_id = %run.run_id, lost, "rows without an outcome recorded as failed");
        Ok(lost)
    }
}

fn run_of(input: &FinalizerInput) -> &str {
    match input {
        FinalizerInput::Event(
            PipelineEvent::RunSplit { run_id }
            | PipelineEvent::JobSucceeded { run_id, .. }
            | PipelineEvent::JobFailed { run_id, .. },
        ) => run_id,
        FinalizerInput::DeadJob(job) => &job.run_id,
    }
}

/// Runs `action` until shortly before `deadline_ms`; `Err` with a reason when it did not finish.
async fn within<T>(deadline_ms: u64, action: impl Future<Output = T>) -> Result<T, String> {
    let left = Duration::from_millis(deadline_ms.saturating_sub(now_ms())).saturating_sub(RELEASE_TIME);
    tokio::time::timeout(left, action).await.map_err(|_| {
        format!(
            "not finished {} s before the invocation's deadline",
            RELEASE_TIME.as_secs()
        )
    })
}

#[cfg(test)]
#[path = "record_tests.rs"]
mod tests;
