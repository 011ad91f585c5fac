//! The local run: the AWS deployment's pipeline — split, generate, record — in one process, over
//! local adapters: the output directory as the object store, in-process queues with SQS's delivery
//! rules (visibility, delays, a dead-letter limit), and the in-memory run ledger. What differs from
//! AWS is a setting of the shared use cases (no leases, stops read at once), not a copy of them.
//! Used by `imagepipe run`.

mod snapshot;

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
pub use tokio_util::sync::CancellationToken;

use crate::adapters::fs_store::FsObjectStore;
use crate::adapters::http_publish::{HttpCms, SlackWebhook};
use crate::adapters::local_queue::{LocalQueue, Received};
use crate::adapters::memory_ledger::MemoryLedger;
use crate::domain::catalog::Catalog;
use crate::domain::events::{FinalizerInput, PipelineEvent, get_json, now_ms};
use crate::domain::job::Job;
use crate::domain::locations::{Locations, keys};
use crate::domain::report::{FailureEntry, RunReport};
use crate::domain::retry::RetryPolicy;
use crate::domain::template::Template;
use crate::ports::batch::BatchApi;
use crate::ports::ledger::{RunLedger, RunRecord, RunState};
use crate::ports::queue::MessageQueue;
use crate::ports::store::{NewObject, ObjectStore};
use crate::providers::{ImageProvider, ReferenceSigner};
use crate::usecase::batch::{BATCH_REQUESTS, BatchApis, BatchProgress, Batches, ChunkSink};
use crate::usecase::deliver::{Disposition, FINISH_TIME, Generator, MIN_CALL_TIME, Providers};
use crate::usecase::plan::{Plan, plan_csv};
use crate::usecase::record::{Delivery, Recorder};
use crate::usecase::split::{Continuation, CsvSource, SplitSettings, Splitter, run_id_of};
use crate::usecase::stops::RunStops;
use snapshot::{HashingReader, SnapshotCsv, Tee};

/// Everything a local run needs.
pub struct LocalRun {
    pub csv: PathBuf,
    pub template: Template,
    /// Model override; the template's model otherwise.
    pub model: Option<String>,
    pub catalog: Catalog,
    pub provider: Arc<dyn ImageProvider>,
    /// Signs `s3://` reference images; without one, rows with such references fail with a reason.
    pub signer: Option<Arc<dyn ReferenceSigner>>,
    pub out_dir: PathBuf,
    pub concurrency: usize,
    pub retry: RetryPolicy,
    /// Per provider call.
    pub timeout: Duration,
    pub publish: Publishing,
    /// Batch mode (the template's `mode = "batch"`, or `--batch`); `None`: synchronous calls.
    pub batch: Option<LocalBatch>,
}

/// A local run in batch mode: chunks go to the provider's batch API and are polled; their state is
/// kept in `<out>/runs/<run_id>/batches/`, so running the same command again picks them up.
#[derive(Clone)]
pub struct LocalBatch {
    pub api: Arc<dyn BatchApi>,
    pub poll_every: Duration,
    /// Rows a batch failed or let expire are tried once more the synchronous way.
    pub retry_failed: bool,
    /// Requests in one batch (at most [`BATCH_REQUESTS`]).
    pub requests: usize,
    /// Shown after each poll.
    pub progress: Arc<dyn Fn(&BatchProgress) + Send + Sync>,
}

/// Where a run reports to, all optional: the CMS, a Slack webhook, and the public URL images are served from.
#[derive(Debug, Clone, Default)]
pub struct Publishing {
    pub cms: Option<HttpCms>,
    pub notifier: Option<SlackWebhook>,
    /// Prefix the CMS gets image URLs under: `<public_base_url>/<object key>`.
    pub public_base_url: Option<String>,
}

