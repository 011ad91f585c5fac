//! The AWS path end to end at the handler level with latency injected: a loopback proxy in front of
//! the emulator delays every request the functions make by LATENCY_MS and counts it. The event
//! source mappings are played by pollers that talk to the emulator directly (not counted: the
//! Lambda service makes those calls). Also the report assembly of a synthetic ledger of any size.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use imagepipe::domain::events::{Outcome, now_ms};
use imagepipe::domain::report::{FailureEntry, ImageEntry};
use imagepipe::domain::rows::InvalidRow;
use imagepipe::drivers::lambda::AwsClients;
use imagepipe::ports::ledger::{
    Action, Advance, Claim, LedgerError, Page, RunLedger, RunRecord, RunState, SplitTotals,
};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Error, clients_at, csv, peak_rss_kib, provider};

/// A TCP proxy to `upstream` that holds each HTTP request (a client write starting with a method)
/// for `latency` and counts it.
async fn latency_proxy(upstream: String, latency: Duration) -> Result<(String, Arc<AtomicU64>), Error> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = format!("http://{}", listener.local_addr()?);
    let requests = Arc::new(AtomicU64::new(0));
    let counter = requests.clone();
    let upstream = upstream.trim_start_matches("http://").to_owned();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let (upstream, counter) = (upstream.clone(), counter.clone());
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let upload = async {
                    let mut buffer = vec![0u8; 64 * 1024];
                    loop {
                        let n = client_read.read(&mut buffer).await?;
                        if n == 0 {
                            return server_write.shutdown().await;
                        }
                        let chunk = &buffer[..n];
                        if [&b"GET "[..], b"PUT ", b"POST ", b"HEAD ", b"DELETE "]
                            .iter()
                            .any(|m| chunk.starts_with(m))
                        {
                            counter.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(latency).await;
                        }
                        server_write.write_all(chunk).await?;
                    }
                };
                let download = tokio::io::copy(&mut server_read, &mut client_write);
                let _ = tokio::join!(upload, download);
            });
        }
    });
    Ok((address, requests))
}

/// Receives up to 10 messages as an SQS event (the event source mapping's part).
pub async fn receive(clients: &AwsClients, url: &str) -> SqsEvent {
    let mut event = SqsEvent::default();
    let Ok(received) = clients
        .sqs
        .receive_message()
        .queue_url(url)
        .max_number_of_messages(10)
        .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
        .send()
        .await
    else {
        return event;
    };
    for message in received.messages() {
        let mut record = SqsMessage::default();
        record.message_id = message.message_id().map(str::to_owned);
        record.receipt_handle = message.receipt_handle().map(str::to_owned);
        record.body = message.body().map(str::to_owned);
        record.event_source = Some("aws:sqs".into());
        if let Some(attributes) = message.attributes() {
            for (name, value) in attributes {
                record.attributes.insert(name.as_str().to_owned(), value.clone());
            }
        }
        event.records.push(record);
    }
    event
}

/// Deletes what the handler did not report as failed; returns how many.
pub async fn delete_done(clients: &AwsClients, url: &str, event: &SqsEvent, response: &serde_json::Value) -> u64 {
    let failed: Vec<&str> = response["batchItemFailures"]
        .as_array()
        .map(|f| f.iter().filter_map(|f| f["itemIdentifier"].as_str()).collect())
        .unwrap_or_default();
    let entries: Vec<_> = event
        .records
        .iter()
        .filter(|r| !failed.contains(&r.message_id.as_deref().unwrap_or_default()))
        .enumerate()
        .filter_map(|(i, r)| {
            aws_sdk_sqs::types::DeleteMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(r.receipt_handle.clone()?)
                .build()
                .ok()
        })
        .collect();
    let deleted = entries.len() as u64;
    if deleted > 0 {
        let _ = clients
            .sqs
            .delete_message_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await;
    }
    deleted
}

fn context() -> lambda_runtime::Context {
    let mut context = lambda_runtime::Context::default();
    context.deadline = now_ms() + 300_000;
    context
}

