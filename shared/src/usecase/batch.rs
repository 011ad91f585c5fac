//! Batch mode: a run's jobs go to the provider's batch API in chunks instead of one call a row, for
//! half the price and results within a day.
//!
//! The splitter hands each segment of the CSV (at most [`BATCH_REQUESTS`] jobs) to [`Batches::submit`]:
//! the chunk's jobs are kept with the run, a record of the chunk is created (create-if-absent: the
//! chunk is named by the rows read before it, so a repeated segment finds its record), and the batch is
//! created at the provider under the chunk's name. A creation that fails is looked up by that name
//! before anything is created again: nothing is paid twice. [`Batches::poll`] checks every open chunk
//! of a run; a finished batch's results are read line by line, each image checked and stored like a
//! synchronous one, and each row's outcome sent to the events queue, so the run is recorded and
//! completed as usual. Rows the batch failed or let expire go the synchronous way (a setting), rows it
//! refused fail with the provider's reason.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::Error;
use super::generate::{existing_image, image_request, store_generated};
use crate::domain::catalog::{Catalog, ModelInfo};
use crate::domain::events::{PipelineEvent, now_ms};
use crate::domain::job::Job;
use crate::domain::locations::Locations;
use crate::domain::report::FailureEntry;
use crate::ports::batch::{BatchApi, BatchResult, BatchState, BatchStatus};
use crate::ports::ledger::{Checkpoint, RunRecord};
use crate::ports::queue::MessageQueue;
use crate::ports::store::{NewObject, ObjectStore, PutOutcome};
pub use crate::providers::batch_http::BATCH_REQUESTS;

/// Images stored at once while a batch's results are read.
const STORE_CONCURRENCY: usize = 8;
/// How long a poll holds a finished batch it reads: longer than one function invocation.
const READ_LEASE: Duration = Duration::from_secs(16 * 60);

/// Where a chunk's record and jobs are kept, under the run's folder.
pub mod keys {
    /// A chunk whose batch is at the provider (or being created).
    pub fn open(run_id: &str, chunk: u64) -> String {
        format!("{}{chunk:012}.json", open_prefix(run_id))
    }

    pub fn open_prefix(run_id: &str) -> String {
        format!("runs/{run_id}/batches/open/")
    }

    /// A chunk whose results are all read.
    pub fn done(run_id: &str, chunk: u64) -> String {
        format!("runs/{run_id}/batches/done/{chunk:012}.json")
    }

    /// The chunk's jobs, one JSON line each.
    pub fn jobs(run_id: &str, chunk: u64) -> String {
        format!("runs/{run_id}/batches/jobs/{chunk:012}.jsonl")
    }

    /// Held by the poll reading the chunk's results: the Unix milliseconds its lease ends.
    pub fn reading(run_id: &str, chunk: u64) -> String {
        format!("runs/{run_id}/batches/reading/{chunk:012}")
    }
}

/// One chunk of a run and its batch at the provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchRecord {
    pub run_id: String,
    /// Rows read before the chunk: its name, and where the splitter resumes it from.
    pub chunk: u64,
    /// The batch's name at the provider (its display name, or metadata where there is none).
    pub name: String,
    pub provider: String,
    pub model: String,
    /// The catalog entry of the model when the run started: what the batch asks for and its price.
    pub model_entry: ModelInfo,
    /// Where the splitter stands after the chunk.
    pub to: Checkpoint,
    /// Requests in the batch.
    pub requests: u64,
    /// The provider's id, once the batch is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub created_at_ms: u64,
    /// As last seen at the provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<BatchState>,
    /// Rows that failed for good when the results were read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<FailureEntry>,
    /// Rows of the chunk sent the synchronous way instead (reference images, images that exist,
    /// rows the batch format cannot carry).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sync_rows: Vec<u64>,
    /// The run was stopped and the provider asked to cancel the batch.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancelled: bool,
}

impl BatchRecord {
    /// The batch name for a run's chunk: the run id and the chunk, so a lookup finds it.
    pub fn name_of(run_id: &str, chunk: u64) -> String {
        format!("imagepipe-{run_id}-{chunk}")
    }
}

