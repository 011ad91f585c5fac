//! Split: one CSV → one run. Validates and prices every row, enforces the budget, fans the valid rows
//! out as jobs, and records what the finalizer must wait for.

use std::future::Future;
use std::io::Read;

use futures::StreamExt;
use tokio::sync::mpsc;

use crate::catalog::Catalog;
use crate::events::{PipelineEvent, RunManifest, SplitSummary, get_json, json_object, keys, now_ms};
use crate::job::{Job, run_id};
use crate::queue::{MessageQueue, QueueError};
use crate::rows::{CsvError, RowOutcome, RowReader};
use crate::store::{ObjectStore, StoreError};
use crate::template::Template;
use crate::usecase::plan::{Plan, plan_csv};

/// Where the CSV comes from; opened once to plan and once to send.
pub trait CsvSource: Send + Sync {
    /// How messages name the file (`s3://bucket/key`).
    fn name(&self) -> &str;
    /// What identifies this version of the file (S3 ETag or version id).
    fn version(&self) -> &str;
    /// A fresh blocking reader from the start of the file.
    fn open(&self) -> impl Future<Output = Result<Box<dyn Read + Send>, StoreError>> + Send;
}

/// How the splitter runs.
#[derive(Debug, Clone)]
pub struct SplitSettings {
    /// Routes every model through this provider instead of the catalog's.
    pub provider: Option<String>,
    /// A run whose estimate is higher is rejected before any job is sent.
    pub max_run_cost_usd: Option<f64>,
    /// Larger CSVs are rejected: one invocation must send every job within Lambda's 15 minutes.
    pub max_rows: u64,
    /// SendMessageBatch calls in flight.
    pub send_concurrency: usize,
}

/// What a split did.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    pub run_id: String,
    /// Jobs sent (0 for a rejected run).
    pub sent: u64,
    pub summary: SplitSummary,
    /// The run was split before (a duplicate event): nothing was sent again.
    pub duplicate: bool,
}

/// A split could not finish; the event should be retried.
#[derive(Debug, thiserror::Error)]
pub enum SplitError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("CSV reader stopped: {0}")]
    Reader(String),
}

/// What the splitter needs, built once per container.
pub struct Splitter<S, Q, E> {
    /// The run records' bucket.
    pub store: S,
    pub jobs: Q,
    pub events: E,
    pub catalog: Catalog,
    pub settings: SplitSettings,
}

impl<S: ObjectStore, Q: MessageQueue, E: MessageQueue> Splitter<S, Q, E> {
    /// Splits the CSV of `source` for `template` (or a rejection reason when none could be chosen).
    pub async fn split<C: CsvSource>(
        &self,
        source: &C,
        template: Result<&Template, String>,
        model: Option<&str>,
    ) -> Result<Split, SplitError> {
        let (store, jobs, events, catalog, settings) =
            (&self.store, &self.jobs, &self.events, &self.catalog, &self.settings);
        let template_name = template.as_ref().map_or("-", |t| t.name.as_str());
        let model_name = model
            .or(template.as_ref().ok().map(|t| t.model.as_str()))
            .unwrap_or("-");
        let run_id = run_id(&[source.name(), source.version(), template_name, model_name]);
        if let Some(summary) = get_json::<SplitSummary, _>(store, &keys::split(&run_id)).await? {
            tracing::info!(%run_id, "run already split; announcing it again");
            announce(events, &run_id).await?;
            return Ok(Split {
                run_id,
                sent: 0,
                summary,
                duplicate: true,
            });
        }
        let provider = settings
            .provider
            .clone()
            .or_else(|| catalog.model(model_name).ok().map(|m| m.provider.clone()))
            .unwrap_or_else(|| "-".into());
        let manifest = RunManifest {
            run_id: run_id.clone(),
            source: source.name().to_owned(),
            etag: source.version().to_owned(),
            template: template_name.to_owned(),
            model: model_name.to_owned(),
            provider,
            started_at_ms: now_ms(),
        };
        store
            .put_if_absent(&keys::manifest(&run_id), json_object(&manifest))
            .await?;

        let (summary, sent) = match template {
            Err(reason) => (rejected(&run_id, reason), 0),
            Ok(template) => match plan(source, template, model, catalog).await? {
                Err(reason) => (rejected(&run_id, reason), 0),
                Ok(plan) => match over_limit(&plan, settings) {
                    Some(reason) => (rejected_plan(&run_id, &plan, reason), 0),
                    None => {
                        let sent = send_jobs(jobs, source, template, &run_id, &plan.model, settings).await?;
                        (summary_of(&run_id, plan), sent)
                    }
                },
            },
        };
        if let Some(reason) = &summary.rejected {
            tracing::warn!(%run_id, %reason, "run rejected");
        }
        store.put(&keys::split(&run_id), json_object(&summary)).await?;
        announce(events, &run_id).await?;
        tracing::info!(%run_id, sent, invalid = summary.invalid_rows.len(), "run split");
        Ok(Split {
            run_id,
            sent,
            summary,
            duplicate: false,
        })
    }
}

