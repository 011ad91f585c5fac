//! Batch mode's use case over the directory store, in-memory queues and a batch API fake: chunks
//! submitted once whatever is repeated, results stored and sent as outcomes, failures routed, and a
//! poll that fails part-way finished by the next one without a second payment.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::adapters::failing::FailingStore;
use crate::adapters::fs_store::FsObjectStore;
use crate::adapters::memory_queue::MemoryQueue;
use crate::domain::catalog::Catalog;
use crate::domain::template::{ImageSize, Mode};
use crate::ports::provider::{ImageRequest, ProviderImage, Usage};
use crate::providers::ProviderError;

const RUN: &str = "run-0123456789abcdef";

/// A batch API in memory: one batch a name, finished after `polls` status calls, answering each row
/// as `answer` says.
struct FakeBatchApi {
    created: AtomicUsize,
    /// The next creation fails after the batch exists (a lost answer).
    lose_next_answer: Mutex<bool>,
    batches: Mutex<Vec<(String, Vec<u64>)>>,
    status_calls: AtomicUsize,
    cancels: AtomicUsize,
    polls: usize,
    answer: fn(u64) -> Result<(), ProviderError>,
}

impl FakeBatchApi {
    fn new(polls: usize, answer: fn(u64) -> Result<(), ProviderError>) -> Self {
        Self {
            created: AtomicUsize::new(0),
            lose_next_answer: Mutex::new(false),
            batches: Mutex::new(Vec::new()),
            status_calls: AtomicUsize::new(0),
            cancels: AtomicUsize::new(0),
            polls,
            answer,
        }
    }

    fn created(&self) -> usize {
        self.created.load(Ordering::SeqCst)
    }
}

fn png() -> ProviderImage {
    ProviderImage {
        bytes: crate::providers::placeholder::render_png(8, 8, b"b").unwrap().into(),
        reported_cost_usd: None,
        request_id: None,
        usage: Usage::default(),
    }
}

#[async_trait::async_trait]
impl BatchApi for FakeBatchApi {
    fn name(&self) -> &str {
        "gemini"
    }

    async fn line(&self, row: u64, _request: &ImageRequest) -> Result<String, ProviderError> {
        Ok(row.to_string())
    }

    async fn create(&self, _model: &str, name: &str, lines: String) -> Result<String, ProviderError> {
        self.created.fetch_add(1, Ordering::SeqCst);
        let rows = lines.lines().filter_map(|l| l.parse().ok()).collect();
        self.batches.lock().unwrap().push((name.to_owned(), rows));
        if std::mem::take(&mut *self.lose_next_answer.lock().unwrap()) {
            return Err(ProviderError::Unavailable {
                message: "gemini timed out".into(),
            });
        }
        Ok(format!("batches/{name}"))
    }

    async fn find(&self, name: &str) -> Result<Option<String>, ProviderError> {
        let batches = self.batches.lock().unwrap();
        Ok(batches
            .iter()
            .find(|(n, _)| n == name)
            .map(|(n, _)| format!("batches/{n}")))
    }

    async fn status(&self, id: &str) -> Result<BatchStatus, ProviderError> {
        let calls = self.status_calls.fetch_add(1, Ordering::SeqCst) + 1;
        let cancelled = self.cancels.load(Ordering::SeqCst) > 0;
        let done = calls >= self.polls && !cancelled;
        Ok(BatchStatus {
            state: match (cancelled, done) {
                (true, _) => BatchState::Cancelled,
                (false, true) => BatchState::Succeeded,
                (false, false) => BatchState::Running,
            },
            total: None,
            done: None,
            failed: None,
            results: if done { vec![id.to_owned()] } else { vec![] },
            message: None,
        })
    }

    async fn cancel(&self, _id: &str) -> Result<(), ProviderError> {
        self.cancels.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn results(
        &self,
        status: &BatchStatus,
        results: tokio::sync::mpsc::Sender<BatchResult>,
    ) -> Result<(), ProviderError> {
        let Some(file) = status.results.first() else {
            return Ok(());
        };
        let name = file.trim_start_matches("batches/").to_owned();
        let rows = self
            .batches
            .lock()
            .unwrap()
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, r)| r.clone());
        for row in rows.unwrap_or_default() {
            let image = (self.answer)(row).map(|()| png());
            let _ = results.send(BatchResult { row, image }).await;
        }
        Ok(())
    }
}

struct World {
    _dir: tempfile::TempDir,
    batches: Batches<FailingStore<FsObjectStore>, MemoryQueue, MemoryQueue>,
    api: std::sync::Arc<FakeBatchApi>,
    run: RunRecord,
}

