//! The run ledger in memory: the local run's ledger and the tests' one, with the same semantics as
//! the DynamoDB adapter (records written once, counters moved with them, claims that expire).
//! [`FailingLedger`] fails a chosen call, to test every crash point between two steps.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::domain::events::Outcome;
use crate::domain::rows::InvalidRow;
use crate::ports::ledger::{
    Action, Advance, Claim, LedgerError, PAGE_ROWS, Page, RunLedger, RunRecord, RunState, SplitTotals, Tally,
};

#[derive(Debug, Default)]
struct Run {
    record: Option<RunRecord>,
    outcomes: BTreeMap<u64, Outcome>,
    invalid: BTreeMap<u64, InvalidRow>,
    claims: HashMap<&'static str, u64>,
}

/// Every run in one map behind a lock; clones share it.
#[derive(Debug, Default, Clone)]
pub struct MemoryLedger {
    runs: std::sync::Arc<Mutex<HashMap<String, Run>>>,
}

fn action_name(action: Action) -> &'static str {
    match action {
        Action::Split => "split",
        Action::Start => "start",
        Action::Completion => "completion",
    }
}

impl MemoryLedger {
    pub fn new() -> Self {
        Self::default()
    }

    fn with_run<T>(
        &self,
        run_id: &str,
        f: impl FnOnce(&mut RunRecord, &mut Run) -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError> {
        let mut runs = self
            .runs
            .lock()
            .map_err(|_| LedgerError::Failed("ledger lock poisoned".into()))?;
        let run = runs
            .get_mut(run_id)
            .ok_or_else(|| LedgerError::UnknownRun(run_id.into()))?;
        let mut record = run
            .record
            .take()
            .ok_or_else(|| LedgerError::UnknownRun(run_id.into()))?;
        let result = f(&mut record, run);
        run.record = Some(record);
        result
    }
}

fn page<T: Clone>(rows: &BTreeMap<u64, T>, after: Option<u64>) -> Page<T> {
    let mut rest = rows.range(after.map_or(0, |a| a + 1)..);
    let taken: Vec<(u64, T)> = rest.by_ref().take(PAGE_ROWS).map(|(k, v)| (*k, v.clone())).collect();
    let next_after = rest.next().and(taken.last().map(|(k, _)| *k));
    Page {
        items: taken.into_iter().map(|(_, v)| v).collect(),
        next_after,
    }
}

impl RunLedger for MemoryLedger {
    async fn create_run(&self, run: &RunRecord) -> Result<RunRecord, LedgerError> {
        let mut runs = self
            .runs
            .lock()
            .map_err(|_| LedgerError::Failed("ledger lock poisoned".into()))?;
        let entry = runs.entry(run.run_id.clone()).or_default();
        Ok(entry.record.get_or_insert_with(|| run.clone()).clone())
    }

    async fn run(&self, run_id: &str) -> Result<Option<RunRecord>, LedgerError> {
        let runs = self
            .runs
            .lock()
            .map_err(|_| LedgerError::Failed("ledger lock poisoned".into()))?;
        Ok(runs.get(run_id).and_then(|r| r.record.clone()))
    }

    async fn set_totals(&self, run_id: &str, totals: &SplitTotals) -> Result<(), LedgerError> {
        self.with_run(run_id, |record, _| {
            if record.totals.is_none() {
                record.totals = Some(totals.clone());
            }
            Ok(())
        })
    }

    async fn advance(&self, run_id: &str, step: Advance) -> Result<bool, LedgerError> {
        let Advance { from, to, finished } = step;
        self.with_run(run_id, |record, _| {
            if record.checkpoint != from || record.state != RunState::Splitting {
                return Ok(false);
            }
            record.checkpoint = to;
            record.updated_at_ms = crate::domain::events::now_ms();
            if finished {
                record.state = RunState::Running;
            }
            Ok(true)
        })
    }

    async fn record_invalid(&self, run_id: &str, rows: &[InvalidRow]) -> Result<(), LedgerError> {
        self.with_run(run_id, |_, run| {
            for row in rows {
                run.invalid.insert(row.row, row.clone());
            }
            Ok(())
        })
    }

