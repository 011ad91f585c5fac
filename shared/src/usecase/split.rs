//! Split: one CSV → one run. A first pass validates and prices every row (invalid rows go to the
//! ledger as they are found) and enforces the limits; then the valid rows are sent as jobs, segment
//! by segment: each invocation sends from the ledger's checkpoint until its time (or row budget) is
//! spent, moves the checkpoint, and asks for a continuation. A segment is claimed in the ledger, so
//! a duplicated continuation sends nothing twice.

use std::future::Future;
use std::io::Read;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;

use super::Error;
use crate::domain::catalog::Catalog;
use crate::domain::events::{PipelineEvent, now_ms};
use crate::domain::job::{Job, run_id};
use crate::domain::rows::{InvalidRow, RowOutcome, RowReader};
use crate::domain::template::{Mode, Template};
use crate::ports::ledger::{Action, Advance, Checkpoint, Claim, RunLedger, RunRecord, RunState, SplitTotals};
use crate::ports::queue::{MessageQueue, QueueError};
use crate::ports::store::StoreError;
use crate::usecase::batch::{BATCH_REQUESTS, ChunkSink, batch_refusal};

/// Invalid rows written to the ledger per call during the first pass.
const INVALID_PER_CALL: usize = 500;
/// A segment claim outlives its holder's deadline by this much.
const CLAIM_MARGIN: Duration = Duration::from_secs(10);

/// Where the CSV comes from.
pub trait CsvSource: Send + Sync {
    /// How messages name the file (`s3://bucket/key`).
    fn name(&self) -> &str;
    /// What identifies this version of the file (S3 ETag); reads fail if the file changed since.
    fn version(&self) -> &str;
    /// A blocking reader of bytes `start..end` (`None`: to the end) of this version of the file.
    fn open_range(
        &self,
        start: u64,
        end: Option<u64>,
    ) -> impl Future<Output = Result<Box<dyn Read + Send>, StoreError>> + Send;
}

/// A continuation: the run whose split goes on in a fresh invocation, from where.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Continuation {
    pub continue_run: String,
    /// The checkpoint it continues from (rows read); a continuation that finds the checkpoint
    /// elsewhere is a duplicate and does nothing.
    pub rows_read: u64,
}

/// How the splitter runs.
#[derive(Debug, Clone)]
pub struct SplitSettings {
    /// Routes every model through this provider instead of the catalog's.
    pub provider: Option<String>,
    /// A run whose estimate is higher is rejected before any job is sent.
    pub max_run_cost_usd: Option<f64>,
    /// Larger CSVs are rejected.
    pub max_rows: u64,
    /// SendMessageBatch calls in flight.
    pub send_concurrency: usize,
    /// An invocation stops sending this long before its deadline and continues in a fresh one.
    pub reserve: Duration,
    /// An invocation sends at most this many rows' jobs before continuing in a fresh one.
    pub rows_per_invocation: u64,
    /// Requests in one batch of a batch-mode run (at most [`BATCH_REQUESTS`]).
    pub batch_requests: usize,
}

/// What one invocation did.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    pub run_id: String,
    /// Jobs sent by this invocation.
    pub sent: u64,
    /// The file's totals (`None` when another invocation holds the run's split).
    pub totals: Option<SplitTotals>,
    /// The run was split before (a duplicate event): nothing was sent again.
    pub duplicate: bool,
    /// The split goes on in a fresh invocation.
    pub continued: bool,
}

/// What the splitter needs, built once per container.
pub struct Splitter<Q, E, K, L> {
    pub jobs: Q,
    pub events: E,
    /// Where continuations go (the splitter's own queue).
    pub continuations: K,
    pub ledger: L,
    pub settings: SplitSettings,
    /// Where a batch-mode run's chunks go; without it, batch-mode runs are rejected.
    pub batches: Option<std::sync::Arc<dyn ChunkSink>>,
}

