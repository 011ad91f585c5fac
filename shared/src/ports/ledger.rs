//! The run-ledger port: a run's state, its counters and each row's outcome, kept so that every
//! operation costs the same whatever the run's size (DynamoDB on AWS, memory locally and in tests).
//!
//! - The run record is created once; its counters move in the same atomic write that records new
//!   outcomes, so a duplicate event changes nothing and `recorded` never overstates.
//! - Progress is one read of the run record.
//! - Once-only actions (the start and the completion messages) are claimed with a lifetime: a holder
//!   that died is taken over once its claim has expired, and a claim is never mistaken for "done".
//! - Outcomes and invalid rows are read back in row order, one page at a time, to build the report.

use std::future::Future;

use serde::{Deserialize, Serialize};

use crate::domain::events::Outcome;
use crate::domain::rows::InvalidRow;

/// Outcomes and invalid rows per page when reading a run back.
pub const PAGE_ROWS: usize = 500;

/// Where a run is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Jobs are being sent.
    Splitting,
    /// Every job is sent; outcomes are awaited.
    Running,
    /// The report is written and the completion message posted.
    Complete,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Splitting => "splitting",
            Self::Running => "running",
            Self::Complete => "complete",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Splitting, Self::Running, Self::Complete]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// Where the splitter is in the CSV: what a continuation resumes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Byte offset of the next record to read (0: nothing read yet).
    pub offset: u64,
    /// Data rows read so far (the next row is `rows_read + 1`).
    pub rows_read: u64,
    /// Jobs sent so far.
    pub sent: u64,
}

/// A claim on a run's action, held from `now_ms` until `until_ms` (Unix milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    pub action: Action,
    pub now_ms: u64,
    pub until_ms: u64,
}

impl Claim {
    /// A claim on `action` from `now_ms` until `until_ms`.
    pub fn new(action: Action, now_ms: u64, until_ms: u64) -> Self {
        Self {
            action,
            now_ms,
            until_ms,
        }
    }

    /// A claim on `action` from now until `until_ms`.
    pub fn until(action: Action, until_ms: u64) -> Self {
        Self::new(action, crate::domain::events::now_ms(), until_ms)
    }
}

/// One move of the splitter's checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advance {
    /// Where the checkpoint must be for the move to happen.
    pub from: Checkpoint,
    pub to: Checkpoint,
    /// The whole file is sent: the run leaves `Splitting`.
    pub finished: bool,
}

/// What the splitter learned from the whole file before sending anything.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SplitTotals {
    /// Data rows in the CSV.
    pub rows: u64,
    /// Bytes of the header line(s): what a continuation reads before its offset.
    pub header_bytes: u64,
    /// Valid rows: one job, and one awaited outcome, each (0 for a rejected run).
    pub awaited: u64,
    pub invalid: u64,
    pub estimated_cost_usd: f64,
    /// Why no job is sent; `None` for a run that goes ahead.
    pub rejected: Option<String>,
}

/// The run record: what the run is, where it stands, and its counters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub run_id: String,
    /// `s3://bucket/key` of the CSV.
    pub source: String,
    /// The version of the CSV the run reads (S3 ETag).
    pub etag: String,
    pub template: String,
    /// The templates document the run's template comes from, kept so the run reads its rows the
    /// same way until it ends whatever happens to the deployment's files.
    pub template_source: String,
    pub model: String,
    /// The catalog entry of the run's model when the run started (`None`: an unknown model).
    pub model_entry: Option<crate::domain::catalog::ModelInfo>,
    pub provider: String,
    /// Unix milliseconds.
    pub started_at_ms: u64,
    pub state: RunState,
    /// Known once the whole file was read; `None` before.
    pub totals: Option<SplitTotals>,
    pub checkpoint: Checkpoint,
    /// What the recorded outcomes add up to.
    #[serde(flatten)]
    pub counts: Tally,
    /// Unix milliseconds of the last change (an outcome, a checkpoint).
    pub updated_at_ms: u64,
    /// Whether the start message has been sent (or was not needed).
    pub started_announced: bool,
    /// Unix milliseconds when the run completed.
    pub completed_at_ms: Option<u64>,
    /// Why the run stopped calling the provider (credentials refused, spend cap reached, cancelled):
    /// its remaining rows fail as "not attempted" without a provider call.
    pub stopped: Option<String>,
    /// Times failed rows were sent again (`imagepipe redrive`).
    pub redrives: u64,
    /// Synchronous calls, or the provider's batch API.
    #[serde(default)]
    pub mode: crate::domain::template::Mode,
}