    async fn record(&self, run_id: &str, outcomes: &[Outcome]) -> Result<Vec<Outcome>, LedgerError> {
        self.with_run(run_id, |record, run| {
            let mut new = Vec::new();
            for outcome in outcomes {
                if let std::collections::btree_map::Entry::Vacant(slot) = run.outcomes.entry(outcome.row()) {
                    slot.insert(outcome.clone());
                    new.push(outcome.clone());
                }
            }
            record.counts += Tally::of(&new);
            record.updated_at_ms = crate::domain::events::now_ms();
            Ok(new)
        })
    }

    async fn recorded_rows(&self, run_id: &str, rows: &[u64]) -> Result<Vec<u64>, LedgerError> {
        self.with_run(run_id, |_, run| {
            Ok(rows.iter().copied().filter(|r| run.outcomes.contains_key(r)).collect())
        })
    }

    async fn outcome(&self, run_id: &str, row: u64) -> Result<Option<Outcome>, LedgerError> {
        self.with_run(run_id, |_, run| Ok(run.outcomes.get(&row).cloned()))
    }

    async fn claim(&self, run_id: &str, claim: Claim) -> Result<Option<RunRecord>, LedgerError> {
        self.with_run(run_id, |record, run| {
            let due = match claim.action {
                Action::Split => record.state == RunState::Splitting,
                Action::Start => record.state != RunState::Splitting && !record.started_announced,
                Action::Completion => {
                    record.state == RunState::Running
                        && record.started_announced
                        && record.outstanding() == Some(0)
                        && record.completed_at_ms.is_none()
                }
            };
            let free = run
                .claims
                .get(action_name(claim.action))
                .is_none_or(|&until| until < claim.now_ms);
            if !(due && free) {
                return Ok(None);
            }
            run.claims.insert(action_name(claim.action), claim.until_ms);
            Ok(Some(record.clone()))
        })
    }

    async fn release(&self, run_id: &str, action: Action) -> Result<(), LedgerError> {
        self.with_run(run_id, |_, run| {
            run.claims.remove(action_name(action));
            Ok(())
        })
    }

    async fn done(&self, run_id: &str, action: Action, now_ms: u64) -> Result<(), LedgerError> {
        self.with_run(run_id, |record, run| {
            run.claims.remove(action_name(action));
            match action {
                Action::Split => {}
                Action::Start => record.started_announced = true,
                Action::Completion => {
                    record.state = RunState::Complete;
                    record.completed_at_ms = Some(now_ms);
                }
            }
            Ok(())
        })
    }

    async fn outcomes(&self, run_id: &str, after: Option<u64>) -> Result<Page<Outcome>, LedgerError> {
        self.with_run(run_id, |_, run| Ok(page(&run.outcomes, after)))
    }

    async fn invalid_rows(&self, run_id: &str, after: Option<u64>) -> Result<Page<InvalidRow>, LedgerError> {
        self.with_run(run_id, |_, run| Ok(page(&run.invalid, after)))
    }

    async fn stop(&self, run_id: &str, reason: &str) -> Result<bool, LedgerError> {
        self.with_run(run_id, |record, _| {
            if record.stopped.is_some() {
                return Ok(false);
            }
            record.stopped = Some(reason.to_owned());
            Ok(true)
        })
    }

    async fn stop_over_budget(&self, run_id: &str, cap_usd: f64, reason: &str) -> Result<bool, LedgerError> {
        self.with_run(run_id, |record, _| {
            if record.stopped.is_some() || record.counts.spend_usd < cap_usd {
                return Ok(false);
            }
            record.stopped = Some(reason.to_owned());
            Ok(true)
        })
    }

    async fn reopen(&self, run_id: &str, rows: &[u64]) -> Result<Vec<u64>, LedgerError> {
        self.with_run(run_id, |record, run| {
            let mut reopened = Vec::new();
            for row in rows {
                if let Some(Outcome::Failed { .. }) = run.outcomes.get(row) {
                    run.outcomes.remove(row);
                    record.counts.failed -= 1;
                    reopened.push(*row);
                }
            }
            record.state = RunState::Running;
            record.completed_at_ms = None;
            record.stopped = None;
            record.redrives += 1;
            run.claims.remove("completion");
            Ok(reopened)
        })
    }