/// Why a run could not start (nothing was generated) or could not record its report.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot read {file}: {error}")]
    Read { file: String, error: std::io::Error },
    #[error("cannot write to {dir}: {error}; nothing was generated")]
    Unwritable { dir: String, error: String },
    #[error(transparent)]
    Pipeline(#[from] crate::usecase::Error),
    #[error("cannot write the report: {0}")]
    Report(String),
    /// Ctrl-C in batch mode: the batches go on at the provider.
    #[error(
        "stopped; run {run_id}'s batches go on at the provider. Run the same command again to pick them up (nothing is submitted twice)"
    )]
    Paused { run_id: String },
}

/// How long calls in flight may go on after an interrupt before they are abandoned.
pub const INTERRUPT_GRACE: Duration = Duration::from_secs(10);
/// How often the run's progress is read from the ledger when no outcome says to sooner.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);
/// Deadline given to each local step: the process has no invocation deadline.
const STEP_TIME: Duration = Duration::from_secs(24 * 3600);
/// A delivery the generator hands back unstarted is tried again after this.
const HAND_BACK_DELAY: Duration = Duration::from_secs(1);

impl LocalRun {
    /// Plans the run without generating anything.
    pub fn plan(&self) -> Result<Plan, RunError> {
        let file = self.csv.display().to_string();
        Ok(plan_csv(
            self.open()?,
            &file,
            &self.template,
            self.model.as_deref(),
            &self.catalog,
        )?)
    }

    fn open(&self) -> Result<BufReader<File>, RunError> {
        let file = File::open(&self.csv).map_err(|source| self.read_error(source))?;
        Ok(BufReader::with_capacity(64 * 1024, file))
    }

    fn read_error(&self, error: std::io::Error) -> RunError {
        RunError::Read {
            file: self.csv.display().to_string(),
            error,
        }
    }

    /// Where the run's objects are.
    pub fn locations(&self) -> Locations {
        Locations::dir(&self.out_dir, self.publish.public_base_url.clone())
    }

    /// Runs the pipeline and writes `<out>/runs/<run_id>/report.json`; `progress` is shown the run's
    /// ledger record (done, failed, spend) as rows finish.
    pub async fn run(&self, progress: impl Fn(&RunRecord)) -> Result<RunReport, RunError> {
        self.run_until(progress, &CancellationToken::new()).await
    }

    /// [`run`](Self::run), stopping when `interrupt` is cancelled: the run is stopped (no new
    /// provider call starts), calls in flight get [`INTERRUPT_GRACE`] to finish and are then
    /// abandoned, every row not done is a failure saying so, and the report says the run stopped.
    pub async fn run_until(
        &self,
        progress: impl Fn(&RunRecord),
        interrupt: &CancellationToken,
    ) -> Result<RunReport, RunError> {
        let (plan, snapshot, digest) = self.plan_with_snapshot()?;
        let source = SnapshotCsv::new(plan.file.clone(), digest, snapshot);
        let run_id = run_id_of(source.name(), source.version(), &plan.template, &plan.model, plan.mode);
        let store = FsObjectStore::new(&self.out_dir);
        check_writable(&store, &self.out_dir, &run_id).await?;
        let pipeline = Pipeline::new(self, store);
        tracing::info!(%run_id, rows = plan.rows, valid = plan.valid, invalid = plan.invalid, "run started");
        let abandon = CancellationToken::new();
        let split = async {
            pipeline.split(&source, self).await?;
            std::future::pending::<Result<(), RunError>>().await
        };
        let workers = join_all((0..self.concurrency.max(1)).map(|_| pipeline.work(&abandon)));
        let recorders = join_all((0..recorders(self.concurrency)).map(|_| pipeline.record()));
        let running = async {
            tokio::try_join!(split, async {
                futures::join!(workers, recorders);
                Ok(())
            })
        };
        tokio::select! {
            result = running => {
                result?;
            }
            () = pipeline.watch(&run_id, &progress, interrupt, &abandon) => {}
            () = pipeline.poll_batches(&run_id) => {}
        }
        if pipeline.batches.is_some() && interrupt.is_cancelled() {
            return Err(RunError::Paused { run_id });
        }
        get_json::<RunReport, _>(&pipeline.store, &keys::report(&run_id))
            .await
            .map_err(|e| RunError::Report(e.to_string()))?
            .ok_or_else(|| RunError::Report(format!("run {run_id} completed without a report")))
    }

