//! The whole pipeline in one process: plan, then stream jobs to a bounded pool of workers that
//! generate with retries, then write the report. Used by `imagepipe run`.

mod snapshot;
mod worker;

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::mpsc;
pub use tokio_util::sync::CancellationToken;

use crate::adapters::fs_store::FsObjectStore;
use crate::catalog::Catalog;
use crate::events::Outcome;
use crate::job::{Job, run_id};
use crate::provider::{ImageProvider, ReferenceSigner};
use crate::publish::{HttpCms, SlackWebhook};
use crate::report::{ImageEntry, ReportBuilder, RunReport};
use crate::retry::RetryPolicy;
use crate::rows::{CsvError, InvalidRow, RowOutcome, RowReader};
use crate::store::{NewObject, ObjectStore};
use crate::template::Template;
use crate::usecase::finalize::{completion_message, notify, start_message, update_cms};
use crate::usecase::plan::{Plan, PlanError, plan_csv};
use snapshot::{HashingReader, Tee};
use worker::Worker;

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
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Input(#[from] CsvError),
    #[error("{file} changed while it was read: {what}; the run stopped")]
    Changed { file: String, what: String },
    #[error("cannot write to {dir}: {error}; nothing was generated")]
    Unwritable { dir: String, error: String },
    #[error("cannot write the report: {0}")]
    Report(String),
}

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

    /// Runs the pipeline and writes `<out>/runs/<run_id>/report.json`; `progress` is called once per
    /// finished row with (rows done, rows to do).
    pub async fn run(&self, progress: impl Fn(u64, u64)) -> Result<RunReport, RunError> {
        self.run_until(progress, &CancellationToken::new()).await
    }

    /// [`run`](Self::run), stopping when `interrupt` is cancelled: no new provider call starts, calls
    /// in flight get [`INTERRUPT_GRACE`] to finish and are then abandoned, every row not done is a
    /// failure saying so, and the report is written with state `interrupted` (the CMS is not updated).
    pub async fn run_until(
        &self,
        progress: impl Fn(u64, u64),
        interrupt: &CancellationToken,
    ) -> Result<RunReport, RunError> {
        let started = Instant::now();
        let (plan, snapshot, digest) = self.plan_with_snapshot()?;
        let model = self.catalog.model(&plan.model).map_err(PlanError::from)?.clone();
        let run_id = run_id(&[&digest, &plan.template, &plan.model]);
        let store = FsObjectStore::new(&self.out_dir);
        check_writable(&store, &self.out_dir, &run_id).await?;
        // The offline placeholder costs nothing: the estimate is for what runs, the model's price apart.
        let placeholder = self.provider.name() == "placeholder" && model.provider != "placeholder";
        let estimate = if placeholder { 0.0 } else { plan.estimated_cost_usd };
        let mut report = ReportBuilder::new(
            &run_id,
            &plan.file,
            &plan.template,
            &plan.model,
            self.provider.name(),
            estimate,
        );
        if placeholder {
            report.model_estimate(plan.estimated_cost_usd);
        }
        for invalid in plan.invalid_rows.iter().cloned() {
            report.invalid(invalid);
        }
        tracing::info!(%run_id, rows = plan.rows, valid = plan.valid, invalid = plan.invalid, "run started");
        let (file, valid, cost) = (&plan.file, plan.valid, estimate);
        self.post(
            &start_message(&run_id, file, &plan.template, &plan.model, valid, cost),
            "start",
        )
        .await;

        let (jobs_tx, jobs_rx) = mpsc::channel::<Job>(self.concurrency * 2);
        let reader = self.spawn_reader(snapshot, run_id.clone(), plan.model.clone(), jobs_tx);
        let stopped = AtomicBool::new(false);
        let worker = Worker {
            model: &model,
            store: &store,
            provider: self.provider.as_ref(),
            run: self,
            stopped: &stopped,
            interrupt,
        };
        let jobs = futures::stream::unfold(jobs_rx, |mut rx| async move { rx.recv().await.map(|job| (job, rx)) });
        let outcomes = jobs
            .map(|job| worker.process_within_grace(job))
            .buffer_unordered(self.concurrency.max(1));
        let mut outcomes = std::pin::pin!(outcomes);
        let mut done = 0;
        // Every row's outcome, for the CMS and results.csv (the report itself keeps the first few).
        let mut rows = Vec::new();
        while let Some(outcome) = outcomes.next().await {
            rows.push(match outcome {
                Ok(image) => Outcome::Succeeded { image, cms: None },
                Err(failure) => Outcome::Failed { failure },
            });
            done += 1;
            progress(done, plan.valid);
        }
        match reader.await {
            Ok(Ok(second)) if second == (digest.clone(), plan.rows) => {}
            Ok(Ok((_, rows))) => {
                return Err(RunError::Changed {
                    file: plan.file.clone(),
                    what: format!("{rows} rows on the second pass, {} planned", plan.rows),
                });
            }
            Ok(Err(e)) => return Err(e.into()),
            Err(e) => return Err(RunError::Report(format!("CSV reader stopped: {e}"))),
        }
        let finished = Finished {
            run_id: &run_id,
            rows,
            invalid: &plan.invalid_rows,
            started,
            interrupted: interrupt.is_cancelled(),
        };
        self.conclude(&store, report, finished).await
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

    /// CMS updates (not for an interrupted run), `results.csv`, the report, the completion message.
    async fn conclude(
        &self,
        store: &FsObjectStore,
        mut builder: ReportBuilder,
        finished: Finished<'_>,
    ) -> Result<RunReport, RunError> {
        let Finished {
            run_id,
            mut rows,
            invalid,
            started,
            interrupted,
        } = finished;
        if let Some(cms) = self.publish.cms.as_ref().filter(|_| !interrupted) {
            let base = (self.publish.public_base_url.as_deref())
                .unwrap_or_default()
                .trim_end_matches('/');
            let images: Vec<ImageEntry> = rows
                .iter()
                .filter_map(|o| match o {
                    Outcome::Succeeded { image, .. } => Some(image.clone()),
                    Outcome::Failed { .. } => None,
                })
                .collect();
            let results = update_cms(
                &images,
                cms,
                |image| format!("{base}/{}", image.object_key),
                &self.retry,
            )
            .await;
            let mut results = results.into_iter();
            for row in &mut rows {
                if let Outcome::Succeeded { cms, .. } = row {
                    *cms = results.next();
                }
            }
        }
        rows.sort_by_key(Outcome::row);
        let results_key = results_key(run_id);
        write_results(store, &results_key, &rows, invalid, &self.out_dir)
            .await
            .map_err(|e| RunError::Report(e.to_string()))?;
        let shown = crate::report_html::Shown::of(&rows, invalid);
        for row in rows {
            match row {
                Outcome::Succeeded { image, cms } => {
                    if let Some(result) = cms {
                        builder.cms(&image, result);
                    }
                    builder.image(image);
                }
                Outcome::Failed { failure } => builder.failure(failure),
            }
        }
        builder.results(&self.out_dir.join(&results_key).display().to_string());
        let report = builder.finish(started.elapsed().as_secs_f64());
        self.write_report(store, &report, interrupted).await?;
        let page = crate::usecase::report::write_local_page(store, &report, &shown, &self.catalog).await;
        page.map_err(|e| RunError::Report(e.to_string()))?;
        let location = report_path(&self.out_dir, &report.run_id)
            .with_extension("html")
            .display()
            .to_string();
        self.post(&completion_message(&report, &location), "completion").await;
        let (succeeded, failed, invalid) = (report.succeeded, report.failed, report.invalid);
        tracing::info!(run_id = %report.run_id, succeeded, failed, invalid, interrupted, "run finished");
        Ok(report)
    }

    /// Posts a run message to the notifier, if any; a failure is logged, not fatal.
    async fn post(&self, text: &str, which: &str) {
        if let Some(notifier) = &self.publish.notifier
            && let Err(e) = notify(notifier, text, &self.retry).await
        {
            tracing::warn!(error = %e, "run {which} message not posted");
        }
    }

    /// Streams the snapshot on a blocking thread, sending valid rows as jobs (back-pressured by the
    /// channel); returns the digest and the row count it read, to be compared with the plan's.
    fn spawn_reader(
        &self,
        snapshot: File,
        run_id: String,
        model: String,
        jobs: mpsc::Sender<Job>,
    ) -> tokio::task::JoinHandle<Result<(String, u64), CsvError>> {
        let (file, template) = (self.csv.display().to_string(), self.template.clone());
        tokio::task::spawn_blocking(move || {
            let mut input = HashingReader::new(BufReader::with_capacity(64 * 1024, snapshot));
            let mut rows = RowReader::open(&mut input, &file, &template)?;
            while let Some(row) = rows.next_row() {
                if let RowOutcome::Valid(row) = row?
                    && jobs
                        .blocking_send(Job::from_row(&run_id, &model, template.size, row))
                        .is_err()
                {
                    return Ok((String::new(), 0)); // the run stopped consuming
                }
            }
            let count = rows.rows_read();
            drop(rows);
            let _ = std::io::copy(&mut input, &mut std::io::sink());
            Ok((input.finish().1, count))
        })
    }

    async fn write_report(&self, store: &FsObjectStore, report: &RunReport, interrupted: bool) -> Result<(), RunError> {
        let state = if interrupted { "interrupted" } else { "complete" };
        let stored = StoredReport { report, state };
        let body = serde_json::to_vec_pretty(&stored).map_err(|e| RunError::Report(e.to_string()))?;
        let object = NewObject {
            body: body.into(),
            content_type: "application/json".into(),
            cache_control: None,
            metadata: vec![],
        };
        store
            .put(&report_key(&report.run_id), object)
            .await
            .map_err(|e| RunError::Report(e.to_string()))
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

/// How long calls in flight may go on after an interrupt before they are abandoned.
pub const INTERRUPT_GRACE: Duration = Duration::from_secs(10);

/// A local report as written: the run's report and whether it ran to its end.
#[derive(serde::Serialize)]
struct StoredReport<'a> {
    #[serde(flatten)]
    report: &'a RunReport,
    /// `complete`, or `interrupted` (Ctrl-C): rows not done are failures saying so.
    state: &'static str,
}

/// What a run leaves to conclude: every row's outcome and the invalid rows.
struct Finished<'a> {
    run_id: &'a str,
    rows: Vec<Outcome>,
    invalid: &'a [InvalidRow],
    started: Instant,
    interrupted: bool,
}