impl RunRecord {
    /// A new run, splitting, with nothing counted.
    pub fn new(
        run_id: &str,
        source: &str,
        etag: &str,
        template: &str,
        model: &str,
        provider: &str,
        now_ms: u64,
    ) -> Self {
        Self {
            run_id: run_id.to_owned(),
            source: source.to_owned(),
            etag: etag.to_owned(),
            template: template.to_owned(),
            template_source: String::new(),
            model: model.to_owned(),
            model_entry: None,
            provider: provider.to_owned(),
            started_at_ms: now_ms,
            state: RunState::Splitting,
            totals: None,
            checkpoint: Checkpoint::default(),
            counts: Tally::default(),
            updated_at_ms: now_ms,
            started_announced: false,
            completed_at_ms: None,
            stopped: None,
            redrives: 0,
            mode: crate::domain::template::Mode::Sync,
        }
    }

    /// The run's template, as it was when the run started.
    pub fn template(&self) -> Result<crate::domain::template::Template, crate::domain::template::TemplateError> {
        let set = crate::domain::template::TemplateSet::from_toml(&self.template_source, "the run's templates")?;
        set.get(&self.template).cloned()
    }

    /// Rows with a recorded outcome.
    pub fn recorded(&self) -> u64 {
        self.counts.succeeded + self.counts.failed
    }

    /// Outcomes still awaited; `None` while the split is unfinished.
    pub fn outstanding(&self) -> Option<u64> {
        let totals = self.totals.as_ref().filter(|_| self.state != RunState::Splitting)?;
        Some(totals.awaited.saturating_sub(self.recorded()))
    }

    /// The estimated cost of what runs, and — when the offline placeholder stands in for a paid
    /// model — apart from it, what that model would cost.
    pub fn estimates(&self) -> (f64, Option<f64>) {
        let estimate = self.totals.as_ref().map_or(0.0, |t| t.estimated_cost_usd);
        let stand_in =
            self.provider == "placeholder" && self.model_entry.as_ref().is_some_and(|m| m.provider != "placeholder");
        if stand_in {
            (0.0, Some(estimate))
        } else {
            (estimate, None)
        }
    }
}

/// A claimed action of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Sending the next segment of jobs, while the run is splitting (never done: released).
    Split,
    /// The start message, once the run is split.
    Start,
    /// The report and the completion message, once every awaited outcome is recorded (and the
    /// start message is out).
    Completion,
}

/// The counters an outcome moves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Tally {
    pub succeeded: u64,
    pub failed: u64,
    pub reused: u64,
    pub spend_usd: f64,
    pub cms_updated: u64,
    pub cms_failed: u64,
}

impl Tally {
    /// The counters of `outcomes`.
    pub fn of<'a>(outcomes: impl IntoIterator<Item = &'a Outcome>) -> Self {
        let mut tally = Self::default();
        for outcome in outcomes {
            match outcome {
                Outcome::Succeeded { image, cms } => {
                    tally.succeeded += 1;
                    tally.reused += u64::from(image.reused);
                    tally.spend_usd += image.cost_usd;
                    match cms {
                        Some(Ok(())) => tally.cms_updated += 1,
                        Some(Err(_)) => tally.cms_failed += 1,
                        None => {}
                    }
                }
                Outcome::Failed { .. } => tally.failed += 1,
            }
        }
        tally
    }
}

impl std::ops::AddAssign for Tally {
    fn add_assign(&mut self, other: Self) {
        self.succeeded += other.succeeded;
        self.failed += other.failed;
        self.reused += other.reused;
        self.spend_usd += other.spend_usd;
        self.cms_updated += other.cms_updated;
        self.cms_failed += other.cms_failed;
    }
}

/// A ledger operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    /// Throttled, timed out, or a 5xx: worth retrying.
    #[error("run ledger unavailable: {0}")]
    Unavailable(String),
    /// The run is not in the ledger.
    #[error("run {0} is not in the ledger")]
    UnknownRun(String),
    /// Anything retrying will not fix (access denied, a record this version cannot read).
    #[error("run ledger error: {0}")]
    Failed(String),
}

