//! Complete (AWS path): record each row's outcome once, keep a tally per finalizer batch, and when
//! every awaited row has an outcome, write the report and post exactly one completion message.
//!
//! Everything lives in the run's prefix of the bucket, so concurrent finalizers agree through S3's
//! conditional writes alone:
//! - `outcomes/<row>.json`: created once per row; a duplicate event finds it and changes nothing.
//! - `tallies/<count>-<id>.json`: the outcomes one batch saw, written after them; the counts in
//!   the names tell cheaply (one list call) when the run may be complete.
//! - `once/<action>/claim-<n>` and `done`: at most one finalizer runs an action at a time; a
//!   claim older than the TTL (its holder crashed) may be taken over.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::events::{Outcome, RunManifest, SplitSummary, get_json, json_object, keys, now_ms};
use crate::report::{ReportBuilder, RunReport};
use crate::store::{ObjectStore, PutOutcome, StoreError};

/// Whether an action guarded by [`once`] ran now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Once {
    /// This call ran it.
    Ran,
    /// It ran before.
    Done,
    /// Another finalizer holds a fresh claim on it.
    Claimed,
}

/// Runs `action` unless it is done or another caller's claim is younger than `ttl`. A failed action
/// releases its claim.
pub async fn once<S, F, Fut, E>(store: &S, prefix: &str, ttl: Duration, action: F) -> Result<Once, E>
where
    S: ObjectStore,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: From<StoreError>,
{
    let done = format!("{prefix}done");
    let existing = store.list(prefix).await?;
    if existing.contains(&done) {
        return Ok(Once::Done);
    }
    let claim = format!("{prefix}claim-");
    let latest = existing
        .iter()
        .filter_map(|k| k.strip_prefix(&claim)?.parse::<u32>().ok())
        .max();
    if let Some(n) = latest {
        let claimed_at: u64 = get_json(store, &claim_key(prefix, n)).await?.unwrap_or(0);
        if now_ms().saturating_sub(claimed_at) < ttl.as_millis() as u64 {
            return Ok(Once::Claimed);
        }
    }
    let next = latest.map_or(1, |n| n + 1);
    if store
        .put_if_absent(&claim_key(prefix, next), json_object(&now_ms()))
        .await?
        == PutOutcome::AlreadyExists
    {
        return Ok(Once::Claimed);
    }
    if let Err(error) = action().await {
        // Release the claim so the retry need not wait for the TTL.
        let _ = store.put(&claim_key(prefix, next), json_object(&0u64)).await;
        return Err(error);
    }
    store.put(&done, json_object(&now_ms())).await?;
    Ok(Once::Ran)
}

/// A held lease: the claim object to release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub claim: String,
    /// An earlier holder's claim expired: what it was doing may have finished since.
    pub taken_over: bool,
}

/// Takes the lease under `prefix` unless another caller holds a claim younger than `ttl`. The
/// common case (nobody ever claimed it) costs one conditional write.
pub async fn acquire<S: ObjectStore>(store: &S, prefix: &str, ttl: Duration) -> Result<Option<Lease>, StoreError> {
    let first = claim_key(prefix, 1);
    if store.put_if_absent(&first, json_object(&now_ms())).await? == PutOutcome::Created {
        return Ok(Some(Lease {
            claim: first,
            taken_over: false,
        }));
    }
    let claim = format!("{prefix}claim-");
    let latest = store
        .list(&claim)
        .await?
        .iter()
        .filter_map(|k| k.strip_prefix(&claim)?.parse::<u32>().ok())
        .max()
        .unwrap_or(1);
    let claimed_at: u64 = get_json(store, &claim_key(prefix, latest)).await?.unwrap_or(0);
    if now_ms().saturating_sub(claimed_at) < ttl.as_millis() as u64 {
        return Ok(None);
    }
    let next = claim_key(prefix, latest + 1);
    Ok(
        (store.put_if_absent(&next, json_object(&now_ms())).await? == PutOutcome::Created).then_some(Lease {
            claim: next,
            taken_over: true,
        }),
    )
}

/// Gives a lease back at once (its holder failed), so the next caller need not wait for the TTL.
pub async fn release<S: ObjectStore>(store: &S, lease: &Lease) {
    if let Err(e) = store.put(&lease.claim, json_object(&0u64)).await {
        tracing::warn!(error = %e, claim = %lease.claim, "lease not released; it expires by itself");
    }
}

fn claim_key(prefix: &str, n: u32) -> String {
    format!("{prefix}claim-{n:06}")
}