/// Writes `results.csv`: a line per row, outcomes and invalid rows merged in row order.
async fn write_results(
    store: &FsObjectStore,
    key: &str,
    rows: &[Outcome],
    invalid: &[InvalidRow],
    out_dir: &Path,
) -> Result<(), crate::store::StoreError> {
    let mut upload = crate::store::ObjectStore::upload(store, key, "text/csv").await?;
    let mut text = String::from(crate::results::HEADER);
    let (mut rows, mut invalid) = (rows.iter().peekable(), invalid.iter().peekable());
    loop {
        let next_invalid = match (rows.peek(), invalid.peek()) {
            (Some(o), Some(i)) => i.row < o.row(),
            (None, Some(_)) => true,
            (Some(_), None) => false,
            (None, None) => break,
        };
        if next_invalid {
            crate::results::invalid_line(&mut text, invalid.next().expect("peeked"));
        } else if let Some(outcome) = rows.next() {
            let path = match outcome {
                Outcome::Succeeded { image, .. } => out_dir.join(&image.object_key).display().to_string(),
                Outcome::Failed { .. } => String::new(),
            };
            crate::results::outcome_line(&mut text, outcome, &path);
        }
        if text.len() >= crate::usecase::report::PART_BYTES {
            crate::store::Upload::part(&mut upload, std::mem::take(&mut text).into()).await?;
        }
    }
    crate::store::Upload::finish(upload, text.into()).await
}

/// Where a run's line-per-row results are, relative to the output root.
pub fn results_key(run_id: &str) -> String {
    format!("runs/{run_id}/results.csv")
}

/// Where a run's report is stored, relative to the output root or bucket.
pub fn report_key(run_id: &str) -> String {
    format!("runs/{run_id}/report.json")
}

/// The local path of a run's report.
pub fn report_path(out_dir: &Path, run_id: &str) -> PathBuf {
    out_dir.join(report_key(run_id))
}
