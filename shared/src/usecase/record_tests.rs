//! The record use case over the in-memory ledger, crash point by crash point: every scenario ends
//! with every row counted once and exactly one completion message.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::adapters::fs_store::FsObjectStore;
use crate::adapters::memory_ledger::{FailingLedger, MemoryLedger};
use crate::adapters::memory_publish::{MemoryCms, MemoryNotifier, Trouble};
use crate::domain::report::{ImageEntry, RunReport};
use crate::domain::rows::InvalidRow;
use crate::domain::template::Mode;
use crate::ports::ledger::{Advance, Checkpoint, Claim, RunRecord, SplitTotals};

const RUN: &str = "run-0123456789abcdef";

type TestRecorder = Recorder<FailingLedger<MemoryLedger>, FsObjectStore, Arc<MemoryCms>, Arc<MemoryNotifier>>;

struct World {
    recorder: TestRecorder,
    notifier: Arc<MemoryNotifier>,
    cms: Arc<MemoryCms>,
    _dir: tempfile::TempDir,
}

/// A run of 4 rows: rows 1–3 valid and split, row 4 invalid; the ledger fails its `fail_at`-th call.
async fn world(fail_at: usize, slack: Trouble) -> World {
    world_in(Mode::Sync, fail_at, slack).await
}

async fn world_in(mode: Mode, fail_at: usize, slack: Trouble) -> World {
    let dir = tempfile::tempdir().unwrap();
    let ledger = FailingLedger::new(MemoryLedger::new(), fail_at);
    let inner = &ledger.inner;
    let run = RunRecord::new(
        RUN,
        "s3://b/incoming/product/p.csv",
        "e",
        "product",
        "m",
        "placeholder",
        now_ms(),
    );
    let run = RunRecord { mode, ..run };
    inner.create_run(&run).await.unwrap();
    let invalid = InvalidRow {
        row: 4,
        reason: "column \"color\" is empty".into(),
    };
    inner.record_invalid(RUN, &[invalid]).await.unwrap();
    let totals = SplitTotals {
        rows: 4,
        header_bytes: 10,
        awaited: 3,
        invalid: 1,
        estimated_cost_usd: 0.12,
        rejected: None,
    };
    inner.set_totals(RUN, &totals).await.unwrap();
    let start = Checkpoint::default();
    let split = Advance {
        from: start,
        to: Checkpoint { sent: 3, ..start },
        finished: true,
    };
    assert!(inner.advance(RUN, split).await.unwrap());
    let (notifier, cms) = (Arc::new(MemoryNotifier::new(slack)), Arc::new(MemoryCms::default()));
    let recorder = Recorder {
        ledger,
        store: FsObjectStore::new(dir.path()),
        cms: Some(cms.clone()),
        notifier: Some(notifier.clone()),
        locations: Locations::bucket("b", None),
        links: None,
        cms_max_attempts: 3,
        notify_retry: RetryPolicy {
            max_attempts: 1,
            base: Duration::ZERO,
            cap: Duration::ZERO,
        },
        notify_best_effort: false,
        silence: Duration::from_secs(3600),
        max_run_cost_usd: None,
    };
    World {
        recorder,
        notifier,
        cms,
        _dir: dir,
    }
}

fn image(row: u64) -> ImageEntry {
    ImageEntry::example(row, &format!("product/SKU-{row}"), "s3://b")
}

fn delivery(id: &str, event: PipelineEvent) -> Delivery {
    Delivery {
        id: id.into(),
        input: FinalizerInput::Event(event),
        receive_count: 1,
    }
}

/// The run's whole batch: the split event, two images and one failure.
fn batch() -> Vec<Delivery> {
    let run_id = RUN.to_owned();
    vec![
        delivery("split", PipelineEvent::RunSplit { run_id: run_id.clone() }),
        delivery(
            "r1",
            PipelineEvent::JobSucceeded {
                run_id: run_id.clone(),
                image: image(1),
            },
        ),
        delivery(
            "r2",
            PipelineEvent::JobSucceeded {
                run_id: run_id.clone(),
                image: image(2),
            },
        ),
        delivery(
            "r3",
            PipelineEvent::JobFailed {
                run_id,
                failure: FailureEntry {
                    row: 3,
                    key: "product/SKU-3".into(),
                    reason: "refused by the provider's safety system".into(),
                    attempts: 1,
                },
            },
        ),
    ]
}

fn deadline() -> u64 {
    now_ms() + 60_000
}

impl World {
    fn completions(&self) -> usize {
        self.notifier.texts().iter().filter(|t| t.contains("finished")).count()
    }

    async fn report(&self) -> RunReport {
        let body = self
            .recorder
            .store
            .get(&crate::domain::locations::keys::report(RUN))
            .await
            .unwrap();
        serde_json::from_slice(&body.expect("the run has a report")).unwrap()
    }