impl<Q: MessageQueue, E: MessageQueue, K: MessageQueue, L: RunLedger> Splitter<Q, E, K, L> {
    /// Starts (or, for a duplicate event, re-announces) the run of `source` with `template` (or a
    /// rejection reason when none could be chosen) and `model` (the template's by default), priced
    /// from `catalog`.
    pub async fn split<C: CsvSource>(
        &self,
        source: &C,
        template: Result<&Template, String>,
        model: Option<&str>,
        catalog: &Catalog,
        deadline_ms: u64,
    ) -> Result<Split, Error> {
        let template_name = template.as_ref().map_or("-", |t| t.name.as_str());
        let model_name = model
            .or(template.as_ref().ok().map(|t| t.model.as_str()))
            .unwrap_or("-");
        let mode = template.as_ref().map_or(Mode::Sync, |t| t.mode);
        let run_id = run_id_of(source.name(), source.version(), template_name, model_name, mode);
        let mut new = RunRecord::new(
            &run_id,
            source.name(),
            source.version(),
            template_name,
            model_name,
            "-",
            now_ms(),
        );
        new.model_entry = catalog.model(model_name).ok().cloned();
        new.mode = mode;
        new.provider = (self.settings.provider.clone())
            .or_else(|| new.model_entry.as_ref().map(|m| m.provider.clone()))
            .unwrap_or_else(|| "-".into());
        if let Ok(template) = &template {
            new.template_source = template.document().to_owned();
        }
        // A run whose template or model cannot be used is recorded, then rejected with the reason.
        let rejection = match (&template, catalog.model(model_name)) {
            (Err(reason), _) => Some(reason.clone()),
            (Ok(_), Err(unknown)) => Some(unknown.to_string()),
            (Ok(_), Ok(_)) if mode.is_batch() && self.batches.is_none() => {
                Some("batch mode is not set up in this deployment".to_owned())
            }
            (Ok(_), Ok(model)) if mode.is_batch() => {
                batch_refusal(model_name, model, self.settings.provider.as_deref(), catalog)
            }
            _ => None,
        };
        let run = self.ledger.create_run(&new).await?;
        if run.state != RunState::Splitting {
            tracing::info!(%run_id, "run already split; announcing it again");
            self.announce(&run_id).await?;
            return Ok(Split {
                run_id,
                sent: 0,
                totals: run.totals,
                duplicate: true,
                continued: false,
            });
        }
        self.work(&run_id, None, source, rejection, deadline_ms).await
    }

    /// Sends the next segment of `run_id`'s jobs from the checkpoint at `rows_read` (a continuation).
    pub async fn resume<C: CsvSource>(
        &self,
        run_id: &str,
        rows_read: u64,
        source: &C,
        deadline_ms: u64,
    ) -> Result<Split, Error> {
        self.work(run_id, Some(rows_read), source, None, deadline_ms).await
    }

    /// Claims the run's split and sends a segment (`rows_read`: the checkpoint a continuation
    /// expects; `None` for the first invocation or its retry).
    async fn work<C: CsvSource>(
        &self,
        run_id: &str,
        rows_read: Option<u64>,
        source: &C,
        rejection: Option<String>,
        deadline_ms: u64,
    ) -> Result<Split, Error> {
        let until = deadline_ms + CLAIM_MARGIN.as_millis() as u64;
        let nothing = || Split {
            run_id: run_id.to_owned(),
            sent: 0,
            totals: None,
            duplicate: true,
            continued: false,
        };
        let Some(run) = self.ledger.claim(run_id, Claim::until(Action::Split, until)).await? else {
            tracing::info!(%run_id, "the run's split is held by another invocation or finished");
            return Ok(nothing());
        };
        let result = if rows_read.is_some_and(|r| r != run.checkpoint.rows_read) {
            tracing::info!(%run_id, "a continuation from another checkpoint; nothing to do");
            Ok(nothing())
        } else {
            self.segment(&run, source, rejection, deadline_ms).await
        };
        if let Err(e) = self.ledger.release(run_id, Action::Split).await {
            tracing::warn!(error = %e, "split claim not given back; it expires by itself");
        }
        result
    }

    async fn segment<C: CsvSource>(
        &self,
        run: &RunRecord,
        source: &C,
        rejection: Option<String>,
        deadline_ms: u64,
    ) -> Result<Split, Error> {
        let run_id = run.run_id.as_str();
        let template = match rejection {
            Some(reason) => Err(reason),
            None => run.template().map_err(|e| e.to_string()),
        };
        let totals = match &run.totals {
            Some(totals) => totals.clone(),
            None => {
                let totals = match &template {
                    Err(reason) => rejected(reason.clone()),
                    Ok(template) => self.first_pass(run, source, template).await?,
                };
                self.ledger.set_totals(run_id, &totals).await?;
                if let Some(reason) = &totals.rejected {
                    tracing::warn!(%run_id, %reason, "run rejected");
                }
                totals
            }
        };
        let from = run.checkpoint;
        let (to, finished) = match (&totals.rejected, &template) {
            (None, Ok(template)) => self.send_segment(run, source, template, &totals, deadline_ms).await?,
            _ => (from, true),
        };
        if !self.ledger.advance(run_id, Advance { from, to, finished }).await? {
            tracing::warn!(%run_id, "checkpoint moved by another invocation; this one stops");
        } else if finished {
            self.announce(run_id).await?;
            tracing::info!(%run_id, sent = to.sent, invalid = totals.invalid, "run split");
        } else {
            let body = serde_json::to_string(&Continuation {
                continue_run: run_id.to_owned(),
                rows_read: to.rows_read,
            })
            .unwrap_or_default();
            self.continuations.send_batch(vec![body]).await?;
            tracing::info!(%run_id, sent = to.sent, rows_read = to.rows_read, "split continues in a fresh invocation");
        }
        Ok(Split {
            run_id: run_id.to_owned(),
            sent: to.sent - from.sent,
            totals: Some(totals),
            duplicate: false,
            continued: !finished,
        })
    }

