//! The report of a completed run, assembled from the ledger in one pass over its rows in row order:
//! `results.csv` streamed out in parts, `report.json` the bounded summary, `report.html` the page of
//! the first [`SHOWN`] images and failures. Memory stays flat whatever the run's size.

use std::collections::{HashMap, VecDeque};

use super::Error;
use crate::domain::events::{Outcome, json_object, now_ms};
use crate::domain::locations::{Locations, Root, keys};
use crate::domain::report::{ReportBuilder, RunReport};
use crate::domain::report_html::{self, SHOWN, Shown};
use crate::domain::results::{HEADER, invalid_line, outcome_line};
use crate::domain::rows::InvalidRow;
use crate::ports::ledger::{LedgerError, Page, RunLedger, RunRecord};
use crate::ports::store::{NewObject, ObjectStore, StoreError, Upload};
use crate::providers::ReferenceSigner;

/// `results.csv` is sent in parts of about this size (S3 multipart parts are at least 5 MiB).
pub const PART_BYTES: usize = 8 * 1024 * 1024;

/// Rows read page by page, in row order.
struct Pager<T> {
    items: VecDeque<T>,
    after: Option<u64>,
    exhausted: bool,
}

impl<T> Pager<T> {
    fn new() -> Self {
        Self {
            items: VecDeque::new(),
            after: None,
            exhausted: false,
        }
    }

    /// Fetches pages until one item is at hand or the rows are exhausted.
    async fn fill<F, Fut>(&mut self, fetch: F) -> Result<(), LedgerError>
    where
        F: Fn(Option<u64>) -> Fut,
        Fut: Future<Output = Result<Page<T>, LedgerError>>,
    {
        while self.items.is_empty() && !self.exhausted {
            let page = fetch(self.after).await?;
            self.items.extend(page.items);
            match page.next_after {
                Some(after) => self.after = Some(after),
                None => self.exhausted = true,
            }
        }
        Ok(())
    }
}

/// A run's outcomes and invalid rows, merged in row order.
pub struct RowWalk<'a, L> {
    ledger: &'a L,
    run_id: &'a str,
    outcomes: Pager<Outcome>,
    invalid: Pager<InvalidRow>,
}

/// The next row of a [`RowWalk`].
pub enum Row {
    Outcome(Outcome),
    Invalid(InvalidRow),
}

impl<'a, L: RunLedger> RowWalk<'a, L> {
    /// Every row of the run.
    pub fn new(ledger: &'a L, run_id: &'a str) -> Self {
        Self {
            ledger,
            run_id,
            outcomes: Pager::new(),
            invalid: Pager::new(),
        }
    }

    /// Only the invalid rows after row `after`.
    pub fn invalid_after(ledger: &'a L, run_id: &'a str, after: u64) -> Self {
        let mut walk = Self::new(ledger, run_id);
        walk.outcomes.exhausted = true;
        walk.invalid.after = Some(after).filter(|&a| a > 0);
        walk
    }

    async fn fill(&mut self) -> Result<(), LedgerError> {
        let (ledger, run_id) = (self.ledger, self.run_id);
        self.outcomes.fill(|after| ledger.outcomes(run_id, after)).await?;
        self.invalid.fill(|after| ledger.invalid_rows(run_id, after)).await
    }

    /// The next row with an outcome or invalid, `None` after the last.
    pub async fn next(&mut self) -> Result<Option<Row>, LedgerError> {
        self.fill().await?;
        let outcome_row = self.outcomes.items.front().map(Outcome::row);
        let invalid_row = self.invalid.items.front().map(|i| i.row);
        Ok(match (outcome_row, invalid_row) {
            (Some(o), Some(i)) if i < o => self.invalid.items.pop_front().map(Row::Invalid),
            (Some(_), _) => self.outcomes.items.pop_front().map(Row::Outcome),
            (None, Some(_)) => self.invalid.items.pop_front().map(Row::Invalid),
            (None, None) => None,
        })
    }

    /// Whether `row` has an outcome or is invalid; rows must be asked in increasing order.
    pub async fn has(&mut self, row: u64) -> Result<bool, LedgerError> {
        loop {
            self.fill().await?;
            let o = self.outcomes.items.front().map(Outcome::row);
            let i = self.invalid.items.front().map(|i| i.row);
            if o.is_some_and(|o| o < row) {
                self.outcomes.items.pop_front();
            } else if i.is_some_and(|i| i < row) {
                self.invalid.items.pop_front();
            } else {
                return Ok(o == Some(row) || i == Some(row));
            }
        }
    }
}