    /// Delivers `batch` until no message comes back (at most `rounds` times).
    async fn deliver_until_done(&self, rounds: usize) {
        let mut pending = batch();
        for _ in 0..rounds {
            let again = self.recorder.handle_batch(pending.clone(), deadline()).await;
            if again.is_empty() {
                return;
            }
            pending.retain(|d| again.contains(&d.id));
        }
        panic!("messages still coming back after {rounds} deliveries");
    }

    async fn assert_one_complete_run(&self) {
        assert_eq!(self.completions(), 1, "{:?}", self.notifier.texts());
        let report = self.report().await;
        assert_eq!(
            (report.rows, report.succeeded, report.failed, report.invalid),
            (4, 2, 1, 1)
        );
        assert_eq!(report.actual_cost_usd, 0.08);
        let run = self.recorder.ledger.inner.run(RUN).await.unwrap().unwrap();
        assert_eq!(
            (run.counts.succeeded, run.counts.failed, run.state),
            (2, 1, RunState::Complete)
        );
        // The CMS update is an idempotent PATCH: a crash before the outcome is recorded repeats it.
        let mut updates = self.cms.updates();
        updates.sort();
        updates.dedup();
        assert_eq!(updates.len(), 2, "the CMS is pointed at each image: {updates:?}");
        let results = self
            .recorder
            .store
            .get(&crate::domain::locations::keys::results(RUN))
            .await
            .unwrap()
            .unwrap();
        let lines: Vec<&str> = std::str::from_utf8(&results).unwrap().lines().collect();
        assert_eq!(lines.len(), 5, "a header and one line per row: {lines:?}");
        assert!(lines[4].starts_with("4,,invalid,"), "{lines:?}");
    }
}

#[tokio::test]
async fn a_clean_batch_records_every_row_and_completes_the_run_once() {
    let world = world(0, Trouble::None).await;
    world.deliver_until_done(1).await;
    world.assert_one_complete_run().await;
    assert_eq!(
        world.cms.updates().len(),
        2,
        "without a crash, the CMS is told once per image"
    );
    // The whole batch delivered again changes nothing.
    assert!(world.recorder.handle_batch(batch(), deadline()).await.is_empty());
    world.assert_one_complete_run().await;
    assert_eq!(world.cms.updates().len(), 2);
    assert!(
        world.notifier.texts()[0].contains("started"),
        "the start message comes first"
    );
}

#[tokio::test]
async fn a_crash_at_any_ledger_call_of_the_batch_ends_with_one_completion_and_rows_counted_once() {
    // Calls of one batch: recorded rows, record, start claim, start done, completion claim, report
    // pages (outcomes, invalid rows), completion done.
    for fail_at in 1..=8 {
        let world = world(fail_at, Trouble::None).await;
        world.deliver_until_done(3).await;
        world.assert_one_complete_run().await;
    }
}

#[tokio::test]
async fn a_finalizer_that_died_holding_the_claim_is_taken_over_once_the_claim_expires() {
    let world = world(0, Trouble::None).await;
    let mut pending = batch();
    pending.retain(|d| d.id == "split");
    assert!(world.recorder.handle_batch(pending, deadline()).await.is_empty());
    // Every outcome recorded, then the finalizer claiming completion dies before writing anything.
    let outcomes: Vec<Outcome> = batch()
        .into_iter()
        .filter_map(|d| match d.input {
            FinalizerInput::Event(PipelineEvent::JobSucceeded { image, .. }) => Some(Outcome::Succeeded {
                image,
                cms: Some(Ok(())),
            }),
            FinalizerInput::Event(PipelineEvent::JobFailed { failure, .. }) => Some(Outcome::Failed { failure }),
            _ => None,
        })
        .collect();
    world.recorder.ledger.inner.record(RUN, &outcomes).await.unwrap();
    let held = world
        .recorder
        .ledger
        .inner
        .claim(RUN, Claim::new(Action::Completion, now_ms(), now_ms() + 300))
        .await
        .unwrap();
    assert!(held.is_some());
    // While the claim is fresh, nobody else completes the run; it is never taken for done.
    world.recorder.reconcile(deadline()).await.unwrap();
    assert_eq!(world.completions(), 0);
    tokio::time::sleep(Duration::from_millis(400)).await;
    world.recorder.reconcile(deadline()).await.unwrap();
    assert_eq!(world.completions(), 1);
    world.recorder.reconcile(deadline()).await.unwrap();
    assert_eq!(world.completions(), 1);
}

