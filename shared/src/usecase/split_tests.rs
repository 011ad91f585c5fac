//! The splitter over the in-memory ledger and queues: segments, continuations and their duplicates.

use std::collections::HashSet;

use super::*;
use crate::adapters::memory_ledger::MemoryLedger;
use crate::adapters::memory_queue::MemoryQueue;
use crate::domain::deployment::DeploymentConfig;

/// A CSV held in memory.
struct MemoryCsv(Vec<u8>);

impl CsvSource for MemoryCsv {
    fn name(&self) -> &str {
        "s3://b/incoming/product/p.csv"
    }

    fn version(&self) -> &str {
        "v1"
    }

    async fn open_range(&self, start: u64, end: Option<u64>) -> Result<Box<dyn Read + Send>, StoreError> {
        let end = end.map_or(self.0.len(), |e| (e as usize).min(self.0.len()));
        let start = (start as usize).min(end);
        Ok(Box::new(std::io::Cursor::new(self.0[start..end].to_vec())))
    }
}

/// 25 rows; row 4 has an empty colour and row 20 repeats row 3's SKU (duplicates across segments).
fn csv() -> MemoryCsv {
    let mut text = String::from("sku,name,color\r\n");
    for row in 1..=25 {
        let sku = if row == 20 {
            "SKU-3".to_owned()
        } else {
            format!("SKU-{row}")
        };
        let color = if row == 4 { "" } else { "red" };
        text.push_str(&format!("{sku},\"Product, {row}\",{color}\r\n"));
    }
    MemoryCsv(text.into_bytes())
}

fn splitter(rows_per_invocation: u64) -> TestSplitter {
    Splitter {
        jobs: MemoryQueue::new(),
        events: MemoryQueue::new(),
        continuations: MemoryQueue::new(),
        ledger: MemoryLedger::new(),
        settings: SplitSettings {
            provider: None,
            max_run_cost_usd: None,
            max_rows: 1_000,
            send_concurrency: 2,
            reserve: Duration::from_secs(30),
            rows_per_invocation,
            batch_requests: crate::usecase::batch::BATCH_REQUESTS,
        },
        batches: None,
    }
}

fn deadline() -> u64 {
    now_ms() + 600_000
}

type TestSplitter = Splitter<MemoryQueue, MemoryQueue, MemoryQueue, MemoryLedger>;

/// Splits `source` with the named template of `config` (and model, else the template's).
async fn split_with(
    splitter: &TestSplitter,
    source: &MemoryCsv,
    config: &DeploymentConfig,
    template: &str,
    model: Option<&str>,
) -> Split {
    let template = config.templates.get(template).map_err(|e| e.to_string());
    splitter
        .split(source, template, model, &config.catalog, deadline())
        .await
        .unwrap()
}

fn rows_sent(jobs: &MemoryQueue) -> Vec<u64> {
    jobs.sent()
        .iter()
        .map(|body| serde_json::from_str::<Job>(body).unwrap().row)
        .collect()
}

#[tokio::test]
async fn a_split_in_segments_sends_every_valid_row_once_and_skips_invalid_ones_across_segments() {
    let splitter = splitter(7);
    let config = DeploymentConfig::from_texts(None, None).unwrap();
    let source = csv();
    let first = split_with(&splitter, &source, &config, "product", None).await;
    assert!(first.continued);
    assert_eq!(
        first.totals.as_ref().map(|t| (t.rows, t.awaited, t.invalid)),
        Some((25, 23, 2))
    );
    let mut invocations = 1;
    while let Some(body) = splitter.continuations.take().pop() {
        let continuation: Continuation = serde_json::from_str(&body).unwrap();
        // A duplicated continuation: the second delivery finds the checkpoint moved and sends nothing.
        for _ in 0..2 {
            splitter
                .resume(&continuation.continue_run, continuation.rows_read, &source, deadline())
                .await
                .unwrap();
        }
        invocations += 1;
    }
    assert_eq!(invocations, 4, "25 rows, 7 per invocation");
    let rows = rows_sent(&splitter.jobs);
    let expected: Vec<u64> = (1..=25).filter(|r| *r != 4 && *r != 20).collect();
    let mut sorted = rows.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, expected, "every valid row once");
    assert_eq!(rows.iter().collect::<HashSet<_>>().len(), rows.len());
    let run = splitter.ledger.run(&first.run_id).await.unwrap().unwrap();
    assert_eq!(
        (run.state, run.checkpoint.sent, run.checkpoint.rows_read),
        (RunState::Running, 23, 25)
    );
    assert_eq!(
        splitter.events.sent().len(),
        1,
        "one split event when the last segment is sent"
    );
    let invalid = splitter.ledger.invalid_rows(&first.run_id, None).await.unwrap().items;
    assert_eq!(invalid.iter().map(|i| i.row).collect::<Vec<_>>(), vec![4, 20]);
    assert!(invalid[1].reason.contains("already used by row 3"), "{invalid:?}");
}