fn world(api: FakeBatchApi) -> World {
    let dir = tempfile::tempdir().unwrap();
    let api = std::sync::Arc::new(api);
    let store = FailingStore::new(FsObjectStore::new(dir.path()), 0);
    let mut run = RunRecord::new(RUN, "s3://b/p.csv", "v1", "product", "nano-banana", "gemini", 0);
    run.model_entry = Catalog::builtin().model("nano-banana").ok().cloned();
    run.mode = Mode::Batch;
    World {
        batches: Batches {
            store,
            apis: BatchApis::with(api.clone()),
            jobs: MemoryQueue::new(),
            events: MemoryQueue::new(),
            locations: Locations::bucket("b", None),
            retry_failed: true,
            replay_done: false,
        },
        _dir: dir,
        api,
        run,
    }
}

impl World {
    /// Submits the run's first chunk: rows 1 to `rows`.
    async fn submit(&self, rows: u64) -> Result<(), Error> {
        (self.batches)
            .submit(&self.run, checkpoint(0), checkpoint(rows), jobs(1..=rows))
            .await
    }

    /// Whether the first chunk's record has its batch's id.
    async fn created_chunk(&self) -> bool {
        let record = self.batches.recorded(RUN, 0).await.unwrap();
        record.is_some_and(|r| r.id.is_some())
    }
}

fn jobs(rows: std::ops::RangeInclusive<u64>) -> Vec<Job> {
    rows.map(|row| Job {
        run_id: RUN.into(),
        row,
        key: crate::domain::key::ObjectKey::parse(&format!("product/SKU-{row}")).unwrap(),
        cms_id: format!("SKU-{row}"),
        prompt: format!("mug {row}"),
        model: "nano-banana".into(),
        size: ImageSize::parse("64x64").unwrap(),
        references: vec![],
    })
    .collect()
}

fn checkpoint(rows_read: u64) -> Checkpoint {
    Checkpoint {
        offset: rows_read * 10,
        rows_read,
        sent: rows_read,
    }
}

fn events(queue: &MemoryQueue) -> Vec<PipelineEvent> {
    queue.sent().iter().map(|b| serde_json::from_str(b).unwrap()).collect()
}

#[tokio::test]
async fn a_repeated_segment_finds_its_chunk_and_creates_nothing() {
    let w = world(FakeBatchApi::new(1, |_| Ok(())));
    w.submit(3).await.unwrap();
    w.submit(3).await.unwrap();
    assert_eq!(w.api.created(), 1);
    let record = w.batches.recorded(RUN, 0).await.unwrap().unwrap();
    assert_eq!(
        (record.requests, record.to, record.id.is_some()),
        (3, checkpoint(3), true)
    );
    assert_eq!(record.name, format!("imagepipe-{RUN}-0"));
}

#[tokio::test]
async fn a_creation_whose_answer_was_lost_is_found_not_paid_again() {
    let w = world(FakeBatchApi::new(1, |_| Ok(())));
    *w.api.lose_next_answer.lock().unwrap() = true;
    w.submit(2).await.unwrap();
    assert_eq!(w.api.created(), 1);
    assert!(w.created_chunk().await);
}

#[tokio::test]
async fn a_record_left_without_an_id_is_completed_from_the_providers_list() {
    let w = world(FakeBatchApi::new(1, |_| Ok(())));
    // The creation happens but its answer is lost, and the write of the id found for it fails:
    // the record is left without an id (the jobs file is write 1, the record 2, the id 3).
    w.batches.store.fail_at(3);
    *w.api.lose_next_answer.lock().unwrap() = true;
    let first = w.submit(2).await;
    assert!(first.is_err(), "{first:?}");
    w.batches.store.fail_at(0);
    w.submit(2).await.unwrap();
    assert_eq!(w.api.created(), 1);
    assert!(w.created_chunk().await);
}