/// Plans on a blocking thread; a whole-file problem (not UTF-8, no rows, unknown model) is the
/// user's to fix and becomes the run's rejection reason.
async fn plan<C: CsvSource>(
    source: &C,
    template: &Template,
    model: Option<&str>,
    catalog: &Catalog,
) -> Result<Result<Plan, String>, SplitError> {
    let input = source.open().await?;
    let (name, template, model, catalog) = (
        source.name().to_owned(),
        template.clone(),
        model.map(str::to_owned),
        catalog.clone(),
    );
    tokio::task::spawn_blocking(move || plan_csv(input, &name, &template, model.as_deref(), &catalog))
        .await
        .map_err(|e| SplitError::Reader(e.to_string()))
        .map(|planned| planned.map_err(|e| e.to_string()))
}

fn over_limit(plan: &Plan, settings: &SplitSettings) -> Option<String> {
    if plan.rows > settings.max_rows {
        return Some(format!(
            "{} has {} rows; one run takes at most {} (MAX_ROWS_PER_RUN): split the file",
            plan.file, plan.rows, settings.max_rows
        ));
    }
    settings
        .max_run_cost_usd
        .filter(|&budget| plan.estimated_cost_usd > budget)
        .map(|budget| {
            format!(
                "estimated cost ${:.2} ({} images × ${} on {}) is over the run budget of ${budget:.2} (MAX_RUN_COST_USD)",
                plan.estimated_cost_usd, plan.valid, plan.price_per_image, plan.model
            )
        })
}

/// Streams the CSV again and sends its valid rows as jobs: batches of the queue's limit, several in flight.
async fn send_jobs<Q: MessageQueue, C: CsvSource>(
    jobs: &Q,
    source: &C,
    template: &Template,
    run_id: &str,
    model: &str,
    settings: &SplitSettings,
) -> Result<u64, SplitError> {
    let input = source.open().await?;
    let (tx, rx) = mpsc::channel::<String>(Q::BATCH_LIMIT * settings.send_concurrency.max(1) * 4);
    let (file, template, run_id, model) = (
        source.name().to_owned(),
        template.clone(),
        run_id.to_owned(),
        model.to_owned(),
    );
    let reader = tokio::task::spawn_blocking(move || -> Result<(), CsvError> {
        let mut rows = RowReader::open(input, &file, &template)?;
        while let Some(row) = rows.next_row() {
            if let RowOutcome::Valid(row) = row? {
                let job = Job::from_row(&run_id, &model, template.size, row);
                let body = serde_json::to_string(&job).expect("a job always serialises");
                if tx.blocking_send(body).is_err() {
                    break; // sending failed; the error is reported below
                }
            }
        }
        Ok(())
    });
    let bodies = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) });
    let mut batches = std::pin::pin!(
        bodies
            .ready_chunks(Q::BATCH_LIMIT)
            .map(|batch| async move {
                let n = batch.len() as u64;
                jobs.send_batch(batch).await.map(|()| n)
            })
            .buffer_unordered(settings.send_concurrency.max(1))
    );
    let mut sent = 0;
    while let Some(batch) = batches.next().await {
        sent += batch?;
    }
    match reader.await {
        Ok(Ok(())) => Ok(sent),
        Ok(Err(e)) => Err(SplitError::Reader(e.to_string())),
        Err(e) => Err(SplitError::Reader(e.to_string())),
    }
}

async fn announce<E: MessageQueue>(events: &E, run_id: &str) -> Result<(), QueueError> {
    let event = PipelineEvent::RunSplit {
        run_id: run_id.to_owned(),
    };
    events
        .send_batch(vec![serde_json::to_string(&event).expect("an event always serialises")])
        .await
}

fn summary_of(run_id: &str, plan: Plan) -> SplitSummary {
    SplitSummary {
        run_id: run_id.to_owned(),
        rows: plan.rows,
        valid: plan.valid,
        invalid_rows: plan.invalid_rows,
        estimated_cost_usd: plan.estimated_cost_usd,
        rejected: None,
    }
}

fn rejected_plan(run_id: &str, plan: &Plan, reason: String) -> SplitSummary {
    SplitSummary {
        valid: 0,
        rejected: Some(reason),
        ..summary_of(run_id, plan.clone())
    }
}

fn rejected(run_id: &str, reason: String) -> SplitSummary {
    SplitSummary {
        run_id: run_id.to_owned(),
        rows: 0,
        valid: 0,
        invalid_rows: Vec::new(),
        estimated_cost_usd: 0.0,
        rejected: Some(reason),
    }
}