    /// Reads the whole file once: counts and prices the rows, keeps the invalid ones in the ledger,
    /// and decides whether the run may go ahead. A whole-file problem becomes the rejection reason.
    async fn first_pass<C: CsvSource>(
        &self,
        run: &RunRecord,
        source: &C,
        template: &Template,
    ) -> Result<SplitTotals, Error> {
        let price = run.model_entry.as_ref().map(|m| match run.mode {
            Mode::Batch => m.batch_price_per_image.unwrap_or(m.price_per_image),
            Mode::Sync => m.price_per_image,
        });
        let Some(price) = price else {
            return Ok(rejected(format!("unknown model {:?}", run.model)));
        };
        let input = source.open_range(0, None).await?;
        let (tx, mut rx) = mpsc::channel::<Vec<InvalidRow>>(4);
        let (file, template) = (source.name().to_owned(), template.clone());
        let reader = tokio::task::spawn_blocking(move || -> Result<(u64, u64, u64), String> {
            let mut rows = RowReader::open(input, &file, &template).map_err(|e| e.to_string())?;
            let header_bytes = rows.next_offset();
            let (mut valid, mut invalid) = (0, Vec::new());
            while let Some(row) = rows.next_row() {
                match row.map_err(|e| e.to_string())? {
                    RowOutcome::Valid(_) => valid += 1,
                    RowOutcome::Invalid(row) => invalid.push(row),
                }
                if invalid.len() == INVALID_PER_CALL && tx.blocking_send(std::mem::take(&mut invalid)).is_err() {
                    return Err("the ledger stopped taking invalid rows".into());
                }
            }
            if rows.rows_read() == 0 {
                return Err(format!("{file}: has a header but no data rows"));
            }
            let _ = tx.blocking_send(invalid);
            Ok((rows.rows_read(), valid, header_bytes))
        });
        let mut invalid = 0;
        while let Some(chunk) = rx.recv().await {
            invalid += chunk.len() as u64;
            self.ledger.record_invalid(&run.run_id, &chunk).await?;
        }
        let (rows, valid, header_bytes) = match reader
            .await
            .map_err(|e| Error::Input(format!("CSV reader stopped: {e}")))?
        {
            Ok(counts) => counts,
            Err(reason) => {
                return Ok(SplitTotals {
                    invalid,
                    ..rejected(reason)
                });
            }
        };
        let totals = SplitTotals {
            rows,
            header_bytes,
            awaited: valid,
            invalid,
            estimated_cost_usd: price * valid as f64,
            rejected: None,
        };
        Ok(match self.over_limit(source.name(), &totals, price, &run.model) {
            Some(reason) => SplitTotals {
                awaited: 0,
                rejected: Some(reason),
                ..totals
            },
            None => totals,
        })
    }

    fn over_limit(&self, file: &str, totals: &SplitTotals, price: f64, model: &str) -> Option<String> {
        if totals.rows > self.settings.max_rows {
            return Some(format!(
                "{file} has {} rows; one run takes at most {} (MAX_ROWS_PER_RUN): split the file",
                totals.rows, self.settings.max_rows
            ));
        }
        self.settings
            .max_run_cost_usd
            .filter(|&budget| totals.estimated_cost_usd > budget)
            .map(|budget| {
                format!(
                    "estimated cost ${:.2} ({} images × ${price} on {model}) is over the run budget of ${budget:.2} \
                     (MAX_RUN_COST_USD)",
                    totals.estimated_cost_usd, totals.awaited
                )
            })
    }