#[tokio::test]
async fn a_finished_batch_becomes_images_and_outcomes_and_its_failures_are_routed() {
    let w = world(FakeBatchApi::new(2, |row| match row {
        2 => Err(ProviderError::Rejected {
            message: "refused".into(),
        }),
        3 => Err(ProviderError::Unavailable {
            message: "internal".into(),
        }),
        _ => Ok(()),
    }));
    w.submit(4).await.unwrap();
    let waiting = w.batches.poll(RUN, u64::MAX, false).await.unwrap();
    assert_eq!((waiting.waiting, waiting.collected), (1, 0));
    assert!(w.batches.events.sent().is_empty());
    let done = w.batches.poll(RUN, u64::MAX, false).await.unwrap();
    assert_eq!((done.waiting, done.collected), (0, 1));
    let events = events(&w.batches.events);
    let made: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            PipelineEvent::JobSucceeded { image, .. } => Some(image.row),
            _ => None,
        })
        .collect();
    assert_eq!(made.len(), 2);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, PipelineEvent::JobFailed { failure, .. }
        if failure.row == 2 && failure.reason == "batch: rejected by provider: refused"))
    );
    let retried: Vec<Job> = w
        .batches
        .jobs
        .sent()
        .iter()
        .map(|b| serde_json::from_str(b).unwrap())
        .collect();
    assert_eq!(
        retried.iter().map(|j| j.row).collect::<Vec<_>>(),
        vec![3],
        "the failed row goes the synchronous way"
    );
    for event in &events {
        if let PipelineEvent::JobSucceeded { image, .. } = event {
            assert!((image.cost_usd - 0.0195).abs() < 1e-12, "the batch price");
            assert!(w.batches.store.inner.get(&image.object_key).await.unwrap().is_some());
        }
    }
    let record = w.batches.recorded(RUN, 0).await.unwrap().unwrap();
    assert_eq!(record.state, Some(BatchState::Succeeded));
    assert_eq!(record.failed.iter().map(|f| f.row).collect::<Vec<_>>(), vec![2]);
    assert!(
        w.batches.poll(RUN, u64::MAX, false).await.unwrap() == BatchProgress::default(),
        "nothing open"
    );
}

#[tokio::test]
async fn a_poll_that_fails_part_way_is_finished_by_the_next_without_a_second_batch() {
    let w = world(FakeBatchApi::new(1, |_| Ok(())));
    w.submit(3).await.unwrap();
    // The record (1), the read lease (2), the jobs (3), the 3 images (4-6), then the done record
    // (7) fails: the poll says the batch is still waiting.
    w.batches.store.fail_at(7);
    let failed = w.batches.poll(RUN, u64::MAX, false).await.unwrap();
    assert_eq!((failed.waiting, failed.collected), (1, 0));
    assert!(
        w.batches.store.inner.get(&keys::open(RUN, 0)).await.unwrap().is_some(),
        "still open"
    );
    w.batches.store.fail_at(0);
    assert_eq!(w.batches.poll(RUN, u64::MAX, false).await.unwrap().collected, 1);
    assert!(
        w.batches.jobs.sent().is_empty(),
        "the images written before were found, not made again"
    );
    let made: std::collections::BTreeSet<u64> = events(&w.batches.events)
        .iter()
        .filter_map(|e| match e {
            PipelineEvent::JobSucceeded { image, .. } => Some(image.row),
            _ => None,
        })
        .collect();
    assert_eq!(made, [1, 2, 3].into(), "every row made in the end");
    assert_eq!(w.api.created(), 1);
}

#[tokio::test]
async fn a_poll_started_too_late_leaves_the_finished_batch_for_the_next() {
    let w = world(FakeBatchApi::new(1, |_| Ok(())));
    w.submit(1).await.unwrap();
    let late = w.batches.poll(RUN, 0, false).await.unwrap();
    assert_eq!((late.waiting, late.collected), (1, 0));
    assert_eq!(w.batches.poll(RUN, u64::MAX, false).await.unwrap().collected, 1);
}

#[tokio::test]
async fn a_stopped_run_submits_nothing_and_its_rows_fail_as_not_attempted() {
    let mut w = world(FakeBatchApi::new(1, |_| Ok(())));
    w.run.stopped = Some("cancelled by ops".into());
    w.submit(2).await.unwrap();
    assert_eq!(w.api.created(), 0);
    let failed: Vec<String> = events(&w.batches.events)
        .into_iter()
        .filter_map(|e| match e {
            PipelineEvent::JobFailed { failure, .. } => Some(failure.reason),
            _ => None,
        })
        .collect();
    assert_eq!(failed, vec!["not attempted: the run was stopped (cancelled by ops)"; 2]);
}

#[tokio::test]
async fn rows_with_references_or_an_existing_image_go_the_synchronous_way_once() {
    let w = world(FakeBatchApi::new(1, |_| Ok(())));
    let mut chunk = jobs(1..=4);
    chunk[0].references = vec!["s3://b/references/a.png".into()];
    let png = crate::providers::placeholder::render_png(8, 8, b"old").unwrap();
    let existing = NewObject {
        body: png.into(),
        content_type: "image/png".into(),
        cache_control: None,
        metadata: vec![],
    };
    w.batches.store.put("images/product/SKU-2.png", existing).await.unwrap();
    for _ in 0..2 {
        (w.batches)
            .submit(&w.run, checkpoint(0), checkpoint(4), chunk.clone())
            .await
            .unwrap();
    }
    let sync: Vec<u64> = w
        .batches
        .jobs
        .sent()
        .iter()
        .map(|b| serde_json::from_str::<Job>(b).unwrap().row)
        .collect();
    assert_eq!(sync, vec![1, 2], "sent once, though the segment was handed over twice");
    assert_eq!(
        w.api.batches.lock().unwrap()[0].1,
        vec![3, 4],
        "the batch holds the others"
    );
    w.batches.poll(RUN, u64::MAX, false).await.unwrap();
    assert_eq!(
        events(&w.batches.events).len(),
        2,
        "rows 3 and 4; rows 1 and 2 are the generator's"
    );
    assert_eq!(w.batches.jobs.sent().len(), 2, "nothing more goes the synchronous way");
}