#[tokio::test]
async fn a_duplicate_upload_event_announces_the_run_again_and_sends_nothing() {
    let splitter = splitter(u64::MAX);
    let config = DeploymentConfig::from_texts(None, None).unwrap();
    let first = split_with(&splitter, &csv(), &config, "product", None).await;
    assert!(!first.continued && !first.duplicate);
    let again = split_with(&splitter, &csv(), &config, "product", None).await;
    assert!(again.duplicate);
    assert_eq!((again.run_id, again.sent), (first.run_id, 0));
    assert_eq!(splitter.jobs.sent().len(), 23);
    assert_eq!(splitter.events.sent().len(), 2);
}

#[tokio::test]
async fn a_file_over_the_budget_is_rejected_before_any_job() {
    let mut splitter = splitter(u64::MAX);
    splitter.settings.max_run_cost_usd = Some(0.10);
    let config = DeploymentConfig::from_texts(None, None).unwrap();
    let split = split_with(&splitter, &csv(), &config, "product", Some("nano-banana")).await;
    let reason = split.totals.unwrap().rejected.unwrap();
    assert!(reason.contains("MAX_RUN_COST_USD"), "{reason}");
    assert!(splitter.jobs.sent().is_empty());
    let run = splitter.ledger.run(&split.run_id).await.unwrap().unwrap();
    assert_eq!((run.state, run.outstanding()), (RunState::Running, Some(0)));
}

#[tokio::test]
async fn a_run_keeps_its_own_template_and_model_whatever_happens_to_the_deployment_files() {
    let splitter = splitter(7);
    let house = "[templates.house]\nprompt = \"House style: {name}\"\nmodel = \"house-model\"\nkey = \"{sku}\"\n";
    let models = "prices_as_of = \"2026-12-01\"\n[models.house-model]\nprovider = \"placeholder\"\n\
                  provider_model = \"placeholder\"\nprice_per_image = 0.5\n";
    let config = DeploymentConfig::from_texts(Some(house), Some(models)).unwrap();
    let source = csv();
    let first = split_with(&splitter, &source, &config, "house", None).await;
    // The house template does not use the colour: only the duplicate key (row 20) is invalid.
    assert_eq!(first.totals.as_ref().unwrap().estimated_cost_usd, 0.5 * 24.0);
    // The continuations run on the run's snapshot, not on any config (there is none to pass).
    while let Some(body) = splitter.continuations.take().pop() {
        let continuation: Continuation = serde_json::from_str(&body).unwrap();
        splitter
            .resume(&continuation.continue_run, continuation.rows_read, &source, deadline())
            .await
            .unwrap();
    }
    let jobs: Vec<Job> = splitter
        .jobs
        .sent()
        .iter()
        .map(|b| serde_json::from_str(b).unwrap())
        .collect();
    assert_eq!(jobs.len(), 24);
    assert!(
        jobs.iter()
            .all(|j| j.prompt.starts_with("House style: Product, ") && j.model == "house-model")
    );
    let run = splitter.ledger.run(&first.run_id).await.unwrap().unwrap();
    assert_eq!(run.model_entry.unwrap().price_per_image, 0.5);
}

#[tokio::test]
async fn an_unknown_template_or_model_rejects_the_run_with_the_names_it_knows() {
    let splitter = splitter(u64::MAX);
    let config = DeploymentConfig::from_texts(None, None).unwrap();
    let split = split_with(&splitter, &csv(), &config, "nope", None).await;
    let reason = split.totals.unwrap().rejected.unwrap();
    assert!(
        reason.contains("unknown template \"nope\"") && reason.contains("product_hero"),
        "{reason}"
    );
    let split = split_with(&splitter, &csv(), &config, "product", Some("nope-model")).await;
    let reason = split.totals.unwrap().rejected.unwrap();
    assert!(
        reason.contains("unknown model") && reason.contains("nano-banana"),
        "{reason}"
    );
    assert!(splitter.jobs.sent().is_empty());
}