/// Writes `results.csv`, `report.json` and `report.html` under `runs/<run_id>/` of `run`; returns the
/// report. `links` presigns the page's links to private objects (else they are `s3://` URIs).
pub async fn write_report<L: RunLedger, S: ObjectStore>(
    ledger: &L,
    store: &S,
    locations: &Locations,
    links: Option<&dyn ReferenceSigner>,
    run: &RunRecord,
) -> Result<RunReport, Error> {
    let totals = run.totals.clone().unwrap_or_default();
    let (estimate, model_estimate) = run.estimates();
    let mut builder = ReportBuilder::new(
        &run.run_id,
        &run.source,
        &run.template,
        &run.model,
        &run.provider,
        estimate,
    );
    if let Some(usd) = model_estimate {
        builder.model_estimate(usd);
    }
    let results_key = keys::results(&run.run_id);
    let mut upload = store.upload(&results_key, "text/csv; charset=utf-8").await?;
    let mut part = String::from(HEADER);
    let mut shown = Shown::default();
    let mut rows = RowWalk::new(ledger, &run.run_id);
    while let Some(row) = rows.next().await? {
        match row {
            Row::Invalid(invalid) => {
                invalid_line(&mut part, &invalid);
                shown.invalid(&invalid);
                builder.invalid(invalid);
            }
            Row::Outcome(outcome) => {
                let url = match &outcome {
                    Outcome::Succeeded { image, .. } => locations.image_url(&image.object_key),
                    Outcome::Failed { .. } => String::new(),
                };
                outcome_line(&mut part, &outcome, &url);
                shown.outcome(&outcome);
                match outcome {
                    Outcome::Succeeded { image, cms } => {
                        if let Some(result) = cms {
                            builder.cms(&image, result);
                        }
                        builder.image(image);
                    }
                    Outcome::Failed { failure } => builder.failure(failure),
                }
            }
        }
        if part.len() >= PART_BYTES {
            upload.part(std::mem::take(&mut part).into()).await?;
        }
    }
    upload.finish(part.into()).await?;
    builder.results(&locations.object(&results_key));
    let duration = now_ms().saturating_sub(run.started_at_ms) as f64 / 1000.0;
    let mut report = builder.finish(duration);
    report.stopped = run.stopped.clone();
    report.redrives = run.redrives;
    report.mode = run.mode;
    if run.mode.is_batch() {
        let made = report.succeeded.saturating_sub(report.reused) as f64;
        report.sync_cost_usd = run.model_entry.as_ref().map(|m| m.price_per_image * made);
    }
    if let Some(reason) = &totals.rejected {
        // No job was sent: every row that was not invalid counts as failed, for the run's reason.
        report.rejected = Some(reason.clone());
        report.failed = totals.rows.saturating_sub(report.invalid);
        report.rows = totals.rows.max(report.invalid + report.failed);
    }
    store.put(&keys::report(&run.run_id), json_object(&report)).await?;
    // A local page links its files relative to itself; on AWS, public URLs or presigned ones.
    let local = matches!(locations.root, Root::Dir(_));
    let mut urls = HashMap::with_capacity(shown.images.len().min(SHOWN));
    for image in &shown.images {
        let url = match &locations.public_base_url {
            _ if local => report_html::relative_image_url(image),
            Some(_) => locations.image_url(&image.object_key),
            None => private_link(locations, links, &image.object_key).await,
        };
        urls.insert(image.object_key.clone(), url);
    }
    let results_link = match local {
        true => "results.csv".to_owned(),
        false => private_link(locations, links, &results_key).await,
    };
    let page = report_html::Page {
        report: &report,
        shown: &shown,
        image_url: &|image| urls.get(&image.object_key).cloned().unwrap_or_default(),
        results_link: &results_link,
        batch_price_per_image: run.model_entry.as_ref().and_then(|m| m.batch_price_per_image),
    };
    put_html(store, &keys::report_html(&run.run_id), &page).await?;
    Ok(report)
}

/// A link to a private object of the bucket: presigned when `links` can sign, else its `s3://` URI.
pub async fn private_link(locations: &Locations, links: Option<&dyn ReferenceSigner>, key: &str) -> String {
    let uri = locations.object(key);
    match links {
        Some(signer) => signer.sign(&uri).await.unwrap_or_else(|error| {
            tracing::warn!(%error, key, "cannot presign a report link; the page shows the s3:// URI");
            uri
        }),
        None => uri,
    }
}

/// Writes the page at `key` (`runs/<run_id>/report.html`).
pub async fn put_html<S: ObjectStore>(store: &S, key: &str, page: &report_html::Page<'_>) -> Result<(), StoreError> {
    let object = NewObject {
        body: report_html::render(page).into(),
        content_type: "text/html; charset=utf-8".into(),
        cache_control: None,
        metadata: vec![],
    };
    store.put(key, object).await
}