#[tokio::test]
async fn a_batch_another_poll_is_reading_is_left_to_it() {
    let w = world(FakeBatchApi::new(1, |_| Ok(())));
    w.submit(1).await.unwrap();
    let held = NewObject {
        body: (now_ms() + 60_000).to_string().into(),
        content_type: "text/plain".into(),
        cache_control: None,
        metadata: vec![],
    };
    w.batches.store.put(&keys::reading(RUN, 0), held).await.unwrap();
    let skipped = w.batches.poll(RUN, u64::MAX, false).await.unwrap();
    assert_eq!((skipped.waiting, skipped.collected), (1, 0));
    assert!(w.batches.events.sent().is_empty());
    // A lease that ended (its poll died) is taken over.
    let ended = NewObject {
        body: "1".into(),
        content_type: "text/plain".into(),
        cache_control: None,
        metadata: vec![],
    };
    w.batches.store.put(&keys::reading(RUN, 0), ended).await.unwrap();
    assert_eq!(w.batches.poll(RUN, u64::MAX, false).await.unwrap().collected, 1);
}

#[tokio::test]
async fn an_image_that_could_not_be_stored_is_read_again_not_paid_again() {
    let w = world(FakeBatchApi::new(1, |_| Ok(())));
    w.submit(2).await.unwrap();
    // The record (1), the read lease (2), the jobs (3), then the first image's write (4) fails.
    w.batches.store.fail_at(4);
    assert_eq!(w.batches.poll(RUN, u64::MAX, false).await.unwrap().collected, 0);
    assert!(w.batches.jobs.sent().is_empty(), "not sent the synchronous way");
    w.batches.store.fail_at(0);
    assert_eq!(w.batches.poll(RUN, u64::MAX, false).await.unwrap().collected, 1);
    assert_eq!(w.api.created(), 1);
}

#[tokio::test]
async fn a_stopped_runs_unfinished_batch_is_cancelled_once_and_its_rows_fail_through_the_generator() {
    let w = world(FakeBatchApi::new(100, |_| Ok(())));
    w.submit(2).await.unwrap();
    let first = w.batches.poll(RUN, u64::MAX, true).await.unwrap();
    assert_eq!((first.waiting, w.api.cancels.load(Ordering::SeqCst)), (1, 1));
    let second = w.batches.poll(RUN, u64::MAX, true).await.unwrap();
    assert_eq!(
        (second.collected, w.api.cancels.load(Ordering::SeqCst)),
        (1, 1),
        "asked once"
    );
    // The generator fails them as not attempted: it sees the run's stop.
    let mut rows: Vec<u64> = (w.batches.jobs.sent().iter())
        .map(|b| serde_json::from_str::<Job>(b).unwrap().row)
        .collect();
    rows.sort_unstable();
    assert_eq!(rows, vec![1, 2]);
}

#[tokio::test]
async fn a_later_local_process_sends_an_open_chunks_synchronous_rows_again() {
    let mut w = world(FakeBatchApi::new(100, |_| Ok(())));
    w.batches.replay_done = true;
    let mut chunk = jobs(1..=2);
    chunk[0].references = vec!["https://cdn.example.com/a.png".into()];
    (w.batches)
        .submit(&w.run, checkpoint(0), checkpoint(2), chunk)
        .await
        .unwrap();
    assert_eq!(w.batches.jobs.take().len(), 1, "row 1 went the synchronous way");
    // A new process (its ledger empty) reaches the chunk again: its batch is still at the provider.
    let found = ChunkSink::recorded(&w.batches, RUN, 0).await.unwrap().unwrap();
    assert_eq!(found.sync_rows, vec![1]);
    let again: Vec<u64> = (w.batches.jobs.sent().iter())
        .map(|b| serde_json::from_str::<Job>(b).unwrap().row)
        .collect();
    assert_eq!(
        again,
        vec![1],
        "row 1 is the generator's again; row 2 waits for the batch"
    );
}