/// Where batch-mode chunks go: records what it is handed; a submission can be made to fail after
/// its record is written (a crash between the record and the batch).
#[derive(Default)]
struct ChunkLog {
    records: std::sync::Mutex<std::collections::BTreeMap<u64, crate::usecase::batch::BatchRecord>>,
    submissions: std::sync::Mutex<Vec<Vec<u64>>>,
    crash_next: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl ChunkSink for ChunkLog {
    async fn recorded(&self, _run_id: &str, chunk: u64) -> Result<Option<crate::usecase::batch::BatchRecord>, Error> {
        Ok(self.records.lock().unwrap().get(&chunk).cloned())
    }

    async fn submit(&self, run: &RunRecord, from: Checkpoint, to: Checkpoint, jobs: Vec<Job>) -> Result<(), Error> {
        let crash = self.crash_next.swap(false, std::sync::atomic::Ordering::SeqCst);
        self.submissions
            .lock()
            .unwrap()
            .push(jobs.iter().map(|j| j.row).collect());
        let record = crate::usecase::batch::BatchRecord {
            run_id: run.run_id.clone(),
            chunk: from.rows_read,
            name: String::new(),
            provider: "gemini".into(),
            model: run.model.clone(),
            model_entry: run.model_entry.clone().unwrap(),
            to,
            requests: jobs.len() as u64,
            id: (!crash).then(|| format!("batches/{}", from.rows_read)),
            created_at_ms: 0,
            state: None,
            failed: vec![],
            sync_rows: vec![],
            cancelled: false,
        };
        self.records.lock().unwrap().insert(from.rows_read, record);
        match crash {
            true => Err(Error::Input("the invocation died creating the batch".into())),
            false => Ok(()),
        }
    }
}

#[tokio::test]
async fn a_batch_mode_run_is_cut_into_chunks_and_a_crashed_chunk_is_submitted_again_from_the_same_rows() {
    let mut splitter = splitter(u64::MAX);
    splitter.settings.batch_requests = 10;
    let sink = std::sync::Arc::new(ChunkLog::default());
    splitter.batches = Some(sink.clone());
    let config = DeploymentConfig::from_texts(None, None).unwrap();
    let mut template = config.templates.get("product").unwrap().clone();
    template.mode = crate::domain::template::Mode::Batch;
    let source = csv();
    sink.crash_next.store(true, std::sync::atomic::Ordering::SeqCst);
    let first = splitter
        .split(&source, Ok(&template), Some("nano-banana"), &config.catalog, deadline())
        .await;
    assert!(first.is_err(), "the first chunk's submission crashed");
    let run_id = splitter.ledger.open_runs().await.unwrap().pop().unwrap();
    // The event is delivered again: the crashed chunk is read again, whole, then the rest.
    let mut split = splitter.resume(&run_id, 0, &source, deadline()).await.unwrap();
    while split.continued {
        let body = splitter.continuations.take().pop().unwrap();
        let next: Continuation = serde_json::from_str(&body).unwrap();
        split = splitter
            .resume(&run_id, next.rows_read, &source, deadline())
            .await
            .unwrap();
    }
    let submissions = sink.submissions.lock().unwrap().clone();
    let valid: Vec<u64> = (1..=25).filter(|r| *r != 4 && *r != 20).collect();
    assert_eq!(submissions[0], submissions[1], "the same rows both times");
    assert_eq!(
        submissions[1..].concat(),
        valid,
        "every valid row in one chunk, in chunks of 10"
    );
    assert_eq!(submissions[1].len(), 10);
    assert!(splitter.jobs.sent().is_empty(), "no job goes the synchronous way");
    let run = splitter.ledger.run(&run_id).await.unwrap().unwrap();
    assert_eq!(
        (run.mode, run.state),
        (crate::domain::template::Mode::Batch, RunState::Running)
    );
    assert!(
        (run.totals.unwrap().estimated_cost_usd - 23.0 * 0.0195).abs() < 1e-9,
        "priced at the batch price"
    );
}

#[tokio::test]
async fn batch_mode_through_another_provider_than_the_models_is_refused() {
    let mut splitter = splitter(u64::MAX);
    splitter.settings.provider = Some("placeholder".into());
    splitter.batches = Some(std::sync::Arc::new(ChunkLog::default()));
    let config = DeploymentConfig::from_texts(None, None).unwrap();
    let mut template = config.templates.get("product").unwrap().clone();
    template.mode = crate::domain::template::Mode::Batch;
    let split = splitter
        .split(&csv(), Ok(&template), Some("nano-banana"), &config.catalog, deadline())
        .await
        .unwrap();
    let reason = split.totals.unwrap().rejected.unwrap();
    assert!(
        reason.contains("goes through \"placeholder\" instead of \"gemini\""),
        "{reason}"
    );
}