/// One page of a run's rows read back in row order.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// The row to continue after; `None` on the last page.
    pub next_after: Option<u64>,
}

/// The run-ledger port.
pub trait RunLedger: Send + Sync {
    /// Creates the run record unless the run exists; returns the stored record either way.
    fn create_run(&self, run: &RunRecord) -> impl Future<Output = Result<RunRecord, LedgerError>> + Send;

    /// The run record (one read): progress, state and counters.
    fn run(&self, run_id: &str) -> impl Future<Output = Result<Option<RunRecord>, LedgerError>> + Send;

    /// Records the totals of the whole file (once, while splitting).
    fn set_totals(&self, run_id: &str, totals: &SplitTotals) -> impl Future<Output = Result<(), LedgerError>> + Send;

    /// Moves the checkpoint as `step` says; `false` (nothing changed) when it is no longer at
    /// `step.from` (a duplicate continuation).
    fn advance(&self, run_id: &str, step: Advance) -> impl Future<Output = Result<bool, LedgerError>> + Send;

    /// Keeps invalid rows (idempotent: the same row written twice is one row).
    fn record_invalid(&self, run_id: &str, rows: &[InvalidRow])
    -> impl Future<Output = Result<(), LedgerError>> + Send;

    /// Records each outcome whose row has none yet and moves the run's counters by exactly those,
    /// atomically; returns the outcomes recorded now (duplicates left out).
    fn record(
        &self,
        run_id: &str,
        outcomes: &[Outcome],
    ) -> impl Future<Output = Result<Vec<Outcome>, LedgerError>> + Send;

    /// Which of `rows` have a recorded outcome (one read for a batch).
    fn recorded_rows(&self, run_id: &str, rows: &[u64]) -> impl Future<Output = Result<Vec<u64>, LedgerError>> + Send;

    /// The outcome recorded for `row`, if any.
    fn outcome(&self, run_id: &str, row: u64) -> impl Future<Output = Result<Option<Outcome>, LedgerError>> + Send;

    /// Claims `claim.action` until `claim.until_ms` when it is due, not done, and any earlier claim has expired;
    /// returns the run record as claimed, `None` when the claim is not to be had now.
    fn claim(&self, run_id: &str, claim: Claim) -> impl Future<Output = Result<Option<RunRecord>, LedgerError>> + Send;

    /// Gives a claim back (its holder failed), so the next try need not wait for it to expire.
    fn release(&self, run_id: &str, action: Action) -> impl Future<Output = Result<(), LedgerError>> + Send;

    /// Marks `action` done (for `Completion`: the run is complete and leaves the open runs).
    fn done(&self, run_id: &str, action: Action, now_ms: u64) -> impl Future<Output = Result<(), LedgerError>> + Send;

    /// Recorded outcomes in row order, after row `after`.
    fn outcomes(
        &self,
        run_id: &str,
        after: Option<u64>,
    ) -> impl Future<Output = Result<Page<Outcome>, LedgerError>> + Send;

    /// Invalid rows in row order, after row `after`.
    fn invalid_rows(
        &self,
        run_id: &str,
        after: Option<u64>,
    ) -> impl Future<Output = Result<Page<InvalidRow>, LedgerError>> + Send;

    /// Stops the run from calling the provider, for `reason`; the first reason wins. Returns whether
    /// this call stopped it.
    fn stop(&self, run_id: &str, reason: &str) -> impl Future<Output = Result<bool, LedgerError>> + Send;

    /// Stops the run for `reason` if its recorded spend has reached `cap_usd`; returns whether this
    /// call stopped it.
    fn stop_over_budget(
        &self,
        run_id: &str,
        cap_usd: f64,
        reason: &str,
    ) -> impl Future<Output = Result<bool, LedgerError>> + Send;

    /// Takes back the recorded failures of `rows` (their outcomes and counts) so they can be sent
    /// again: the run is open once more, not stopped, and completes again when they are recorded.
    /// Returns the rows taken back (rows without a recorded failure are left as they are).
    fn reopen(&self, run_id: &str, rows: &[u64]) -> impl Future<Output = Result<Vec<u64>, LedgerError>> + Send;

    /// Runs not yet complete, oldest first (for the reconciler; a short list).
    fn open_runs(&self) -> impl Future<Output = Result<Vec<String>, LedgerError>> + Send;
}