    /// Plans while copying the CSV to a private file; returns the plan, the copy and its digest.
    fn plan_with_snapshot(&self) -> Result<(Plan, File, String), RunError> {
        let spool = tempfile::tempfile().map_err(|e| self.read_error(e))?;
        let mut input = HashingReader::new(Tee {
            inner: self.open()?,
            copy: std::io::BufWriter::new(spool),
        });
        let file = self.csv.display().to_string();
        let plan = plan_csv(&mut input, &file, &self.template, self.model.as_deref(), &self.catalog)?;
        std::io::copy(&mut input, &mut std::io::sink()).map_err(|e| self.read_error(e))?;
        let (snapshot, digest) = input.finish();
        let snapshot = snapshot.rewound().map_err(|e| self.read_error(e))?;
        Ok((plan, snapshot, digest))
    }
}

/// Record loops: enough that a slow CMS does not hold the run back, as several finalizers would not.
fn recorders(concurrency: usize) -> usize {
    concurrency.div_ceil(10).clamp(1, 16)
}

/// The use cases of the AWS pipeline over the local adapters.
struct Pipeline {
    store: FsObjectStore,
    ledger: MemoryLedger,
    jobs: LocalQueue,
    events: LocalQueue,
    splitter: Splitter<LocalQueue, LocalQueue, LocalQueue, MemoryLedger>,
    generator: Generator<FsObjectStore, LocalQueue, MemoryLedger>,
    recorder: Recorder<MemoryLedger, FsObjectStore, HttpCms, SlackWebhook>,
    /// The most a delivery may take: the provider timeout and the time to store its image.
    delivery_time: Duration,
    /// Outcomes were recorded: progress (or completion) to look at.
    recorded: tokio::sync::Notify,
    retry: RetryPolicy,
    batches: Option<(Arc<LocalBatches>, LocalBatch)>,
}

type LocalBatches = Batches<FsObjectStore, LocalQueue, LocalQueue>;

impl Pipeline {
    fn new(run: &LocalRun, store: FsObjectStore) -> Self {
        let ledger = MemoryLedger::new();
        let delivery_time = run.timeout.max(MIN_CALL_TIME) + FINISH_TIME;
        // A message no one says anything of comes back after this (a worker always does).
        let visibility = delivery_time * 2;
        let events = LocalQueue::new("events", usize::MAX, visibility);
        // The jobs waiting in memory stay a few rounds of the workers ahead, whatever the CSV's size.
        let capacity = run.concurrency.max(1) * 4 + 100;
        let max_attempts = run.retry.max_attempts.max(1);
        let jobs = LocalQueue::new("jobs", capacity, visibility).with_dead_letter(events.clone(), max_attempts);
        let continuations = LocalQueue::new("split", 16, visibility);
        let locations = run.locations();
        let batches = run.batch.clone().map(|options| {
            let batches = Batches {
                store: store.clone(),
                apis: BatchApis::with(options.api.clone()),
                jobs: jobs.clone(),
                events: events.clone(),
                locations: locations.clone(),
                retry_failed: options.retry_failed,
                replay_done: true,
            };
            (Arc::new(batches), options)
        });
        Self {
            splitter: Splitter {
                jobs: jobs.clone(),
                events: events.clone(),
                continuations,
                ledger: ledger.clone(),
                settings: SplitSettings {
                    provider: Some(run.provider.name().to_owned()),
                    max_run_cost_usd: None,
                    max_rows: u64::MAX,
                    send_concurrency: 4,
                    reserve: Duration::ZERO,
                    rows_per_invocation: u64::MAX,
                    batch_requests: run.batch.as_ref().map_or(BATCH_REQUESTS, |b| b.requests),
                },
                batches: batches.as_ref().map(|(b, _)| b.clone() as Arc<dyn ChunkSink>),
            },
            generator: Generator {
                store: store.clone(),
                events: events.clone(),
                // Reads of the in-memory ledger are free: a stop is seen by the next job.
                stops: RunStops::with_interval(ledger.clone(), Duration::ZERO),
                catalog: run.catalog.clone(),
                providers: Providers::with(run.provider.clone()),
                signer: run.signer.clone(),
                provider_timeout: run.timeout,
                provider_timeouts: Default::default(),
                max_receive_count: max_attempts,
                backoff: run.retry,
                locations: locations.clone(),
                // One process holds every delivery: a job is never generated twice at once.
                leases: false,
            },
            recorder: Recorder {
                ledger: ledger.clone(),
                store: store.clone(),
                cms: run.publish.cms.clone(),
                notifier: run.publish.notifier.clone(),
                locations,
                links: None,
                cms_max_attempts: max_attempts,
                notify_retry: run.retry,
                notify_best_effort: true,
                silence: Duration::MAX,
                max_run_cost_usd: None,
            },
            store,
            ledger,
            jobs,
            events,
            delivery_time,
            recorded: tokio::sync::Notify::new(),
            retry: run.retry,
            batches,
        }
    }