/// What the chunks of a run add up to, for progress lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchProgress {
    /// Batches at the provider, not yet finished.
    pub waiting: u64,
    /// Batches whose results were read by this poll.
    pub collected: u64,
    /// Requests the open batches hold, and those the provider says are done.
    pub requests: u64,
    pub done: u64,
}

/// The batch clients by provider name, built on first use.
pub struct BatchApis {
    built: std::sync::Mutex<HashMap<String, Arc<dyn BatchApi>>>,
}

impl BatchApis {
    /// Clients built from the environment as needed.
    pub fn from_env() -> Self {
        Self {
            built: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// With a client already built (local runs, tests).
    pub fn with(api: Arc<dyn BatchApi>) -> Self {
        let apis = Self::from_env();
        apis.lock().insert(api.name().to_owned(), api);
        apis
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<dyn BatchApi>>> {
        self.built.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, provider: &str) -> Result<Arc<dyn BatchApi>, Error> {
        if let Some(api) = self.lock().get(provider) {
            return Ok(api.clone());
        }
        let entry = crate::providers::registry::entry(provider)?;
        let built = entry.build_batch();
        let api = built.ok_or_else(|| Error::Input(format!("provider {provider} has no batch API")))??;
        self.lock().insert(provider.to_owned(), api.clone());
        Ok(api)
    }
}

/// Why `model` cannot be used in batch mode through `provider` (the model's own, or the one every
/// model is routed through), when it cannot.
pub fn batch_refusal(model_name: &str, model: &ModelInfo, provider: Option<&str>, catalog: &Catalog) -> Option<String> {
    let provider = provider.unwrap_or(&model.provider);
    if model.batch_price_per_image.is_some() && provider != model.provider {
        return Some(format!(
            "batch mode calls the model's own provider's batch API, and this run goes through {provider:?} instead of {:?}",
            model.provider
        ));
    }
    let has_api = crate::providers::registry::entry(provider).is_ok_and(|e| e.has_batch());
    if model.batch_price_per_image.is_some() && has_api {
        return None;
    }
    let able: Vec<&str> = (catalog.models.iter())
        .filter(|(_, m)| m.batch_price_per_image.is_some())
        .map(|(name, _)| name.as_str())
        .collect();
    Some(format!(
        "model {model_name:?} has no batch price in the catalog, so it cannot run in batch mode; models that can: {}",
        able.join(", ")
    ))
}

/// What batch mode needs: where chunks are kept, the provider's batch API, and the queues outcomes
/// (and rows going the synchronous way) are sent to.
pub struct Batches<S, J, E> {
    pub store: S,
    pub apis: BatchApis,
    /// Rows a batch did not make go here, to the synchronous generator.
    pub jobs: J,
    pub events: E,
    pub locations: Locations,
    /// Rows a batch failed (not refused) or let expire are tried once more the synchronous way;
    /// otherwise they fail with the provider's reason.
    pub retry_failed: bool,
    /// Outcomes are not kept between processes (the local run's ledger is in memory): a chunk found
    /// done has its rows' outcomes sent again, its images found in the store rather than paid again.
    pub replay_done: bool,
}

impl<S: ObjectStore, J: MessageQueue, E: MessageQueue> Batches<S, J, E> {
    /// The record of a run's chunk, open or done.
    pub async fn recorded(&self, run_id: &str, chunk: u64) -> Result<Option<BatchRecord>, Error> {
        for key in [keys::open(run_id, chunk), keys::done(run_id, chunk)] {
            if let Some(record) = self.read_record(&key).await? {
                return Ok(Some(record));
            }
        }
        Ok(None)
    }

    async fn read_record(&self, key: &str) -> Result<Option<BatchRecord>, Error> {
        let Some(bytes) = self.store.get(key).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Input(format!("{key}: not a batch record: {e}")))
    }

    async fn write_record(&self, key: &str, record: &BatchRecord) -> Result<(), Error> {
        self.store.put(key, json_object(record)).await?;
        Ok(())
    }

    /// Submits the chunk of `run` that takes the splitter from `from` to `to`: its jobs are kept,
    /// its record created, and its batch created at the provider (or found there, when an earlier
    /// attempt created it). Rows no batch should take go the synchronous way at once: rows with
    /// reference images (signed and fetched by the generator, within its limits), rows whose image
    /// already exists (found, not paid again), and rows the provider's batch format cannot carry. A
    /// stopped run submits nothing: its rows fail as not attempted.
    pub async fn submit(&self, run: &RunRecord, from: Checkpoint, to: Checkpoint, jobs: Vec<Job>) -> Result<(), Error> {
        let chunk = from.rows_read;
        let Some(model) = run.model_entry.clone() else {
            return Err(Error::Input(format!(
                "run {} has no model entry to batch with",
                run.run_id
            )));
        };
        if let Some(reason) = &run.stopped {
            for job in &jobs {
                self.fail(job, &format!("not attempted: the run was stopped ({reason})"))
                    .await?;
            }
            return Ok(());
        }
        let api = self.apis.get(&run.provider)?;
        let (mut lines, mut batched, mut sync_rows) = (String::new(), 0u64, Vec::new());
        for job in &jobs {
            let sync = !job.references.is_empty() || existing_image(&self.store, job).await?.is_some();
            let line = if sync {
                None
            } else {
                let request = image_request(job, &model, Vec::new(), Duration::from_secs(60));
                api.line(job.row, &request)
                    .await
                    .inspect_err(|e| tracing::info!(row = job.row, error = %e, "row goes the synchronous way"))
                    .ok()
            };
            match line {
                Some(line) => {
                    lines.push_str(&line);
                    lines.push('\n');
                    batched += 1;
                }
                None => sync_rows.push(job.row),
            }
        }
        let mut jobs_file = String::new();
        for job in &jobs {
            jobs_file.push_str(&serde_json::to_string(job).unwrap_or_default());
            jobs_file.push('\n');
        }
        let jobs_object = NewObject {
            body: bytes::Bytes::from(jobs_file),
            content_type: "application/x-ndjson".into(),
            cache_control: None,
            metadata: vec![],
        };
        self.store.put(&keys::jobs(&run.run_id, chunk), jobs_object).await?;
        let mut record = BatchRecord {
            run_id: run.run_id.clone(),
            chunk,
            name: BatchRecord::name_of(&run.run_id, chunk),
            provider: run.provider.clone(),
            model: run.model.clone(),
            model_entry: model.clone(),
            to,
            requests: batched,
            id: None,
            created_at_ms: now_ms(),
            state: None,
            failed: Vec::new(),
            sync_rows,
            cancelled: false,
        };
        let open = keys::open(&run.run_id, chunk);
        let created_before = self.store.put_if_absent(&open, json_object(&record)).await? == PutOutcome::AlreadyExists;
        if created_before {
            let Some(earlier) = self.read_record(&open).await? else {
                return Err(Error::Input(format!("{open}: the chunk's record went away")));
            };
            if earlier.id.is_some() {
                return Ok(());
            }
            record = earlier;
        } else {
            // Sent once, when the record is first written: a repeat finds the record and sends nothing.
            self.send_sync(&jobs, &record.sync_rows).await?;
        }
        if batched == 0 {
            record.state = Some(BatchState::Succeeded);
            self.write_record(&keys::done(&run.run_id, chunk), &record).await?;
            return Ok(self.store.delete(&open).await?);
        }
        if created_before && let Some(id) = api.find(&record.name).await? {
            tracing::info!(run_id = %run.run_id, chunk, %id, "batch found at the provider; not created again");
            record.id = Some(id);
            return self.write_record(&open, &record).await;
        }
        let created = api.create(&model.provider_model, &record.name, lines).await;
        let id = match created {
            Ok(id) => id,
            // The creation may have happened all the same (a timeout, a lost answer): look before paying again.
            Err(error) => match api.find(&record.name).await {
                Ok(Some(id)) => id,
                _ if error.is_retryable() => return Err(error.into()),
                _ => {
                    tracing::warn!(run_id = %run.run_id, chunk, %error, "batch refused; its rows go the synchronous way");
                    let batched_jobs = jobs.iter().filter(|j| !record.sync_rows.contains(&j.row));
                    for job in batched_jobs {
                        let failed = self.not_made(job, &format!("batch refused: {error}"), true).await?;
                        record.failed.extend(failed);
                    }
                    record.state = Some(BatchState::Failed);
                    self.write_record(&keys::done(&run.run_id, chunk), &record).await?;
                    self.store.delete(&open).await?;
                    return Ok(());
                }
            },
        };
        tracing::info!(run_id = %run.run_id, chunk, %id, requests = record.requests, "batch created");
        record.id = Some(id);
        self.write_record(&open, &record).await
    }

    /// Sends `rows` of `jobs` to the synchronous generator.
    async fn send_sync(&self, jobs: &[Job], rows: &[u64]) -> Result<(), Error> {
        for job in jobs.iter().filter(|j| rows.contains(&j.row)) {
            self.jobs
                .send_batch(vec![serde_json::to_string(job).unwrap_or_default()])
                .await?;
        }
        Ok(())
    }

    /// Checks each open chunk of `run_id` at its provider and reads the results of those finished,
    /// starting no reading after `stop_by_ms` (those are read at the next poll). Once the run is
    /// `stopped`, the provider is asked to cancel its unfinished batches; what they made is still read.
    /// A chunk that cannot be polled (its batch gone, its results unreadable) is logged and tried
    /// again at the next poll; it does not hold back the run's other chunks.
    pub async fn poll(&self, run_id: &str, stop_by_ms: u64, stopped: bool) -> Result<BatchProgress, Error> {
        let mut progress = BatchProgress::default();
        for key in self.store.list(&keys::open_prefix(run_id)).await? {
            if now_ms() > stop_by_ms {
                progress.waiting += 1;
                continue;
            }
            if let Err(e) = self.poll_chunk(&key, stopped, &mut progress).await {
                tracing::warn!(%run_id, %key, error = %e, "batch not polled; trying again at the next poll");
                progress.waiting += 1;
            }
        }
        Ok(progress)
    }

    async fn poll_chunk(&self, key: &str, stopped: bool, progress: &mut BatchProgress) -> Result<(), Error> {
        let Some(mut record) = self.read_record(key).await? else {
            return Ok(());
        };
        let Some(id) = record.id.clone() else {
            // Being created (or its creator died): the splitter's next attempt finishes it.
            progress.waiting += 1;
            return Ok(());
        };
        let api = self.apis.get(&record.provider)?;
        let status = api.status(&id).await?;
        if !status.state.is_final() && stopped && !record.cancelled {
            tracing::info!(run_id = %record.run_id, chunk = record.chunk, %id, "run stopped; cancelling its batch");
            api.cancel(&id).await?;
            record.cancelled = true;
            self.write_record(key, &record).await?;
        }
        if !status.state.is_final() {
            progress.waiting += 1;
            progress.requests += status.total.unwrap_or(record.requests);
            progress.done += status.done.unwrap_or(0) + status.failed.unwrap_or(0);
            if record.state != Some(status.state) {
                record.state = Some(status.state);
                self.write_record(key, &record).await?;
            }
            return Ok(());
        }
        // One reader a batch: another poll reading it leaves it alone until its lease ends.
        let lease = keys::reading(&record.run_id, record.chunk);
        let until = now_ms() + READ_LEASE.as_millis() as u64;
        let taken = self.store.put_if_absent(&lease, lease_object(until)).await? == PutOutcome::Created;
        if !taken {
            let held_until = self
                .store
                .get(&lease)
                .await?
                .and_then(|b| String::from_utf8_lossy(&b).parse::<u64>().ok());
            if held_until.is_some_and(|t| t > now_ms()) {
                progress.waiting += 1;
                return Ok(());
            }
            self.store.put(&lease, lease_object(until)).await?;
        }
        let read = async {
            record.failed = self.collect(&record, api.as_ref(), &status).await?;
            record.state = Some(status.state);
            self.write_record(&keys::done(&record.run_id, record.chunk), &record)
                .await?;
            Ok::<_, Error>(self.store.delete(key).await?)
        };
        let read = read.await;
        // Given back either way: a read that failed is tried again by the next poll.
        if let Err(e) = self.store.delete(&lease).await {
            tracing::warn!(%key, error = %e, "read lease not given back; it ends by itself");
        }
        read?;
        progress.collected += 1;
        Ok(())
    }

    /// Reads a finished batch's results: each image is stored and its row's outcome sent; rows
    /// without a result (a failed or expired batch) are handled as not made.
    /// Returns the rows that failed for good.
    async fn collect(
        &self,
        record: &BatchRecord,
        api: &dyn BatchApi,
        status: &BatchStatus,
    ) -> Result<Vec<FailureEntry>, Error> {
        let mut jobs = self.jobs_of(record).await?;
        jobs.retain(|row, _| !record.sync_rows.contains(row));
        let model = record.model_entry.clone();
        let price = model.batch_price_per_image.unwrap_or(model.price_per_image / 2.0);
        let model = &model;
        tracing::info!(run_id = %record.run_id, chunk = record.chunk, state = ?status.state, "reading batch results");
        let (tx, rx) = tokio::sync::mpsc::channel::<BatchResult>(1);
        let reading = api.results(status, tx);
        let mut answered = Vec::new();
        let storing = super::received(rx)
            .filter_map(|result| {
                let job = jobs.remove(&result.row);
                if job.is_none() {
                    tracing::warn!(row = result.row, "result for a row the batch did not hold; skipped");
                }
                futures::future::ready(job.map(|job| (job, result.image)))
            })
            .map(|(job, image)| async move {
                let outcome = match image {
                    Ok(image) => store_generated(&job, model, &self.store, image, price).await,
                    Err(e) => Err(e.into()),
                };
                (job, outcome)
            })
            .buffer_unordered(STORE_CONCURRENCY)
            .for_each(|(job, outcome)| {
                answered.push((job, outcome));
                futures::future::ready(())
            });
        let (read, ()) = tokio::join!(reading, storing);
        if let Err(e) = read {
            // Results not read this time are read at the next poll (images written stay; nothing is paid again).
            return Err(e.into());
        }
        // An image that could not be stored is read again at the next poll, not paid again the
        // synchronous way.
        if let Some((_, Err(error))) = answered.iter().find(|(_, o)| matches!(o, Err(Error::Store(_)))) {
            return Err(Error::Input(format!("a batch image could not be stored: {error}")));
        }
        let mut failed = Vec::new();
        for (job, outcome) in answered {
            match outcome {
                Ok(generated) => {
                    let path = self.locations.object(&generated.object_key);
                    crate::ports::metrics::image_made(&job, &record.provider, generated.reused, generated.cost_usd);
                    self.send_event(PipelineEvent::JobSucceeded {
                        run_id: job.run_id.clone(),
                        image: generated.into_entry(&job, path),
                    })
                    .await?;
                }
                Err(error) => failed.extend(self.not_made(&job, &error.to_string(), error.is_retryable()).await?),
            }
        }
        let why = match status.state {
            BatchState::Succeeded => "the batch finished without a result for this row".to_owned(),
            state => format!(
                "the batch ended {}{}",
                format!("{state:?}").to_lowercase(),
                status.message.as_deref().map(|m| format!(": {m}")).unwrap_or_default()
            ),
        };
        for job in jobs.into_values() {
            failed.extend(self.not_made(&job, &why, true).await?);
        }
        Ok(failed)
    }

    /// The jobs of a chunk, by row.
    async fn jobs_of(&self, record: &BatchRecord) -> Result<HashMap<u64, Job>, Error> {
        let jobs_key = keys::jobs(&record.run_id, record.chunk);
        let Some(jobs) = self.store.get(&jobs_key).await? else {
            return Err(Error::Input(format!("{jobs_key}: the chunk's jobs are missing")));
        };
        Ok((jobs.split(|&b| b == b'\n'))
            .filter_map(|line| serde_json::from_slice::<Job>(line).ok())
            .map(|job| (job.row, job))
            .collect())
    }

    /// Sends again what an earlier process sent of a chunk: for a chunk whose results were read,
    /// its failures as they were and its other rows to the generator, which finds their images
    /// stored; for a chunk still at the provider, the rows it sent the synchronous way.
    async fn replay(&self, record: &BatchRecord) -> Result<(), Error> {
        let mut jobs = self.jobs_of(record).await?;
        if !record.state.is_some_and(BatchState::is_final) {
            let jobs: Vec<Job> = jobs.into_values().collect();
            return self.send_sync(&jobs, &record.sync_rows).await;
        }
        for failure in &record.failed {
            jobs.remove(&failure.row);
            let event = PipelineEvent::JobFailed {
                run_id: record.run_id.clone(),
                failure: failure.clone(),
            };
            self.send_event(event).await?;
        }
        for job in jobs.into_values() {
            self.jobs
                .send_batch(vec![serde_json::to_string(&job).unwrap_or_default()])
                .await?;
        }
        Ok(())
    }

    /// A row the batch did not make: tried once more the synchronous way when that may help and the
    /// setting allows, else failed with `reason`.
    async fn not_made(&self, job: &Job, reason: &str, worth_retrying: bool) -> Result<Option<FailureEntry>, Error> {
        if worth_retrying && self.retry_failed {
            tracing::info!(row = job.row, %reason, "row goes the synchronous way");
            let body = serde_json::to_string(job).unwrap_or_default();
            self.jobs.send_batch(vec![body]).await?;
            return Ok(None);
        }
        let failure = FailureEntry {
            row: job.row,
            key: job.key.to_string(),
            reason: format!("batch: {reason}"),
            attempts: 1,
        };
        crate::ports::metrics::image_failed(job, "batch", &failure.reason);
        self.send_event(PipelineEvent::JobFailed {
            run_id: job.run_id.clone(),
            failure: failure.clone(),
        })
        .await?;
        Ok(Some(failure))
    }

    /// Fails `job` with `reason` (the run was stopped).
    async fn fail(&self, job: &Job, reason: &str) -> Result<(), Error> {
        let failure = FailureEntry {
            row: job.row,
            key: job.key.to_string(),
            reason: reason.to_owned(),
            attempts: 0,
        };
        let run_id = job.run_id.clone();
        self.send_event(PipelineEvent::JobFailed { run_id, failure }).await
    }

    async fn send_event(&self, event: PipelineEvent) -> Result<(), Error> {
        let body = serde_json::to_string(&event).expect("an event always serialises");
        Ok(self.events.send_batch(vec![body]).await?)
    }
}

/// Where the splitter hands a batch-mode run's chunks.
#[async_trait::async_trait]
pub trait ChunkSink: Send + Sync {
    /// The record of a run's chunk, when the chunk was submitted before.
    async fn recorded(&self, run_id: &str, chunk: u64) -> Result<Option<BatchRecord>, Error>;

    /// Submits the chunk of `run` from `from` to `to`.
    async fn submit(&self, run: &RunRecord, from: Checkpoint, to: Checkpoint, jobs: Vec<Job>) -> Result<(), Error>;
}

#[async_trait::async_trait]
impl<S, J, E> ChunkSink for Batches<S, J, E>
where
    S: ObjectStore + Sync,
    J: MessageQueue + Sync,
    E: MessageQueue + Sync,
{
    async fn recorded(&self, run_id: &str, chunk: u64) -> Result<Option<BatchRecord>, Error> {
        let record = Batches::recorded(self, run_id, chunk).await?;
        if self.replay_done
            && let Some(found) = &record
            && (found.id.is_some() || found.state.is_some())
        {
            self.replay(found).await?;
        }
        Ok(record)
    }

    async fn submit(&self, run: &RunRecord, from: Checkpoint, to: Checkpoint, jobs: Vec<Job>) -> Result<(), Error> {
        Batches::submit(self, run, from, to, jobs).await
    }
}

fn lease_object(until_ms: u64) -> NewObject {
    NewObject {
        body: bytes::Bytes::from(until_ms.to_string()),
        content_type: "text/plain".into(),
        cache_control: None,
        metadata: vec![],
    }
}

fn json_object(record: &BatchRecord) -> NewObject {
    NewObject {
        body: bytes::Bytes::from(serde_json::to_vec_pretty(record).unwrap_or_default()),
        content_type: "application/json".into(),
        cache_control: None,
        metadata: vec![],
    }
}

#[cfg(test)]
#[path = "batch_tests.rs"]
mod tests;