    async fn open_runs(&self) -> Result<Vec<String>, LedgerError> {
        let runs = self
            .runs
            .lock()
            .map_err(|_| LedgerError::Failed("ledger lock poisoned".into()))?;
        let mut open: Vec<(u64, String)> = runs
            .values()
            .filter_map(|r| r.record.as_ref())
            .filter(|r| r.state != RunState::Complete)
            .map(|r| (r.started_at_ms, r.run_id.clone()))
            .collect();
        open.sort();
        Ok(open.into_iter().map(|(_, id)| id).collect())
    }
}

/// A ledger whose `fail_at`-th call (1-based, counting every call) fails as unavailable, once: a
/// crash between two steps, seen from the caller.
#[derive(Debug)]
pub struct FailingLedger<L> {
    pub inner: L,
    fail_at: usize,
    calls: AtomicUsize,
}

impl<L> FailingLedger<L> {
    pub fn new(inner: L, fail_at: usize) -> Self {
        Self {
            inner,
            fail_at,
            calls: AtomicUsize::new(0),
        }
    }

    /// Calls made so far.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn check(&self) -> Result<(), LedgerError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) + 1 == self.fail_at {
            return Err(LedgerError::Unavailable(format!(
                "injected failure of call {}",
                self.fail_at
            )));
        }
        Ok(())
    }
}

impl<L: RunLedger> RunLedger for FailingLedger<L> {
    async fn create_run(&self, run: &RunRecord) -> Result<RunRecord, LedgerError> {
        self.check()?;
        self.inner.create_run(run).await
    }
    async fn run(&self, run_id: &str) -> Result<Option<RunRecord>, LedgerError> {
        self.check()?;
        self.inner.run(run_id).await
    }
    async fn set_totals(&self, run_id: &str, totals: &SplitTotals) -> Result<(), LedgerError> {
        self.check()?;
        self.inner.set_totals(run_id, totals).await
    }
    async fn advance(&self, run_id: &str, step: Advance) -> Result<bool, LedgerError> {
        self.check()?;
        self.inner.advance(run_id, step).await
    }
    async fn record_invalid(&self, run_id: &str, rows: &[InvalidRow]) -> Result<(), LedgerError> {
        self.check()?;
        self.inner.record_invalid(run_id, rows).await
    }
    async fn record(&self, run_id: &str, outcomes: &[Outcome]) -> Result<Vec<Outcome>, LedgerError> {
        self.check()?;
        self.inner.record(run_id, outcomes).await
    }
    async fn recorded_rows(&self, run_id: &str, rows: &[u64]) -> Result<Vec<u64>, LedgerError> {
        self.check()?;
        self.inner.recorded_rows(run_id, rows).await
    }
    async fn outcome(&self, run_id: &str, row: u64) -> Result<Option<Outcome>, LedgerError> {
        self.check()?;
        self.inner.outcome(run_id, row).await
    }
    async fn claim(&self, run_id: &str, claim: Claim) -> Result<Option<RunRecord>, LedgerError> {
        self.check()?;
        self.inner.claim(run_id, claim).await
    }
    async fn release(&self, run_id: &str, action: Action) -> Result<(), LedgerError> {
        self.check()?;
        self.inner.release(run_id, action).await
    }
    async fn done(&self, run_id: &str, action: Action, now_ms: u64) -> Result<(), LedgerError> {
        self.check()?;
        self.inner.done(run_id, action, now_ms).await
    }
    async fn outcomes(&self, run_id: &str, after: Option<u64>) -> Result<Page<Outcome>, LedgerError> {
        self.check()?;
        self.inner.outcomes(run_id, after).await
    }
    async fn invalid_rows(&self, run_id: &str, after: Option<u64>) -> Result<Page<InvalidRow>, LedgerError> {
        self.check()?;
        self.inner.invalid_rows(run_id, after).await
    }
    async fn stop(&self, run_id: &str, reason: &str) -> Result<bool, LedgerError> {
        self.check()?;
        self.inner.stop(run_id, reason).await
    }
    async fn stop_over_budget(&self, run_id: &str, cap_usd: f64, reason: &str) -> Result<bool, LedgerError> {
        self.check()?;
        self.inner.stop_over_budget(run_id, cap_usd, reason).await
    }
    async fn reopen(&self, run_id: &str, rows: &[u64]) -> Result<Vec<u64>, LedgerError> {
        self.check()?;
        self.inner.reopen(run_id, rows).await
    }
    async fn open_runs(&self) -> Result<Vec<String>, LedgerError> {
        self.check()?;
        self.inner.open_runs().await
    }
}