    /// Splits the CSV into jobs, segment after segment.
    async fn split(&self, source: &SnapshotCsv, run: &LocalRun) -> Result<(), RunError> {
        let deadline = now_ms() + STEP_TIME.as_millis() as u64;
        let mut split = self
            .splitter
            .split(source, Ok(&run.template), run.model.as_deref(), &run.catalog, deadline)
            .await?;
        let continuations = &self.splitter.continuations;
        while split.continued {
            for message in continuations.receive(1).await.map_err(crate::usecase::Error::from)? {
                let _ = continuations.delete(&message.receipt_handle);
                let Ok(next) = serde_json::from_str::<Continuation>(&message.body) else {
                    continue;
                };
                split = (self.splitter)
                    .resume(&next.continue_run, next.rows_read, source, deadline)
                    .await?;
            }
        }
        Ok(())
    }

    /// A generator: takes jobs one at a time and does what the queue would with each disposition.
    async fn work(&self, abandon: &CancellationToken) {
        loop {
            let Ok(messages) = self.jobs.receive(1).await else {
                return;
            };
            for message in messages {
                self.deliver(message, abandon).await;
            }
        }
    }

    async fn deliver(&self, message: Received, abandon: &CancellationToken) {
        let Received {
            body,
            receive_count,
            receipt_handle,
        } = message;
        let Ok(job) = serde_json::from_str::<Job>(&body) else {
            tracing::error!(body = %body.chars().take(500).collect::<String>(), "job message does not parse; dropped");
            let _ = self.jobs.delete(&receipt_handle);
            return;
        };
        let deliver = self.generator.deliver(&job, receive_count, self.delivery_time);
        let disposition = if abandon.is_cancelled() {
            deliver.await
        } else {
            tokio::select! {
                disposition = deliver => disposition,
                () = abandon.cancelled() => self.abandoned(&job, receive_count).await,
            }
        };
        let handled = match disposition {
            Disposition::Done => self.jobs.delete(&receipt_handle),
            Disposition::RetryAfter(after) => self.jobs.delay(&receipt_handle, after).await,
            Disposition::HandBack(reason) => {
                tracing::warn!(row = job.row, %reason, "handed back");
                self.jobs.delay(&receipt_handle, HAND_BACK_DELAY).await
            }
        };
        if let Err(e) = handled {
            tracing::warn!(row = job.row, error = %e, "job message not settled; it comes back");
        }
    }

    /// The outcome of a provider call the interrupt's grace period did not wait for.
    async fn abandoned(&self, job: &Job, attempts: u32) -> Disposition {
        let event = PipelineEvent::JobFailed {
            run_id: job.run_id.clone(),
            failure: FailureEntry {
                row: job.row,
                key: job.key.to_string(),
                reason: "abandoned: the run was interrupted during the provider call".into(),
                attempts,
            },
        };
        let body = serde_json::to_string(&event).unwrap_or_default();
        match self.events.send_batch(vec![body]).await {
            Ok(()) => Disposition::Done,
            Err(e) => Disposition::HandBack(e.to_string()),
        }
    }