/// `rows` rows through splitter, generators (`concurrency` jobs in flight) and finalizers, every
/// function request delayed `latency_ms` and counted.
pub async fn run(latency_ms: u64, concurrency: usize, rows: u64) -> Result<(), Error> {
    let endpoint = std::env::var("IMAGEPIPE_TEST_AWS_ENDPOINT")?;
    let direct = clients_at(&endpoint);
    let (proxy, requests) = latency_proxy(endpoint, Duration::from_millis(latency_ms)).await?;
    let functions = clients_at(&proxy);
    let suffix = format!("{:08x}", rand::random::<u32>());
    let bucket = format!("bench-pipeline-{suffix}");
    direct.s3.create_bucket().bucket(&bucket).send().await?;
    let mut urls = Vec::new();
    for name in ["jobs", "events", "split"] {
        let queue = direct
            .sqs
            .create_queue()
            .queue_name(format!("bench-{name}-{suffix}"))
            .send()
            .await?;
        urls.push(queue.queue_url().unwrap_or_default().to_owned());
    }
    let table = super::table(&direct, &format!("bench-runs-{suffix}")).await?;
    let vars = std::collections::HashMap::from([
        ("IMAGEPIPE_BUCKET", bucket.clone()),
        ("LEDGER_TABLE", table),
        ("JOBS_QUEUE_URL", urls[0].clone()),
        ("EVENTS_QUEUE_URL", urls[1].clone()),
        ("SPLIT_QUEUE_URL", urls[2].clone()),
        ("SEND_CONCURRENCY", "8".to_owned()),
    ]);
    let config = imagepipe::drivers::config::Config::from_lookup(|n| vars.get(n).cloned())?;
    let splitter = splitter::handler::Deps::new(&functions, config.clone())?;
    let mut generator = generator::handler::Deps::new(&functions, config.clone())?;
    generator.generator.providers = imagepipe::usecase::deliver::Providers::with(provider()?);
    let finalizer = finalizer::handler::Deps::new(&functions, config)?;

    let key = "incoming/product/bench.csv";
    let put = direct
        .s3
        .put_object()
        .bucket(&bucket)
        .key(key)
        .body(csv(rows).into_bytes().into())
        .send()
        .await?;
    let mut event: serde_json::Value = serde_json::from_str(include_str!("../../../../events/s3-put.json"))?;
    event["Records"][0]["s3"]["bucket"]["name"] = bucket.clone().into();
    event["Records"][0]["s3"]["object"]["key"] = key.replace('/', "%2F").into();
    event["Records"][0]["s3"]["object"]["eTag"] = put.e_tag().unwrap_or_default().trim_matches('"').into();
    let started = Instant::now();
    // The split runs while generators and finalizers already consume, as the event source mappings do.
    let run_id = std::sync::OnceLock::<String>::new();
    let split_requests = AtomicU64::new(0);
    let split = async {
        let split = splitter::handler::handle(&splitter, lambda_runtime::LambdaEvent::new(event, context()))
            .await
            .map_err(|e| e.to_string())?;
        let _ = run_id.set(split[0]["run_id"].as_str().unwrap_or_default().to_owned());
        split_requests.store(requests.load(Ordering::Relaxed), Ordering::Relaxed);
        Ok::<(), String>(())
    };
    let finalizer_busy = AtomicU64::new(0);
    let done = std::sync::atomic::AtomicBool::new(false);
    let generators = (0..concurrency.div_ceil(10)).map(|_| async {
        while !done.load(Ordering::Relaxed) {
            let event = receive(&direct, &urls[0]).await;
            if event.records.is_empty() {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            let payload = serde_json::to_value(&event).unwrap_or_default();
            if let Ok(response) = generator::handler::handle(
                &generator,
                lambda_runtime::LambdaEvent::new(serde_json::from_value(payload).unwrap_or_default(), context()),
            )
            .await
            {
                delete_done(
                    &direct,
                    &urls[0],
                    &event,
                    &serde_json::to_value(response).unwrap_or_default(),
                )
                .await;
            }
        }
    });
    let finalizers = (0..4).map(|_| async {
        while !done.load(Ordering::Relaxed) {
            let event = receive(&direct, &urls[1]).await;
            if event.records.is_empty() {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            let busy = Instant::now();
            let payload = serde_json::to_value(&event).unwrap_or_default();
            if let Ok(response) =
                finalizer::handler::handle(&finalizer, lambda_runtime::LambdaEvent::new(payload, context())).await
            {
                delete_done(&direct, &urls[1], &event, &response).await;
            }
            finalizer_busy.fetch_add(busy.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
    });
    let report_seen_ms = AtomicU64::new(0);
    let watcher = async {
        loop {
            if let Some(run_id) = run_id.get() {
                let key = format!("runs/{run_id}/report.json");
                if direct.s3.head_object().bucket(&bucket).key(key).send().await.is_ok() {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        report_seen_ms.store(now_ms(), Ordering::Relaxed);
        done.store(true, Ordering::Relaxed);
    };
    let continuations = async {
        while !done.load(Ordering::Relaxed) {
            let event = receive(&direct, &urls[2]).await;
            if event.records.is_empty() {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            let payload = serde_json::to_value(&event).unwrap_or_default();
            if let Ok(response) =
                splitter::handler::handle(&splitter, lambda_runtime::LambdaEvent::new(payload, context())).await
            {
                delete_done(&direct, &urls[2], &event, &response).await;
            }
        }
    };
    let (split, ..) = tokio::join!(
        split,
        futures::future::join_all(generators),
        futures::future::join_all(finalizers),
        watcher,
        continuations
    );
    split?;
    let run_id = run_id.get().cloned().unwrap_or_default();
    let split_requests = split_requests.load(Ordering::Relaxed);
    let wall = started.elapsed().as_secs_f64();
    let total = requests.load(Ordering::Relaxed);
    let ledger = imagepipe::drivers::lambda::ledger(
        &direct,
        &imagepipe::drivers::config::Config::from_lookup(|n| vars.get(n).cloned())?,
    );
    let run = ledger.run(&run_id).await?.ok_or("no run record")?;
    let last_outcome_to_report_s =
        (report_seen_ms.load(Ordering::Relaxed).saturating_sub(run.updated_at_ms)) as f64 / 1000.0;
    assert_eq!(run.counts.succeeded, rows, "every image made");
    println!(
        "{}",
        json!({"bench": "pipeline", "latency_ms": latency_ms, "concurrency": concurrency, "rows": rows, "wall_s": wall,
               "requests": total, "requests_per_image": total as f64 / rows as f64,
               "splitter_requests_per_image": split_requests as f64 / rows as f64,
               "finalizer_lambda_s_per_1000": finalizer_busy.load(Ordering::Relaxed) as f64 / rows as f64,
               "completed_s_after_last_outcome": last_outcome_to_report_s})
    );
    Ok(())
}

/// A ledger that makes up `rows` outcomes (every 50th failed, every 100th invalid) as they are read:
/// it holds nothing, so the report assembly's own memory is what is measured.
struct SyntheticLedger {
    rows: u64,
}

fn synthetic(row: u64) -> Option<Outcome> {
    if row.is_multiple_of(100) {
        return None;
    }
    Some(if row.is_multiple_of(50) {
        Outcome::Failed {
            failure: FailureEntry {
                row,
                key: format!("product/SKU-{row:07}"),
                reason: format!("refused by the provider's safety system (class {})", row % 7),
                attempts: 1,
            },
        }
    } else {
        Outcome::Succeeded {
            image: ImageEntry {
                prompt: format!("Studio photo of product {row}, white background"),
                bytes: 1_500_000,
                ..ImageEntry::example(row, &format!("product/SKU-{row:07}"), "s3://bench")
            },
            cms: Some(Ok(())),
        }
    })
}

fn synthetic_page<T>(rows: u64, after: Option<u64>, make: impl Fn(u64) -> Option<T>) -> Page<T> {
    let start = after.map_or(1, |a| a + 1);
    let end = (start + 1_000).min(rows + 1);
    Page {
        items: (start..end).filter_map(make).collect(),
        next_after: (end <= rows).then_some(end - 1),
    }
}

impl RunLedger for SyntheticLedger {
    async fn create_run(&self, run: &RunRecord) -> Result<RunRecord, LedgerError> {
        Ok(run.clone())
    }
    async fn run(&self, _: &str) -> Result<Option<RunRecord>, LedgerError> {
        Ok(None)
    }
    async fn set_totals(&self, _: &str, _: &SplitTotals) -> Result<(), LedgerError> {
        Ok(())
    }
    async fn advance(&self, _: &str, _: Advance) -> Result<bool, LedgerError> {
        Ok(true)
    }
    async fn record_invalid(&self, _: &str, _: &[InvalidRow]) -> Result<(), LedgerError> {
        Ok(())
    }
    async fn record(&self, _: &str, outcomes: &[Outcome]) -> Result<Vec<Outcome>, LedgerError> {
        Ok(outcomes.to_vec())
    }
    async fn recorded_rows(&self, _: &str, _: &[u64]) -> Result<Vec<u64>, LedgerError> {
        Ok(Vec::new())
    }
    async fn outcome(&self, _: &str, row: u64) -> Result<Option<Outcome>, LedgerError> {
        Ok(synthetic(row))
    }
    async fn claim(&self, _: &str, _: Claim) -> Result<Option<RunRecord>, LedgerError> {
        Ok(None)
    }
    async fn release(&self, _: &str, _: Action) -> Result<(), LedgerError> {
        Ok(())
    }
    async fn done(&self, _: &str, _: Action, _: u64) -> Result<(), LedgerError> {
        Ok(())
    }
    async fn outcomes(&self, _: &str, after: Option<u64>) -> Result<Page<Outcome>, LedgerError> {
        Ok(synthetic_page(self.rows, after, synthetic))
    }
    async fn invalid_rows(&self, _: &str, after: Option<u64>) -> Result<Page<InvalidRow>, LedgerError> {
        Ok(synthetic_page(self.rows, after, |row| {
            (row.is_multiple_of(100)).then(|| InvalidRow {
                row,
                reason: "column \"color\" is empty".into(),
            })
        }))
    }
    async fn stop(&self, _: &str, _: &str) -> Result<bool, LedgerError> {
        Ok(false)
    }
    async fn stop_over_budget(&self, _: &str, _: f64, _: &str) -> Result<bool, LedgerError> {
        Ok(false)
    }
    async fn reopen(&self, _: &str, _: &[u64]) -> Result<Vec<u64>, LedgerError> {
        Ok(Vec::new())
    }
    async fn open_runs(&self) -> Result<Vec<String>, LedgerError> {
        Ok(Vec::new())
    }
}

/// Assembles report.json, results.csv and report.html of `rows` synthetic outcomes into a directory store.
pub async fn report(rows: u64) -> Result<(), Error> {
    let dir = tempfile::tempdir()?;
    let store = imagepipe::adapters::fs_store::FsObjectStore::new(dir.path());
    let ledger = SyntheticLedger { rows };
    let mut run = RunRecord::new(
        "run-synthetic",
        "s3://bench/in.csv",
        "e",
        "product",
        "nano-banana",
        "gemini",
        now_ms(),
    );
    run.state = RunState::Running;
    run.totals = Some(SplitTotals {
        rows,
        awaited: rows - rows / 100,
        invalid: rows / 100,
        ..SplitTotals::default()
    });
    let locations = imagepipe::domain::locations::Locations::bucket("bench", None);
    let started = Instant::now();
    let report = imagepipe::usecase::report::write_report(&ledger, &store, &locations, None, &run).await?;
    let wall = started.elapsed().as_secs_f64();
    assert_eq!(report.rows, rows);
    let results = std::fs::metadata(dir.path().join("runs/run-synthetic/results.csv"))?.len();
    println!(
        "{}",
        json!({"bench": "report", "rows": rows, "wall_s": wall, "results_csv_bytes": results,
               "report_json_bytes": std::fs::metadata(dir.path().join("runs/run-synthetic/report.json"))?.len(),
               "report_html_bytes": std::fs::metadata(dir.path().join("runs/run-synthetic/report.html"))?.len(),
               "peak_rss_kib": peak_rss_kib()})
    );
    Ok(())
}