/// Records `outcome` for its row unless one is recorded already; returns the recorded one.
pub async fn record_outcome<S: ObjectStore>(store: &S, run_id: &str, outcome: Outcome) -> Result<Outcome, StoreError> {
    let key = keys::outcome(run_id, outcome.row());
    match store.put_if_absent(&key, json_object(&outcome)).await? {
        PutOutcome::Created => Ok(outcome),
        PutOutcome::AlreadyExists => Ok(get_json(store, &key).await?.unwrap_or(outcome)),
    }
}

/// The outcome already recorded for `row`, if any.
pub async fn recorded_outcome<S: ObjectStore>(
    store: &S,
    run_id: &str,
    row: u64,
) -> Result<Option<Outcome>, StoreError> {
    get_json(store, &keys::outcome(run_id, row)).await
}

/// Writes the tally of one batch: the recorded outcomes it saw (already stored, so it never overstates).
pub async fn write_tally<S: ObjectStore>(store: &S, run_id: &str, outcomes: &[Outcome]) -> Result<(), StoreError> {
    if outcomes.is_empty() {
        return Ok(());
    }
    let key = format!(
        "{}{:08}-{:016x}.json",
        keys::tallies(run_id),
        outcomes.len(),
        rand::random::<u64>()
    );
    store.put(&key, json_object(&outcomes)).await
}

/// Everything the completion report is made from, once every awaited row has an outcome.
#[derive(Debug, Clone)]
pub struct CompleteRun {
    pub manifest: RunManifest,
    pub summary: SplitSummary,
    pub outcomes: Vec<Outcome>,
}

/// The run's outcomes when they are complete; `None` while rows are still awaited or the split is unfinished.
pub async fn complete_run<S: ObjectStore>(store: &S, run_id: &str) -> Result<Option<CompleteRun>, StoreError> {
    let Some(summary) = get_json::<SplitSummary, _>(store, &keys::split(run_id)).await? else {
        return Ok(None);
    };
    let tallies = store.list(&keys::tallies(run_id)).await?;
    let counted: u64 = tallies.iter().filter_map(|k| tally_count(k)).sum();
    // Tallies may repeat rows (duplicate events), so a sum that is high enough only says "look closer".
    if counted < summary.valid {
        return Ok(None);
    }
    let mut outcomes = BTreeMap::new();
    for key in &tallies {
        for outcome in get_json::<Vec<Outcome>, _>(store, key).await?.unwrap_or_default() {
            outcomes.entry(outcome.row()).or_insert(outcome);
        }
    }
    if (outcomes.len() as u64) < summary.valid {
        return Ok(None);
    }
    let Some(manifest) = get_json::<RunManifest, _>(store, &keys::manifest(run_id)).await? else {
        return Err(StoreError::Failed(format!(
            "run {run_id} has a split summary but no manifest"
        )));
    };
    Ok(Some(CompleteRun {
        manifest,
        summary,
        outcomes: outcomes.into_values().collect(),
    }))
}

fn tally_count(key: &str) -> Option<u64> {
    key.rsplit('/').next()?.split('-').next()?.parse().ok()
}

impl CompleteRun {
    /// The run report: counts add up to the CSV's rows.
    pub fn report(&self) -> RunReport {
        let m = &self.manifest;
        let mut builder = ReportBuilder::new(
            &m.run_id,
            &m.source,
            &m.template,
            &m.model,
            &m.provider,
            self.summary.estimated_cost_usd,
        );
        for invalid in self.summary.invalid_rows.iter().cloned() {
            builder.invalid(invalid);
        }
        let (mut cms_updated, mut cms_failures) = (0, Vec::new());
        for outcome in self.outcomes.iter().cloned() {
            match outcome {
                Outcome::Succeeded { image, cms } => {
                    match cms {
                        Some(Ok(())) => cms_updated += 1,
                        Some(Err(reason)) => cms_failures.push(crate::report::FailureEntry {
                            row: image.row,
                            key: image.key.clone(),
                            reason,
                            attempts: 0,
                        }),
                        None => {}
                    }
                    builder.image(image);
                }
                Outcome::Failed { failure } => builder.failure(failure),
            }
        }
        let duration = now_ms().saturating_sub(m.started_at_ms) as f64 / 1000.0;
        let mut report = builder.finish(duration);
        report.cms_updated = cms_updated;
        report.cms_failures = cms_failures;
        if let Some(reason) = &self.summary.rejected {
            // No job was sent: every row that was not invalid counts as failed, for the run's reason.
            report.rejected = Some(reason.clone());
            report.failed = self.summary.rows.saturating_sub(report.invalid);
            report.rows = self.summary.rows.max(report.invalid + report.failed);
        }
        report
    }
}