#[tokio::test]
async fn a_slack_that_never_answers_releases_the_claim_before_the_deadline_and_the_retry_completes() {
    let world = world(0, Trouble::Hang(2)).await;
    let mut pending = batch();
    pending.retain(|d| d.id == "split");
    // The start message hangs: given back 3 s before the invocation's deadline, the split event comes back.
    let short = now_ms() + 3_500;
    assert_eq!(
        world.recorder.handle_batch(pending.clone(), short).await,
        vec!["split".to_owned()]
    );
    let again = world.recorder.handle_batch(pending, short).await;
    assert_eq!(again, vec!["split".to_owned()]);
    world.deliver_until_done(2).await;
    world.assert_one_complete_run().await;
}

#[tokio::test]
async fn a_slack_outage_during_completion_is_retried_until_one_message_gets_through() {
    // The start message gets through; then Slack answers 503 to the first completion attempts.
    let world = world(0, Trouble::None).await;
    let flaky = Arc::new(MemoryNotifier::new(Trouble::Fail(2)));
    let mut recorder = world.recorder;
    recorder.notifier = Some(flaky.clone());
    recorder.ledger.inner.done(RUN, Action::Start, now_ms()).await.unwrap();
    let mut pending = batch();
    pending.retain(|d| d.id != "split");
    let mut rounds = 0;
    while !pending.is_empty() {
        rounds += 1;
        assert!(rounds <= 4, "still failing");
        let again = recorder.handle_batch(pending.clone(), deadline()).await;
        pending.retain(|d| again.contains(&d.id));
    }
    assert_eq!(flaky.texts().iter().filter(|t| t.contains("finished")).count(), 1);
    assert_eq!(rounds, 3);
}

#[tokio::test]
async fn concurrent_finalizers_with_duplicate_deliveries_complete_the_run_once() {
    let world = world(0, Trouble::None).await;
    let recorder = &world.recorder;
    let handled = futures::future::join_all((0..8).map(|_| recorder.handle_batch(batch(), deadline()))).await;
    assert!(handled.iter().all(Vec::is_empty), "{handled:?}");
    world.assert_one_complete_run().await;
}

#[tokio::test]
async fn the_reconciler_fails_rows_nothing_was_heard_of_and_completes_the_run() {
    let mut world = world(0, Trouble::None).await;
    world.recorder.silence = Duration::ZERO;
    let mut pending = batch();
    pending.retain(|d| d.id != "r2"); // row 2's job was lost
    assert!(world.recorder.handle_batch(pending, deadline()).await.is_empty());
    assert_eq!(world.completions(), 0);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let reconciled = world.recorder.reconcile(deadline()).await.unwrap();
    assert_eq!(reconciled.lost_rows, 1);
    let report = world.report().await;
    assert_eq!((report.succeeded, report.failed, report.invalid), (1, 2, 1));
    assert!(
        report
            .failures
            .iter()
            .any(|f| f.row == 2 && f.reason.starts_with("no outcome")),
        "{report:?}"
    );
    assert_eq!(world.completions(), 1);
    assert_eq!(
        world.recorder.reconcile(deadline()).await.unwrap().runs,
        0,
        "a complete run is not open"
    );
}

#[tokio::test]
async fn a_batch_mode_run_waiting_on_its_batches_is_not_taken_for_lost() {
    let mut world = world_in(Mode::Batch, 0, Trouble::None).await;
    world.recorder.silence = Duration::ZERO;
    let mut pending = batch();
    pending.retain(|d| d.id != "r2"); // row 2 is still in a batch at the provider
    assert!(world.recorder.handle_batch(pending, deadline()).await.is_empty());
    tokio::time::sleep(Duration::from_millis(5)).await;
    let reconciled = world.recorder.reconcile(deadline()).await.unwrap();
    assert_eq!((reconciled.runs, reconciled.lost_rows), (1, 0));
    assert_eq!(world.completions(), 0, "the batch has a day to answer");
}

#[tokio::test]
async fn a_run_whose_recorded_spend_reaches_its_budget_is_stopped_once() {
    let mut world = world(0, Trouble::None).await;
    world.recorder.max_run_cost_usd = Some(0.05);
    let mut pending = batch();
    pending.retain(|d| d.id == "r1");
    world.recorder.handle_batch(pending, deadline()).await;
    let run = world.recorder.ledger.inner.run(RUN).await.unwrap().unwrap();
    assert_eq!(run.stopped, None, "$0.04 is under the $0.05 budget");
    world.deliver_until_done(1).await;
    let run = world.recorder.ledger.inner.run(RUN).await.unwrap().unwrap();
    assert!(run.stopped.unwrap().contains("run budget of $0.05"));
    let report = world.report().await;
    assert!(report.stopped.is_some());
    assert!(
        world
            .notifier
            .texts()
            .iter()
            .any(|t| t.contains("Stopped: spend reached the run budget"))
    );
}
