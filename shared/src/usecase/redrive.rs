//! Redrive: send the failed rows of a run again. The rows are read again from the run's CSV (the
//! version it started from) with the run's own template, their failures are taken back in the
//! ledger, and their jobs are queued; images already made are reused, not paid again, and the run
//! completes again with its report rewritten and one "redrive finished" message.

use std::collections::BTreeSet;

use super::Error;
use crate::domain::events::Outcome;
use crate::domain::job::Job;
use crate::domain::report::FailureEntry;
use crate::domain::rows::{RowOutcome, RowReader};
use crate::ports::ledger::{LedgerError, RunLedger, RunRecord};
use crate::ports::queue::MessageQueue;
use crate::usecase::split::CsvSource;

/// Failures that may succeed when tried again: transient errors that ran out of attempts, jobs
/// that ended in the dead-letter queue or were lost, and rows a stopped run never attempted.
pub fn worth_retrying(failure: &FailureEntry) -> bool {
    let reason = failure.reason.as_str();
    reason.contains("(gave up after")
        || reason.starts_with("no outcome")
        || reason.starts_with("not attempted")
        || reason.starts_with("rate limited")
        || reason.starts_with("provider unavailable")
}

/// The failed rows of a run (all of them, or those worth retrying), read from the ledger.
pub async fn failed_rows<L: RunLedger>(ledger: &L, run_id: &str, all: bool) -> Result<Vec<u64>, LedgerError> {
    let (mut rows, mut after) = (Vec::new(), None);
    loop {
        let page = ledger.outcomes(run_id, after).await?;
        rows.extend(page.items.iter().filter_map(|outcome| match outcome {
            Outcome::Failed { failure } if all || worth_retrying(failure) => Some(failure.row),
            _ => None,
        }));
        match page.next_after {
            Some(next) => after = Some(next),
            None => return Ok(rows),
        }
    }
}

/// Sends `rows` of `run` again; returns how many jobs were queued.
pub async fn redrive<L: RunLedger, Q: MessageQueue, C: CsvSource>(
    ledger: &L,
    jobs: &Q,
    run: &RunRecord,
    source: &C,
    rows: &[u64],
) -> Result<u64, Error> {
    if rows.is_empty() {
        return Ok(0);
    }
    let template = run.template().map_err(|e| Error::Input(e.to_string()))?;
    let wanted: BTreeSet<u64> = rows.iter().copied().collect();
    let input = source.open_range(0, None).await?;
    let (file, run_id, model) = (source.name().to_owned(), run.run_id.clone(), run.model.clone());
    // The wanted rows' jobs (one per failed row: a few at most, never the whole file).
    let rendered = tokio::task::spawn_blocking(move || -> Result<Vec<Job>, String> {
        let mut reader = RowReader::open(input, &file, &template).map_err(|e| e.to_string())?;
        let mut found = Vec::new();
        while let Some(row) = reader.next_row() {
            if let RowOutcome::Valid(row) = row.map_err(|e| e.to_string())?
                && wanted.contains(&row.row)
            {
                found.push(Job::from_row(&run_id, &model, template.size, row));
            }
        }
        Ok(found)
    })
    .await
    .map_err(|e| Error::Input(e.to_string()))?
    .map_err(Error::Input)?;
    let reopened: BTreeSet<u64> = ledger.reopen(&run.run_id, rows).await?.into_iter().collect();
    let bodies: Vec<String> = rendered
        .iter()
        .filter(|job| reopened.contains(&job.row))
        .filter_map(|job| serde_json::to_string(job).ok())
        .collect();
    for batch in bodies.chunks(Q::BATCH_LIMIT) {
        jobs.send_batch(batch.to_vec()).await?;
    }
    Ok(bodies.len() as u64)
}