    /// A finalizer: records outcomes, then starts and completes the run.
    async fn record(&self) {
        loop {
            let Ok(messages) = self.events.receive(10).await else {
                return;
            };
            let deliveries = messages
                .iter()
                .filter_map(|m| {
                    let input = FinalizerInput::parse(&m.body).ok()?;
                    Some(Delivery {
                        id: m.receipt_handle.clone(),
                        input,
                        receive_count: m.receive_count,
                    })
                })
                .collect();
            let deadline = now_ms() + STEP_TIME.as_millis() as u64;
            let again = self.recorder.handle_batch(deliveries, deadline).await;
            self.recorded.notify_one();
            for message in messages {
                let handle = &message.receipt_handle;
                let settled = if again.contains(handle) {
                    let after = self.retry.delay(message.receive_count, None);
                    self.events.delay(handle, after).await
                } else {
                    self.events.delete(handle)
                };
                if let Err(e) = settled {
                    tracing::warn!(error = %e, "event not settled; it comes back");
                }
            }
        }
    }

    /// Polls the run's batches until the run ends (never, without batches).
    async fn poll_batches(&self, run_id: &str) {
        let Some((batches, options)) = &self.batches else {
            return std::future::pending().await;
        };
        loop {
            tokio::time::sleep(options.poll_every).await;
            match batches.poll(run_id, u64::MAX, false).await {
                Ok(progress) => (options.progress)(&progress),
                Err(e) => tracing::warn!(error = %e, "batches not polled; trying again at the next poll"),
            }
        }
    }

    /// Reports progress until the run is complete; an interrupt stops the run, then abandons the
    /// calls still in flight after the grace period. In batch mode an interrupt ends the watch at
    /// once: the batches go on at the provider.
    async fn watch(
        &self,
        run_id: &str,
        progress: &impl Fn(&RunRecord),
        interrupt: &CancellationToken,
        abandon: &CancellationToken,
    ) {
        let mut interrupted_at = None;
        loop {
            if let Ok(Some(run)) = self.ledger.run(run_id).await {
                if run.totals.as_ref().is_some_and(|t| t.rejected.is_none()) {
                    progress(&run);
                }
                if run.state == RunState::Complete {
                    return;
                }
            }
            match interrupted_at {
                None if interrupt.is_cancelled() && self.batches.is_some() => return,
                None if interrupt.is_cancelled() => {
                    interrupted_at = Some(tokio::time::Instant::now());
                    let reason = "interrupted with Ctrl-C";
                    if let Err(e) = self.ledger.stop(run_id, reason).await {
                        tracing::warn!(error = %e, "run not stopped");
                    }
                    // Rows waiting out a back-off fail now, as not attempted, instead of after it.
                    self.jobs.wake_delayed();
                }
                Some(at) if at.elapsed() >= INTERRUPT_GRACE => abandon.cancel(),
                _ => {}
            }
            tokio::select! {
                () = self.recorded.notified() => {}
                () = tokio::time::sleep(PROGRESS_EVERY) => {}
            }
        }
    }
}

/// Proves the output location writable (a test write under `images/` and `runs/`) before anything is paid for.
async fn check_writable(store: &FsObjectStore, out_dir: &Path, run_id: &str) -> Result<(), RunError> {
    for key in [
        format!("images/.write-check-{run_id}"),
        format!("runs/{run_id}/.write-check"),
    ] {
        let object = NewObject {
            body: bytes::Bytes::from_static(b"ok"),
            content_type: "text/plain".into(),
            cache_control: None,
            metadata: vec![],
        };
        let unwritable = |error: String| RunError::Unwritable {
            dir: out_dir.display().to_string(),
            error,
        };
        store.put(&key, object).await.map_err(|e| unwritable(e.to_string()))?;
        let path = store.path_of(&key).map_err(|e| unwritable(e.to_string()))?;
        let _ = tokio::fs::remove_file(path).await;
    }
    Ok(())
}

/// The local path of a run's report.
pub fn report_path(out_dir: &Path, run_id: &str) -> PathBuf {
    out_dir.join(keys::report(run_id))
}