    /// Sends the jobs of the rows after the checkpoint until the invocation's time or row budget is
    /// spent; returns the new checkpoint and whether the file is done.
    async fn send_segment<C: CsvSource>(
        &self,
        run: &RunRecord,
        source: &C,
        template: &Template,
        totals: &SplitTotals,
        deadline_ms: u64,
    ) -> Result<(Checkpoint, bool), Error> {
        let from = run.checkpoint;
        let batches = self.batches.as_ref().filter(|_| run.mode.is_batch());
        if let Some(batches) = batches
            && let Some(record) = batches.recorded(&run.run_id, from.rows_read).await?
            && (record.id.is_some() || record.state.is_some())
        {
            // This segment's batch was created before (its checkpoint did not move): it ends where it
            // did then. A record without a batch yet is finished below, from the same rows.
            return Ok((record.to, record.to.rows_read >= totals.rows));
        }
        let offset = if from.offset == 0 {
            totals.header_bytes
        } else {
            from.offset
        };
        let header = source.open_range(0, Some(totals.header_bytes)).await?;
        let rest = source.open_range(offset, None).await?;
        let input: Box<dyn Read + Send> = Box::new(header.chain(rest));
        let rows = read_rows(
            input,
            source.name(),
            template,
            from.rows_read,
            totals.header_bytes,
            offset,
        );
        let stop_at = deadline_ms.saturating_sub(self.settings.reserve.as_millis() as u64);
        let budget = self.settings.rows_per_invocation.max(1);
        let mut invalid = crate::usecase::report::RowWalk::invalid_after(&self.ledger, &run.run_id, from.rows_read);
        let mut to = Checkpoint { offset, ..from };
        let mut finished = true;
        let mut pending = Vec::new();
        let mut chunk = Vec::new();
        let mut rows = std::pin::pin!(rows);
        let mut in_flight = futures::stream::FuturesUnordered::new();
        while let Some(item) = rows.next().await {
            let (row, next_offset) = item.map_err(|e| Error::Input(format!("CSV reader stopped: {e}")))?;
            // The first pass decided which rows are invalid (duplicate keys across the whole file included).
            if let RowOutcome::Valid(rendered) = row
                && !invalid.has(rendered.row).await?
            {
                let job = Job::from_row(&run.run_id, &run.model, template.size, rendered);
                if batches.is_some() {
                    chunk.push(job);
                } else {
                    pending.push(serde_json::to_string(&job).unwrap_or_default());
                }
                to.sent += 1;
            }
            to.rows_read += 1;
            to.offset = next_offset;
            if chunk.len() >= self.settings.batch_requests.clamp(1, BATCH_REQUESTS) {
                finished = to.rows_read >= totals.rows;
                break;
            }
            if pending.len() == Q::BATCH_LIMIT {
                in_flight.push(self.jobs.send_batch(std::mem::take(&mut pending)));
                while in_flight.len() >= self.settings.send_concurrency.max(1) {
                    in_flight.next().await.transpose()?;
                }
            }
            // A batch-mode segment ends only with its chunk (or the file): read again after a crash,
            // it holds the same rows, so its batch is found rather than made twice.
            if batches.is_none() && (to.rows_read - from.rows_read >= budget || now_ms() >= stop_at) {
                finished = to.rows_read >= totals.rows;
                break;
            }
        }
        if !pending.is_empty() {
            in_flight.push(self.jobs.send_batch(pending));
        }
        while let Some(sent) = in_flight.next().await {
            sent?;
        }
        if let Some(batches) = batches {
            batches.submit(run, from, to, chunk).await?;
        }
        crate::ports::metrics::jobs_sent(&run.provider, &run.model, &run.template, to.sent - from.sent);
        Ok((to, finished))
    }

    async fn announce(&self, run_id: &str) -> Result<(), QueueError> {
        let event = PipelineEvent::RunSplit {
            run_id: run_id.to_owned(),
        };
        self.events
            .send_batch(vec![serde_json::to_string(&event).unwrap_or_default()])
            .await
    }
}

/// The run id of `source` at `version` with `template` and `model`: the same input always gets the
/// same run; a batch-mode run of it is another run.
pub fn run_id_of(source: &str, version: &str, template: &str, model: &str, mode: Mode) -> String {
    match mode {
        Mode::Sync => run_id(&[source, version, template, model]),
        Mode::Batch => run_id(&[source, version, template, model, "batch"]),
    }
}

/// Rows from `input` (the header, then the file from `offset`) on a blocking thread, each with the
/// file offset of the record after it.
fn read_rows(
    input: Box<dyn Read + Send>,
    file: &str,
    template: &Template,
    rows_read: u64,
    header_bytes: u64,
    offset: u64,
) -> impl futures::Stream<Item = Result<(RowOutcome, u64), String>> {
    let (tx, rx) = mpsc::channel(1024);
    let (file, template) = (file.to_owned(), template.clone());
    tokio::task::spawn_blocking(move || {
        let mut rows = match RowReader::open(input, &file, &template) {
            Ok(rows) => rows.resume(rows_read),
            Err(e) => {
                let _ = tx.blocking_send(Err(e.to_string()));
                return;
            }
        };
        while let Some(row) = rows.next_row() {
            let item = row
                .map(|row| (row, offset + rows.next_offset() - header_bytes))
                .map_err(|e| e.to_string());
            if tx.blocking_send(item).is_err() {
                return; // the segment is over
            }
        }
    });
    super::received(rx)
}

fn rejected(reason: String) -> SplitTotals {
    SplitTotals {
        rejected: Some(reason),
        ..SplitTotals::default()
    }
}

#[cfg(test)]
#[path = "split_tests.rs"]
mod tests;
